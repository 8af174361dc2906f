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
# # Chapter 7: tensor parallelism over two GPUs
#
# **What you will learn:** how to split one model over several GPUs so that each reads a part of the
# weights and holds a part of the KV cache: Megatron's column- and row-parallel layers, one all-reduce
# after attention and one after the MLP; how the ranks of one engine take the same decisions, as they
# must or their collectives wait for ever; and what a GPU pays whole, however many share the model.
#
# A decode step reads the weights once, whatever the batch: at the 8B shape 15 GB (all but the embedding
# table), 3.5 ms at an H200's 4.27 TB/s. Two GPUs that each read half the weights and hold half the KV
# cache would take half the time, if they could share a step. Attention heads are independent, and so are
# the MLP's features, so each *rank* (one process per GPU) takes half of them:
#
# * **column-parallel** `qkv_proj` and `gate_up_proj`: a rank holds the output rows of its query heads, its
#   KV heads and its MLP features, and computes them from the whole input. Its KV pool holds its heads;
# * **row-parallel** `o_proj` and `down_proj`: a rank holds the input columns of its heads (features), so
#   its product is a *partial sum* of the output. One **all-reduce** adds the partial sums on every rank.
#
# The embedding, norms, residual stream and LM head run on every rank. The engine is chapter 6's, one a rank.

# %%
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import shlex
import sys
import threading
import time
import traceback
import weakref

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from chapters import ch06_compiled
from chapters.ch06_compiled import CompiledEngine
from minigpt import Completions, ModelConfig, Request, Transformer, from_config, get_config, get_workload, save_results
from minigpt.cli import measure
from minigpt.metrics import FIGURES, console, load_results, results_table
from minigpt.model import fused_sizes
from minigpt.options import make_engine

# %% [markdown]
# ## Ranks: one process per GPU
#
# `torchrun --nproc-per-node 2 -m chapters.ch07_tensor_parallel` starts this program twice and tells each
# copy who it is in environment variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, rank 0's address). `ranks`
# joins them in a process group: NCCL between GPUs, gloo between CPU processes. Alone, with no such
# variables, the program is the only rank, and the chapter is chapter 6.
#
# A collective waits for every rank, so a rank that fails leaves at once: its peers, blocked in a
# collective, see it gone (gloo raises; torchrun stops the others) instead of waiting for it. Closing the
# group gets a time limit: after all-reduces were captured in CUDA graphs it can hang.

