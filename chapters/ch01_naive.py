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
# # Chapter 1: one request at a time, with a KV cache
#
# ![W1 on one H200, chapter by chapter](../figures/ladder_w1.png)
#
# **What you will learn:** how a decoder-only model generates text token by token, why a
# *KV cache* turns each new token from a full re-run of the prompt into one small step, and what the
# reference every later chapter is checked against looks like.
#
# Generation has two phases:
#
# * **prefill**: the whole prompt goes through the model in one forward pass. Each layer stores the
#   keys and values of every prompt token in the cache, and the logits of the last token give the
#   first new token.
# * **decode**: one token per forward pass. The new token's query attends over every key in the
#   cache; its own key and value are appended for the next step.
#
# This chapter runs requests strictly one after another. It is correct and simple, and it leaves the
# GPU almost idle: a decode step of a 0.6B model reads 1.2 GB of weights to produce *one* token.
# Later chapters fix that; this one is the executable reference they are all compared with.

# %%
from __future__ import annotations

import time

import torch

from minigpt import (Clock, Completion, ModelConfig, Request, Sampler, finish_reason, max_total_len,
                     start_requests, token_progress, zeros_kv_cache)
from minigpt.attention import causal_attention

# %% [markdown]
# ## The cache: one contiguous tensor per request
#
# For one request we allocate keys and values for every position it can ever reach, in every layer:
# `(max_len, kv_heads, head_dim)` each. The cache tells the model where this step's tokens go
# (`cache_rows`: row `p` for position `p`); each layer writes its new `k`, `v` there and asks the cache
# for attention of the new queries over positions `0 .. start+T-1`.

# %%
class ContiguousKVCache:
    """The attention object of chapter 1: one request's keys and values, stored contiguously."""

    def __init__(self, config: ModelConfig, max_len: int, device, dtype):
        self.kv_cache = zeros_kv_cache(config, max_len, device, dtype)  # each layer's (keys, values)
        self.start = 0  # how many positions are already cached
        self.cache_rows = None  # this step's positions, set by forward()

    def __call__(self, layer: int, q, k_cache, v_cache):
        end = self.start + q.shape[0]  # the model wrote the new keys and values at start .. end-1
        return causal_attention(q, k_cache[:end], v_cache[:end], self.start)  # (T, H, D)


# %% [markdown]
# ## Prefill and decode
#
# Both are one forward pass; they differ only in how many tokens go in. We ask the model for the logits
# of the last token alone (`logits_at`): projecting every prompt token onto a vocabulary of 150k
# entries would be wasted work.

# %%
@torch.inference_mode()
def forward(model, cache: ContiguousKVCache, token_ids: list[int]) -> torch.Tensor:
    """Run `token_ids` (at the cache's next positions) through the model; logits of the last: (1, vocab)."""
    device = model.device
    ids = torch.tensor(token_ids, device=device)
    positions = torch.arange(cache.start, cache.start + len(token_ids), device=device)
    cache.cache_rows = positions  # position p's keys and values go to row p
    logits = model(ids, positions, cache, logits_at=torch.tensor([len(token_ids) - 1], device=device))
    cache.start += len(token_ids)
    return logits


def prefill(model, cache, prompt_ids: list[int]) -> torch.Tensor:
    return forward(model, cache, prompt_ids)


def decode_one_token(model, cache, token: int) -> torch.Tensor:
    return forward(model, cache, [token])


# %% [markdown]
# ## The engine
#
# Every chapter's engine has the same contract: `generate(requests) -> list[Completion]`, in request
# order. Chapter 1 serves requests in order of arrival, each to completion before the next starts.
# Stopping is the same in every chapter (`finish_reason`): an EOS token, `max_new_tokens`, or the
# model's context. So is bad input (`start_requests`): a request that cannot run (an empty prompt, a token
# outside the vocabulary, `max_new_tokens` below 1, a prompt that fills the context) fails alone, before
# any work, its completion saying `error` and what to change; the others run.

# %%
class NaiveEngine:
    def __init__(self, model, progress: bool = False):
        self.model, self.config, self.progress = model, model.config, progress

    def generate(self, requests: list[Request]) -> list[Completion]:
        completions, order = start_requests(requests, self.config)  # a request that cannot run fails alone
        clock = Clock(self.model.device)
        sampler = Sampler(requests, self.model.device)
        total = sum(requests[i].max_new_tokens for i in order)
        with token_progress(total, "ch01 naive", self.progress) as emit:
            for i in order:
                wait = requests[i].arrival_time - clock.now()
                if wait > 0:  # the request has not arrived yet
                    time.sleep(wait)
                self.generate_one(i, requests[i], completions[i], sampler, clock, emit)
        return completions

    def generate_one(self, i, request, completion, sampler, clock, emit):
        cache = ContiguousKVCache(self.config, max_total_len(request, self.config),
                                  self.model.device, self.model.dtype)
        logits = prefill(self.model, cache, request.prompt_ids)
        while True:
            token = int(sampler(logits, [i])[0])  # .item(): the CPU waits for the GPU here, every token
            completion.tokens.append(token)
            completion.token_times.append(clock.now())
            emit(i, token)
            completion.finish_reason = finish_reason(request, completion, self.config) or ""
            if completion.finish_reason:
                return
            logits = decode_one_token(self.model, cache, token)


