"""The one attention formula every chapter's cache layout ends up calling (the pure-PyTorch reference)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
    """Attention of one sequence's new tokens over its whole cache.

    q: (T, H, D), the queries of tokens at positions start .. start+T-1;
    k, v: (S, Hkv, D), the keys and values of positions 0 .. S-1 (S >= start + T).
    Query i sees keys 0 .. start+i (causal). Returns (T, H, D).
    """
    T, S = q.shape[0], k.shape[0]
    q_pos = torch.arange(T, device=q.device)[:, None] + start  # (T, 1)
    mask = torch.arange(S, device=q.device)[None, :] <= q_pos  # (T, S)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),  # (H, T, D), (Hkv, S, D)
        attn_mask=mask, enable_gqa=True,
    )
    return out.transpose(0, 1)  # (T, H, D)
