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
# # Chapter 6: answers to the exercises
#
# Each answer is prose and a function, `exercise_N`, that computes the evidence on the CPU with the tiny
# model in float32 and returns it; `tests/test_exercises.py` asserts what the prose claims (exercise 1
# compiles C++ kernels, under a minute: the test of it is marked slow). Exercise 3 is about the GPU:
# `exercise_3_gpu` measures there, and its CPU part counts the steps the C++ wrapper can speed up.

# %%
from __future__ import annotations

import re
import statistics
import time

import torch

import minigpt
from chapters import ch06_compiled

# %% [markdown]
# ## Exercise 1: what the compiler made
#
# *Run `compile_layers(model, "inductor")` with `TORCH_LOGS=output_code` set. Find the calls of
# `torch.ops.minigpt.attention`, the kernels between two of them, and inside those kernels the RoPE
# arithmetic and the cache write (`index_copy`). How many kernels does a layer cost now?*
#
# `TORCH_LOGS=output_code` prints the code inductor generates; `exercise_1` reads the same code with
# `torch._inductor.utils.run_and_get_code`. There are two compiled functions (one for a single token, one
# for any number) and in each, `call` runs the layers in order: one `torch.ops.minigpt.attention.default`
# call a layer, 4 for the tiny model, 28 for Qwen3-0.6B.
#
# Between two attention calls a layer costs 8 kernels, 4 generated and 4 matmuls:
#
# 1. `extern_kernels.addmm`: the output projection, with the residual add folded in as the bias;
# 2. a fused RMSNorm (`..._add_mean_mul_pow_rsqrt_...`);
# 3. `extern_kernels.mm`: gate and up, one matmul;
# 4. a fused SiLU-and-multiply (`..._mul_silu_split_...`);
# 5. `extern_kernels.addmm`: down, the residual add again folded in;
# 6. the next layer's input RMSNorm, fused;
# 7. `extern_kernels.mm`: q, k and v, one matmul;
# 8. one kernel that normalises q and k (Qwen3's q/k norm), rotates them (RoPE's `neg`, `cat`, `mul`, `add`)
#    and writes k and v into the cache: `..._add_attention_cat_index_copy_mean_mul_neg_pow_rsqrt_split_...`.
#
# The eager layer dispatches about 29 operators (chapter 5's first exercise counts 827 for a decode step of
# 28 layers): RoPE alone is two negations, two concatenations, four products and two sums. On the CPU
# inductor writes the generated kernels in C++ (`cpp_fused_...`); on a GPU in Triton (`triton_poi_fused_...`
# for pointwise kernels, `triton_per_fused_...` for those with a reduction), where its fusion rules split
# the work by the GPU's own limits and the count can differ by a kernel or so a layer: `exercise_1("cuda")`
# counts it there. Compiling the tiny model on the CPU takes under a minute, most of it the C++ compiler,
# and seconds once inductor's cache (under /tmp) holds the kernels.

# %%
KERNEL = re.compile(r"^\s+(?:\w+ = )?(cpp_fused_\w+|triton_\w+)(?:\.run)?\(|extern_kernels\.(\w+)\(")
ATTENTION = "torch.ops.minigpt.attention.default("


def kernels_by_layer(code: str) -> list[list[str]]:
    """The kernel launches of a compiled function's `call`, split at each call of the attention op: the
    first list is what comes before layer 0's attention, then one list a layer."""
    layers, call = [[]], code[code.index("def call("):]
    for line in call.splitlines():
        if ATTENTION in line and not line.lstrip().startswith("#"):
            layers.append([])
        elif match := KERNEL.search(line):
            layers[-1].append(match.group(1) or "extern_kernels." + match.group(2))
    return layers


def exercise_1(device: str = "cpu") -> dict:
    from torch._inductor.utils import run_and_get_code

    model = minigpt.from_config("tiny", device=device)
    torch._dynamo.reset()
    start = time.perf_counter()
    _, codes = run_and_get_code(ch06_compiled.compile_layers, model, "inductor")
    seconds = time.perf_counter() - start
    layers = kernels_by_layer(codes[-1])  # the function for any number of tokens
    between = layers[2]  # after layer 0's attention, up to layer 1's
    return {"compile_s": seconds, "functions": len(codes), "attention_calls": len(layers) - 1,
            "kernels_per_layer": len(between), "matmuls": sum(k.startswith("extern_kernels") for k in between),
            "kernels": between,
            "cache_write_fused_with_rope": any("index_copy" in k and "neg" in k and "cat" in k for k in between)}


if __name__ == "__main__":
    print(exercise_1())
    if torch.cuda.is_available():
        print(exercise_1("cuda"))