# %%
@contextlib.contextmanager
def ranks(device: str):  # NEW
    """Join the ranks torchrun started (yield this rank), or run alone (yield 0)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield 0
        return
    cuda, local = torch.device(device).type == "cuda", int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device("cuda", local) if cuda else None)
    control_group()  # made now, by every rank at once
    try:
        yield dist.get_rank()
    except BaseException as error:  # SystemExit too: argparse's --help or refusal, on every rank
        if not isinstance(error, SystemExit):
            traceback.print_exc()
        leave(error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1)
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    closing = threading.Thread(target=dist.destroy_process_group, daemon=True)
    closing.start()
    closing.join(timeout=60)
    if closing.is_alive():
        print("the process group did not close in 60 s; leaving without it", file=sys.stderr)
        leave(0)


def leave(code: int):  # now, without waiting for anything (the peers, Python's exit handlers)
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)


@functools.cache
def control_group():
    """A gloo group for the host's own messages: CPU tensors, never queued behind the model's all-reduces
    (NCCL's on the GPU; on the CPU, those of chapter 5's worker thread)."""
    return dist.new_group(backend="gloo")


def agree(value, op=None):
    """Rank 0's value on every rank; with `op` (`dist.ReduceOp.MIN`...), every rank's values reduced."""
    t = torch.tensor([value], dtype=torch.float64 if isinstance(value, float) else torch.long)
    dist.broadcast(t, 0, group=control_group()) if op is None else dist.all_reduce(t, op, group=control_group())
    return t.item()


# %% [markdown]
# ## Splitting the weights
#
# Each rank builds a model of its own shape (`rank_config`: `1/world` of the query heads, KV heads and MLP
# features), so `model.py` runs unchanged, and `shard` fills it with its part of rank 0's weights. The
# fused layouts need care: `qkv_proj` stacks q, k and v, so each is cut and this rank's pieces stacked
# again (Qwen2's bias too); `gate_up_proj` likewise. Query heads `[r*H/w, (r+1)*H/w)` use exactly the KV
# heads `[r*Hkv/w, (r+1)*Hkv/w)`: the KV heads must divide by the ranks. Qwen3's q, k norms replicate.
# `RowParallelLinear` is `nn.Linear` plus the all-reduce, an op of its own as chapter 6's attention is:
# `torch.compile` keeps it whole, and CUDA graphs record it with the rest of the step.
#
# The embedding and the LM head replicate: each is 0.5 G of the 8B shape's 8 G parameters, and the
# embedding costs memory only. Splitting the LM head would save each rank 0.12 ms a step (half of 1 GB)
# for an all-gather of the logits, 16 MB at 32 requests: a few percent at best, a loss at 256 requests.

# %%
@torch.library.custom_op("minigpt::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor) -> torch.Tensor:  # NEW
    """x summed over the ranks, as a new tensor."""
    out = x.clone()
    dist.all_reduce(out)
    return out


@all_reduce.register_fake
def _(x):
    return torch.empty_like(x)


class RowParallelLinear(nn.Linear):  # NEW
    """Input features split over the ranks; the all-reduce adds the partial sums (a bias would come after)."""

    def forward(self, x):
        return all_reduce(F.linear(x, self.weight))


def rank_config(c: ModelConfig, world: int) -> ModelConfig:  # NEW
    if c.num_key_value_heads % world or c.intermediate_size % world:
        raise ValueError(f"{c.name}: {c.num_key_value_heads} KV heads and {c.intermediate_size} MLP features do not "
                         f"split over {world} GPUs; tensor parallelism needs both divisible by the number of GPUs")
    return c.with_(num_attention_heads=c.num_attention_heads // world, intermediate_size=c.intermediate_size // world,
                   num_key_value_heads=c.num_key_value_heads // world)


_parts = weakref.WeakKeyDictionary()  # full model -> this rank's part, made once


def shard(model: Transformer, rank: int, world: int) -> Transformer:  # NEW
    """This rank's part of `model`, which every rank holds whole."""
    if model in _parts:
        return _parts[model]
    config, sizes, state = rank_config(model.config, world), fused_sizes(model.config), {}
    for name, w in model.state_dict().items():
        dist.broadcast(w, 0)  # the same seed or checkpoint gives the same weights: now it is a fact
        kind = ".".join(name.split(".")[2:-1])  # "self_attn.qkv_proj" in "layers.3.self_attn.qkv_proj.weight"
        if kind in sizes:  # column-parallel, fused: cut each part by output rows, stack this rank's pieces
            w = torch.cat([p.chunk(world)[rank] for p in w.split(sizes[kind])])
        elif kind in ("self_attn.o_proj", "mlp.down_proj"):  # row-parallel: cut by input columns
            w = w.chunk(world, dim=1)[rank]
        state[name] = w.clone(memory_format=torch.contiguous_format)  # its own memory: the full model can go
    with torch.device("meta"):  # shapes only; load_state_dict(assign=True) puts the tensors in
        part = Transformer(config)
        for layer in part.layers:
            for parent, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
                old = getattr(parent, name)
                setattr(parent, name, RowParallelLinear(old.in_features, old.out_features, bias=False))
    part.load_state_dict(state, assign=True)
    if config.tie_word_embeddings:
        part.lm_head.weight = part.embed_tokens.weight
    part.inv_freq, part.tp = model.inv_freq, (rank, world)
    _parts[model] = part.eval().requires_grad_(False)
    return part


