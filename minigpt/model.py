"""The model: a Llama / Qwen2 / Qwen3 decoder that knows nothing about batching.

Its forward takes a flat list of token ids, their positions, and an *attention object* from the
engine. The object holds the KV cache, in whatever layout it wants, and names the row of that cache each
token of the step goes to. Each layer computes q, k, v, rotates q and k, writes k, v at those rows and
hands q to the object, which returns attention over its cache. So a contiguous cache, packed batches and
paged blocks all run this same file.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class Attention(Protocol):
    """What the engine hands the model: its KV cache, where this step's keys and values go, attention."""

    # Each layer's keys and values as rows, (rows, n_kv_heads, head_dim), in the order the engine likes (it
    # views them as its layout). Token i of the step goes to row cache_rows[i] (T,).
    kv_cache: list[tuple[torch.Tensor, torch.Tensor]]
    cache_rows: torch.Tensor

    def __call__(self, layer: int, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q: (T, n_heads, head_dim); the layer's cache, this step's k, v in it -> (T, n_heads, head_dim)."""
        ...


def zeros_kv_cache(config: ModelConfig, rows: int, device, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values, zeros of shape (rows, n_kv_heads, head_dim), each its own tensor. The
    model writes into them in place; a compiler (chapter 6) handles separate tensors better than views of one."""
    shape = (rows, config.num_key_value_heads, config.head_dim)
    return [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(config.num_hidden_layers)]


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

    def forward(self, x, cos, sin, kv_cache: tuple[torch.Tensor, torch.Tensor], cache_rows: torch.Tensor,
                attn: Attention):
        q, k, v = self.self_attn.qkv(self.input_layernorm(x), cos, sin)
        k_cache, v_cache = kv_cache
        k_cache.index_copy_(0, cache_rows, k)  # into the engine's cache, at the rows it chose
        v_cache.index_copy_(0, cache_rows, v)
        out = attn(self.self_attn.layer, q, k_cache, v_cache)  # the engine's attention: (T, H, D)
        x = x + self.self_attn.o_proj(out.flatten(1))
        return x + self.mlp(self.post_attention_layernorm(x))


# Projections that read the same input are one matmul here, several in Hugging Face checkpoints: at decode
# a matmul of a few hundred rows costs about as much as its launch, whatever its width (chapter 6 measures it).
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

    def embed_and_rotations(self, input_ids: torch.Tensor, positions: torch.Tensor):
        """input_ids, positions: (T,) -> the embeddings (T, C) and RoPE's cos, sin: (T, 1, head_dim)."""
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # (T, D/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # (T, 1, D)
        return self.embed_tokens(input_ids), angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    def run_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   kv_cache: list[tuple[torch.Tensor, torch.Tensor]], cache_rows: torch.Tensor, attn: Attention):
        """Every decoder layer, in order: (T, C) -> (T, C)."""
        for layer, layer_kv in zip(self.layers, kv_cache):
            x = layer(x, cos, sin, layer_kv, cache_rows, attn)
        return x

    def logits(self, x: torch.Tensor, logits_at: torch.Tensor | None) -> torch.Tensor:
        """The final norm and the LM head, on the rows `logits_at` picks (all when None): (N, vocab) float32."""
        if logits_at is not None:
            x = x[logits_at]
        return self.lm_head(self.norm(x)).float()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, positions: (T,) -> logits (len(logits_at), vocab) in float32.

        `logits_at` picks the rows worth projecting onto the vocabulary (each sequence's last token);
        None means every row.
        """
        x, cos, sin = self.embed_and_rotations(input_ids, positions)
        x = self.run_layers(x, cos, sin, attn.kv_cache, attn.cache_rows, attn)
        return self.logits(x, logits_at)
