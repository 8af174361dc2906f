"""transformers as the referee: the same weights in a Hugging Face model, and its own greedy generate()."""
from __future__ import annotations

import torch

from .engine import Request
from .model import Transformer, split_to_hf_names


def to_hf(model: Transformer):
    """A transformers model (Llama, Qwen2 or Qwen3 by the config's features) holding `model`'s weights."""
    import transformers

    c = model.config
    common = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, eos_token_id=c.eos_token_id or None, rope_scaling=c.rope_scaling,
    )
    if c.qk_norm:
        cls, cfg = transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**common)
    elif c.attention_bias:
        cls, cfg = transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**common)
    else:
        cls, cfg = transformers.LlamaForCausalLM, transformers.LlamaConfig(**common)
    hf = cls(cfg).to(dtype=model.dtype, device=model.device).eval()
    ours = split_to_hf_names(model.state_dict(), c)
    state = {(k if k == "lm_head.weight" else "model." + k): v for k, v in ours.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (c.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not unexpected, f"weights do not map onto transformers': {missing[:5]}, {unexpected[:5]}"
    return hf


@torch.no_grad()
def hf_greedy(hf_model, request: Request) -> list[int]:
    """transformers' own greedy generate() for one request."""
    ids = torch.tensor([request.prompt_ids], device=hf_model.device)
    eos = None if request.ignore_eos else hf_model.generation_config.eos_token_id
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=request.max_new_tokens,
                            do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def assert_same_tokens(generate, reference, model, requests: list[Request], **options) -> int:
    """Run `generate` (with options) and `reference` on the same requests; every request's tokens must be
    equal. Returns the number of tokens compared."""
    ours, theirs = generate(model, requests, **options), reference(model, requests)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.tokens == b.tokens, f"request {i}: {a.tokens[:8]}... differs from the reference {b.tokens[:8]}..."
    return sum(len(c.tokens) for c in ours)