# %% [markdown]
# ## The same decisions on every rank
#
# Each rank runs its own engine: scheduler, block tables, KV pool of its heads. Their steps meet in the
# all-reduces, so every rank must run the same steps in the same order. Rank 0 could schedule and send each
# step's inputs (thousands of integers, awaited before every launch); instead every rank runs the same
# deterministic scheduler on the same inputs, which needs:
#
# * **the same admissions.** A request is admitted once `arrival_time <= clock.now()`, and clocks differ.
#   While requests are still to arrive every rank reads rank 0's clock, one number broadcast on the gloo
#   group; after the last admission no decision depends on the time, and each reads its own, for nothing;
# * **the same pool**: the smallest any rank can hold (an all-reduce), or one rank preempts before another;
# * **the same tokens.** An all-reduce hands every rank the same sum and all after it is replicated, so
#   logits and choices agree. Each run ends by checking it: a broadcast of a hash of the tokens.

# %%
class RankZeroClock:  # NEW
    """The engine's clock, read as rank 0 reads it while requests are still to arrive."""

    def __init__(self, clock, engine):
        self.clock, self.engine, self.start, self.reads = clock, engine, clock.start, 0

    def now(self, sync: bool = False) -> float:
        if not self.engine.to_arrive:
            return self.clock.now(sync)
        self.reads += 1
        return agree(self.clock.now(sync))


class TensorParallelEngine(CompiledEngine):  # NEW: chapter 6's engine on this rank's part of the model
    name = "ch07_tensor_parallel"

    def __init__(self, model, progress=False, **options):
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if self.world > 1 and getattr(model, "tp", None) is None:
            model = shard(model, self.rank, self.world)
        super().__init__(model, progress=progress if self.rank == 0 else False, **options)

    @property
    def clock(self):
        return self._clock

    @clock.setter
    def clock(self, clock):  # set by chapter 3's generate, before its loop
        self._clock = RankZeroClock(clock, self) if self.world > 1 else clock

    def make_cache(self, runnable):
        self.to_arrive = len(runnable)  # the requests the loop will admit, each when it arrives
        return super().make_cache(runnable)

    def admit(self, seq):
        self.to_arrive -= 1
        super().admit(seq)

    def blocks_that_fit(self) -> int:
        blocks = super().blocks_that_fit()
        return int(agree(blocks, dist.ReduceOp.MIN)) if self.world > 1 else blocks

    def generate(self, requests: list[Request]) -> Completions:
        completions = super().generate(requests)
        if self.cuda:
            torch.cuda.synchronize()
        getattr(self, "graphs", {}).clear()  # graphs holding all-reduces go before the process group does
        mine = hash(tuple(tuple(c.tokens) for c in completions))
        if self.world > 1 and agree(mine) != mine:
            raise RuntimeError(f"{self.name}: rank {self.rank}'s tokens differ from rank 0's")
        return completions

    def summary(self) -> dict:
        reads = {"clock_broadcasts": self.clock.reads} if isinstance(self.clock, RankZeroClock) else {}
        return {**super().summary(), "world_size": self.world, **reads}


def generate(model, requests: list[Request], **options) -> Completions:
    """Chapter 7's engine, run by every rank on the same model and requests (alone, chapter 6's). Options: ch06's."""
    return make_engine(TensorParallelEngine, model, options).generate(requests)


# %% [markdown]
# ## The check: two ranks equal chapter 1
#
# On the CPU two processes over gloo run the code two GPUs run over NCCL. In float32 the all-reduce sums
# in another order than one matmul, so logits move by a few millionths: the tests check them within 1e-4
# of one rank's, and every rank's greedy tokens against chapter 1's, with arrivals mid-run and
# preemptions. The cell runs chapters 1 to 7 on two CPU ranks; `--compare` checks their tokens.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    import subprocess

    two_ranks = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run([*two_ranks, "-m", "chapters.ch07_tensor_parallel", "--device", "cpu", "--requests", "8",
                          "--compare", "--no-progress"], capture_output=True, text=True, timeout=300)
    print(run.stdout or run.stderr)

