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
# # Chapter 2: static batches, left padding and an attention mask
#
# ![Padding waste on W1](../figures/padding_waste_w1.png)
#
# **What you will learn:** why batching is the first big speed-up in inference, how to batch
# requests of different lengths with *left padding* and a mask, and what that padding costs.
#
# Chapter 1 reads every weight of the model to produce one token. A decode step is memory-bound: the
# GPU spends its time moving weights, not multiplying. Feed it `B` requests at once and the same weight
# read produces `B` tokens, almost for free.
#
# Requests differ in length, and a tensor is a rectangle. So we pad: every prompt is left-padded to
# the longest in the batch (left, so that every request's *last* token sits in the same column and
# decode appends one column for all). A mask stops real tokens from attending to padding. Two costs
# follow, and this chapter measures both:
#
# * **padding waste**: columns computed for pad tokens, in prefill (short prompts beside long ones)
#   and in decode (requests that already finished keep their row until the batch ends);
# * **the batch waits for its slowest member**: a new request cannot join until the whole batch is done.
#
# ![One padded batch of a tiny run: left padding, prompts, generated tokens, finished rows](../figures/idea_padded_batch.png)

# %%
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from minigpt import (Clock, Completions, ModelConfig, Request, Sampler, finish_reason,
                     max_total_len, start_requests, token_progress, zeros_kv_cache)

# %% [markdown]
# ## The cache: one rectangle per batch
#
# Keys and values for `B` requests, each layer's `(B * max_len, kv_heads, head_dim)`, viewed as a
# `(B, max_len)` rectangle of them. Request `b`'s prompt
# sits in columns `pad[b] .. P-1`, where `P` is the longest prompt. Column `c` of request `b` holds
# position `c - pad[b]`. A query in column `i` may see column `j` when `pad[b] <= j <= i` (causal, not
# padding). A pad query sees only itself: a row with nothing to attend to would give NaN, and a NaN
# value multiplied by a zero weight is still NaN.

# %%
class PaddedKVCache:  # NEW: a (B, max_len) rectangle instead of one request's row
    def __init__(self, config: ModelConfig, pads: list[int], max_len: int, device, dtype):
        self.kv_cache = zeros_kv_cache(config, len(pads) * max_len, device, dtype)  # each layer's (keys, values)
        self.max_len = max_len
        self.pads = torch.tensor(pads, device=device)  # (B,)
        self.start = 0  # columns already cached
        self.cache_rows = None  # this step's columns, as rows of the flattened rectangle: set by forward()

    def __call__(self, layer: int, q, k_cache, v_cache):
        B = self.pads.shape[0]
        T = q.shape[0] // B
        end = self.start + T  # the model wrote the new keys and values in columns start .. end-1
        q_col = torch.arange(self.start, end, device=q.device)[None, :, None]  # (1, T, 1)
        k_col = torch.arange(end, device=q.device)[None, None, :]  # (1, 1, S)
        mask = (k_col <= q_col) & ((k_col >= self.pads[:, None, None]) | (k_col == q_col))  # (B, T, S)
        k = k_cache.view(B, self.max_len, *k_cache.shape[1:])[:, :end]  # (B, S, Hkv, D): the rectangle
        v = v_cache.view(B, self.max_len, *v_cache.shape[1:])[:, :end]
        out = F.scaled_dot_product_attention(
            q.view(B, T, *q.shape[1:]).transpose(1, 2),  # (B, H, T, D)
            k.transpose(1, 2), v.transpose(1, 2),  # (B, Hkv, S, D)
            attn_mask=mask[:, None], enable_gqa=True,
        )
        return out.transpose(1, 2).reshape(B * T, *q.shape[1:])  # (B*T, H, D)


# %% [markdown]
# ## One batch, from prefill to its slowest member's last token
#
# The model still takes a flat list of tokens: the `(B, T)` rectangle, flattened row by row. Every
# row's last column is a real token, so the logits we need are at `b*T + T-1`.

