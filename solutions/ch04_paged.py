# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 4: answers to the exercises
#
# Each answer is prose and a function, `exercise_N`, that computes the evidence on the CPU with the tiny
# model in float32 and returns it; `tests/test_exercises.py` asserts what the prose claims. The kernel's
# speed in exercise 2 needs a GPU: `exercise_2_gpu` times it there.

# %%
from __future__ import annotations

import dataclasses
import random
import statistics
import time

import torch

import minigpt
from chapters import ch04_paged
from minigpt import Request


def prefill_tokens(stats: dict) -> int:
    """Prompt (and recomputed) tokens a run put through the model: every token of every step but decode's."""
    return sum(s["tokens"] - s["decode"] for s in stats["trace"])


# %% [markdown]
# ## Exercise 1: a pool of 40 blocks
#
# *Run with `--num-blocks 40`: how many preemptions, and what do they cost in throughput?*
#
# W1-small's 32 requests need 199 blocks of 16 tokens at their longest; 40 blocks hold 640 tokens, about
# six requests at their longest. The run preempts 13 times and still gives chapter 1's tokens. A
# preempted request loses its blocks and later recomputes its prompt and every token it had generated:
# 777 tokens computed again, 27% more than the 2,908 the run needs. The larger cost on the CPU is the
# steps: with fewer requests running at once (6.3 on average, against 17 with a roomy pool) the run takes
# 233 steps instead of 86, 2.7 times as many, and a step of the tiny model is mostly fixed cost, whatever
# its rows. Throughput falls by a quarter to a half (2,600 to 1,400 output tokens/s in one run here). The
# smaller the pool, the worse: with 20 blocks, 22 preemptions and 431 steps.

# %%
def exercise_1(model=None, num_blocks: int = 40, num_requests: int = 32) -> dict:
    torch.set_num_threads(1)
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)
    runs = {}
    for blocks in (None, num_blocks):  # None: as many blocks as the requests can use
        ch04_paged.generate(model, requests[:2], num_blocks=blocks)  # warm-up
        start = time.perf_counter()
        out = ch04_paged.generate(model, requests, num_blocks=blocks)
        wall = time.perf_counter() - start
        s = out.stats
        runs[blocks] = {"tokens": [c.tokens for c in out], "preemptions": s["preemptions"], "steps": s["steps"],
                        "num_blocks": s["num_blocks"], "tokens_computed": sum(x["tokens"] for x in s["trace"]),
                        "mean_running": statistics.mean(x["running"] for x in s["trace"]),
                        "tokens_per_s": sum(len(c.tokens) for c in out) / wall}
    return {"roomy": runs[None], "small": runs[num_blocks]}


if __name__ == "__main__":
    print({name: {k: v for k, v in run.items() if k != "tokens"} for name, run in exercise_1().items()})

# %% [markdown]
# ## Exercise 2: block size 1 and block size 256
#
# *Try `--block-size 1` and `--block-size 256`. What does each cost: table size, slack, kernel speed?*
#
# On W1-small (requests of at most 158 tokens):
#
# | block size | blocks in the pool | widest block table | KV memory used of reserved |
# | ---: | ---: | ---: | ---: |
# | 1 | 2,940 | 158 | 100% |
# | 16 | 199 | 10 | 90% |
# | 256 | 32 | 1 | 28% |
#
# * **Block size 1** has no slack at all, but the tables are as long as the sequences: on W1 (contexts up
#   to 2,048) up to 2,048 entries a request, which the engine gathers and copies to the device every step
#   (256 requests x 2,048 x 8 bytes = 4 MB a step, against 256 KB at 16), and the scheduler takes a block
#   from the free list at every token of every request: more Python a step.
# * **Block size 256** has tiny tables, but a block is a slot again: a request of 20 tokens holds 256, and
#   on W1-small only 28% of the reserved memory holds keys, worse than chapter 3's slots (46%). Preemption
#   frees, and prefix sharing shares, only whole blocks, so both get coarser.
# * **The kernel** reads one table entry per token whatever the block size (`n // BLOCK_SIZE`), and each
#   token's key row of one head is 256 contiguous bytes (128 dims in bf16) wherever its block lies, so its
#   speed should barely move: at W1's decode shape the committed measurement gives 263 us at block size
#   16 and 262 us at 64 (`figures/h200_attention.json`). Block size 1 adds an 8-byte table entry per
#   512 bytes of keys and values, under 2%. `exercise_2_gpu` times sizes 1, 16 and 256 with the blocks
#   scattered at random over the pool, as they are after a long run.
#
# 16 tokens is the usual compromise: slack of half a block per request on average, short tables, and
# rows read in runs of 16 x the row's bytes.

# %%
def exercise_2(model=None, block_sizes=(1, 16, 256)) -> dict:
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size)
    result = {}
    for block_size in block_sizes:
        engine = ch04_paged.PagedEngine(model, block_size=block_size)
        out = engine.generate(requests)
        result[block_size] = {"num_blocks": engine.cache.num_blocks, "table_width": engine.cache.host_tables.shape[1],
                              "kv_utilisation": out.stats["kv_utilisation"], "tokens": [c.tokens for c in out]}
    return result


