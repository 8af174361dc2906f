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
# # Chapter 6: where the rest of the time goes
#
# **What you will learn:** how to find where a decode step's GPU time goes (a profile, kernels grouped by
# kind, bytes against time), and how to take it back without touching the engine: the whole model
# compiled by `torch.compile` into one function around attention, which stays the engine's own code
# behind a *custom op*; and the compiled function's kernel launches written in C++ rather than Python.
#
# Chapter 5 closed the gaps between steps: on a GPU, the GPU never waits for the CPU. What is left is the
# step itself. A profile of chapter 5's decode step (`python -m tools.bench profile --chapter ch05_async`)
# counts its kernels: attention reads the whole KV cache and is near the copy bandwidth (chapter 4), the
# matmuls read the weights once, and everything else, the norms, RoPE, SwiGLU, residual adds, is dozens of
# small kernels a layer, each reading and writing a few hundred kilobytes and over in microseconds. Their
# sum is a large share of the step, though their bytes are a small share of what the step reads: a sign
# that they are paying for being separate kernels, not for their work.
#
# Fusing them is what a compiler does: one kernel that normalises, rotates and writes the cache in one
# pass over the data. And the compiled function can launch its kernels from C++, which matters where a
# step waits on the CPU: chapter 5's prefill steps run eagerly, and each eager launch through Python costs
# tens of microseconds.
#
# **Measure before you explain.** Two readings of this engine's profiles looked right and were wrong:
#
# * *"The 8192-token prefill steps are bound by the CPU's launches: their launch time equals their GPU
#   time."* Counting FLOPs said otherwise: the masked attention over a packed batch computed a full
#   8192 x 8192 score matrix per head and layer, about 14x the useful work for 14 prompts. The CPU waited on
#   a full launch queue. The fix was a kernel that skips the masked blocks (chapter 3's variable-length
#   attention), not faster launches.
# * *"Moving the K/V write into the compiled code costs 4 ms a step."* A before/after comparison, each run
#   once on a shared machine, said so. Running the two versions alternately, process after process on one
#   machine, showed each version's own spread wider than the gap: the host's CPU speed changes for hundreds
#   of steps at a time, and the order of the runs had made the difference.
#
# So: count bytes and FLOPs first, compare within one run, alternate what you compare, and repeat.
#
# Both speed-ups are `torch.compile` applied to the model, below. The engine is chapter 5's.

# %%
from __future__ import annotations

import contextlib

import torch

from chapters import ch05_async
from chapters.ch05_async import AsyncEngine
from minigpt import Completions, ModelConfig, Request, zeros_kv_cache
from minigpt.metrics import stage
from minigpt.model import Attention, Transformer
from minigpt.options import check_bool, check_choice, make_engine

# %% [markdown]
# ## Attention as one opaque op
#
# `torch.compile` traces Python into a graph it can fuse. It cannot trace the engine's attention object:
# Python bookkeeping, a hand-written Triton kernel, arguments that are host integers. Wrapped in a
# *custom op* it becomes one node of the graph, run eagerly when the compiled code reaches it, and the
# whole model around it, 28 layers for Qwen3-0.6B, compiles into one function (vLLM does the same).
#
# The op finds the step's attention object in `_step_attention`, set around each forward. It takes the
# layer's cache as an input, after the model wrote this step's keys and values into it: that input is what
# orders the op after the write. The write stays in the compiled code, where it fuses into the kernel that
# finishes k and v (the model writes the cache itself, `DecoderLayer.forward`, for this reason).

# %%
_step_attention: list[Attention] = []


@contextlib.contextmanager
def attention_for_this_step(attn: Attention):
    _step_attention.append(attn)
    try:
        yield
    finally:
        _step_attention.pop()


@torch.library.custom_op("minigpt::attention", mutates_args=())
def opaque_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, layer: int) -> torch.Tensor:
    """The step's attention object, run eagerly: (T, H, D) -> (T, H, D)."""
    return _step_attention[-1](layer, q, k_cache, v_cache).contiguous()


