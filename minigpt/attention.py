"""The attention formula every chapter's cache layout ends up calling (the pure-PyTorch reference), and the
masks and layouts of packed prompt chunks."""
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


def prefill_mask(q_chunk, q_pos, ctx_chunk, ctx_pos):
    """(T, S): query token i sees context entry j when both belong to the same chunk and j is not later."""
    return (q_chunk[:, None] == ctx_chunk[None, :]) & (ctx_pos[None, :] <= q_pos[:, None])


def paged_prompt_layout(tables, ctx_lens, q_lens, q_pos, sizes: list[tuple[int, int]], block_size: int,
                        varlen: bool):
    """The packed context of a step's prompt chunks, built on the device from their block tables (C, width),
    context lengths (C,), query counts (C,) and query positions (T,). `sizes` gives each chunk's (tokens,
    context) as host integers too, so that no size is read back from the device. Returns each context
    entry's cache row (S,), and the mask (T, S) or, with `varlen`, FlashAttention's offsets."""
    tokens, context = sum(n for n, _ in sizes), sum(c for _, c in sizes)
    chunk = torch.arange(len(sizes), device=tables.device)
    ctx_chunk = torch.repeat_interleave(chunk, ctx_lens, output_size=context)  # (S,)
    ctx_pos = torch.arange(context, device=tables.device) - (ctx_lens.cumsum(0) - ctx_lens)[ctx_chunk]
    rows = tables[ctx_chunk, ctx_pos // block_size] * block_size + ctx_pos % block_size
    if varlen:
        cu = lambda lens: F.pad(lens.cumsum(0), (1, 0)).int()  # noqa: E731
        return rows, None, (cu(q_lens), cu(ctx_lens), max(n for n, _ in sizes), max(c for _, c in sizes))
    q_chunk = torch.repeat_interleave(chunk, q_lens, output_size=tokens)
    return rows, prefill_mask(q_chunk, q_pos, ctx_chunk, ctx_pos), None


def packed_attention(q, k, v, mask):
    """q: (T, H, D) over k, v: (S, Hkv, D), mask: (T, S) -> (T, H, D). Heads are repeated for grouped-query
    attention: PyTorch's fused kernels that take a mask do not take groups."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask[None, None])
    return out[0].transpose(0, 1)


def use_varlen(device: torch.device, dtype: torch.dtype) -> bool:
    """FlashAttention runs on CUDA GPUs in half precision only."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def varlen_attention(q, k, v, cu_q, cu_k, max_q: int, max_k: int):
    """packed_attention's result from FlashAttention-2's variable-length kernel. Chunk i's queries are rows
    cu_q[i] .. cu_q[i+1]-1 of q, its context rows cu_k[i] .. cu_k[i+1]-1 of k, v (int32 offsets). Causal
    is aligned at the bottom right: a chunk's last query sees its whole context, its earlier ones one
    less each, as a chunk that starts mid-prompt needs. (The public `torch.nn.attention.varlen` wraps
    this op, with arguments that differ between PyTorch releases.)"""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False)[0]
