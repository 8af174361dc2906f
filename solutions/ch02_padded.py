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
# # Chapter 2: answers to the exercises
#
# Each answer is prose and a function, `exercise_N`, that computes the evidence on the CPU with the tiny
# model in float32 and returns it; `tests/test_exercises.py` asserts what the prose claims. Times are from
# a 2-core laptop-class CPU with one PyTorch thread.

# %%
from __future__ import annotations

import time
from unittest import mock

import torch

import minigpt
from chapters import ch02_padded, ch03_continuous
from minigpt import Request


def timed_run(model, requests, **options) -> tuple[float, dict]:
    """Output tokens per second of one chapter 2 run, after a short warm-up run; and the run's stats."""
    ch02_padded.generate(model, requests[:2], **options)
    start = time.perf_counter()
    out = ch02_padded.generate(model, requests, **options)
    return sum(len(c.tokens) for c in out) / (time.perf_counter() - start), out.stats


# %% [markdown]
# ## Exercise 1: sort by prompt length
#
# *Sort the requests by prompt length before batching. What happens to prefill waste? To decode waste?*
#
# In batches of 8 on W1-small, 47% of the prefill columns are padding; sorted by prompt length, 17%. A
# batch's prompts are then neighbours in length, so each pads only to a similar one. Decode waste barely
# moves (43% -> 41%): it comes from output lengths, which W1-small draws independently of prompt lengths,
# and sorting by prompts leaves every batch with the same spread of outputs. Sorting by output length does
# the opposite: decode waste 17%, prefill waste back to 47%. A server knows the prompt lengths but not the
# output lengths, which is why padding batches stay wasteful however they are formed.

# %%
def exercise_1(model=None, batch_size: int = 8) -> dict:
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size)
    orders = {"arrival": requests, "by_prompt_length": sorted(requests, key=lambda r: len(r.prompt_ids)),
              "by_output_length": sorted(requests, key=lambda r: r.max_new_tokens)}
    waste = {}
    for name, order in orders.items():
        stats = ch02_padded.generate(model, order, batch_size=batch_size).stats
        waste[name] = {"prefill": stats["prefill_waste"], "decode": stats["decode_waste"]}
    return waste


if __name__ == "__main__":
    print(exercise_1())

# %% [markdown]
# ## Exercise 2: batch size from 1 to 64
#
# *Vary `--batch-size` from 1 to 64 on W1-small. Where does throughput stop growing on the CPU, and why?*
#
# Throughput grows about 3x from batch 1 to batch 16 (from about 500-700 output tokens/s to 1,500-2,100 on
# the machine these were measured on, which other work shared) and then levels off. Batches of 32 and 64
# are the same run, one batch of W1-small's 32 requests: the difference between their two numbers is the
# machine's noise, often 20%. Two things stop the growth:
#
# * **The step stops being free.** A decode step of the tiny model costs about 1.3 ms for one row, almost
#   all of it fixed (Python, and about 130 small operators). More rows share that cost until their
#   arithmetic outgrows it: about 2 ms for 8 rows, 2.7 ms for 16, 4 ms for 32, 6.5-11 ms for 64. The rows per
#   second still grow, but ever more slowly. (A GPU has far more arithmetic to spare: there the step stays
#   flat to hundreds of rows.)
# * **Padding grows with the batch.** The wider the batch, the wider the spread of prompt and output
#   lengths in it: prefill waste goes from 0 at batch 1 to 27% at 2, 47% at 8 and 52% at 32, decode waste
#   to 48%. At 32, half the rows computed are padding or finished requests, and every step waits for the
#   longest of 32 outputs.

# %%
def decode_step_s(model, rows: int, context: int = 100) -> float:
    """The time of one padded decode step with `rows` rows of `context` tokens."""
    cache = ch02_padded.PaddedKVCache(model.config, [0] * rows, context + 8, model.device, model.dtype)
    ids = torch.randint(0, model.config.vocab_size, (rows, context), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(context).expand(rows, context)
    ch02_padded.forward(model, cache, ids, positions)
    step = lambda: ch02_padded.forward(model, cache, ids[:, -1:], positions[:, -1:] + 1)  # noqa: E731
    times = []
    for _ in range(5):  # (each step writes the same column again: the cache never grows)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        cache.start -= 1
    return min(times)


def exercise_2(model=None, batch_sizes=(1, 2, 4, 8, 16, 32, 64), num_requests: int = 32,
               rows=(1, 8, 16, 32, 64)) -> dict:
    torch.set_num_threads(1)
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)
    runs = {b: timed_run(model, requests, batch_size=b) for b in batch_sizes}
    return {"tokens_per_s": {b: speed for b, (speed, _) in runs.items()},
            "prefill_waste": {b: stats["prefill_waste"] for b, (_, stats) in runs.items()},
            "decode_waste": {b: stats["decode_waste"] for b, (_, stats) in runs.items()},
            "decode_step_s": {r: decode_step_s(model, r) for r in rows}}


if __name__ == "__main__":
    print(exercise_2())

# %% [markdown]
# ## Exercise 3: one long request in a batch
#
# *Give one request of a batch 10x the output of the others and watch decode waste. What would you need
# to let a new request take a finished row's place?*
#
# Eight requests, seven of 10 new tokens and one of 100: the batch runs 99 decode steps of 8 rows, 792
# row-steps. The seven short ones finish after 9, and sit idle for the other 90: 630 idle rows, 80% of the
# decode work. With eight requests of 10 tokens, 0%.
#
# To put a new request in a finished row, that row must hold a sequence at another position than its
# neighbours: the new request starts at position 0 with a prompt to prefill, while the others decode one
# token at positions near 100. The rectangle cannot say that: its columns are positions shared by all rows
# (one `cache.start`, one mask rule, left padding fixed at prefill). You need, per sequence, its own length
# and its own place in the cache, attention told where each sequence starts and ends, and steps that mix
# one request's prompt chunk with the others' decode tokens. That is chapter 3. With eight cache slots
# (`max_seqs=8`), chapter 3 runs the same eight requests plus seven more short ones in 100 steps, each new
# one taking a finished one's slot; chapter 2 in batches of 8 needs 110 forward passes (100 for the first
# batch, 10 for the second, which waits for the first to end).

# %%
def exercise_3(model=None) -> dict:
    model = model or minigpt.from_config("tiny")
    prompts = minigpt.get_workload("W1-small").requests(model.config.vocab_size, 15)
    long_one = [Request(prompts[0].prompt_ids, max_new_tokens=100, ignore_eos=True)]
    short = [Request(r.prompt_ids, max_new_tokens=10, ignore_eos=True) for r in prompts[1:]]
    uneven = ch02_padded.generate(model, long_one + short[:7], batch_size=8).stats
    even = ch02_padded.generate(model, [Request(prompts[0].prompt_ids, 10, ignore_eos=True)] + short[:7],
                                batch_size=8).stats
    with mock.patch.object(ch02_padded, "forward", wraps=ch02_padded.forward) as forward:
        ch02_padded.generate(model, long_one + short, batch_size=8)
    continuous = ch03_continuous.generate(model, long_one + short, max_seqs=8).stats
    return {"decode_waste": uneven["decode_waste"], "idle_rows": uneven["decode_idle"],
            "row_steps": uneven["decode_slots"], "decode_waste_even": even["decode_waste"],
            "ch02_forwards_15_requests": forward.call_count, "ch03_steps_15_requests": continuous["steps"]}


if __name__ == "__main__":
    print(exercise_3())
