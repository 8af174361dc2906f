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
# # Chapter 3: answers to the exercises
#
# Each answer is prose and a function, `exercise_N`, that computes the evidence on the CPU with the tiny
# model in float32 and returns it; `tests/test_exercises.py` asserts what the prose claims. Exercise 3's
# timing needs a GPU: its function `exercise_3_gpu` runs there, and its CPU part counts what the GPU would
# launch.

# %%
from __future__ import annotations

import dataclasses
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F

import minigpt
from chapters import ch02_padded, ch03_continuous

# %% [markdown]
# ## Exercise 1: a budget of 16 tokens a step
#
# *Set `--max-batch-tokens 16` and watch the steps count grow: every prompt is now prefilled in chunks.
# Do the tokens change?*
#
# They do not. On W1-small's 32 requests, as the command runs them, the default budget (2048) prefills every
# prompt in the first step (1,482 tokens) and then decodes: 86 steps. With 16 tokens a step, a prompt of 70
# tokens takes five steps or more, as the decode tokens of running requests eat into the budget first
# (running requests go first): 238 steps, none of more than 16 tokens. Each chunk attends over the keys and values its earlier chunks left in
# the cache, so the last chunk's logits equal those of a whole-prompt prefill, and the greedy tokens are
# chapter 1's.

# %%
def exercise_1(model=None, num_requests: int = 32) -> dict:
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)
    roomy = ch03_continuous.generate(model, requests)
    tight = ch03_continuous.generate(model, requests, max_batch_tokens=16)
    return {"same_tokens": [c.tokens for c in tight] == [c.tokens for c in roomy],
            "steps": {2048: roomy.stats["steps"], 16: tight.stats["steps"]},
            "largest_step": {2048: max(s["tokens"] for s in roomy.stats["trace"]),
                             16: max(s["tokens"] for s in tight.stats["trace"])}}


if __name__ == "__main__":
    print(exercise_1())

# %% [markdown]
# ## Exercise 2: arrivals 10 ms apart
#
# *Give W1-small's requests arrival times 10 ms apart. How does TTFT compare with chapter 2's?*
#
# Chapter 3's median time to first token is about 10 ms; chapter 2's 200-400 ms, twenty times more. In
# chapter 3 a request joins at the first step after it arrives: its TTFT is what is left of the step in
# flight plus its own prefill step, a few milliseconds each. A static batch of 16 starts only once its
# last member has arrived (150 ms after its first), and the second batch starts only when the first has
# finished its longest output (up to 96 tokens): its requests wait hundreds of milliseconds though the
# engine could have served them.

# %%
def exercise_2(model=None, gap_s: float = 0.010) -> dict:
    model = model or minigpt.from_config("tiny")
    requests = [dataclasses.replace(r, arrival_time=gap_s * i)
                for i, r in enumerate(minigpt.get_workload("W1-small").requests(model.config.vocab_size))]
    ttft = {}
    for name, generate in (("ch02_padded", ch02_padded.generate), ("ch03_continuous", ch03_continuous.generate)):
        out = generate(model, requests)
        ttft[name] = {"p50_s": statistics.median(c.ttft for c in out), "max_s": max(c.ttft for c in out)}
    return ttft


if __name__ == "__main__":
    print(exercise_2())

# %% [markdown]
# ## Exercise 3: `--attention reference`, a kernel per sequence per layer
#
# *Run with `--attention reference`. On the CPU, count the attention calls of one decode step; on a GPU,
# how much slower is a kernel per sequence per layer?*
#
# The reference path calls `causal_attention` once per chunk and layer, decode tokens included: a decode
# step of 32 sequences through Qwen3-0.6B's 28 layers makes 896 attention calls, each a handful of kernels
# (two `arange`, an add, a comparison for the mask, the attention itself), and each layer first gathers
# every sequence's whole context out of its slot into a packed copy. The batched path makes one attention
# call a layer over the slots as they lie, 28 in all. On the CPU, `exercise_3` counts the attention calls
# of a decode step of 16 sequences of the tiny model: 64 against 4 (16 sequences x 4 layers against 4
# layers). The tokens are the same; the run takes longer, 1.2-2x here, where the per-call Python is a
# small part of a CPU step.
#
# On a GPU each of those calls is kernel launches of several microseconds each from Python, and each
# kernel has one sequence's work, far too little to fill the GPU: expect the reference decode step to be
# the time of some 4,000-5,000 launches, tens of milliseconds at 32 sequences, growing with every sequence
# added, where the batched step stays near its GPU time. `exercise_3_gpu` measures both on W1's first 32
# requests (64 new tokens each) with the Qwen3-0.6B shape in bf16: the decode step's median time and the
# throughput.

# %%
def attention_calls_per_decode_step(model, requests, attention: str) -> int:
    """How many times the model calls scaled_dot_product_attention in a step where every request decodes."""
    engine = ch03_continuous.ContinuousEngine(model, attention=attention)
    counts = []
    forward = engine.forward

    def counted(batch):
        with mock.patch.object(F, "scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as sdpa:
            logits = forward(batch)
        if batch.num_decode == len(batch.chunks) == len(requests):  # every sequence decodes
            counts.append(sdpa.call_count)
        return logits

    engine.forward = counted
    engine.generate(requests)
    return counts[0]


def exercise_3(model=None, num_requests: int = 16) -> dict:
    torch.set_num_threads(1)
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)
    result = {"attention_calls": {}, "wall_s": {}, "tokens": {}}
    for attention in ("batched", "reference"):
        result["attention_calls"][attention] = attention_calls_per_decode_step(model, requests, attention)
        start = time.perf_counter()
        result["tokens"][attention] = [c.tokens for c in ch03_continuous.generate(model, requests, attention=attention)]
        result["wall_s"][attention] = time.perf_counter() - start
    return result


def exercise_3_gpu(num_requests: int = 32, max_new_tokens: int = 64) -> dict:
    """Both attention paths on a GPU: the Qwen3-0.6B shape in bf16, W1's first requests, capped outputs."""
    model = minigpt.from_config("qwen3-0.6b", device="cuda", dtype=torch.bfloat16)
    requests = [dataclasses.replace(r, max_new_tokens=max_new_tokens)
                for r in minigpt.get_workload("W1").requests(model.config.vocab_size, num_requests)]
    result = {}
    for attention in ("batched", "reference"):
        ch03_continuous.generate(model, requests[:4], attention=attention)  # warm-up: first-use costs
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = ch03_continuous.generate(model, requests, attention=attention)
        wall = time.perf_counter() - start
        trace = out.stats["trace"]
        steps = [b["t"] - a["t"] for a, b in zip(trace, trace[1:]) if b["tokens"] == b["decode"] == num_requests]
        result[attention] = {"tokens_per_s": sum(len(c.tokens) for c in out) / wall,
                             "decode_step_ms": statistics.median(steps) * 1e3}
    return result


if __name__ == "__main__":
    print(exercise_3())
    if torch.cuda.is_available():
        print(exercise_3_gpu())
