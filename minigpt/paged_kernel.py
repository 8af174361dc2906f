"""Chapter 4's paged decode attention as a Triton kernel: it reads each sequence's keys and values from the
blocks where they lie, by its block table, with an online softmax; long contexts are split into parts run
in parallel and merged. Its contract is `chapters.ch04_paged.paged_decode_reference`'s, against which the
GPU tests check it. The CPU wheels of PyTorch come without Triton: `triton` is None there."""
from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit(do_not_specialize=["stride_tb"])  # the table width changes step to step: no recompiles
    def _paged_decode_kernel(Q, K, V, Tables, SeqLens, Out, M, L, scale,
                             stride_qb, stride_qh, stride_kr, stride_kh, stride_tb,
                             stride_ob, stride_oh, stride_os,
                             G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                             BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, PRECISION: tl.constexpr):
        b, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        seq_len = tl.load(SeqLens + b)
        per_split = tl.cdiv(tl.cdiv(seq_len, SPLITS), BLOCK_N) * BLOCK_N
        lo, hi = split * per_split, tl.minimum((split + 1) * per_split, seq_len)
        g, d = tl.arange(0, BLOCK_G), tl.arange(0, D)
        heads = kv_head * G + g  # the query heads that share this KV head
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=g[:, None] < G, other=0.0)
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max of the scores, per query head
        denom = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp(score - m)
        acc = tl.zeros([BLOCK_G, D], tl.float32)  # running sum of exp(score - m) * v
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            block = tl.load(Tables + b * stride_tb + n // BLOCK_SIZE, mask=n < hi, other=0)
            rows = ((block * BLOCK_SIZE + n % BLOCK_SIZE) * stride_kr + kv_head * stride_kh)[:, None] + d[None, :]
            k = tl.load(K + rows, mask=(n < hi)[:, None], other=0.0)  # (BLOCK_N, D)
            v = tl.load(V + rows, mask=(n < hi)[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale  # (BLOCK_G, BLOCK_N)
            s = tl.where((n < hi)[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            denom = denom * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        if SPLITS == 1:  # one part: normalise here and write the output in q's dtype
            acc = acc / denom[:, None]
        o = Out + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + d[None, :]
        tl.store(o, acc, mask=g[:, None] < G)
        if SPLITS > 1:  # several: keep each part's max and sum, to merge after
            ml = (b * tl.num_programs(1) * G + heads) * SPLITS + split
            tl.store(M + ml, m, mask=g < G)
            tl.store(L + ml, denom, mask=g < G)


SPLITS = (1, 2, 4, 8, 16)  # each a compiled variant of the kernel


def decode_splits(batch: int, kv_heads: int) -> int:
    """Enough programs to fill an H200's 132 multiprocessors twice. It depends on the batch alone, not on
    the contexts: a step's launch is then the same whatever the lengths, as a recorded launch must be."""
    want = math.ceil(264 / (batch * kv_heads))
    return next((s for s in SPLITS if s >= want), SPLITS[-1])


def compile_decode_kernel(k_cache, v_cache, num_heads: int, block_size: int):
    """Compile every variant up front (about half a second each), so that none compiles mid-run."""
    q = torch.zeros(1, num_heads, k_cache.shape[-1], device=k_cache.device, dtype=k_cache.dtype)
    tables = torch.zeros(1, 1, dtype=torch.long, device=k_cache.device)
    lens = torch.ones(1, dtype=torch.long, device=k_cache.device)
    for splits in SPLITS:
        paged_decode_triton(q, k_cache, v_cache, tables, lens, block_size, splits=splits)


def paged_decode_triton(q, k_cache, v_cache, tables, seq_lens, block_size: int, splits: int | None = None,
                        block_n: int = 64):
    """The same contract as paged_decode_reference, reading blocks in place (CUDA only)."""
    B, H, D = q.shape
    Hkv = k_cache.shape[1]
    G = H // Hkv
    splits = splits or decode_splits(B, Hkv)
    if splits == 1:  # the output, in q's dtype (the parts' maxima and sums are not kept: no buffers)
        acc = m = denom = torch.empty(B, H, 1, D, device=q.device, dtype=q.dtype)
    else:
        acc = torch.empty(B, H, splits, D, device=q.device, dtype=torch.float32)
        m = torch.empty(B, H, splits, device=q.device, dtype=torch.float32)
        denom = torch.empty_like(m)
    _paged_decode_kernel[(B, Hkv, splits)](
        q, k_cache, v_cache, tables, seq_lens, acc, m, denom, D ** -0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), tables.stride(0),
        acc.stride(0), acc.stride(1), acc.stride(2),
        G=G, BLOCK_G=max(16, triton.next_power_of_2(G)), D=D, BLOCK_SIZE=block_size, BLOCK_N=block_n, SPLITS=splits,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # float32 stays float32 (no TF32 rounding)
    )
    if splits == 1:
        return acc[:, :, 0]
    # Merge the parts' softmaxes: weights exp(m_i - max m); an empty part (m = -inf) weighs 0.
    w = torch.exp(m - m.amax(-1, keepdim=True)).nan_to_num(0.0)  # (B, H, splits)
    out = (acc * w[..., None]).sum(2) / (denom * w).sum(-1)[..., None]
    return out.to(q.dtype)