# %% [markdown]
# ## Exercise 2: tracing with `aot_eager`
#
# *On the CPU, time chapter 6's `generate` with `compile="aot_eager"` against `compile="none"` on W1-small's
# first 8 requests. Tracing changes no token; what does it cost, and when is it paid?*
#
# The cost is paid once, when the first engine is built: `compile_layers` traces `run_layers` twice (one
# token, then any number), about 10 s for the tiny model on the CPU. The run itself costs about what the eager
# one does (0.4-1 s on W1-small's first 8 requests here, either way): `aot_eager` runs the traced graph's
# operators one by one, as eager PyTorch does, and generates no kernels, so it cannot be faster; it only adds
# a guard check per call. The traced code is kept by Dynamo for the rest of the process: a second engine is
# built in a hundredth of a second, and no run recompiles (2 graphs, however many steps and batch sizes).
# Tokens are chapter 1's. So `aot_eager` is a check that the model traces and the custom op behaves (the CPU
# tests use it); speed needs `inductor`, and on a GPU.

# %%
def exercise_2(model=None, num_requests: int = 8) -> dict:
    from torch._dynamo.utils import counters

    from chapters import ch01_naive

    torch.set_num_threads(1)
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, num_requests)
    reference = [c.tokens for c in ch01_naive.generate(model, requests)]
    torch._dynamo.reset()
    counters.clear()
    result = {}
    for name, backend in (("none", "none"), ("aot_eager", "aot_eager"), ("aot_eager again", "aot_eager")):
        start = time.perf_counter()
        engine = ch06_compiled.CompiledEngine(model, compile=backend)
        built = time.perf_counter()
        out = engine.generate(requests)
        result[name] = {"build_s": built - start, "run_s": time.perf_counter() - built,
                        "same_tokens": [c.tokens for c in out] == reference}
    result["graphs_compiled"] = counters["stats"]["unique_graphs"]
    return result


if __name__ == "__main__":
    print(exercise_2())

# %% [markdown]
# ## Exercise 3: the C++ wrapper
#
# *On a GPU, run with `--cpp-wrapper`, then without it. How much does the C++ wrapper save a decode step
# (TPOT), and how much does it add to the compile?*
#
# Nothing measurable on the decode steps, and about twice the compile. On W1 on the H200 (committed in
# `figures/h200_w1_arc.json`) TPOT's median is 7.01 ms with the C++ wrapper and 6.83 ms without, within the
# spread between runs: 22,088 against 22,597 tokens/s. A decode step replays a CUDA graph, which launches
# its kernels without the wrapper, Python's or C++'s; only steps that call the compiled function directly
# can gain, and on W1 those are the 18 prefill steps of 1,028 (`exercise_3` counts the same on W1-small: 1
# of 86). The compile, inductor's C++ wrapper built for the 28 layers, took 184 s cold and 74 s with a warm
# cache, against 100 s and 39 s for Python's (NOTES.md, measured when chapter 4 compiled the same function).
# Where it pays is an engine without graphs: there every decode step launches the compiled function's
# kernels (28 layers x 9), and the C++ wrapper took a full-batch decode step from 13.1-14.6 ms to 9.6-10.4 ms.
#
# On the CPU the option does nothing: the engine turns it off (`cpp_wrapper` stays False) and runs the
# same tokens.

# %%
def exercise_3(model=None) -> dict:
    model = model or minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size)
    engine = ch06_compiled.CompiledEngine(model, cpp_wrapper=True)  # compile="auto": none on the CPU
    out = engine.generate(requests)
    plain = ch06_compiled.generate(model, requests)
    return {"cpp_wrapper": engine.cpp_wrapper, "same_tokens": [c.tokens for c in out] == [c.tokens for c in plain],
            "steps": len(engine.trace), "steps_not_replayed": sum(not s["graph"] for s in engine.trace)}


def exercise_3_gpu(preset: str = "tiny", num_requests: int = 32) -> dict:
    """Both wrappers on a GPU: the compile's seconds and the decode steps' TPOT (median), W1-small's shape
    for the tiny model. Each compile starts from an empty Dynamo cache (inductor's on-disk cache stays)."""
    model = minigpt.from_config(preset, device="cuda", dtype=torch.bfloat16)
    workload = "W1-small" if preset == "tiny" else "W1"
    requests = minigpt.get_workload(workload).requests(model.config.vocab_size, num_requests)
    result = {}
    for cpp_wrapper in (False, True):
        torch._dynamo.reset()
        start = time.perf_counter()
        engine = ch06_compiled.CompiledEngine(model, compile="inductor", cpp_wrapper=cpp_wrapper)
        compile_s = time.perf_counter() - start
        engine.generate(requests[:4])  # warm-up
        out = engine.generate(requests)
        result[cpp_wrapper] = {"compile_s": compile_s, "built_cpp": engine.cpp_wrapper,
                               "tpot_ms": statistics.median(c.tpot for c in out if len(c.tokens) > 1) * 1e3}
    return result


if __name__ == "__main__":
    print(exercise_3())
    if torch.cuda.is_available():
        print(exercise_3_gpu())