# %% [markdown]
# ## The measurement
#
# `torchrun --nproc-per-node 2 -m chapters.ch07_tensor_parallel measure --out figures/h200_tp.json` runs W2-short
# (the 8B shape), then W1, on one GPU (chapter 6 on rank 0, rank 1 waiting), then on both: tokens/s, the decode
# step's GPU time, the KV pool at 0.9 of the memory the weights leave free, one all-reduce in a CUDA graph (1 to
# 8192 tokens), one gloo broadcast. The model runs eager (`compile='none'`), decode in CUDA graphs, all-reduces in
# them: compiling each shape on each rank would not fit the run's time budget (two CPU ranks test that path). What
# will not halve on two GPUs: the all-reduces, the LM head (whole on each rank) and the eager model's small kernels
# (norms, RoPE, SwiGLU, residual adds), dozens a layer on each rank, each a few microseconds at any width. The cell
# solves `t1 = fixed + work` (one GPU), `t2 = fixed + work/2 + all-reduces` (two): an estimate, as work that halves
# less than exactly counts as fixed; W2-short's steps (one batch, a growing cache) check it by a line's slope.
# ![A decode step on one H200 and on two: the all-reduces and the rest](../figures/tp_step_split.png)

# %%
def all_reduce_times(hidden: int, tokens=(1, 8, 32, 64, 256, 2048, 8192), repeat: int = 20) -> list[dict]:
    """Microseconds per all-reduce of (tokens, hidden) bf16, replayed in a CUDA graph as decode runs it."""
    rows, stream = [], torch.cuda.Stream()
    for T in tokens:
        x, graph = torch.zeros(T, hidden, device="cuda", dtype=torch.bfloat16), torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(repeat):
                dist.all_reduce(x)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        agree(0, dist.ReduceOp.MAX)  # a barrier: the ranks start together
        start.record()
        for _ in range(5):
            graph.replay()
        end.record()
        end.synchronize()
        us = start.elapsed_time(end) * 1e3 / (5 * repeat)
        rows.append({"tokens": T, "bytes": x.numel() * 2, "us": us, "gb_per_s": x.numel() * 2 / us / 1e3})
    return rows


def broadcast_us(n: int = 200) -> float:
    agree(0, dist.ReduceOp.MAX)
    start = time.perf_counter()
    for _ in range(n):
        agree(time.perf_counter())
    return (time.perf_counter() - start) / n * 1e6


def capacity(engine) -> int:  # KV tokens in the pool at the engine's memory fraction, before the workload's cut
    gc.collect()
    torch.cuda.empty_cache()
    return engine.blocks_that_fit() * engine.block_size


def measure_tp(argv: list[str]):
    """Each workload on one GPU, then on every rank; rank 0 writes the JSON after each run."""
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node 2 -m chapters.ch07_tensor_parallel measure")
    p.add_argument("--workload", action="append", help="repeatable (default: W2-short, then W1)")
    p.add_argument("--out", required=True, help="the JSON file rank 0 writes")
    p.add_argument("--compile", default="none", help="chapter 6's option, for both runs")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    rank, world, results = dist.get_rank(), dist.get_world_size(), []
    command = f"torchrun --nproc-per-node {world} -m chapters.ch07_tensor_parallel measure {shlex.join(argv)}"
    for name in args.workload or ["W2-short", "W1"]:
        model = from_config(get_workload(name).preset, device="cuda", dtype=torch.bfloat16)
        requests = get_workload(name).requests(model.config.vocab_size)
        options = dict(compile=args.compile, cuda_graphs=args.cuda_graphs, max_batch_tokens=8192,
                       max_graph_batch=min(256, len(requests)))
        if rank == 0:
            results.append(measure("ch06_compiled", model, requests, name, options, f"{name}, 1 GPU", False))
            results[-1].extra["kv_capacity_tokens"] = capacity(CompiledEngine(model, compile="none"))
            save_results(results, args.out, command)
        agree(0)  # the other ranks wait here
        part = shard(model, rank, world)
        del model
        r = measure("ch07_tensor_parallel", part, requests, name, options, f"{name}, {world} GPUs", False)
        r.extra.update(kv_capacity_tokens=capacity(TensorParallelEngine(part, compile="none")),
                       all_reduce=all_reduce_times(part.config.hidden_size), clock_broadcast_us=broadcast_us())
        del part
        if rank == 0:
            results.append(r)
            save_results(results, args.out, command)
            show_measurement(results)