def generate(model, requests: list[Request], **options) -> list[Completion]:
    """Chapter 1's engine: one request at a time. Options: progress (a bar, or a function (i, token))."""
    return NaiveEngine(model, **options).generate(requests)


# %% [markdown]
# ## The check: the same tokens as transformers
#
# The whole book rests on this cell. We copy our random weights into transformers' own model class
# and ask its `generate()` for greedy tokens. In float32 they must equal ours, token for token.

# %%
def check_against_transformers(model, requests: list[Request]) -> int:
    """Compare with transformers' greedy generate(); returns the number of tokens compared."""
    from minigpt.reference import hf_greedy, to_hf

    hf_model = to_hf(model)
    ours = generate(model, requests)
    for i, (r, c) in enumerate(zip(requests, ours)):
        theirs = hf_greedy(hf_model, r)
        assert c.tokens == theirs, f"request {i}: ours {c.tokens[:8]}... theirs {theirs[:8]}..."
    return sum(len(c.tokens) for c in ours)


if __name__ == "__main__" and "get_ipython" in globals():  # in a notebook: run the check here
    from minigpt import from_config

    demo_model = from_config("tiny")
    demo = [Request([1, 2, 3], max_new_tokens=20), Request(list(range(50)), max_new_tokens=5)]
    print(f"{check_against_transformers(demo_model, demo)} tokens equal transformers' generate()")

# %% [markdown]
# ## Reading with a real model
#
# Point `MODEL_DIR` at a local Hugging Face checkpoint folder (Llama, Qwen2 or Qwen3, with its tokenizer)
# and the engine speaks text: the prompt is tokenized, and each token is printed as it is produced.
# From the command line: `python -m chapters.ch01_naive --model DIR --prompt "The capital of France is"`.
# Nothing is downloaded; with `MODEL_DIR = None` this cell does nothing.

# %%
MODEL_DIR = None  # e.g. "/models/Qwen3-0.6B"

if __name__ == "__main__" and MODEL_DIR:
    from minigpt import load_pretrained, load_tokenizer, stream_text

    real_model, tokenizer = load_pretrained(MODEL_DIR), load_tokenizer(MODEL_DIR)
    prompt = "The capital of France is"
    print(prompt, end="")
    # progress= takes a function the engine calls with each token as soon as it is known
    generate(real_model, [Request(tokenizer(prompt)["input_ids"], max_new_tokens=30)], progress=stream_text(tokenizer))

# %% [markdown]
# ## The measurement
#
# `python -m chapters.ch01_naive` runs the tiny model on `W1-small` on the CPU in seconds;
# `python -m chapters.ch01_naive --device cuda --workload W1 --requests 1` measures a subset of W1 on a
# GPU (all of W1 would take about 45 minutes, one request at a time). The table has the columns every
# chapter prints:
#
# * **tokens/s**: output tokens over the wall time from the first request's submission to the last token;
# * **TTFT** (time to first token): from a request's arrival to its first output token, median over the
#   requests. Every request of these workloads arrives at t = 0, so here TTFT counts the wait for all the
#   requests ahead of it too: one at a time, the median request waits for half the run;
# * **TPOT** (time per output token): the mean gap between a request's tokens after its first, median over
#   the requests: what a reader of a streamed answer feels.
#
# On the H200 (the cell below prints the committed run), each token is a forward pass of about a
# thousand small kernels launched from Python, and the GPU mostly waits for the next launch.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt.metrics import show_committed

    show_committed("h200_w1.json", "W1 on one H200 (committed data)", ["ch01_naive"])

# %% [markdown]
# ## Exercises
#
# 1. Remove the KV cache: make `decode_one_token` re-run the whole sequence each step. How does the
#    time per token grow with the length? (Expect at least linear growth per token: at least quadratic in
#    total.)
# 2. Time prefill and decode apart on W1-small. Which dominates, and why does decode cost nearly the
#    same per token whether the context is 10 or 1000 tokens on a GPU?
# 3. Set `temperature=0.8, seed=1` on a request: run it twice, alone and beside others. Same tokens?
#
# Answers: `solutions/ch01_naive.py`.
#
# ## What is left on the table
#
# A decode step reads every weight of the model to make one token for one request. Chapter 2 makes the
# same read serve many requests at once.

# %%
def main(argv=None):
    from minigpt.cli import run_chapter

    run_chapter("ch01_naive", argv)


if __name__ == "__main__" and "get_ipython" not in globals():  # python -m chapters.<this chapter>
    main()
elif __name__ == "__main__":  # in a notebook: a small run beside the chapters before this one
    main(["--requests", "8", "--compare", "--no-progress"])
