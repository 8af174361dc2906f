"""Building a model: seeded random weights from a preset, or a Hugging Face checkpoint.

The default everywhere is a seeded random model; a checkpoint is a folder here or, named by its hub id, one
huggingface_hub fetches (`local_folder`). A checkpoint minigpt cannot run exactly is refused at load, in one
line naming the file and the field (`config_from_hf`).
"""
from __future__ import annotations

import json
import re
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


# What a Llama / Qwen2 / Qwen3 config.json says, field by field (transformers 5's LlamaConfig, Qwen2Config,
# Qwen3Config), and what minigpt does with it:
# - read: the shapes, rms_norm_eps, tie_word_embeddings, eos_token_id, rope_theta, and the RoPE type when
#   it is 'default' or Llama 3.1's 'llama3';
# - refused (`refusal`), as they change the math in ways model.py does not implement: other RoPE types
#   (linear, dynamic, yarn, longrope, ...), partial_rotary_factor, per-layer RoPE, hidden_act other than
#   silu, mlp_bias, attention_bias on Llama or Qwen3 (which also puts a bias on o_proj), sliding-window
#   layers (use_sliding_window, sliding_window, max_window_layers, layer_types), quantization_config;
# - ignored, as they change nothing at inference: attention_dropout, pretraining_tp (transformers 5 does not
#   use it), initializer_range, use_cache, pad_token_id, bos_token_id, dtype. Qwen2 puts biases on q, k, v
#   whatever its config says, as transformers does.
ROPE_TYPES = ("default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor")


def rope_of(hf: dict) -> tuple[str, dict]:
    """The RoPE settings and where they are: transformers 5 writes `rope_parameters` (rope_theta inside),
    older files `rope_scaling` (and rope_theta beside it); transformers prefers rope_scaling when both are."""
    for key in ("rope_scaling", "rope_parameters"):
        if hf.get(key):
            return key, hf[key]
    return "rope_parameters", {}


def rope_refusal(hf: dict) -> str:
    key, rope = rope_of(hf)
    if not isinstance(rope, dict) or {"full_attention", "sliding_attention"} & set(rope):
        return f"{key} {rope!r} is not one dict of RoPE settings for every layer, the only kind minigpt reads"
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        return f"{key} has rope_type {kind!r}; minigpt implements the RoPE types {ROPE_TYPES} only"
    factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if factor not in (None, 1, 1.0):
        return f"partial_rotary_factor is {factor}; minigpt rotates the whole head (1.0) only"
    if kind == "llama3" and (missing := [k for k in LLAMA3_KEYS if k not in rope]):
        return f"{key} has rope_type 'llama3' but no {', '.join(missing)}; the llama3 type needs {LLAMA3_KEYS}"
    return ""


def sliding_refusal(hf: dict) -> str:
    """Qwen2 and Qwen3 make layer i a sliding-window one when use_sliding_window is true and i >=
    max_window_layers, unless layer_types lists each layer's kind (transformers' defaults below)."""
    window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window") else None
    after = hf.get("max_window_layers", 28)
    kinds = hf.get("layer_types") or ["sliding_attention" if window is not None and i >= after else "full_attention"
                                      for i in range(hf["num_hidden_layers"])]
    if sliding := [i for i, kind in enumerate(kinds) if kind != "full_attention"]:
        return (f"layers {sliding} attend within a window (use_sliding_window={hf.get('use_sliding_window')}, "
                f"sliding_window={hf.get('sliding_window')}, max_window_layers={after}, layer_types); minigpt "
                f"attends to the whole context in every layer")
    return ""


def refusal(hf: dict, family: str) -> str:
    """Why minigpt cannot run this checkpoint exactly; '' when it can."""
    if (act := hf.get("hidden_act", "silu")) not in ("silu", "swish"):
        return f"hidden_act is {act!r}; minigpt's MLP is SwiGLU, hidden_act 'silu' only"
    if hf.get("mlp_bias"):
        return "mlp_bias is true; minigpt's MLP has no biases"
    if hf.get("attention_bias") and family != "qwen2":
        return ("attention_bias is true, which in Llama and Qwen3 puts biases on q, k, v and o_proj; minigpt has "
                "biases on q, k, v only (Qwen2's)")
    if (quantized := hf.get("quantization_config")) is not None:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else quantized
        return f"quantization_config has quant_method {method!r}; minigpt loads unquantized weights only"
    return rope_refusal(hf) or (sliding_refusal(hf) if family != "llama" else "")


SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "max_position_embeddings")


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Translate a Hugging Face config.json (Llama, Qwen2, Qwen3) into a ModelConfig, or refuse it in one
    line naming `source` (the file) and the field, when minigpt cannot run the checkpoint exactly."""
    arch = (hf.get("architectures") or ["?"])[0]
    family = SUPPORTED.get(arch)
    if family is None:
        raise ValueError(f"{source}: architecture {arch!r} is not supported; minigpt loads {sorted(SUPPORTED)}")
    if missing := [k for k in SHAPE_KEYS if not isinstance(hf.get(k), int)]:
        raise ValueError(f"{source}: no integer {', '.join(missing)}; a {arch} config.json gives each")
    if why := refusal(hf, family):
        raise ValueError(f"{source}: {why}")
    try:
        return model_config(hf, family, arch)
    except ValueError as e:  # shapes that do not fit together
        raise ValueError(f"{source}: {e}") from None


def model_config(hf: dict, family: str, arch: str) -> ModelConfig:
    """The ModelConfig of a config.json that `config_from_hf` accepted."""
    _, rope = rope_of(hf)
    eos, heads = hf.get("eos_token_id"), hf["num_attention_heads"]
    # transformers' values for a field absent (Qwen3's head_dim is 128, Qwen's key-value heads 32) or null
    head_dim = hf.get("head_dim", 128 if family == "qwen3" else None)
    head_dim = hf["hidden_size"] // heads if head_dim is None else head_dim
    kv_heads = hf.get("num_key_value_heads", heads if family == "llama" else 32)
    kv_heads = heads if kv_heads is None else kv_heads
    return ModelConfig(
        name=hf.get("_name_or_path") or arch,
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"], num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, max_position_embeddings=hf["max_position_embeddings"],
        rope_theta=float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
        rope_scaling=llama3_scaling(rope, hf["max_position_embeddings"]),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        qk_norm=family == "qwen3",
        attention_bias=family == "qwen2",
        eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
    )


def llama3_scaling(rope: dict, max_positions: int) -> dict | None:
    """Llama 3.1's frequency scaling, or None for plain RoPE. Its original context defaults to the model's,
    as in transformers."""
    if rope.get("rope_type", rope.get("type")) != "llama3":
        return None
    return {"original_max_position_embeddings": max_positions, **rope}


def read_json(path: Path) -> dict:
    """A JSON file's object, or a one-line ValueError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file may be truncated, download it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():  # sharded: the index maps each tensor to its file
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no weight_map, the tensor -> file table of a sharded checkpoint")
        return sorted({path / f for f in weight_map.values()})
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json in the folder")


def read_weights(f: Path, device, dtype) -> dict[str, torch.Tensor]:
    """One safetensors file's tensors, named without the leading `model.`, in `dtype`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not f.exists():
        raise FileNotFoundError(f"{f}: listed in the checkpoint's index but missing")
    try:
        tensors = load_file(str(f), device=str(device))
    except SafetensorError as e:
        raise ValueError(f"{f}: not a readable safetensors file ({e}); it may be truncated, download it "
                         f"again") from None
    return {name.removeprefix("model."): t.to(dtype) for name, t in tensors.items()}


# A Hugging Face hub id, "org/name"; what is not one (and not a folder here) is a missing folder.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def local_folder(path_or_id: str | Path) -> Path:
    """The checkpoint's folder here: `path_or_id` itself, unless it is no folder here but a hub id, which
    huggingface_hub then fetches into its cache (or finds there: with HF_HUB_OFFLINE=1 it looks nowhere else)."""
    path = Path(path_or_id)
    if path.is_dir() or not HUB_ID.fullmatch(str(path_or_id)):
        return path
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(str(path_or_id), allow_patterns=HUB_FILES))
    except Exception as e:  # offline, no network, no such repository, a gated one: whatever stops the fetch
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line
        raise FileNotFoundError(f"{path_or_id}: not a local folder, and it could not be fetched from the Hugging "
                                f"Face hub ({reason}); download it elsewhere and pass its folder with --model "
                                f"DIR") from None


def load_pretrained(path_or_id: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> Transformer:
    """Load a Hugging Face checkpoint (config.json + *.safetensors, sharded or not): a folder here, or a
    hub id such as "Qwen/Qwen3-0.6B" (`local_folder`)."""
    path = local_folder(path_or_id)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; expected a Hugging Face checkpoint folder or hub id")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face checkpoint folder")
    config = config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
    model = _empty_model(config, device, dtype)
    state = {}
    for f in _checkpoint_files(path):
        state.update(read_weights(f, device, dtype))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    fit_weights(model, fuse_hf_names(state, config), path)
    return model


def fit_weights(model: Transformer, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy the checkpoint's tensors into the model, or say in one line which do not fit config.json."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that is not config.json's
        wrong = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise ValueError(f"{path}: the weights do not have config.json's shapes: {'; '.join(wrong[:3])}") from None
    missing = [m for m in missing if not (model.config.tie_word_embeddings and m == "lm_head.weight")]
    unexpected = [u for u in unexpected if not u.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def load_tokenizer(path_or_id: str | Path):
    """transformers' AutoTokenizer for the checkpoint (a folder or hub id), or None when it has no tokenizer."""
    path = local_folder(path_or_id)
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
