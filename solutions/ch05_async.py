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
# # Chapter 5: answers to the exercises
#
# Each answer is prose and a function, `exercise_N`, that computes the evidence on the CPU with the tiny
# model in float32 and returns it; `tests/test_exercises.py` asserts what the prose claims. Exercises 1-3
# are about the GPU: their `exercise_N_gpu` functions measure there, and their CPU parts check what can be
# checked without one (what a step launches, which step last used a slot, what one slot breaks).
# Exercises 4-6 run on a laptop: on the CPU, streams and events do nothing, but every guard's logic runs.

# %%
from __future__ import annotations

import dataclasses
import statistics
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minigpt
from chapters import ch01_naive, ch05_async
from minigpt import Request


def w1_on_gpu(num_requests: int = 64):
    """The Qwen3-0.6B shape in bf16 on the GPU and W1's first requests: the chapter's measurement, smaller."""
    model = minigpt.from_config("qwen3-0.6b", device="cuda", dtype=torch.bfloat16)
    return model, minigpt.get_workload("W1").requests(model.config.vocab_size, num_requests)


def measure_on_gpu(engine_cls, model, requests, **options) -> dict:
    """One timed run after a warm-up run: throughput, and per decode step the GPU's time, the CPU's time to
    launch it, and the share of the time the GPU was busy (CUDA events around each step)."""
    warm = [dataclasses.replace(r, max_new_tokens=8) for r in requests[:16]]
    engine_cls(model, **options).generate(warm)  # warm-up: kernels compile, the allocator grows
    out = engine_cls(model, **options).generate(requests)
    s = out.stats
    decode = [t for t in s["timeline"] if t["decode"]]
    return {"tokens_per_s": sum(len(c.tokens) for c in out) / max(c.token_times[-1] for c in out),
            "decode_gpu_ms": statistics.median(t["gpu_end"] - t["gpu_start"] for t in decode) * 1e3,
            "decode_launch_ms": statistics.median(t["launched"] - t["prepared"] for t in decode) * 1e3,
            "gpu_busy": s["gpu_busy"], "decode_gpu_busy": s["decode_gpu_busy"]}


# %% [markdown]
# ## Exercise 1: `--no-cuda-graphs`
#
# *Run with `--no-cuda-graphs` on a GPU. How much of the decode step was kernel-launch time? (On the CPU:
# count the operators one decode step dispatches, each a kernel launch on a GPU.)*
#
# About 40% of it. A decode step of the eager model dispatches about 830 operators for Qwen3-0.6B's 28
# layers (`exercise_1` counts 827 on the CPU with the tiny model made 28 layers deep: the count depends on
# the layers, not their width), each at least one kernel launch from Python on a GPU, several
# microseconds of CPU each. A graph replays the whole step in one launch.
#
# The committed W1 run on the H200 (`figures/h200_w1_arc.json`) shows what that costs. Chapter 4 runs the same
# eager model with no graphs and no overlap: its median time per output token is 17.5 ms. Chapter 5, still
# synchronous but replaying graphs: 10.6 ms. The GPU's own work is 7.45 ms a decode step in both (NOTES.md).
# So without graphs some 7 ms of a 17.5 ms step, about 8 us a launch, is the CPU launching kernels while the
# GPU waits; chapter 4 also prepares its inputs less efficiently, a smaller part. Asynchronously,
# `--no-cuda-graphs` lets the CPU work on step N+1 while the GPU runs step N, but the CPU's step is now the
# launches (about 7 ms) plus scheduling, preparing and handing out tokens (about 3 ms, the synchronous loop's
# remaining gap), more than the GPU's 7.45 ms: the GPU waits for the CPU again. Expect a decode step near the
# CPU's 10 ms, and a busy share well under the 99.9% with graphs. `exercise_1_gpu` runs W1's first 64 requests
# both ways and reports, per decode step, the GPU's time, the CPU's time to launch it, and the GPU's busy
# share.

