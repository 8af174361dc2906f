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
# # Chapter 1: answers to the exercises
#
# Each answer is prose and a function, `exercise_N`, that computes the evidence on the CPU with the tiny
# model in float32 and returns it; `tests/test_exercises.py` asserts what the prose claims. Times are from
# a 2-core laptop-class CPU with one PyTorch thread: yours will differ, their ratios much less.

# %%
from __future__ import annotations

import time

import torch

import minigpt
from chapters import ch01_naive, ch03_continuous
from minigpt import Request


def best_time(fn, repeat: int = 3) -> float:
    """The fastest of `repeat` calls, in seconds: the least disturbed by whatever else the machine does."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# %% [markdown]
# ## Exercise 1: remove the KV cache
#
# *Make `decode_one_token` re-run the whole sequence each step. How does the time per token grow with
# the length?*
#
# Without a cache, every step is a prefill of the whole sequence so far into a fresh cache: step `i` of a
# request with a prompt of `P` tokens computes `P + i` tokens to get one. The tokens do not change (the
# keys and values are recomputed, not different), but generating `N` tokens computes
# `N*P + N*(N-1)/2` tokens instead of `P + N - 1`: for a 19-token prompt and 15 new tokens, 390 instead
# of 33.
#
# A step costs at least in proportion to its length: the matmuls read every weight once per token.
# Attention adds a term in the square of the length (every token scores every earlier one), and for the
# tiny model (hidden size 128) that term takes over past a few hundred tokens: one step costs about 3-4 ms
# at 50 tokens, 9-10 ms at 200, 25-35 ms at 400 and 120 ms at 800, where a cached decode step costs
# 1.5-2 ms at any of these lengths. So the time per token grows linearly, then faster, and the total at least
# quadratically. For Qwen3-0.6B (hidden 1024, 28 layers) the matmuls dominate up to several thousand
# tokens: there it is linear per token, quadratic in total.

# %%
def step_without_cache(model, tokens: list[int]) -> torch.Tensor:
    """One step with no cache kept: the whole sequence, prefilled into a fresh cache. Logits (1, vocab)."""
    cache = ch01_naive.ContiguousKVCache(model.config, len(tokens), model.device, model.dtype)
    return ch01_naive.prefill(model, cache, tokens)


def generate_without_cache(model, request: Request) -> tuple[list[int], int]:
    """Greedy tokens with no cache, and how many tokens went through the model to get them."""
    tokens, computed = list(request.prompt_ids), 0
    for _ in range(request.max_new_tokens):
        tokens.append(int(step_without_cache(model, tokens).argmax()))
        computed += len(tokens) - 1
    return tokens[len(request.prompt_ids):], computed


def exercise_1(model=None, lengths=(50, 200, 400)) -> dict:
    torch.set_num_threads(1)
    model = model or minigpt.from_config("tiny")
    request = Request(list(range(1, 20)), max_new_tokens=15)
    tokens, computed = generate_without_cache(model, request)
    sequence = [i % model.config.vocab_size for i in range(max(lengths) + 1)]
    cache = ch01_naive.ContiguousKVCache(model.config, len(sequence) + 8, model.device, model.dtype)
    ch01_naive.prefill(model, cache, sequence)
    return {
        "same_tokens": tokens == ch01_naive.generate(model, [request])[0].tokens,
        "tokens_computed": computed,  # 15 * 19 + 15 * 14 / 2 = 390
        "tokens_computed_with_cache": len(request.prompt_ids) + request.max_new_tokens - 1,  # 33
        "step_s": {n: best_time(lambda n=n: step_without_cache(model, sequence[:n])) for n in lengths},
        "cached_step_s": best_time(lambda: ch01_naive.decode_one_token(model, cache, 7)),
    }


if __name__ == "__main__":
    print(exercise_1())

# %% [markdown]
# ## Exercise 2: prefill and decode, timed apart
#
# *Time prefill and decode apart on W1-small. Which dominates, and why does decode cost nearly the same
# per token whether the context is 10 or 1000 tokens on a GPU?*
#
# Decode dominates. On W1-small (32 requests, 1,482 prompt tokens, 1,426 decode steps) the 32 prefills
# take about 0.1 s and the decode steps about 2.3 s: a prefill of 46 tokens costs about as much as two
# decode steps, because a forward pass of the tiny model is mostly fixed cost (Python, and a few hundred
# small operators, the same for 1 token or 100). So per token, prefill is some 20 times cheaper, and the
# run is as long as its number of forward passes, one per generated token.
#
# On the CPU, a decode step at 1000 tokens of context costs little more than one at 10 (1.6 ms against 1.2 ms
# here), for the same reason: the context's attention adds a little to a step of fixed costs. On a GPU the
# question is bytes: a decode step of Qwen3-0.6B reads all its weights, 596M parameters, 1.19 GB in bf16, to
# produce one token. The context adds its keys and values, 114,688 bytes a token (28 layers x 8 KV heads x 128
# dims x K and V x 2 bytes): 1.1 MB at 10 tokens, 115 MB at 1000, a tenth of the weights. The step at 1000
# tokens reads about 10% more than the step at 10, so it costs about 10% more at most. (In chapter 1 on the
# H200, even that is hidden: the step is ~800 operators launched one by one from Python, ~24 ms, where reading
# 1.2 GB takes 0.3 ms.)

# %%
def exercise_2(model=None, num_requests: int = 32) -> dict:
    torch.set_num_threads(1)
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)
    prefill_s = decode_s = 0.0
    decode_steps = 0
    for r in requests:
        cache = ch01_naive.ContiguousKVCache(model.config, len(r.prompt_ids) + r.max_new_tokens, model.device,
                                             model.dtype)
        start = time.perf_counter()
        token = int(ch01_naive.prefill(model, cache, r.prompt_ids).argmax())
        prefill_s += time.perf_counter() - start
        for _ in range(r.max_new_tokens - 1):
            start = time.perf_counter()
            token = int(ch01_naive.decode_one_token(model, cache, token).argmax())
            decode_s += time.perf_counter() - start
            decode_steps += 1
    # One decode step with 10 and with 1000 tokens of context.
    cache = ch01_naive.ContiguousKVCache(model.config, 1024, model.device, model.dtype)
    ch01_naive.prefill(model, cache, list(range(1000)))
    at_1000 = best_time(lambda: ch01_naive.decode_one_token(model, cache, 7), repeat=5)
    cache = ch01_naive.ContiguousKVCache(model.config, 1024, model.device, model.dtype)
    ch01_naive.prefill(model, cache, list(range(10)))
    at_10 = best_time(lambda: ch01_naive.decode_one_token(model, cache, 7), repeat=5)
    # The bytes a Qwen3-0.6B decode step reads in bf16: every weight, and the context's keys and values.
    qwen = minigpt.get_config("qwen3-0.6b")
    with torch.device("meta"):  # the shapes without the memory
        weights = sum(p.numel() for p in minigpt.Transformer(qwen).parameters()) * 2
    return {"prefill_s": prefill_s, "decode_s": decode_s, "prefills": len(requests), "decode_steps": decode_steps,
            "prompt_tokens": sum(len(r.prompt_ids) for r in requests),
            "cpu_decode_step_s": {10: at_10, 1000: at_1000},
            "qwen_weight_bytes": weights, "qwen_kv_bytes": {n: n * qwen.kv_bytes_per_token for n in (10, 1000)}}


if __name__ == "__main__":
    print(exercise_2())

# %% [markdown]
# ## Exercise 3: seeded sampling, alone and beside others
#
# *Set `temperature=0.8, seed=1` on a request: run it twice, alone and beside others. Same tokens?*
#
# Yes, every time. The `Sampler` gives each sampling request its own `torch.Generator`, seeded once with
# the request's seed, and draws from it exactly once per token the request generates. No other request
# touches that generator, so neither a second run nor other requests in the same call (chapter 1) or in
# the same batch (chapter 3) change what it draws. The logits do not change either: in float32 on the
# CPU, a request's logits in a ragged batch equal its logits alone, as chapter 3's check shows for greedy
# tokens. The seed does matter: `seed=2` draws other tokens, and `temperature=0` gives the greedy ones.

# %%
def exercise_3(model=None) -> dict:
    model = model or minigpt.from_config("tiny")
    prompt = [11, 22, 33, 44]
    sampled = Request(prompt, max_new_tokens=20, temperature=0.8, seed=1)
    others = minigpt.get_workload("W1-small").requests(model.config.vocab_size, 3)
    alone = [ch01_naive.generate(model, [sampled])[0].tokens for _ in range(2)]
    beside = ch01_naive.generate(model, [others[0], sampled, others[1]])[1].tokens
    batched = ch03_continuous.generate(model, [*others, sampled], max_batch_tokens=64)[-1].tokens
    other_seed = ch01_naive.generate(model, [Request(prompt, max_new_tokens=20, temperature=0.8, seed=2)])[0].tokens
    greedy = ch01_naive.generate(model, [Request(prompt, max_new_tokens=20)])[0].tokens
    return {"alone": alone, "beside_others": beside, "in_a_ch03_batch": batched, "seed_2": other_seed,
            "greedy": greedy}


if __name__ == "__main__":
    print(exercise_3())
