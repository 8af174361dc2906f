# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 3: continuous batching
#
# ![Batch occupancy per step on W1](../figures/occupancy_w1.png)
#
# **What you will learn:** how to batch requests without padding, how a scheduler lets requests
# join and leave the batch at every step, how a long prompt is prefilled in chunks beside other
# requests' decode steps, and what reserving KV memory per request costs.
#
# Chapter 2 lost time on pad tokens and on finished rows waiting for the slowest: the rectangle. Drop it:
#
# * **ragged batches**: the model already takes a flat list of tokens. Put every running request's new
#   tokens in it, back to back: a decoding request brings 1, a prefilling one a chunk of its prompt.
# * **a scheduler, every step**: finished requests leave, waiting ones join, up to a *token budget*
#   (`max_batch_tokens`) per step. Running requests go first, oldest first, then new ones fill what is
#   left: a prompt longer than the budget is prefilled in chunks, beside other requests' decode tokens.
# * **arrivals**: a request that arrives mid-run joins at the next step.
#
# The KV cache becomes a set of *slots*, one per running request, each as long as the longest request
# could grow: simple, and wasteful (the chapter measures the memory reserved but never used).

# %%
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

from minigpt import (Clock, Completion, Completions, ModelConfig, Request, Sampler, finish_reason,
                     max_total_len, start_requests, token_progress, zeros_kv_cache)
from minigpt.attention import causal_attention, packed_attention, prefill_mask, use_varlen, varlen_attention
from minigpt.options import check_choice, check_int, make_engine

# %% [markdown]
# ## A sequence, and one step's worth of it
#
# A `Sequence` is a request in flight: its tokens so far (prompt + generated) and how many of them have
# their keys and values in the cache (`num_cached`). Each step runs a *chunk* of it, the tokens
# `num_cached .. num_cached+n-1`; a chunk that reaches the last known token yields the next token.

# %%
@dataclass(eq=False)  # compared and hashed by identity: `seq in running` must not compare token lists
class Sequence:
    index: int  # the request's place in the list given to generate()
    request: Request
    completion: Completion
    tokens: list[int]  # prompt + generated so far
    max_len: int  # prompt + max_new_tokens, capped by the model's context
    num_cached: int = 0  # tokens whose K, V are in the cache

    @property
    def decoding(self) -> bool:
        return self.num_cached == len(self.tokens) - 1


@dataclass
class Chunk:
    seq: Sequence
    start: int  # first token of the chunk (= seq.num_cached when scheduled)
    n: int  # number of tokens

    @property
    def samples(self) -> bool:  # does this chunk end at the sequence's newest token?
        return self.start + self.n == len(self.seq.tokens)


# %% [markdown]
# ## The scheduler
#
# Two queues: `waiting` (arrived, not started) and `running`. Every step, in this order:
#
# 1. every running sequence, oldest first, gets its next chunk: 1 token when decoding, else as much of
#    its prompt as the budget has left (`grow`);
# 2. waiting sequences join while the budget lasts and the cache has room (`start`).
#
# The cache is asked for room (`allocate(seq, n)`) before a chunk is scheduled. A slot holds a request's
# whole maximum length, so only a new sequence can be refused: it waits, first in line.