# %%
@torch.inference_mode()
def forward(model, cache: PaddedKVCache, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """ids, positions: (B, T) -> logits of each row's last column: (B, vocab)."""
    B, T = ids.shape
    last = torch.arange(B, device=ids.device) * T + T - 1
    columns = torch.arange(cache.start, cache.start + T, device=ids.device)
    cache.cache_rows = (torch.arange(B, device=ids.device)[:, None] * cache.max_len + columns).flatten()  # (B*T,)
    logits = model(ids.flatten(), positions.flatten(), cache, logits_at=last)
    cache.start += T
    return logits


class PaddedEngine:
    def __init__(self, model, batch_size: int = 16, progress: bool = False):
        self.model, self.config, self.batch_size, self.progress = model, model.config, batch_size, progress
        self.stats = {"prefill_slots": 0, "prefill_pad": 0, "decode_slots": 0, "decode_idle": 0}

    def generate(self, requests: list[Request]) -> Completions:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        completions, order = start_requests(requests, self.config)
        clock = Clock(self.model.device)
        sampler = Sampler(requests, self.model.device)
        with token_progress(sum(requests[i].max_new_tokens for i in order), "ch02 padded", self.progress) as emit:
            for b in range(0, len(order), self.batch_size):
                batch = order[b:b + self.batch_size]
                wait = max(requests[i].arrival_time for i in batch) - clock.now()
                if wait > 0:  # a static batch starts when its last member has arrived
                    time.sleep(wait)
                self.run_batch(batch, requests, completions, sampler, clock, emit)
        s = self.stats
        s["prefill_waste"] = s["prefill_pad"] / max(s["prefill_slots"], 1)
        s["decode_waste"] = s["decode_idle"] / max(s["decode_slots"], 1)
        return Completions(completions, stats=s)

    def run_batch(self, batch, requests, completions, sampler, clock, emit):
        device = self.model.device
        prompts = [requests[i].prompt_ids for i in batch]
        P = max(len(p) for p in prompts)
        pads = [P - len(p) for p in prompts]
        max_len = P + max(max_total_len(requests[i], self.config) - len(requests[i].prompt_ids) for i in batch)
        cache = PaddedKVCache(self.config, pads, max_len, device, self.model.dtype)
        ids = torch.tensor([[0] * pad + p for pad, p in zip(pads, prompts)], device=device)  # (B, P)
        positions = (torch.arange(P, device=device)[None, :] - cache.pads[:, None]).clamp(min=0)  # (B, P)
        self.stats["prefill_slots"] += len(batch) * P
        self.stats["prefill_pad"] += sum(pads)
        logits = forward(self.model, cache, ids, positions)
        done = [False] * len(batch)
        while True:
            tokens = sampler(logits, batch).tolist()  # one CPU-GPU sync per step for the whole batch
            now = clock.now()
            for row, i in enumerate(batch):
                if done[row]:
                    continue
                c = completions[i]
                c.tokens.append(tokens[row])
                c.token_times.append(now)
                emit(i, tokens[row])
                c.finish_reason = finish_reason(requests[i], c, self.config) or ""
                done[row] = bool(c.finish_reason)
            if all(done):
                return
            # Finished rows still compute a column each step: that is the decode waste.
            self.stats["decode_slots"] += len(batch)
            self.stats["decode_idle"] += sum(done)
            ids = torch.tensor(tokens, device=device)[:, None]  # (B, 1)
            positions = positions[:, -1:] + 1
            logits = forward(self.model, cache, ids, positions)


def generate(model, requests: list[Request], **options) -> Completions:
    """Chapter 2's engine: static padded batches. Options: batch_size (int), progress (bar or function)."""
    return PaddedEngine(model, **options).generate(requests)


# %% [markdown]
# ## The check: the same tokens as chapter 1
#
# Batching must not change a single greedy token. In float32 on the CPU, every request's tokens equal
# chapter 1's (and so transformers'), whatever else shares its batch.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt import from_config, get_workload

    demo_model = from_config("tiny")
    demo = get_workload("W1-small").requests(demo_model.config.vocab_size, 8)
    from chapters import ch01_naive
    from minigpt.reference import assert_same_tokens

    print(assert_same_tokens(generate, ch01_naive.generate, demo_model, demo, batch_size=4), "tokens equal chapter 1's")

# %% [markdown]
# ## The measurement
#
# `python -m chapters.ch02_padded --compare` runs chapters 1 and 2 on the same requests. On W1 the
# prompt lengths are uniform in [100, 1024], so a batch's prompts average about half the longest: expect
# close to half the prefill columns to be padding, and, since outputs are uniform too, a similar share of
# idle decode rows. The table shows both; the cell below prints the H200's committed run.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt.metrics import show_committed

    show_committed("h200_w1.json", "W1 on one H200 (committed data)", ["ch01_naive", "ch02_padded"])
    from minigpt import plots

    plots.padding_waste(generate(demo_model, demo, batch_size=4).stats, None, "this run's padding waste")

# %% [markdown]
# ## Exercises
#
# 1. Sort the requests by prompt length before batching. What happens to prefill waste? To decode waste?
# 2. Vary `--batch-size` from 1 to 64 on W1-small. Where does throughput stop growing on the CPU, and why?
# 3. Give one request of a batch 10x the output of the others and watch decode waste. What would you need
#    to let a new request take a finished row's place? (That is chapter 3.)
#
# Answers: `solutions/ch02_padded.py`.
#
# ## What is left on the table
#
# Pad columns computed for nothing, finished rows that wait for the batch's slowest member, and new
# requests that wait for the whole batch. All three come from the rectangle. Chapter 3 drops it.

# %%
OPTIONS = {"batch_size": (int, 16, "requests per static batch")}


def main(argv=None):
    from minigpt.cli import run_chapter

    run_chapter("ch02_padded", argv, OPTIONS)


if __name__ == "__main__" and "get_ipython" not in globals():  # python -m chapters.<this chapter>
    main()
elif __name__ == "__main__":  # in a notebook: a small run beside the chapters before this one
    main(["--requests", "8", "--compare", "--no-progress"])