# %%
class OpCounter(TorchDispatchMode):
    """Counts the operators PyTorch dispatches, views aside: on a GPU, each at least one kernel launch."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


class CountingEngine(ch05_async.AsyncEngine):
    """Chapter 5's engine, counting the operators of each decode step's launch (what a graph records)."""

    def __init__(self, model, **options):
        super().__init__(model, **options)
        self.decode_ops: list[int] = []

    def launch(self, batch):
        with OpCounter() as ops:
            super().launch(batch)
        if batch.graph_size:
            self.decode_ops.append(ops.count)


def exercise_1(layers: int = 28) -> dict:
    model = minigpt.from_config(minigpt.get_config("tiny").with_(num_hidden_layers=layers))
    engine = CountingEngine(model, use_async=False)  # (asynchronous on the CPU, a worker thread would compute)
    engine.generate(minigpt.get_workload("W1-small").requests(model.config.vocab_size, 4))
    return {"layers": layers, "ops_per_decode_step": statistics.median(engine.decode_ops)}


def exercise_1_gpu() -> dict:
    model, requests = w1_on_gpu()
    return {graphs: measure_on_gpu(ch05_async.AsyncEngine, model, requests, cuda_graphs=graphs, max_batch_tokens=8192)
            for graphs in (True, False)}


if __name__ == "__main__":
    print(exercise_1())
    if torch.cuda.is_available():
        print(exercise_1_gpu())

# %% [markdown]
# ## Exercise 2: remove `slot.copied.synchronize()`
#
# *Remove the `slot.copied.synchronize()` in `prepare` and run the GPU stress test in `tests/test_async.py`.
# What breaks, and how often? (Before you run it: which step last used the slot, and what has the CPU
# already waited for?)*
#
# Nothing breaks, in any run. The wait guards the pinned host buffer: it must not be rewritten while the
# copy that reads it is still queued. But the step that last used slot `N % 2` is step `N - 2`, and before
# step `N` is prepared the loop has already resolved step `N - 2`: it waited for that step's `fetched`
# event, recorded after its tokens were copied out, after its forward, which itself waited for its input
# copy. So the copy the guard waits for is always done already. `exercise_2` checks that order on the
# CPU: in every prepare of a run with preemptions, no step still in flight uses the slot being written
# (233 prepares, 0 clashes). `exercise_2_gpu` runs the GPU stress test of `tests/test_async.py` three times
# with the wait removed (each run: both loops, with and without random delays, against chapter 1's
# tokens); by the argument above none can fail. The guard becomes necessary as soon as more steps are in
# flight than there are slots, or tokens are read later than one step behind: it keeps `prepare` correct
# on its own, whatever the loop around it does, for a wait that costs nothing when the copy is done.

# %%
class EventThatDoesNotWait(torch.cuda.Event):
    """A CUDA event whose synchronize() returns at once: the GPU still orders work after it."""

    def synchronize(self):
        pass


class SlotWithoutCopiedWait(ch05_async.Slot):
    """A slot whose `copied.synchronize()` in prepare() no longer waits (hazard 5's guard removed)."""

    def __init__(self, capacity, max_rows, device, cuda):
        super().__init__(capacity, max_rows, device, cuda)
        if cuda:
            self.copied = EventThatDoesNotWait()


class SlotOrderCheck(ch05_async.AsyncEngine):
    """Counts, at each prepare, the steps in flight that use the slot about to be written."""

    prepares = clashes = 0

    def prepare(self, chunks):
        slot = self.slots[self.steps % 2]
        self.prepares += 1
        self.clashes += sum(batch.slot is slot for batch in self.in_flight)
        return super().prepare(chunks)


def exercise_2(model=None) -> dict:
    model = model or minigpt.from_config("tiny")
    engine = SlotOrderCheck(model, use_async=True, num_blocks=40)
    engine.generate(minigpt.get_workload("W1-small").requests(model.config.vocab_size))
    return {"prepares": engine.prepares, "clashes": engine.clashes,
            "preemptions": engine.scheduler.preemptions}


def exercise_2_gpu(repeat: int = 3) -> dict:
    """tests/test_async.py's GPU stress test (both loops, with and without random delays), without the wait."""
    from tests import test_async

    runs = failed = 0
    with mock.patch.object(ch05_async, "Slot", SlotWithoutCopiedWait):
        for _ in range(repeat):
            for use_async in (False, True):
                runs += 1
                try:
                    test_async.stress("cuda", use_async)
                except AssertionError:
                    failed += 1
    return {"stress_runs": runs, "failed": failed}


if __name__ == "__main__":
    print(exercise_2())
    if torch.cuda.is_available():
        print(exercise_2_gpu())

# %% [markdown]
# ## Exercise 3: one slot instead of two
#
# *With one slot instead of two, where would the CPU have to wait? Predict the busy fraction, then measure.
# (On the CPU: make both entries of `self.slots` the same slot and compare the tokens with chapter 1's.)*
#
# A slot holds a step's inputs and its sampled tokens. With one, step `N`'s tokens land in the same output
# buffer as step `N - 1`'s, and the asynchronous loop reads step `N - 1`'s tokens only after it has
# launched step `N`. Just make both entries of `self.slots` the same slot and the tokens are wrong, even on
# the CPU: every request gets the next step's tokens in place of its own (`exercise_3`: 0 of 12 requests
# right). To be correct, the CPU must read step `N - 1`'s tokens *before* it launches step `N`
# (`OneSlot.launch` below): it still schedules and prepares step `N` while step `N - 1` runs, but then
# waits for the GPU to finish, copies the tokens back, hands them out, and only then launches. The GPU idles
# for that copy, the `resolve` bookkeeping and the launch in every step, where with two slots it idles for
# none of it, and where the synchronous loop idles for all of it plus `schedule` and `prepare`. So predict
# a busy fraction between the synchronous loop's and the asynchronous one's: on W1 on the H200 the decode
# phase was 82% busy synchronously and 99.9% asynchronously (`figures/h200_w1_arc.json`), and one slot
# gives back the share of the synchronous gap that `schedule` and `prepare` took, not the rest.
# `exercise_3_gpu` measures all three on W1's first 64 requests.

# %%
class OneSlotUnguarded(ch05_async.AsyncEngine):
    """Both entries of `slots` are one slot; nothing else changed."""

    def make_attention(self):
        attention = super().make_attention()
        self.slots = self.slots[:1] * 2
        return attention

    def capture_graphs(self):  # (on a GPU: the graphs must read the one slot's buffers)
        self.slots = self.slots[:1] * 2
        super().capture_graphs()


class OneSlot(OneSlotUnguarded):
    """One slot, made correct: the previous step's tokens are read before the next step overwrites them."""

    def launch(self, batch):
        while self.in_flight:
            self.resolve(self.in_flight.pop(0))
        super().launch(batch)


def differ_from_chapter1(engine_cls, model, num_requests: int) -> dict[bool, list[int]]:
    """For each loop (use_async False, True): the W1-small requests whose tokens differ from chapter 1's."""
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)
    reference = [c.tokens for c in ch01_naive.generate(model, requests)]
    runs = {use_async: engine_cls(model, use_async=use_async).generate(requests) for use_async in (False, True)}
    return {use_async: [i for i, (c, r) in enumerate(zip(out, reference)) if c.tokens != r]
            for use_async, out in runs.items()}