# %%
class Scheduler:
    def __init__(self, cache, max_batch_tokens: int, max_seqs: int):
        self.cache, self.max_batch_tokens, self.max_seqs = cache, max_batch_tokens, max_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # an ordered set: oldest first, `seq in running` at once

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Chunk]:
        budget, chunks = self.max_batch_tokens, []
        for seq in list(self.running):  # oldest first
            n = min(len(seq.tokens) - seq.num_cached, budget)
            if n > 0 and self.grow(seq, n):
                chunks.append(Chunk(seq, seq.num_cached, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            n = self.start(seq, budget)
            if n == 0:
                break  # no room: it waits, first in line
            self.running[self.waiting.popleft()] = None
            chunks.append(Chunk(seq, seq.num_cached, n))
            budget -= n
        return sorted(chunks, key=lambda c: not c.seq.decoding)  # decode tokens first in the flat batch

    def grow(self, seq: Sequence, n: int) -> bool:
        """Room for a running sequence's next n tokens."""
        return self.cache.allocate(seq, n)

    def start(self, seq: Sequence, budget: int) -> int:
        """Room for a waiting sequence's first chunk: the chunk's size, or 0 when the cache has none."""
        n = min(len(seq.tokens) - seq.num_cached, budget)
        return n if self.cache.allocate(seq, n) else 0

    def finish(self, seq: Sequence):
        del self.running[seq]
        self.cache.free(seq)


# %% [markdown]
# ## The cache: a slot per running request
#
# Each layer's keys and values: `(num_slots * slot_len, kv_heads, head_dim)`, viewed as `num_slots` slots
# of `slot_len` rows. Token `p` of the sequence in slot `s` lives at *cache row* `s * slot_len + p`; each
# layer writes all the step's new keys and values at their cache rows with one indexed copy.

# %%
class SlotCache:
    def __init__(self, config: ModelConfig, num_slots: int, slot_len: int, device, dtype):
        self.kv_cache = zeros_kv_cache(config, num_slots * slot_len, device, dtype)  # each layer's (keys, values)
        self.num_slots, self.slot_len = num_slots, slot_len
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.slots: dict[int, int] = {}  # request index -> its slot

    def allocate(self, seq: Sequence, n: int) -> bool:
        if seq.index not in self.slots:
            if not self.free_slots:
                return False
            self.slots[seq.index] = self.free_slots.pop()
        return True

    def free(self, seq: Sequence):
        self.free_slots.append(self.slots.pop(seq.index))

    def cache_rows(self, seq: Sequence, positions: range) -> list[int]:
        slot = self.slots[seq.index]
        return [slot * self.slot_len + p for p in positions]

    def decode_layout(self, seqs: list[Sequence]) -> list[int]:
        """Where each decoding sequence's keys live, for the decode attention: its slot."""
        return [self.slots[s.index] for s in seqs]

    def memory(self, running: dict[Sequence, None]) -> tuple[int, int]:
        """(tokens reserved, tokens holding K, V): the slots of running sequences against their contents."""
        return len(running) * self.slot_len, sum(s.num_cached for s in running)


# %% [markdown]
# ## Attention over a packed batch
#
# The flat batch holds decode tokens first (one per sequence), then prompt chunks. Each layer writes the
# new `k`, `v` at their cache rows, then the attention object attends:
#
# * **the reference** (`attention="reference"`): one `causal_attention` per chunk over its slot. Plain,
#   obviously right, and slow on a GPU: a small kernel per sequence per layer.
# * **batched decode** (the default): all decode tokens in one `scaled_dot_product_attention` call over
#   the slot tensor *as it is* (a view), each slot masked to its own length; the `G = heads / kv_heads`
#   query heads that share a KV head become `G` query rows of that head.
# * **prompt chunks**, all in one call too: on the CPU (and in float32) one masked SDPA over their
#   packed contexts (`packed_attention`), the mask keeping each chunk to its own sequence; most of its
#   (tokens x context) scores are masked: 14 prompts in one step compute 14 times the scores they need. In half
#   precision on a GPU, FlashAttention's *variable-length* kernel (`varlen_attention`) computes only each chunk's
#   own block. Both live in `minigpt/attention.py`.
# ![One step of a tiny run: the flat batch and the prompt chunks' mask](../figures/idea_ragged_batch.png)

# %%
@dataclass
class Batch:
    """One step's inputs, as the model and the attention object need them. T tokens, S sampled."""

    chunks: list[Chunk]
    input_ids: torch.Tensor  # (T,) token ids, decode tokens first
    positions: torch.Tensor  # (T,)
    cache_rows: torch.Tensor  # (T,) the cache row each token's K, V go to
    logits_at: torch.Tensor  # (S,) the flat index of each sampling chunk's last token
    sampled: list[Sequence]  # who gets a token, in logits_at order
    num_decode: int  # the first num_decode tokens are decode tokens, one per sequence
    decode_lens: torch.Tensor  # (num_decode,) context length incl. the new token
    decode_layout: torch.Tensor  # (num_decode, ...) where each decoding sequence's K, V live (the cache says)
    max_decode_len: int  # the longest decode context
    context_rows: torch.Tensor | None = None  # cache rows of each prompt chunk's positions 0 .. start+n-1, packed
    prefill_mask: torch.Tensor | None = None  # (T - num_decode, len(context_rows)): which context each token sees
    prefill_varlen: tuple | None = None  # instead of the mask: (cu_q, cu_k, max_q, max_k), below


class PackedAttention:
    """The attention object of chapter 3: the slot cache plus the current batch's layout."""

    def __init__(self, cache: SlotCache, reference: bool):
        self.cache, self.reference, self.batch = cache, reference, None
        self.kv_cache = cache.kv_cache

    @property
    def cache_rows(self) -> torch.Tensor:
        return self.batch.cache_rows  # the model writes each token's K, V at its cache row

    def __call__(self, layer: int, q, k_cache, v_cache):
        b = self.batch
        d = 0 if self.reference else b.num_decode
        if d == len(q):  # decode tokens only
            return self.decode(q, k_cache, v_cache)
        out = torch.empty_like(q)
        if d:
            out[:d] = self.decode(q[:d], k_cache, v_cache)
        k_ctx, v_ctx = k_cache[b.context_rows], v_cache[b.context_rows]  # every prompt chunk's context, packed
        if self.reference:  # one chunk at a time
            t = s = 0
            for ch in b.chunks:
                out[t:t + ch.n] = causal_attention(q[t:t + ch.n], k_ctx[s:s + ch.start + ch.n],
                                                   v_ctx[s:s + ch.start + ch.n], ch.start)
                t, s = t + ch.n, s + ch.start + ch.n
        elif b.prefill_varlen:  # all prompt chunks in one call, each its own block of scores
            out[d:] = varlen_attention(q[d:], k_ctx, v_ctx, *b.prefill_varlen)
        else:  # all prompt chunks in one call, a mask keeping each to its own sequence
            out[d:] = packed_attention(q[d:], k_ctx, v_ctx, b.prefill_mask)
        return out

    def decode(self, q, k_cache, v_cache):
        """All decode tokens at once over the slots they live in. q: (B, H, D) -> (B, H, D)."""
        c, b = self.cache, self.batch
        B, H, D = q.shape
        Hkv = k_cache.shape[-2]
        S = b.max_decode_len  # no slot needs more columns than its longest member
        k = k_cache.view(c.num_slots, c.slot_len, Hkv, D)[:, :S].transpose(1, 2)  # (slots, Hkv, S, D): a view
        v = v_cache.view(c.num_slots, c.slot_len, Hkv, D)[:, :S].transpose(1, 2)
        qs = q.new_zeros(c.num_slots, Hkv, H // Hkv, D)
        qs[b.decode_layout] = q.view(B, Hkv, H // Hkv, D)  # query heads grouped under their KV head
        lens = torch.zeros(c.num_slots, dtype=torch.long, device=q.device)
        lens[b.decode_layout] = b.decode_lens
        mask = torch.arange(S, device=q.device)[None, :] < lens.clamp(min=1)[:, None]  # (slots, S)
        out = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask[:, None, None, :])  # (slots, Hkv, G, D)
        return out[b.decode_layout].reshape(B, H, D)


# %% [markdown]
# ## The engine: a step is five small functions (schedule, prepare, forward, sample, update), each waiting

# %%
class ContinuousEngine:
    name = "ch03_continuous"

    def __init__(self, model, max_batch_tokens: int = 2048, max_seqs: int = 256, attention: str = "batched",
                 progress=False):
        self.max_batch_tokens = check_int(self.name, "max_batch_tokens", max_batch_tokens)
        self.max_seqs = check_int(self.name, "max_seqs", max_seqs)
        self.reference = check_choice(self.name, "attention", attention, ("batched", "reference")) == "reference"
        self.model, self.config, self.device, self.progress = model, model.config, model.device, progress
        self.varlen = not self.reference and use_varlen(self.device, model.dtype)

    def make_cache(self, runnable: dict[int, Request]):
        """The KV cache for these requests (index -> request, those that can run)."""
        slot_len = max(max_total_len(r, self.config) for r in runnable.values())
        num_slots = min(self.max_seqs, len(runnable))
        gb = num_slots * slot_len * self.config.kv_bytes_per_token // 2 * self.model.dtype.itemsize / 1e9
        if self.device.type == "cuda" and gb * 1e9 > torch.cuda.mem_get_info(self.device)[0]:
            raise ValueError(f"{num_slots} slots of {slot_len} tokens need {gb:.1f} GB of KV cache; lower max_seqs")
        return SlotCache(self.config, num_slots, slot_len, self.device, self.model.dtype)

    def make_attention(self):  # (the attention object over this cache)
        return PackedAttention(self.cache, self.reference)

    def make_scheduler(self):  # (the scheduler over this cache)
        return Scheduler(self.cache, self.max_batch_tokens, self.max_seqs)

    def admit(self, seq: Sequence):
        self.scheduler.add(seq)

    def generate(self, requests: list[Request]) -> Completions:
        completions, order = start_requests(requests, self.config)
        if not order:  # nothing to run
            return Completions(completions)
        self.cache = self.make_cache({i: requests[i] for i in order})  # sized for the requests that can run
        self.attention = self.make_attention()
        self.scheduler = self.make_scheduler()
        self.sampler = Sampler(requests, self.device)
        self.clock = Clock(self.device)
        self.trace: list[dict] = []  # one entry per step, for the figures
        arrivals = deque(order)
        with token_progress(sum(requests[i].max_new_tokens for i in order), self.name, self.progress) as self.emit:
            while arrivals or self.has_work():
                while arrivals and requests[arrivals[0]].arrival_time <= self.clock.now():
                    i = arrivals.popleft()
                    r = requests[i]
                    self.admit(Sequence(i, r, completions[i], list(r.prompt_ids), max_total_len(r, self.config)))
                if not self.has_work():  # idle until the next request arrives (if one is still to come)
                    if arrivals:
                        time.sleep(max(0.0, requests[arrivals[0]].arrival_time - self.clock.now()))
                    continue
                self.step()
        return Completions(completions, stats=self.summary())

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self):
        chunks = self.scheduler.schedule()
        if not chunks:  # work waits, yet nothing can run: a scheduler that would loop here for ever
            raise RuntimeError(f"{self.name}: no request could be scheduled ({len(self.scheduler.waiting)} waiting)")
        batch = self.prepare(chunks)
        logits = self.forward(batch)
        tokens = self.sampler(logits, [s.index for s in batch.sampled]).tolist()  # the CPU waits here
        self.update(batch, tokens)

    def prepare(self, chunks: list[Chunk]) -> Batch:
        """Python lists -> one flat batch of tensors on the device."""
        ids, positions, rows, logits_at, sampled = [], [], [], [], []
        packed, context_rows = [], []  # the chunks that attend through the packed context, and its cache rows
        for ch in chunks:
            span = range(ch.start, ch.start + ch.n)
            ids += ch.seq.tokens[ch.start:ch.start + ch.n]
            positions += span
            rows += self.cache.cache_rows(ch.seq, span)
            if self.reference or not ch.seq.decoding:
                packed.append(ch)
                context_rows += self.cache.cache_rows(ch.seq, range(ch.start + ch.n))
            if ch.samples:
                logits_at.append(len(ids) - 1)
                sampled.append(ch.seq)
        decode = [ch.seq for ch in chunks if ch.seq.decoding]
        t = lambda x, dtype=torch.long: torch.as_tensor(x, dtype=dtype, device=self.device)  # noqa: E731
        batch = Batch(chunks=chunks, input_ids=t(ids), positions=t(positions), cache_rows=t(rows),
                      logits_at=t(logits_at), sampled=sampled, num_decode=len(decode),
                      decode_lens=t([len(s.tokens) for s in decode]), decode_layout=t(self.cache.decode_layout(decode)),
                      max_decode_len=max((len(s.tokens) for s in decode), default=0), context_rows=t(context_rows))
        if packed and self.varlen:  # where each prompt chunk's queries and context start in the packed rows
            batch.prefill_varlen = (t([0, *accumulate(ch.n for ch in packed)], torch.int32),
                                    t([0, *accumulate(ch.start + ch.n for ch in packed)], torch.int32),
                                    max(ch.n for ch in packed), max(ch.start + ch.n for ch in packed))
        elif packed and not self.reference:  # who sees what: (chunk, position) of every query and context entry
            q_chunk = [j for j, ch in enumerate(packed) for _ in range(ch.n)]
            ctx_chunk = [j for j, ch in enumerate(packed) for _ in range(ch.start + ch.n)]
            ctx_pos = [p for ch in packed for p in range(ch.start + ch.n)]
            batch.prefill_mask = prefill_mask(t(q_chunk), t(positions[len(positions) - len(q_chunk):]), t(ctx_chunk),
                                              t(ctx_pos))
        return batch

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        self.attention.batch = batch
        return self.model(batch.input_ids, batch.positions, self.attention, logits_at=batch.logits_at)

    def update(self, batch: Batch, tokens: list[int]):
        """Advance every chunk; give each sampling sequence its token; retire the finished."""
        for ch in batch.chunks:
            ch.seq.num_cached += ch.n
        reserved, used = self.cache.memory(self.scheduler.running)
        now = self.clock.now()
        self.trace.append({"t": now, "tokens": len(batch.input_ids), "decode": batch.num_decode,
                           "running": len(self.scheduler.running), "kv_reserved": reserved, "kv_used": used})
        for seq, token in zip(batch.sampled, tokens):
            c = seq.completion
            c.tokens.append(token)
            c.token_times.append(now)
            seq.tokens.append(token)
            self.emit(seq.index, token)
            c.finish_reason = finish_reason(seq.request, c, self.config) or ""
            if c.finish_reason:
                self.scheduler.finish(seq)

    def summary(self) -> dict:
        tr = self.trace
        reserved = sum(s["kv_reserved"] for s in tr)
        return {"steps": len(tr), "kv_utilisation": sum(s["kv_used"] for s in tr) / max(reserved, 1),
                "mean_batch_tokens": sum(s["tokens"] for s in tr) / max(len(tr), 1),
                "kv_bytes_per_token": self.config.kv_bytes_per_token, "trace": tr}


def generate(model, requests: list[Request], **options) -> Completions:
    """Chapter 3's engine. Options: max_batch_tokens, max_seqs, attention ('batched'|'reference'), progress."""
    return make_engine(ContinuousEngine, model, options).generate(requests)


# %% [markdown]
# ## The check: the same tokens as chapter 1 (the tests add arrivals, one-token and long prompts, duplicates)

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt import from_config, get_workload, plots

    from chapters import ch01_naive
    from minigpt.reference import assert_same_tokens

    demo_model = from_config("tiny")
    demo = get_workload("W1-small").requests(demo_model.config.vocab_size, 8)
    print(assert_same_tokens(generate, ch01_naive.generate, demo_model, demo, max_batch_tokens=64), "tokens equal")

# %% [markdown]
# ## The measurement
#
# `python -m chapters.ch03_continuous --compare` runs chapters 1-3 on the same requests (the cell below
# prints chapter 3's committed H200 run). Look at the KV memory line: a slot is as long as the longest request
# may grow, and a request fills it only at its last step: most of the reserved memory holds nothing.
# On the H200 the first timed run took 72 s (after a warm-up on a few short requests), the next two 30 s each:
# there PyTorch's SDPA gives this decode attention to cuDNN, NVIDIA's library, which builds a plan the first
# time it meets each key length (76 ms, then 0.15 ms a call). The table's median is a later run.
#
# Under load (`--rate 40`: 40 requests a second), a request joins at the next step instead of waiting for a
# batch to finish: in the committed 2-core CPU sweep its TTFT p90 is 14 ms at 40 a second, chapter 2's 439.
# ![TTFT and TPOT against the request rate on this CPU, `python -m tools.bench latency`](../figures/cpu_latency.png)

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt.metrics import show_committed

    show_committed("h200_w1.json", "W1 on one H200 (committed data)", ["ch03_continuous"])
    plots.occupancy(generate(demo_model, demo, max_batch_tokens=64).stats["trace"], None, "this run, step by step")

# %% [markdown]
# ## Exercises
#
# 1. Set `--max-batch-tokens 16` and watch the steps grow: every prompt is prefilled in chunks. Do tokens change?
# 2. Give W1-small's requests arrival times 10 ms apart. How does TTFT compare with chapter 2's?
# 3. Run with `--attention reference`. On the CPU, count the attention calls of one decode step; on a GPU,
#    how much slower is a kernel per sequence per layer?
#
# Answers: `solutions/ch03_continuous.py`.
#
# ## What is left on the table
#
# Every running request holds a slot as long as the longest request could grow: the memory that limits how
# many requests run at once, and so share a step's cost, is mostly empty. Chapter 4 hands it out in
# small blocks, as it is used.

# %%
OPTIONS = {"max_batch_tokens": (int, 2048, "token budget per step"),
           "max_seqs": (int, 256, "most sequences running at once (cache slots)"),
           "attention": (str, "batched", "'batched' (one call for all decode tokens) or 'reference' (a loop "
                                         "over sequences)")}


def main(argv=None):
    from minigpt.cli import run_chapter

    run_chapter("ch03_continuous", argv, OPTIONS)


if __name__ == "__main__" and "get_ipython" not in globals():  # python -m chapters.<this chapter>
    main()
elif __name__ == "__main__":  # in a notebook: a small run beside the chapters before this one
    main(["--requests", "8", "--compare", "--no-progress"])
