"""Building a model: seeded random weights from a preset, or a local Hugging Face checkpoint folder.

Nothing here downloads anything: the default everywhere is a seeded random model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig, get_config
from .model import Transformer, fuse_hf_names, rope_frequencies

SUPPORTED = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


def _empty_model(config: ModelConfig, device, dtype) -> Transformer:
    """Allocate the model on `device` in `dtype` without initialising it (fast even for 8B)."""
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    if config.tie_word_embeddings:  # to_empty makes new tensors: tie them again
        model.lm_head.weight = model.embed_tokens.weight
    model.inv_freq = rope_frequencies(config).to(device)  # stays float32 whatever the dtype
    return model.eval().requires_grad_(False)


def from_config(preset_or_config: str | ModelConfig, seed: int = 0, device="cpu",
                dtype: torch.dtype = torch.float32) -> Transformer:
    """A model of this shape with seeded random weights (normal, std `initializer_range`; norms at 1)."""
    config = get_config(preset_or_config)
    model = _empty_model(config, device, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            nn.init.ones_(p)
        else:
            nn.init.normal_(p, std=config.initializer_range, generator=gen)
    return model


def config_from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face config.json (Llama, Qwen2, Qwen3) into a ModelConfig."""
    arch = (hf.get("architectures") or ["?"])[0]
    family = SUPPORTED.get(arch)
    if family is None:
        raise ValueError(f"architecture {arch!r} is not supported; minigpt loads {sorted(SUPPORTED)}")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}  # transformers 5 moved rope_theta here
    eos = hf.get("eos_token_id")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        name=hf.get("_name_or_path") or arch,
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        max_position_embeddings=hf["max_position_embeddings"],
        rope_theta=float(hf.get("rope_theta") or rope.get("rope_theta", 10000.0)),
        rope_scaling=rope if rope.get("rope_type", rope.get("type")) == "llama3" else None,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        qk_norm=family == "qwen3",
        attention_bias=hf.get("attention_bias", family == "qwen2"),
        eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
    )


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():  # sharded: the index maps each tensor to its file
        return sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json in the folder")


def load_pretrained(path: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> Transformer:
    """Load a local Hugging Face checkpoint folder (config.json + *.safetensors, sharded or not)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face checkpoint folder")
    config = config_from_hf(json.loads((path / "config.json").read_text()))
    model = _empty_model(config, device, dtype)
    state = {}
    for f in _checkpoint_files(path):
        if not f.exists():
            raise FileNotFoundError(f"{f}: listed in the checkpoint's index but missing")
        for name, tensor in load_file(str(f), device=str(device)).items():
            state[name.removeprefix("model.")] = tensor.to(dtype)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(fuse_hf_names(state, config), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    unexpected = [u for u in unexpected if not u.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model


def load_tokenizer(path: str | Path):
    """transformers' AutoTokenizer for the folder, or None when the folder has no tokenizer."""
    path = Path(path)
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def stream_text(tokenizer, write=None):
    """A per-token callback for an engine's `progress` option that writes each new piece of text as its
    token arrives (for one request: tokens of several would interleave)."""
    tokens: list[int] = []
    write = write or (lambda text: print(text, end="", flush=True))

    def on_token(i: int, token: int):
        before = tokenizer.decode(tokens)
        tokens.append(token)
        write(tokenizer.decode(tokens)[len(before):])  # decode the whole: a word may span tokens

    return on_token