@opaque_attention.register_fake
def _(q, k_cache, v_cache, layer):  # what the compiler knows of the output: q's shape, dtype, device
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def attend_opaquely(layer: int, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """The attention the compiled layers call."""
    return opaque_attention(q, k_cache, v_cache, layer)


# %% [markdown]
# ## Compiling the layers, before the run
#
# `compile_layers` hands `Transformer.run_layers` to `torch.compile` with dynamic shapes (a step has any
# number of tokens) and runs it once for 1 token and once for 2: the compiler always specialises sizes 0
# and 1, so these two compile the two functions a run needs, here rather than mid-run. The dummy run
# attends over a small cache of its own (`ZeroAttention`), whose row count differs from every other size
# the compiler sees: equal sizes share one symbol, and it would assume them equal ever after.
#
# *Inductor*, torch.compile's default backend, turns the traced graph into generated kernels (Triton on a
# GPU, C++ on a CPU) and a function that launches them. With `cpp_wrapper=True` it writes that function in
# C++ instead of Python: the same kernels, launched without the interpreter in between, for a compile that
# takes about twice as long. Where the C++ does not build (no compiler, no CUDA headers), the
# engine says so and keeps the Python.

# %%
class ZeroAttention:
    """An attention object over a small cache of its own that returns zeros: to run the layers alone."""

    def __init__(self, config: ModelConfig, num_tokens: int, device, dtype, rows: int = 65):
        self.kv_cache = zeros_kv_cache(config, rows, device, dtype)
        self.cache_rows = torch.arange(num_tokens, device=device)

    def __call__(self, layer, q, k_cache, v_cache):
        return torch.zeros_like(q)


def compile_layers(model: Transformer, backend: str, cpp_wrapper: bool = False):
    """`model.run_layers`, compiled with `backend` around the opaque attention op, for any token count.
    `backend="aot_eager"` traces without generating kernels (the CPU tests)."""
    if cpp_wrapper and backend != "inductor":
        raise ValueError(f"cpp_wrapper is an option of the inductor backend, not of {backend!r}")
    options = {"cpp_wrapper": True} if cpp_wrapper else None
    compiled = torch.compile(model.run_layers, backend=backend, dynamic=True, options=options)
    for T in (1, 2):  # the engines' cache is made outside inference mode, the step's tensors inside: as here
        attn = ZeroAttention(model.config, T, model.device, model.dtype)
        with torch.inference_mode():
            x, cos, sin = model.embed_and_rotations(torch.zeros(T, dtype=torch.long, device=model.device),
                                                    torch.arange(T, device=model.device))
            with attention_for_this_step(attn):
                compiled(x, cos, sin, attn.kv_cache, attn.cache_rows, attend_opaquely)
    return compiled


class CompiledModel:
    """The model with its layers compiled: called as the model is, by an engine that does not know."""

    def __init__(self, model: Transformer, layers):
        self.model, self.layers = model, layers
        self.config, self.device, self.dtype = model.config, model.device, model.dtype

    def __call__(self, input_ids, positions, attn: Attention, logits_at=None) -> torch.Tensor:
        x, cos, sin = self.model.embed_and_rotations(input_ids, positions)
        with attention_for_this_step(attn):  # each layer's attention op calls `attn`
            x = self.layers(x, cos, sin, attn.kv_cache, attn.cache_rows, attend_opaquely)
        return self.model.logits(x, logits_at)


# %% [markdown]
# ## The engine: chapter 5's, with the compiled model
#
# `compile="auto"` compiles with inductor on a GPU and not at all on the CPU, where compiling takes longer
# than the runs it would speed up (pass `compile="inductor"` to see it anyway). Chapter 5's CUDA graphs
# capture the compiled decode steps as they captured the eager ones: the graph records the fused kernels.

# %%
BACKENDS = ("auto", "inductor", "aot_eager", "eager", "none")


class CompiledEngine(AsyncEngine):
    name = "ch06_compiled"

    def __init__(self, model, compile: str = "auto", cpp_wrapper: bool = False, **options):
        super().__init__(model, **options)
        backend = check_choice(self.name, "compile", compile, BACKENDS)
        if backend == "auto":
            backend = "inductor" if self.cuda else "none"
        self.backend = None if backend == "none" else backend
        self.cpp_wrapper = check_bool(self.name, "cpp_wrapper", cpp_wrapper) and backend == "inductor" and self.cuda
        if self.backend:
            how = f"{self.backend}, C++ wrapper" if self.cpp_wrapper else self.backend
            with stage(f"compiling the model ({how})", self.progress):
                self.model = CompiledModel(model, self.compile_layers(model))

    def compile_layers(self, model: Transformer):
        try:
            return compile_layers(model, self.backend, self.cpp_wrapper)
        except Exception as error:  # the C++ build needs a C++ compiler and CUDA's headers; Python's, neither
            if not self.cpp_wrapper:
                raise
            print(f"{self.name}: inductor's C++ wrapper did not build ({type(error).__name__}); compiling with its "
                  "Python wrapper instead")
            self.cpp_wrapper = False
            return compile_layers(model, self.backend)

    def summary(self) -> dict:
        return {**super().summary(), "compiled": self.backend, "cpp_wrapper": self.cpp_wrapper}


def generate(model, requests: list[Request], **options) -> Completions:
    """Chapter 6's engine. Options: compile ('auto', 'inductor', 'aot_eager', 'eager', 'none'), cpp_wrapper,
    and chapter 5's."""
    return make_engine(CompiledEngine, model, options).generate(requests)


# %% [markdown]
# ## The check: compiled equals eager equals chapter 1
#
# On the CPU the check traces the model with `aot_eager`: the same graph capture and the same custom op as
# inductor, without generating kernels, so it runs in seconds. The tokens must not change.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt import from_config, get_workload

    demo_model = from_config("tiny")
    demo = get_workload("W1-small").requests(demo_model.config.vocab_size, 8)
    from chapters import ch01_naive
    from minigpt.reference import assert_same_tokens

    n = assert_same_tokens(generate, ch01_naive.generate, demo_model, demo, compile="aot_eager", num_blocks=12)
    print(f"{n} tokens equal chapter 1's, the model traced around the attention op")

# %% [markdown]
# ## The measurement
#
# `python -m tools.bench --device cuda --workload W1 --repeat 3 --chapters ch04_paged,ch05_async,ch05_async@use_async=false,ch06_compiled --option ...:max_batch_tokens=8192`
# runs chapters 4-6 on the same requests, one after the other in one process; the cell below prints that
# run on the H200 from its committed data, then an earlier one with the C++ wrapper beside. Compiling takes the
# decode step's GPU time from about 7.4 ms to about 6.1 ms (the profile's small kernels, fused) and so the
# whole run by about a fifth; chapter 5's overlap keeps the GPU busy through it. The C++ wrapper, which
# cut the eager steps' CPU time by a quarter in an engine without graphs, buys nothing measurable here:
# the decode steps replay graphs, which launch nothing from Python, and only W1's 18 prefill steps run the
# compiled function directly. It doubles the compile, so it is off by default. On a CPU there is nothing
# to gain: the tiny model's steps are dominated by Python, and compiling takes longer than the run.
#
# Under load the lead narrows. Requests arrive one at a time, and each one's prompt chunk rides in a step
# that runs the compiled function without a graph: past their knees (64 requests a second) chapter 6 served
# 16,600 tokens/s and chapter 5 15,800, against 22,900 and 18,200 with W1 all at once (the README's latency
# section). Capturing those steps too (the model in pieces around attention, each captured for a set of padded
# token counts) is the lever this chapter leaves.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt.metrics import show_committed

    show_committed("h200_w1.json", "W1 on one H200, chapters 4-6, one run (committed data)",
                   ["ch04_paged", "ch05_async@use_async=false", "ch05_async", "ch06_compiled"])
    show_committed("h200_w1_arc.json", "W1 on one H200, either wrapper (committed data)", [
        "ch06_compiled@cpp_wrapper=true", "ch06_compiled@cpp_wrapper=false"])

# %% [markdown]
# ## Exercises
#
# 1. See what the compiler made: run `compile_layers(model, "inductor")` with the environment variable
#    `TORCH_LOGS=output_code` set (on the CPU too: under a minute for the tiny model). Find the calls of
#    `torch.ops.minigpt.attention`, one a layer, the kernels between two of them, and inside those kernels
#    the RoPE arithmetic and the cache write (`index_copy`). How many kernels does a layer cost now?
# 2. On the CPU, time chapter 6's `generate` with `compile="aot_eager"` against `compile="none"` on
#    W1-small's first 8 requests. Tracing changes no token; what does it cost, and when is it paid?
# 3. On a GPU, run with `--cpp-wrapper`, then without it. How much does the C++ wrapper save a decode step
#    (TPOT), and how much does it add to the compile?
#
# Answers: `solutions/ch06_compiled.py`.
#
# ## What is left on the table
#
# One GPU's memory and bandwidth. A decode step reads every weight once and the whole KV cache; a larger
# model, or more requests at once, needs more of both than one GPU has. Chapter 7 splits every layer over two.

# %%
OPTIONS = {**ch05_async.OPTIONS,  # NEW: the compiled model
           "compile": (str, "auto", "torch.compile backend: auto (inductor on a GPU, none on the CPU), inductor, "
                                    "aot_eager, eager or none"),
           "cpp_wrapper": (bool, False, "the compiled model launches its kernels from C++, not Python (GPU only)")}


def main(argv=None):
    from minigpt.cli import run_chapter

    run_chapter("ch06_compiled", argv, OPTIONS)


if __name__ == "__main__" and "get_ipython" not in globals():  # python -m chapters.<this chapter>
    main()
elif __name__ == "__main__":  # in a notebook: a small run beside the chapters before this one
    main(["--requests", "8", "--compare", "--no-progress"])