def exercise_3(model=None, num_requests: int = 12) -> dict:
    model = model or minigpt.from_config("tiny")
    right = {}
    for engine_cls in (OneSlotUnguarded, OneSlot):
        for use_async, wrong in differ_from_chapter1(engine_cls, model, num_requests).items():
            right[(engine_cls.__name__, use_async)] = num_requests - len(wrong)
    return {"requests": num_requests, "right": right}


def exercise_3_gpu() -> dict:
    model, requests = w1_on_gpu()
    runs = {"two slots, async": (ch05_async.AsyncEngine, True), "one slot, async": (OneSlot, True),
            "sync": (ch05_async.AsyncEngine, False)}
    return {name: measure_on_gpu(cls, model, requests, use_async=use_async, max_batch_tokens=8192)
            for name, (cls, use_async) in runs.items()}


if __name__ == "__main__":
    print(exercise_3())
    if torch.cuda.is_available():
        print(exercise_3_gpu())

# %% [markdown]
# ## Exercise 4: remove hazard 3's check in `resolve`
#
# *Remove hazard 3's check in `resolve` (`if c.finish_reason: continue`) and run `pytest tests/test_async.py`.
# Which test fails, what does the completion look like, and why only with `use_async=True`?*
#
# `test_eos_mid_batch_drops_the_extra_token_and_frees_once` fails (and, in `tests/test_stress.py`, one
# random configuration). A request that stops on EOS at step `N` was already scheduled into step `N + 1`:
# the loop prepared and launched step `N + 1` before it read step `N`'s tokens. Without the check, step
# `N + 1`'s token is appended after the EOS: the completion has one token too many (4 where chapter 1 has
# 3), and since that token is no EOS, `finish_reason` is recomputed to `""`, as if the request had not
# finished. Its blocks are still freed once (`retire`). The synchronous loop reads each step's tokens
# before it schedules the next, so a finished request is never in a later step, and nothing changes there.

# %%
class WithoutHazard3Check(ch05_async.AsyncEngine):
    """resolve() without `if c.finish_reason: continue`: every sampled token is handed out."""

    def resolve(self, batch):
        for seq in batch.sampled:  # the check sees no finished request: as if it were not there
            seq.completion.finish_reason = ""
        super().resolve(batch)