def decode_steps(r) -> np.ndarray:  # (GPU ms, tokens in the KV cache) of each decode step
    return np.array([(1e3 * (s["gpu_end"] - s["gpu_start"]), t["kv_used"])
                     for s, t in zip(r.extra["timeline"], r.extra["trace"]) if s["decode"]])


def read_ms(nbytes: float) -> float:  # at the copy bandwidth that `tools.bench attention` measured
    return nbytes / json.loads((FIGURES / "h200_attention.json").read_text())["copy_ceiling_tb_per_s"] / 1e9


def show_measurement(results=None, path=FIGURES / "h200_tp.json"):  # the runs; each workload's step, split
    results, per_layer = results or load_results(path), {}
    console.print(results_table(results, "Tensor parallelism on H200s"))
    for one, two in zip(results[::2], results[1::2]):  # each workload on one GPU, then on all
        c, e, steps = get_config(one.preset), two.extra, [decode_steps(r) for r in (one, two)]
        graph = np.median([s["graph"] for s in e["trace"] if s["graph"]])  # all-reduces: 2 a layer, at this size
        ar = 2 * c.num_hidden_layers * np.interp(graph, *zip(*[(x["tokens"], x["us"]) for x in e["all_reduce"]])) / 1e3
        speedup, cases = two.tokens_per_s / one.tokens_per_s, {"median step": [np.median(s[:, 0]) for s in steps]}
        print(f"{one.workload}, {e['world_size']} GPUs: {speedup:.2f}x, {speedup / e['world_size']:.0%} of ideal; "
              f"all-reduces {ar:.2f} ms a step; rank 0's clock {e['clock_broadcasts']} x {e['clock_broadcast_us']:.0f} "
              f"us; KV pool {one.extra['kv_capacity_tokens']:,} -> {e['kv_capacity_tokens']:,} tokens")
        if len({t["graph"] for t in one.extra["trace"] if t["decode"]}) == 1:  # one batch throughout
            (b1, a1), (b2, a2) = [np.polyfit(s[:, 1] / 1e3, s[:, 0], 1) for s in steps]
            cases[f"empty cache (the cache: {1e3 * b1:.1f} -> {1e3 * b2:.1f} us a step per 1000 tokens)"] = a1, a2
        for case, (t1, t2) in cases.items():
            work = 2 * (t1 - t2 + ar)
            per_layer[one.workload] = (t1 - work - read_ms(2 * c.hidden_size * c.vocab_size)) / c.num_hidden_layers
            print(f"  {case}: {t1:.2f} -> {t2:.2f} ms: work {work:.2f}, fixed {t1 - work:.2f}, "
                  f"{1e3 * per_layer[one.workload]:.0f} us a layer beside the LM head")
    return results, per_layer


if __name__ == "__main__" and "get_ipython" in globals():
    committed, fixed_per_layer = show_measurement()

# %% [markdown]
# Both estimates agree: about 3.5 ms of the 8B step does not shrink, 0.1 ms a layer beside the LM head, as at W1's
# layers a quarter as wide: small kernels, not bytes, which chapter 6's compiled model fuses (on one GPU, W1's step
# from 7.5 to about 6.1 ms). The work halves (14 GB of layers at 93% of the copy bandwidth); the KV pool doubles.
#
# ## What comes next
#
# Add GPUs and a GPU's share of the read shrinks as `1/N`; the small kernels do not, nor the all-reduces (a ring
# moves `2(N-1)/N` of each one's bytes in and out of each GPU). The cell builds a 70B shape's step (hidden 8192, 80
# layers, 8 KV heads: 8 GPUs at most) from this chapter's measurements, the all-reduces from the pair's sweep (a low
# bound: a ring's latency grows with `N`). Tensor parallelism stops paying where a GPU's share of the read falls to
# what every GPU pays whole; fused kernels and more requests push that out. **Pipeline parallelism** gives each GPU
# `1/N` of the layers and their small kernels, no all-reduce, but its stages take turns: `N` batches in flight, each
# reading the weights anew, and a token waits for all `N`. Within a node tensor parallelism serves more, sooner.

