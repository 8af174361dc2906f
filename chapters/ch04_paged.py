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
# # Chapter 4: the paged KV cache
#
# ![KV memory over W1: slots against blocks](../figures/kv_memory_w1.png)
#
# **What you will learn:** how to store keys and values in fixed-size *blocks* handed out on demand,
# so that memory follows what requests actually use; how to keep going when memory runs out
# (*preemption*); and how attention reads keys and values straight out of scattered blocks.
#
# Chapter 3 reserved, for every running request, room for the longest any request might grow. On W1
# most of that memory never holds a key. Memory is what limits how many requests run at once, and the
# number running at once is what a decode step's cost is shared by.
#
# The fix is the operating system's: **paging**. The cache is a pool of blocks of `block_size` tokens.
# A request owns a *block table*, the list of its blocks; token `p` lives in block `table[p // block_size]`
# at row `p % block_size`. Blocks are taken one at a time as a request grows and returned when it
# finishes. When the pool runs dry mid-decode, the most recently admitted request is *preempted*: its
# blocks are freed and it goes back to the front of the queue, to be recomputed (prefilled again, prompt
# and generated tokens together) when room returns. Its output does not change.
#
# Only the cache, the scheduler's `grow` and `start`, and decode attention change; the engine is chapter 3's.
#
# ![Block tables of a tiny run mapping into the pool, shared and freed blocks marked](../figures/idea_block_tables.png)

# %%
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from chapters import ch03_continuous
from chapters.ch03_continuous import ContinuousEngine, PackedAttention, Scheduler, Sequence
from minigpt import Completions, ModelConfig, Request, fail, max_total_len, zeros_kv_cache
from minigpt.metrics import stage
from minigpt.paged_kernel import SPLITS, compile_decode_kernel, paged_decode_triton, triton
from minigpt.options import check_bool, check_int, check_number, make_engine


# %% [markdown]
# ## The block pool and its allocator
#
# A free list of block ids and a reference count per block (a block can be shared by requests with the
# same prompt prefix, below; the counts also check that no block is freed twice or leaked).