def exercise_2_gpu(block_sizes=(1, 16, 256), batch: int = 256, context: int = 1024) -> dict:
    """The Triton decode kernel at W1's decode shape (Qwen3-0.6B's heads, bf16), blocks scattered at random
    over the pool; microseconds a call, and the bandwidth it reads K and V at."""
    import triton

    config = minigpt.get_config("qwen3-0.6b")
    H, Hkv, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    result = {}
    for block_size in block_sizes:
        per_seq = context // block_size
        rows = batch * per_seq * block_size
        k = torch.randn(rows, Hkv, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        q = torch.randn(batch, H, D, device="cuda", dtype=torch.bfloat16)
        tables = torch.randperm(batch * per_seq, device="cuda").view(batch, per_seq)  # a churned pool
        lens = torch.full((batch,), context, device="cuda")
        call = lambda: ch04_paged.paged_decode_triton(q, k, v, tables, lens, block_size)  # noqa: E731
        call()
        us = triton.testing.do_bench(call) * 1e3
        result[block_size] = {"us": us, "TB_per_s": 2 * k.numel() * 2 / (us * 1e-6) / 1e12}
    return result


if __name__ == "__main__":
    print({b: {k: v for k, v in r.items() if k != "tokens"} for b, r in exercise_2().items()})
    if torch.cuda.is_available():
        print(exercise_2_gpu())

# %% [markdown]
# ## Exercise 3: a shared 200-token system prompt
#
# *Give W1-small's requests a shared 200-token system prompt and run with `share_prefixes=True`. How many
# prefill tokens are saved (`prefix_hit_tokens`), and what happens to TTFT? Why must at least one prompt
# token always be computed, even when the whole prompt is cached?*
#
# 5,952 prefill tokens are saved: 31 requests x 192. Only full blocks are shared, and 200 tokens fill 12
# blocks of 16 (192 tokens); the 13th block holds the prefix's last 8 tokens beside the request's own, and
# is not the same in any two requests. The first request computes the prefix; the others find its blocks
# named in the same step and start after them. Prefill work falls from 7,882 to 1,930 tokens.
#
# What TTFT does depends on the attention that runs the prefill. Fewer prefill tokens means fewer steps
# before a request's first token: with the default budget of 2048 tokens a step, every request now gets
# its first token in the first step, where without sharing three quarters of them waited for the second,
# third or fourth. With attention that computes each chunk over its own context only
# (`attention="reference"` here; FlashAttention's varlen kernel on a GPU) the median TTFT falls with the
# steps, to less than half. With the CPU's default path it changes little, better in some runs and worse
# in others (0.9 to 1.6 s either way here): that path is one masked attention over the packed batch, which
# scores every query against every chunk's context. The shared first step packs 32 chunks of about 60 new
# tokens whose contexts add up to 8,000 rows: a 1,930 x 8,000 score matrix, about as many scores as the four
# unshared prefill steps together (2,048 x 2,048 each), and no request gets a token before all of it is
# done. The tokens saved are not the time saved: measure both.
#
# At least one token must be computed because the first new token is sampled from the logits of the
# prompt's last token, and the cache holds keys and values, not logits. `take_prefix` therefore takes at
# most `(len(prompt) - 1) // block_size` blocks: two requests with the same 32-token prompt share one block
# (16 tokens), not two, and the second computes its last 16 tokens; with a 33-token prompt, two blocks and
# one token computed.

# %%
def first_token_steps(out) -> list[int]:
    """The step at which each request got its first token (its time is the step's time in the trace)."""
    times = [s["t"] for s in out.stats["trace"]]
    return [times.index(c.token_times[0]) for c in out]


def exercise_3(model=None, num_requests: int = 32, prefix_len: int = 200) -> dict:
    torch.set_num_threads(1)
    model = model or minigpt.from_config("tiny")
    rng = random.Random(1)
    system = [rng.randrange(model.config.vocab_size) for _ in range(prefix_len)]
    requests = [dataclasses.replace(r, prompt_ids=system + r.prompt_ids)
                for r in minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)]
    result = {}
    for attention in ("batched", "reference"):
        for share in (False, True):
            out = ch04_paged.generate(model, requests, share_prefixes=share, attention=attention)
            result[(attention, share)] = {
                "tokens": [c.tokens for c in out], "prefix_hit_tokens": out.stats["prefix_hit_tokens"],
                "prefill_tokens": prefill_tokens(out.stats), "first_token_steps": first_token_steps(out),
                "ttft_p50_s": statistics.median(c.ttft for c in out)}
    twins = {}
    for n in (32, 33):  # the same prompt twice: how much of it the second request finds
        prompt = system[:n]
        twins[n] = ch04_paged.generate(model, [Request(prompt, 4), Request(prompt, 4)],
                                       share_prefixes=True).stats["prefix_hit_tokens"]
    result["twins_hit_tokens"] = twins
    return result


if __name__ == "__main__":
    print({k: {x: y for x, y in v.items() if x != "tokens"} if isinstance(v, dict) and "tokens" in v else v
           for k, v in exercise_3().items()})