# %%
def what_comes_next(r, per_layer_ms: float, batch: int = 32):  # a 70B shape's decode step on N GPUs
    (b, us), vocab = zip(*[(x["bytes"], x["us"]) for x in r.extra["all_reduce"]]), get_config(r.preset).vocab_size
    print(f"all-reduce on 2 GPUs: {us[0]:.0f} us at {b[0]:,} bytes; {(b[-1] - b[-2]) / (us[-1] - us[-2]) / 1e3:.0f} "
          f"GB/s from {b[-2] >> 20} to {b[-1] >> 20} MB")
    h, L, ffn, kv = 8192, 80, 28672, 8 * 128  # the 70B shape: hidden, layers, MLP features, K (or V) width
    layers, head, fixed = 2 * L * h * (2 * h + 2 * kv + 3 * ffn), 2 * h * vocab, per_layer_ms * L  # bytes, ms
    cache = np.median(decode_steps(r)[:, 1]) / r.num_requests * 4 * L * kv  # a request's K and V (bf16), bytes
    comm = lambda tokens: np.interp(tokens * h * 2, b, us) / 1e3  # ms, one all-reduce (or send) of `tokens` rows
    for n in (2, 4, 8):  # tensor-parallel at `batch` and at n x `batch` requests; n stages, n batches in flight
        read, tp = read_ms((layers + batch * cache) / n + head), 2 * L * comm(2 * (n - 1) / n * batch)
        wide = read_ms((layers + n * batch * cache) / n + head) + fixed + 2 * L * comm(2 * (n - 1) * batch)
        step, stage = read + fixed + tp, read + fixed / n + comm(batch)  # the last stage holds the LM head
        print(f"{n} GPUs: {read:.1f} read + {fixed:.1f} small kernels + {tp:.1f} all-reduces = {step:.1f} ms: "
              f"{1e3 * batch / step / n:.0f} tokens/s a GPU ({1e3 * batch / (step - fixed) / n:.0f} without small "
              f"kernels); {n * batch} requests: tensor {1e3 * batch / wide:.0f} a GPU in {wide:.1f} ms steps, "
              f"pipeline {1e3 * batch / stage / n:.0f} a GPU, {n * stage:.0f} ms a token")


if __name__ == "__main__" and "get_ipython" in globals():
    what_comes_next(next(r for r in committed if "all_reduce" in r.extra), fixed_per_layer["W2-short"])

# %% [markdown]
# ## Exercises
#
# 1. Run `torchrun --nproc-per-node 2 -m chapters.ch07_tensor_parallel --device cpu --requests 8`, then the
#    same without torchrun. What do two CPU ranks cost, and why? (Answers: `solutions/ch07_tensor_parallel.py`.)
# 2. Give requests arrival times 5 ms apart: how many clock broadcasts (`--out`'s JSON) does a step make?
# 3. Split the LM head (half the vocabulary a rank, then an all-gather): at 32 and at 256 requests, does it pay?

# %%
OPTIONS = ch06_compiled.OPTIONS  # nothing new: the number of GPUs is torchrun's --nproc-per-node


def main(argv=None):
    from minigpt.cli import run_chapter

    argv, p = list(sys.argv[1:] if argv is None else argv), argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    measuring = argv[:1] == ["measure"]
    with ranks("cuda" if measuring else p.parse_known_args(argv)[0].device) as rank:
        if measuring:
            return measure_tp(argv[1:])
        if rank:  # rank 0 alone prints and writes
            argv += ["--no-progress", "--out", os.devnull]
        with contextlib.redirect_stdout(open(os.devnull, "w")) if rank else contextlib.nullcontext():
            run_chapter("ch07_tensor_parallel", argv, OPTIONS)


if __name__ == "__main__" and "get_ipython" not in globals():  # python -m chapters.<this chapter>
    main()
elif __name__ == "__main__":  # in a notebook: a small run beside the chapters before this one
    main(["--requests", "8", "--compare", "--no-progress"])
