"""The model: a Llama / Qwen2 / Qwen3 decoder that knows nothing about batching.

Its forward takes a flat list of token ids, their positions, and an *attention object* from the
engine. Each layer computes q, k, v, rotates q and k, and hands them to that object, which stores k, v
wherever its cache layout wants and returns the attention output. So chapter 1's contiguous cache,
chapter 3's packed batches and chapter 4's paged blocks all run this same file.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class Attention(Protocol):
    """What the engine hands the model: store this layer's k, v; return attention over the cache."""

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (T, n_heads, head_dim); k, v: (T, n_kv_heads, head_dim) -> (T, n_heads, head_dim)."""
        ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * weight / sqrt(mean(x^2) + eps), computed in float32 whatever x's dtype. One fused kernel on
        # a GPU, where the spelled-out formula would launch eight.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """The rotation speed of each pair of dimensions, (head_dim // 2,), with Llama 3.1's scaling if set."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    s = config.rope_scaling
    if s and s.get("rope_type", s.get("type")) == "llama3":
        # Slow (long-wavelength) dimensions are stretched by `factor`, fast ones kept, a blend between.
        low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
        high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
            s["high_freq_factor"] - s["low_freq_factor"]
        )
        blended = (1 - smooth) * inv_freq / s["factor"] + smooth * inv_freq
        inv_freq = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
        between = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        inv_freq = torch.where(between, blended, inv_freq)
    elif s and s.get("rope_type", s.get("type")) not in (None, "default"):
        raise ValueError(f"rope_scaling {s!r} is not supported (only Llama 3.1's 'llama3')")
    return inv_freq.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (T, heads, head_dim) by its positions' angles; cos, sin: (T, 1, head_dim)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        c, bias = config, config.attention_bias
        self.layer, self.n_heads, self.n_kv, self.d = layer, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        # Hugging Face's q_proj, k_proj and v_proj stacked into one matrix (FUSED, below): one matmul, not three.
        self.sizes = fused_sizes(c)["self_attn.qkv_proj"]
        self.qkv_proj = nn.Linear(c.hidden_size, sum(self.sizes), bias=bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def qkv(self, x, cos, sin):
        """Project to queries, keys and values; normalise (Qwen3) and rotate q and k."""
        T = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q = q.view(T, self.n_heads, self.d)  # (T, H, D)
        k = k.view(T, self.n_kv, self.d)  # (T, Hkv, D)
        v = v.view(T, self.n_kv, self.d)  # (T, Hkv, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up as one matmul."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, attn: Attention):
        q, k, v = self.before_attention(x, cos, sin)
        out = attn(self.self_attn.layer, q, k, v)  # the engine's cache and attention: (T, H, D)
        return self.after_attention(x, out)

    # The layer in two halves around the engine's attention: each is a chain of small kernels at decode
    # (norms, projections, RoPE, SwiGLU, residual adds) that torch.compile can fuse (Transformer.compile_layers).
    def before_attention(self, x, cos, sin):
        return self.self_attn.qkv(self.input_layernorm(x), cos, sin)

    def after_attention(self, x, out):
        x = x + self.self_attn.o_proj(out.flatten(1))
        return x + self.mlp(self.post_attention_layernorm(x))


# Projections that read the same input are one matmul here, several in Hugging Face checkpoints: at decode
# a matmul of a few hundred rows costs about as much as its launch, whatever its width (on the H200, three
# fewer a layer took 0.31 ms off W1's 6.56-ms decode step: NOTES.md).
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def fused_sizes(config: ModelConfig) -> dict[str, list[int]]:
    """The output widths of each FUSED projection's parts."""
    c = config
    return {"self_attn.qkv_proj": [c.num_attention_heads * c.head_dim] + [c.num_key_value_heads * c.head_dim] * 2,
            "mlp.gate_up_proj": [c.intermediate_size] * 2}


def fuse_hf_names(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict (without the leading `model.`) -> ours: the FUSED parts concatenated."""
    state = dict(state)
    for i in range(config.num_hidden_layers):
        for fused, parts in FUSED.items():
            for suffix in ("weight", "bias"):
                names = [f"layers.{i}.{part}.{suffix}" for part in parts]
                if all(n in state for n in names):
                    state[f"layers.{i}.{fused}.{suffix}"] = torch.cat([state.pop(n) for n in names])
    return state


def split_to_hf_names(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """fuse_hf_names undone: our state dict -> Hugging Face's names and shapes."""
    state, sizes = dict(state), fused_sizes(config)
    for i in range(config.num_hidden_layers):
        for fused, parts in FUSED.items():
            for suffix in ("weight", "bias"):
                tensor = state.pop(f"layers.{i}.{fused}.{suffix}", None)
                if tensor is not None:
                    pieces = tensor.split(sizes[fused])
                    state.update({f"layers.{i}.{part}.{suffix}": piece for part, piece in zip(parts, pieces)})
    return state


class Transformer(nn.Module):
    """Parameter names match Hugging Face's, without the leading `model.`, except the FUSED projections."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_frequencies(config), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def compile_layers(self, backend: str | None = "inductor"):
        """Have torch.compile fuse each layer's small kernels before and after attention (about 30 a layer
        eager, most of them elementwise; NOTES.md has what it saves on the H200). The attention object stays
        outside, eager. All layers share one compiled code, compiled here, not mid-run: for 1 token (sizes 0
        and 1 are always specialised) and for any number of tokens. `backend=None` puts the eager methods
        back; `backend="eager"` traces without generating kernels (the CPU tests)."""
        for layer in self.layers:
            for name in ("before_attention", "after_attention"):
                vars(layer).pop(name, None)  # the eager method, from the class
                if backend:  # (compiling again is cheap: the compiled code is cached with the function's code)
                    setattr(layer, name, torch.compile(getattr(layer, name), backend=backend))
        if not backend:
            return
        c, layer = self.config, self.layers[0]
        with torch.inference_mode():  # as the engines run it (the compiled code is guarded on the grad mode)
            for T in (1, 2, 3):  # the second size > 1 makes the token dimension dynamic
                x = torch.zeros(T, c.hidden_size, device=self.device, dtype=self.dtype)
                cos, sin = (torch.zeros(T, 1, c.head_dim, device=self.device, dtype=self.dtype) for _ in "cs")
                layer.before_attention(x, cos, sin)
                layer.after_attention(x, torch.zeros(T, c.num_attention_heads, c.head_dim, device=self.device,
                                                     dtype=self.dtype))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, positions: (T,) -> logits (len(logits_at), vocab) in float32.

        `logits_at` picks the rows worth projecting onto the vocabulary (each sequence's last token);
        None means every row.
        """
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # (T, D/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # (T, 1, D)
        cos, sin = angles.cos().to(self.dtype), angles.sin().to(self.dtype)
        x = self.embed_tokens(input_ids)  # (T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, attn)
        if logits_at is not None:
            x = x[logits_at]
        return self.lm_head(self.norm(x)).float()  # (N, vocab)