def exercise_4() -> dict:
    """The EOS scenario of tests/test_async.py: a request whose 4th token is its EOS."""
    model = minigpt.from_config("tiny")
    probe = ch01_naive.generate(model, [Request([5, 6, 7], 30)])[0].tokens
    eos = next(probe[j] for j in range(2, len(probe)) if probe[j] not in probe[:j])  # a token new after a few
    model.config = model.config.with_(eos_token_id=[eos])
    requests = [Request([5, 6, 7], 30), Request(list(range(40)), 25)]
    reference = ch01_naive.generate(model, requests)
    result = {"reference": {"tokens": len(reference[0].tokens), "finish_reason": reference[0].finish_reason}}
    for use_async in (False, True):
        c = WithoutHazard3Check(model, use_async=use_async).generate(requests)[0]
        result[use_async] = {"tokens": len(c.tokens), "finish_reason": c.finish_reason,
                             "prefix_equal": c.tokens[:len(reference[0].tokens)] == reference[0].tokens}
    return result


if __name__ == "__main__":
    print(exercise_4())

# %% [markdown]
# ## Exercise 5: hand out block 0
#
# *Hand out block 0 like any other (remove `cache.free_blocks.remove(0)` in `make_cache`) and run
# `pytest tests/test_async.py`. Why do tokens change on the CPU, where no CUDA graph runs?*
#
# Almost every test of chapter 5 fails (and chapter 6's, which runs the same engine). A decode step padded
# to its graph's size writes the padding rows' keys and values to cache row 0, the first row of block 0,
# which no request may own. Handed out, block 0 goes to a request, and every padded step overwrites that
# request's position 0 with a padding token's key and value: its later tokens attend to the wrong key, and
# change. On the CPU the padded decode steps run too, eagerly, in the graphs' layout, so that the tests
# exercise it: on the first 12 requests of W1-small, one request's tokens change, in both loops.

# %%
class ScratchBlockHandedOut(ch05_async.AsyncEngine):
    def make_cache(self, runnable):
        cache = super().make_cache(runnable)
        cache.free_blocks.append(0)  # back in the pool, last in the free list: the first block handed out
        cache.num_blocks += 1
        return cache


def exercise_5(model=None, num_requests: int = 12) -> dict:
    model = model or minigpt.from_config("tiny")
    return {"requests": num_requests,
            "changed": differ_from_chapter1(ScratchBlockHandedOut, model, num_requests)}


if __name__ == "__main__":
    print(exercise_5())

# %% [markdown]
# ## Exercise 6: what the graph sizes cost in padding
#
# *On W1-small, count from `engine.trace` the padding rows that the graph sizes (powers of two) add to
# decode steps. How many would sizes in steps of 8 add, and what would one graph per batch size cost?*
#
# W1-small runs one prefill step and 85 decode steps, from 32 requests down to 1. They compute 1,426 rows
# that matter; padded to powers of two (a step of 17 rows replays the graph of 32), 1,877: 451 padding
# rows, 24% of the decode rows computed. Sizes 1, 2, 4 and then every multiple of 8 (what vLLM captures)
# would compute 1,645 rows, 13% padding; one graph per size, none. Each graph is captured once per slot,
# before the run: 9 sizes up to 256 make 18 graphs, steps of 8 make 70, one per size 512, each an eager
# run and a capture (setup time), and each holding its kernels' arguments (memory). Padding rows cost
# little on a GPU, where a decode step's time is the weights' read whatever its rows; on the CPU they are
# computed like the others.

# %%
def padded_rows(decode_rows: list[int], sizes: list[int]) -> int:
    return sum(next(s for s in sizes if s >= rows) for rows in decode_rows)


def exercise_6(model=None) -> dict:
    model = model or minigpt.from_config("tiny")
    engine = ch05_async.AsyncEngine(model)
    engine.generate(minigpt.get_workload("W1-small").requests(model.config.vocab_size))
    decode = [s["decode"] for s in engine.trace if s["graph"]]
    steps_of_8 = [1, 2, 4, *range(8, 257, 8)]
    return {"steps": len(engine.trace), "decode_steps": len(decode), "rows": sum(decode),
            "rows_computed": sum(s["graph"] for s in engine.trace),
            "rows_computed_steps_of_8": padded_rows(decode, steps_of_8),
            "graphs": {"powers_of_two": 2 * len(engine.graph_sizes), "steps_of_8": 2 * len(steps_of_8),
                       "every_size": 2 * 256}}


if __name__ == "__main__":
    print(exercise_6())