# %%
class PagedCache:  # NEW: replaces chapter 3's SlotCache
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, device, dtype,
                 num_rows: int, max_blocks: int):
        self.kv_cache = zeros_kv_cache(config, num_blocks * block_size, device, dtype)  # each layer's (keys, values)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks = list(range(num_blocks - 1, -1, -1))
        self.ref_count = [0] * num_blocks
        self.tables: dict[int, list[int]] = {}  # request index -> its block table
        # The same tables in one host tensor, a row per request index (num_rows of them), written as blocks
        # are appended: a step's decode layout is then a gather of rows, not thousands of Python ints
        # converted anew every step.
        self.host_tables = torch.zeros(num_rows, max_blocks, dtype=torch.long)
        self.table_rows = self.host_tables.numpy()  # the same memory; a write through NumPy costs less

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def allocate(self, seq: Sequence, n: int) -> bool:
        """Blocks for the sequence's next n tokens, all or none."""
        table = self.tables.setdefault(seq.index, [])
        need = self.blocks_for(seq.num_cached + n) - len(table)
        if need > len(self.free_blocks):
            if not table:
                del self.tables[seq.index]
            return False
        for _ in range(need):
            block = self.free_blocks.pop()
            assert self.ref_count[block] == 0
            self.ref_count[block] = 1
            table.append(block)
        if need > 0:
            self.table_rows[seq.index, len(table) - need:len(table)] = table[-need:]
        return True

    def take_prefix(self, seq: Sequence) -> int:
        """Blocks of an already computed prefix of the prompt: plain paging keeps none (PrefixCache does)."""
        return 0

    def free(self, seq: Sequence):
        for block in self.tables.pop(seq.index, []):
            self.ref_count[block] -= 1
            assert self.ref_count[block] >= 0, f"block {block} freed twice"
            if self.ref_count[block] == 0:
                self.free_blocks.append(block)

    def cache_rows(self, seq: Sequence, positions: range) -> list[int]:
        table, bs = self.tables[seq.index], self.block_size
        return [table[p // bs] * bs + p % bs for p in positions]

    def decode_layout(self, seqs: list[Sequence]) -> torch.Tensor:
        """Each decoding sequence's block table, as wide as the longest: (num_decode, width). Entries past a
        table's end (zeros, or a preempted earlier table's) are never read: attention stops at the length."""
        width = max((len(self.tables[s.index]) for s in seqs), default=0)
        return self.host_tables[[s.index for s in seqs], :width]

    def memory(self, running: dict[Sequence, None]) -> tuple[int, int]:
        used_blocks = self.num_blocks - len(self.free_blocks)
        return used_blocks * self.block_size, sum(s.num_cached for s in running)


# %% [markdown]
# ## Optional: sharing prompt prefixes (`share_prefixes=True`)
#
# Requests often begin alike (a system prompt, a few-shot preamble). A full block of prompt tokens holds
# the same keys and values in every request whose prompt is the same up to the end of that block. So each
# full prompt block gets a *name*: a hash of its tokens and of the name of the block before it (a hash
# chain, so equal names mean equal prefixes). A request about to be admitted (or re-admitted after a
# preemption) looks its prompt's names up and takes the blocks it finds, one more reference each, and its
# prefill starts after them. If it is not admitted after all (the pool has no room for the rest), it gives
# them back: a waiting request holds no blocks, so what it holds can never be what the others wait for.
# A block keeps its name after it is freed, until it is handed out for other tokens, so a later request
# can still revive it. A request never writes into a shared block: it computes from `num_cached` on, past
# the shared ones.

# %%
class PrefixCache(PagedCache):  # NEW (optional)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.block_named: dict[int, int] = {}  # name -> block
        self.name_of: dict[int, int] = {}  # block -> name
        self.names: dict[int, list[int]] = {}  # request -> the names of its full prompt blocks so far

    def take_prefix(self, seq: Sequence) -> int:
        """Take the blocks of `seq`'s longest already computed prompt prefix, one reference each, and
        advance its num_cached past them; return how many tokens that saves."""
        bs, prompt, names, table = self.block_size, seq.request.prompt_ids, [], []
        for k in range((len(prompt) - 1) // bs):  # at least one prompt token is left to compute (its logits)
            name = hash((names[-1] if names else None, tuple(prompt[k * bs:(k + 1) * bs])))
            block = self.block_named.get(name)
            if block is None:
                break
            if self.ref_count[block] == 0:  # freed but intact: take it back from the free list
                self.free_blocks.remove(block)
            self.ref_count[block] += 1
            names.append(name)
            table.append(block)
        self.tables[seq.index], self.names[seq.index] = table, names
        self.table_rows[seq.index, :len(table)] = table
        seq.num_cached = len(table) * bs
        return seq.num_cached

    def allocate(self, seq: Sequence, n: int) -> bool:
        before = len(self.tables.get(seq.index, []))
        if not super().allocate(seq, n):
            return False
        table, names, bs = self.tables[seq.index], self.names.setdefault(seq.index, []), self.block_size
        for block in table[before:]:  # handed out anew: whatever these blocks held before is gone
            if block in self.name_of:
                del self.block_named[self.name_of.pop(block)]
        # Name the full prompt blocks this step will have computed.
        computed = min(seq.num_cached + n, len(seq.request.prompt_ids))
        for k in range(len(names), computed // bs):
            names.append(hash((names[-1] if names else None, tuple(seq.request.prompt_ids[k * bs:(k + 1) * bs]))))
            if names[-1] not in self.block_named:
                self.block_named[names[-1]], self.name_of[table[k]] = table[k], names[-1]
        return True

    def free(self, seq: Sequence):
        super().free(seq)
        self.names.pop(seq.index, None)


# %% [markdown]
# ## Preemption
#
# Chapter 3's scheduler asks `grow(seq, n)` for each running sequence, oldest first. When the pool is
# dry, we free the *newest* running sequence (it has had the least work done) and try again; if the
# newest is the asking sequence itself, it yields. A preempted sequence keeps its generated tokens and
# restarts with `num_cached = 0`: its next chunks recompute them all, and the first chunk that reaches its
# newest token samples the next one, exactly as if nothing had happened.
#
# A waiting sequence, about to `start`, first takes what the cache already holds of its prompt (shared
# prefixes, above); refused, it gives it back and holds nothing while it waits. So when nothing runs,
# every block is free, and the queue's head, which the engine checked fits the pool, always starts.

# %%
class PagedScheduler(Scheduler):
    def __init__(self, *args):
        super().__init__(*args)
        self.preemptions = 0
        self.prefix_hit_tokens = 0  # prefill tokens not computed because their blocks were found

    def grow(self, seq: Sequence, n: int) -> bool:  # NEW: make room by preempting
        if seq not in self.running:  # preempted earlier in this step, to make room for an older one
            return False
        while not self.cache.allocate(seq, n):
            victim = next(reversed(self.running))  # the newest
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def start(self, seq: Sequence, budget: int) -> int:  # NEW: a cached prefix first, nothing held while waiting
        found = self.cache.take_prefix(seq)
        n = super().start(seq, budget)
        if n:
            self.prefix_hit_tokens += found
        else:
            self.cache.free(seq)
            seq.num_cached = 0
        return n

    def preempt(self, seq: Sequence):
        del self.running[seq]
        self.cache.free(seq)
        seq.num_cached = 0
        self.waiting.appendleft(seq)
        self.preemptions += 1


# %% [markdown]
# ## Attention that reads the blocks in place
#
# Writing is chapter 3's code: a block pool viewed flat is just another cache with a token -> row
# mapping. Reading for decode is the new part. The reference gathers each sequence's blocks into a
# dense tensor and calls SDPA: correct, and on a GPU it copies the whole KV cache every layer before
# reading it once more (`python -m tools.bench attention` measures how far below the copy bandwidth that stays).
#
# On the GPU a Triton kernel reads blocks where they lie (`minigpt/paged_kernel.py`: read it beside this
# section). One program per (sequence, KV head, split): it loads the `G` query heads that share the KV
# head, then walks the sequence's block table `BLOCK_N` tokens at a time, loading each token's key row from
# `block * block_size + offset`, and keeps a running (online) softmax. Long contexts are cut into `splits`
# parts run in parallel, and merged after. Its contract is the reference's, below, which it is tested against.

# %%
def paged_decode_reference(q, k_cache, v_cache, tables, seq_lens, block_size: int):
    """q: (B, H, D); caches: (blocks * block_size, Hkv, D), block i its rows i*block_size ..;
    tables: (B, max_blocks); seq_lens: (B,)."""
    B, H, D = q.shape
    Hkv = k_cache.shape[1]
    S = tables.shape[1] * block_size
    k = k_cache.view(-1, block_size, Hkv, D)[tables].view(B, S, Hkv, D).transpose(1, 2)  # gather: (B, Hkv, S, D)
    v = v_cache.view(-1, block_size, Hkv, D)[tables].view(B, S, Hkv, D).transpose(1, 2)
    mask = torch.arange(S, device=q.device)[None, :] < seq_lens[:, None]  # (B, S)
    out = F.scaled_dot_product_attention(q.view(B, Hkv, H // Hkv, D), k, v, attn_mask=mask[:, None, None, :])
    return out.reshape(B, H, D)


class PagedAttention(PackedAttention):
    """Chapter 3's attention object over the block pool; only decode reads differently."""

    def __init__(self, cache: PagedCache, reference: bool):
        super().__init__(cache, reference)
        use_triton = triton is not None and cache.kv_cache[0][0].is_cuda and not reference
        self.kernel = paged_decode_triton if use_triton else paged_decode_reference

    def decode(self, q, k_cache, v_cache):  # NEW: read K, V from the blocks
        b = self.batch
        return self.kernel(q, k_cache, v_cache, b.decode_layout, b.decode_lens, self.cache.block_size)


# %% [markdown]
# ## The engine: chapter 3's, with a pool and a preempting scheduler
#
# By default the pool takes 90% of the device memory left free after the weights (on the CPU: as much
# as all the requests could ever need), capped at what the workload can use. A request whose maximum
# length could never fit the pool fails alone, with a message saying what to change; the others run.

# %%
class PagedEngine(ContinuousEngine):
    name = "ch04_paged"

    def __init__(self, model, block_size: int = 16, num_blocks: int | None = None,
                 memory_fraction: float = 0.9, share_prefixes: bool = False, **options):
        super().__init__(model, **options)
        self.block_size = check_int(self.name, "block_size", block_size, maximum=self.config.max_position_embeddings)
        self.num_blocks = check_int(self.name, "num_blocks", num_blocks, optional=True)
        self.memory_fraction = check_number(self.name, "memory_fraction", memory_fraction, 0.0, 1.0)
        self.share_prefixes = check_bool(self.name, "share_prefixes", share_prefixes)

    def make_cache(self, runnable: dict[int, Request]) -> PagedCache:  # NEW
        cache = PrefixCache if self.share_prefixes else PagedCache
        return cache(self.config, self.pool_blocks(list(runnable.values())), self.block_size, self.device,
                     self.model.dtype, max(runnable) + 1, max(map(self.most_blocks, runnable.values())))

    def most_blocks(self, request: Request) -> int:
        """The blocks a request holds at its longest: its prompt and every token it may generate."""
        return math.ceil(max_total_len(request, self.config) / self.block_size)

    def pool_blocks(self, requests: list[Request]) -> int:
        return self.num_blocks or min(sum(map(self.most_blocks, requests)), self.blocks_that_fit())

    def blocks_that_fit(self) -> int:
        if self.device.type != "cuda":
            return 1 << 62
        free, _ = torch.cuda.mem_get_info(self.device)
        block_bytes = self.config.kv_bytes_per_token // 2 * self.model.dtype.itemsize * self.block_size
        return int(free * self.memory_fraction) // block_bytes

    def make_scheduler(self):  # NEW
        return PagedScheduler(self.cache, self.max_batch_tokens, self.max_seqs)

    def make_attention(self):  # NEW
        if triton is not None and self.device.type == "cuda" and not self.reference:
            with stage(f"compiling the paged kernel's {len(SPLITS)} variants", self.progress):
                compile_decode_kernel(*self.cache.kv_cache[0], self.config.num_attention_heads, self.block_size)
        return PagedAttention(self.cache, self.reference)

    def admit(self, seq: Sequence):  # NEW: a request that can never fit fails alone
        need = self.cache.blocks_for(seq.max_len)
        if need > self.cache.num_blocks:
            fail(seq.completion, f"request {seq.index}: up to {seq.max_len} tokens need {need} blocks of "
                                 f"{self.block_size}, but the pool has {self.cache.num_blocks}; raise num_blocks or "
                                 f"lower max_new_tokens")
            return
        super().admit(seq)

    def summary(self) -> dict:
        return {**super().summary(), "preemptions": self.scheduler.preemptions, "num_blocks": self.cache.num_blocks,
                "block_size": self.block_size, "prefix_hit_tokens": self.scheduler.prefix_hit_tokens}


def generate(model, requests: list[Request], **options) -> Completions:
    """Chapter 4's engine. Options: block_size, num_blocks, memory_fraction, share_prefixes, and chapter 3's."""
    return make_engine(PagedEngine, model, options).generate(requests)


# %% [markdown]
# ## The check: the same tokens, even when the pool is too small
#
# With a pool of a few blocks, requests queue, get preempted mid-decode and are recomputed; every
# greedy token still equals chapter 1's.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt import from_config, get_workload

    from chapters import ch01_naive
    from minigpt.reference import assert_same_tokens

    demo_model = from_config("tiny")
    demo = get_workload("W1-small").requests(demo_model.config.vocab_size, 8)
    print(assert_same_tokens(generate, ch01_naive.generate, demo_model, demo, num_blocks=12, max_batch_tokens=64),
          "tokens equal chapter 1's, through", generate(demo_model, demo, num_blocks=12).stats["preemptions"],
          "preemptions")

# %% [markdown]
# ## The measurement
#
# `python -m chapters.ch04_paged --compare` runs chapters 1-4 on the same requests. Compare the KV
# utilisation line with chapter 3's: near 100% now (only each request's last, partly filled block is
# slack; `figures/kv_memory_w1.png` draws both over W1). On a GPU the decode attention is the Triton
# kernel; `python -m tools.bench attention` measures its bandwidth:
# at W1's decode shape (256 sequences of 1024 tokens) 4.08 TB/s, 96% of the H200's copy ceiling, where
# gathering the blocks and calling SDPA reaches 26% (`figures/h200_attention.json`). And in the same KV
# memory, more requests run at once: W1's first 64 requests in room for 8 of the longest ran 7.4 at a
# time in chapter 3's slots and 14.0 in blocks, in half the steps (`python -m tools.bench memory`). Under
# load that moves the knee wherever requests wait for memory. On the H200 the pool has room for every
# request the sweep keeps running at once, so there the step decides: with 1,024 requests arriving, chapter 4
# keeps TTFT p90 at 42 ms at 8 a second; at 16 they bring about 8,800 tokens a second, more than the 5,400 it
# serves, so the queue grows and TTFT p90 reaches 23 s (`figures/h200_latency.png`). What is left of chapter
# 4's step is mostly the CPU launching the eager model's kernels one by one, which the next chapter hides.
#
# Where memory is the limit, the knee moves. The second cell gives both chapters the same KV memory: 4
# slots, each as long as W1-small's longest request, or as many tokens in 8-token blocks. Requests arrive
# over time: blocks run more of them at once, so fewer wait, and the time to first token stays under the
# dashed line (the CPU sweep's SLO: TTFT p90 250 ms, TPOT p90 5 ms) up to a higher rate. The price is in
# the other panel: a step that carries more requests takes longer, so each waits longer between tokens.
# (Four slots also keep chapter 3's steps short: in the README's CPU sweep, every request at once, its
# TPOT misses the same SLO.)

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt.metrics import show_committed

    show_committed("h200_w1.json", "W1 on one H200: chapters 3 and 4, the eager model (committed data)",
                   ["ch03_continuous", "ch04_paged"])
    from minigpt import plots

    traces = {"ch03 slots": ch03_continuous.generate(demo_model, demo, max_batch_tokens=64).stats["trace"],
              "ch04 blocks": generate(demo_model, demo, num_blocks=12, max_batch_tokens=64).stats["trace"]}
    plots.kv_memory(traces, demo_model.config.kv_bytes_per_token, None, "this run: KV memory reserved and used")

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt.metrics import latency_summary

    workload, rows = get_workload("W1-small"), []
    slot_len = max(max_total_len(r, demo_model.config) for r in workload.requests(demo_model.config.vocab_size))
    for rate in (40, 80, 160, 320):  # requests a second
        for name, run, options in (("ch03 slots", ch03_continuous.generate, dict(max_seqs=4)),
                                   ("ch04 blocks", generate, dict(num_blocks=4 * slot_len // 8, block_size=8))):
            out = run(demo_model, workload.requests(demo_model.config.vocab_size, rate=rate), **options)
            rows.append({"chapter": name, "rate": rate, **latency_summary(out)})
    plots.latency_vs_rate(rows, {"ttft_p90_s": 0.25, "tpot_p90_s": 0.005}, {}, None,
                          "this run: the same KV memory, requests arriving over time")

# %% [markdown]
# ## Exercises
#
# 1. Run with `--num-blocks 40`: how many preemptions, and what do they cost in throughput?
# 2. Try `--block-size 1` and `--block-size 256`. What does each cost: table size, slack, kernel speed?
# 3. Give W1-small's requests a shared 200-token system prompt and run with `share_prefixes=True`. How many
#    prefill tokens are saved (`prefix_hit_tokens`), and what happens to TTFT? Why must at least one
#    prompt token always be computed, even when the whole prompt is cached?
#
# Answers: `solutions/ch04_paged.py`.
#
# ## What is left on the table
#
# Every step still runs in lockstep: the CPU schedules and prepares, then waits while the GPU computes,
# then the GPU waits while the CPU reads the tokens back and updates. On a GPU those waits are idle time
# on the most expensive part of the machine. Chapter 5 overlaps them.

# %%
OPTIONS = {**ch03_continuous.OPTIONS,  # NEW: the pool
           "block_size": (int, 16, "tokens per KV block"),
           "num_blocks": (int, None, "KV blocks in the pool (default: from free memory)"),
           "share_prefixes": (bool, False, "reuse the blocks of identical prompt prefixes")}


def main(argv=None):
    from minigpt.cli import run_chapter

    run_chapter("ch04_paged", argv, OPTIONS)


if __name__ == "__main__" and "get_ipython" not in globals():  # python -m chapters.<this chapter>
    main()
elif __name__ == "__main__":  # in a notebook: a small run beside the chapters before this one
    main(["--requests", "8", "--compare", "--no-progress"])
