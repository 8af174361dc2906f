"""The whole-book benchmark: every chapter on one workload, results as JSON under figures/.

    python -m tools.bench                        # CPU: W1-small, every chapter, in seconds
    python -m tools.bench --device cuda --workload W1 --subset ch01_naive=16 --out figures/h200_w1.json
    python -m tools.bench --device cuda --workload W1 --chapters transformers_cb,transformers_cb@use_async=true,ch05_async
                                                    # transformers' own continuous batching beside the book's engine
    python -m tools.bench attention --out figures/h200_attention.json   # the paged kernel's bandwidth
    python -m tools.bench memory --out figures/fixed_memory_w1.json   # requests running in a fixed KV memory
    python -m tools.bench latency --out figures/cpu_latency.json --figure figures/cpu_latency.png   # under load
    python -m tools.bench profile --out figures/h200_profile_ch05.json   # where the GPU time goes, by kernel
    python -m tools.bench report                 # figures/*.png and the README's results, from the JSON
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import sys
from pathlib import Path

import torch

from minigpt import from_config, get_config, get_workload, results_table, save_results
from minigpt.cli import (CHAPTERS, add_common_arguments, check_arguments, default_dtype, measure, positive_int,
                         set_threads, warm_up_stages)
from minigpt.metrics import FIGURES, console, decode_phase, environment, gpu_busy


def parse_options(items: list[str]) -> dict:
    """["use_async=false", "num_blocks=100"] -> {"use_async": False, "num_blocks": 100}"""
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not (k and eq and v):
            raise argparse.ArgumentTypeError(f"an engine option is NAME=VALUE (e.g. num_blocks=100), got {item!r}")
        try:
            out[k] = json.loads(v) if v[:1] in "0123456789[{tfn-" else v
        except json.JSONDecodeError:
            out[k] = v
    return out


def subset_arg(text: str) -> tuple[str, int]:
    """argparse type for --subset: "CHAPTER=N" -> (CHAPTER, N)."""
    name, _, n = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"expected CHAPTER=N (e.g. ch01_naive=8), got {text!r}")
    return name, positive_int(n)


def chapter_option(text: str) -> tuple[str, dict]:
    """argparse type for --option: "CHAPTER:NAME=VALUE" -> (CHAPTER, {NAME: VALUE})."""
    chapter, colon, kv = text.partition(":")
    if not (chapter and colon):
        raise argparse.ArgumentTypeError(f"expected CHAPTER:NAME=VALUE (e.g. ch04_paged:num_blocks=100), got {text!r}")
    return chapter, parse_options([kv])


def check_chapters_named(p: argparse.ArgumentParser, args, running: list[str]):
    """--subset and --option name chapters of this run: a typo would otherwise run that chapter unchanged."""
    for flag, named in (("--subset", [name for name, _ in args.subset]), ("--option", [name for name, _ in args.option])):
        if unknown := [name for name in named if name not in running]:
            p.error(f"{flag}: {', '.join(unknown)} is not among --chapters ({', '.join(dict.fromkeys(running))})")


def run_chapters(argv):
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--chapters", default=",".join(CHAPTERS), help="comma-separated; CHAPTER@NAME=VALUE+... for variants")
    p.add_argument("--subset", action="append", default=[], type=subset_arg, help="CHAPTER=N: run only the first N requests")
    p.add_argument("--option", action="append", default=[], type=chapter_option, help="CHAPTER:NAME=VALUE, an engine option")
    p.add_argument("--repeat", type=positive_int, default=1, help="time each chapter N times, report the median run")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    check_arguments(p, args)
    threads = set_threads(args.device, args.threads)
    known = set(CHAPTERS) | {"transformers_cb"}
    for label in args.chapters.split(","):
        name, _, variant = label.partition("@")
        if name not in known:
            p.error(f"--chapters: unknown {name!r}; choose from {', '.join(sorted(known))}")
        try:
            parse_options(variant.split("+") if variant else [])
        except argparse.ArgumentTypeError as error:
            p.error(f"--chapters: {error}")
    labels = args.chapters.split(",")
    check_chapters_named(p, args, labels + [label.partition("@")[0] for label in labels])
    workload = get_workload(args.workload)
    dtype = default_dtype(args.device)
    model = from_config(args.preset or workload.preset, device=args.device, dtype=dtype)
    requests = workload.requests(model.config.vocab_size, args.requests, rate=args.rate, burst=args.burst)
    subsets = dict(args.subset)
    options: dict[str, dict] = {}
    for chapter, option in args.option:
        options.setdefault(chapter, {}).update(option)
    results, failed = [], {}
    for label in args.chapters.split(","):
        # "ch05_async@use_async=false": a chapter with options of its own, labelled as given
        name, _, variant = label.partition("@")
        opts = {**options.get(name, {}), **parse_options(variant.split("+") if variant else [])}
        subset = requests[: subsets.get(label, subsets.get(name, len(requests)))]
        if name == "transformers_cb":  # the peer, on the same machine, weights and requests
            try:
                results.append(transformers_cb(model, subset, workload.name, args.device, label, args.repeat, **opts))
            except Exception as e:  # an optional comparison: say why (in the results too), go on with the chapters
                failed[label] = f"{type(e).__name__}: {e}"
                console.print(f"[red]{label} failed[/red]: {failed[label]}")
        else:
            results.append(measure(name, model, subset, workload.name, opts, label=label, progress=not args.no_progress,
                                   repeat=args.repeat))
        if args.device == "cuda":  # what a chapter's pools held goes back: the next sizes its own from the free memory
            torch.cuda.empty_cache()
        if label not in failed:
            console.print(results_table(results[-1:], ""))
        if args.out:  # write as we go: a long run that is cut off keeps what it measured
            save_results(results, args.out, command="python -m tools.bench " + shlex.join(argv), failed=failed)
    console.print(results_table(results, f"{workload.name} on {args.device} ({threads} threads): {model.config.name}, {dtype}"))


def copy_ceiling(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in TB/s, counting bytes read and written."""
    import triton.testing

    x = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * nbytes / triton.testing.do_bench(lambda: y.copy_(x), return_mode="median") / 1e9


def transformers_generate(model, requests, use_async: bool = False, use_cuda_graph: bool | None = None,
                          block_size: int = 256, max_memory_percent: float | None = None,
                          deadline_s: float = 600.0) -> dict:
    """transformers' own continuous batching (`continuous_batching_context_manager`) on the same weights and
    requests, EOS ignored, each request with its own max_new_tokens, in the configuration given (its async mode
    and CUDA graphs need CUDA; `use_cuda_graph=None` lets it decide). Stops waiting after `deadline_s`. Returns
    the finished requests' tokens, the wall time from the first request to the last result (its warm-up
    excluded), whether all finished, the attention it ran, and the warnings it logged (a failed warm-up among
    them: it sizes its KV cache from the free memory, `max_memory_percent` of it, then warms up in the rest)."""
    import logging.handlers
    import time

    import transformers
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    from minigpt.reference import to_hf

    hf = to_hf(model)
    hf.generation_config.eos_token_id = None
    config = transformers.GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0,
                                           max_new_tokens=max(r.max_new_tokens for r in requests))
    hints = WorkloadHints(max_prompt_length=max(len(r.prompt_ids) for r in requests),
                          max_generated_length=config.max_new_tokens, num_requests=len(requests))
    batching = ContinuousBatchingConfig(use_async_batching=use_async, use_cuda_graph=use_cuda_graph,
                                        block_size=block_size, max_memory_percent=max_memory_percent)
    warnings = logging.handlers.BufferingHandler(capacity=1000)
    warnings.setLevel(logging.WARNING)
    logger = logging.getLogger("ContinuousBatchingLogger")
    logger.addHandler(warnings)
    manager_cm = hf.continuous_batching_context_manager(generation_config=config, continuous_batching_config=batching,
                                                        block=True, timeout=5, warmup=True, workload_hints=hints)
    try:
        done = {}
        with manager_cm as manager:
            attention = hf.config._attn_implementation  # without flash-attn installed: "paged|sdpa"
            start = time.perf_counter()
            for i, r in enumerate(requests):
                manager.add_request(r.prompt_ids, request_id=f"r{i}", max_new_tokens=r.max_new_tokens)
            while len(done) < len(requests) and time.perf_counter() - start < deadline_s:
                result = manager.get_result(timeout=1)
                if result is not None and result.error:  # it fails the requests in flight when its loop fails
                    raise RuntimeError(f"its request {result.request_id} failed after {len(done)} of {len(requests)} "
                                       f"were done: {result.error}")
                if result is not None and result.is_finished():
                    done[result.request_id] = result
                elif result is None and not manager.is_running():
                    raise RuntimeError(f"its manager stopped with {len(done)} of {len(requests)} requests done")
            wall = time.perf_counter() - start
    finally:
        logger.removeHandler(warnings)
    tokens = [list(done[f"r{i}"].generated_tokens) for i in range(len(requests)) if f"r{i}" in done]
    return {"tokens": tokens, "wall_s": wall,
            "finished": len(done) == len(requests), "attention": attention, "graphs": batching.use_cuda_graph,
            "warm_up_failed": any("Failed to warm up" in r.getMessage() for r in warnings.buffer),
            "errors": [r.getMessage() for r in warnings.buffer if r.levelno >= logging.ERROR]}


def transformers_cb(model, requests, workload: str, device: str, label: str, repeat: int = 1, **options):
    """transformers' continuous batching as one more row of the bench, in the configuration its options name
    (use_async, use_cuda_graph, block_size, max_memory_percent, deadline_s), run `repeat` times in this process
    (a later run finds what the first built: cuDNN's plans), the run of median wall time reported, every run's
    wall time kept. A run cut at its deadline is a row that says so, with what it did and no throughput."""
    import transformers

    from minigpt import RunResult

    runs = [transformers_generate(model, requests, **options) for _ in range(max(repeat, 1))]
    walls = [r["wall_s"] for r in runs]  # a run cut at its deadline sorts as the slowest
    run = sorted(runs, key=lambda r: r["wall_s"] if r["finished"] else float("inf"))[(len(runs) - 1) // 2]
    total = sum(len(t) for t in run["tokens"])
    graphs = run["graphs"]  # what it decided, where it was left to decide
    config = (f"{'async' if options.get('use_async') else 'sync'}, CUDA graphs {graphs}, "
              f"block_size {options.get('block_size', 256)}, {run['attention']}")
    failures = sum(r["warm_up_failed"] for r in runs)  # each run is a new manager, with its own warm-up
    allocator = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")  # e.g. expandable_segments:True, against fragments
    cut = peer_run_note(walls, failures, allocator)
    cut += f"; its loop logged: {run['errors'][0]}" if run["errors"] else ""
    cut += "" if run["finished"] else (f"; cut at its {run['wall_s']:.0f} s deadline with {len(run['tokens'])} of "
                                      f"{len(requests)} requests done")
    return RunResult(chapter=label, workload=workload, preset=model.config.name, device=device,
                     dtype=str(model.dtype).removeprefix("torch."), num_requests=len(requests), output_tokens=total,
                     wall_s=run["wall_s"], tokens_per_s=total / run["wall_s"] if run["finished"] else float("nan"),
                     ttft_p50_s=float("nan"), tpot_p50_s=float("nan"),
                     note=f"transformers {transformers.__version__}, {config}{cut}",
                     extra={"finished": run["finished"], "warm_up_failed": run["warm_up_failed"], "walls_s": walls,
                            "warm_up_failures": failures,
                            "config": {**options, "use_cuda_graph": str(graphs)}, "allocator": allocator})


def failed_warm_up_runs(log: str) -> list[str]:
    """The peer's configurations whose warm-up failed, in the order of a bench log: each failure is logged
    before the row of the run it belongs to."""
    failed, pending = [], False
    for line in log.splitlines():
        pending = pending or "Failed to warm up" in line
        if pending and line.startswith("│ transformers_cb"):
            failed.append(line.split("│")[1].strip())
            pending = False
    return failed


def peer_run_note(walls: list[float], failures: int, allocator: str | None) -> str:
    """What the peer's row says about its runs: failed warm-ups, which run is reported, the allocator."""
    note = ""
    if failures:
        note += ("; its warm-up failed, so its timed run includes its graph captures" if len(walls) == 1 else
                 f"; its warm-up failed in {failures} of {len(walls)} runs, so those timed runs include their graph captures")
    if len(walls) > 1:
        which = "the median" if len(walls) % 2 else "the faster" if len(walls) == 2 else "the faster of the middle two"
        note += f"; {which} of {len(walls)} runs ({', '.join(f'{w:.1f}' for w in walls)} s)"
    return note + (f"; PYTORCH_CUDA_ALLOC_CONF={allocator}" if allocator else "")


def bench_attention(argv):
    """Paged decode attention at W1's decode shape: bytes read / time, against the copy ceiling."""
    import triton.testing

    from chapters.ch04_paged import paged_decode_reference, paged_decode_triton

    p = argparse.ArgumentParser(prog="python -m tools.bench attention")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    ceiling = copy_ceiling()
    for B, ctx, H, Hkv, bs in [(256, 1024, 16, 8, 16), (256, 1024, 16, 8, 64), (32, 8192, 32, 8, 16),
                               (32, 1024, 32, 8, 16), (64, 2048, 16, 8, 16)]:
        D = 128
        width = ctx // bs
        blocks = B * width
        k = torch.randn(blocks * bs, Hkv, D, device="cuda", dtype=torch.bfloat16)  # a layer's cache rows
        v = torch.randn_like(k)
        tables = torch.randperm(blocks, device="cuda").view(B, width)
        lens = torch.full((B,), ctx, device="cuda")
        q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * k.numel() * k.element_size()
        for name, fn in [("triton", lambda: paged_decode_triton(q, k, v, tables, lens, bs)),
                         ("gather+sdpa", lambda: paged_decode_reference(q, k, v, tables, lens, bs))]:
            ms = triton.testing.do_bench(fn, return_mode="median")
            rows.append({"kernel": name, "batch": B, "context": ctx, "heads": H, "kv_heads": Hkv,
                         "block_size": bs, "us": ms * 1e3, "tb_per_s": nbytes / ms / 1e9,
                         "of_ceiling": nbytes / ms / 1e9 / ceiling})
            console.print(rows[-1])
    data = {"command": "python -m tools.bench attention " + shlex.join(argv), "environment": environment(),
            "copy_ceiling_tb_per_s": ceiling, "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")


def bench_fixed_memory(argv):
    """How many requests run at once in the same KV memory: chapter 3's slots against chapter 4's blocks.

    A question of scheduling, not of speed, so it runs anywhere: W1's request lengths, a one-layer tiny model
    on the CPU by default, and KV memory for `--slots` requests of W1's longest length."""
    from chapters import ch03_continuous, ch04_paged
    from minigpt import PRESETS, max_total_len

    p = argparse.ArgumentParser(prog="python -m tools.bench memory")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    model = from_config(PRESETS["tiny"].with_(num_hidden_layers=1))
    requests = get_workload("W1").requests(model.config.vocab_size, args.requests)
    slot_len = max(max_total_len(r, model.config) for r in requests)
    runs = {"ch03 slots": ch03_continuous.generate(model, requests, max_seqs=args.slots, max_batch_tokens=4096),
            "ch04 blocks": ch04_paged.generate(model, requests, num_blocks=args.slots * slot_len // args.block_size,
                                               block_size=args.block_size, max_batch_tokens=4096)}
    rows = [{"engine": name, "steps": out.stats["steps"], "preemptions": out.stats.get("preemptions", 0),
             "mean_running": sum(s["running"] for s in out.stats["trace"]) / out.stats["steps"],
             "max_running": max(s["running"] for s in out.stats["trace"]),
             "running": [s["running"] for s in out.stats["trace"]]} for name, out in runs.items()]
    for r in rows:
        console.print(f"{r['engine']}: {r['mean_running']:.1f} requests running on average (at most "
                      f"{r['max_running']}), {r['steps']} steps, {r['preemptions']} preemptions")
    if args.out:
        data = {"command": "python -m tools.bench memory " + shlex.join(argv), "environment": environment(),
                "num_requests": args.requests, "kv_tokens": args.slots * slot_len, "results": rows}
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")


LATENCY_CHAPTERS = ["ch02_padded", "ch03_continuous", "ch04_paged", "ch05_async", "ch06_compiled"]


def bench_latency(argv):
    """Latency under load: the same requests arriving at a sweep of rates (a Poisson process, seeded), each
    chapter's TTFT, TPOT and end-to-end percentiles and its throughput at each rate, and the largest rate it
    sustains within the SLO (its goodput). Each chapter first serves its requests once, untimed: a shape's first
    use (a cuDNN plan for each new key length, on a GPU) is paid there, not in the sweep."""
    from minigpt import plots
    from minigpt.cli import chapter_module
    from minigpt.metrics import STAGES, latency_summary, stage

    p = argparse.ArgumentParser(prog="python -m tools.bench latency", description=bench_latency.__doc__)
    add_common_arguments(p)
    p.add_argument("--chapters", default=",".join(LATENCY_CHAPTERS), help="comma-separated chapters")
    p.add_argument("--subset", action="append", default=[], type=subset_arg,
                   help="CHAPTER=N: that chapter serves only the first N requests (a slow one, on a GPU)")
    p.add_argument("--rates", default=None,
                   help="requests a second, comma-separated (default: 20,40,80,160,320 on the CPU, 4,8,16,32,64 on a GPU)")
    p.add_argument("--option", action="append", default=[], type=chapter_option, help="CHAPTER:NAME=VALUE")
    p.add_argument("--slo-ttft", type=float, default=None,
                   help="SLO: TTFT p90 at most this many seconds (default: 0.25 on the CPU's tiny model, 1 on a GPU)")
    p.add_argument("--slo-tpot", type=float, default=None,
                   help="SLO: TPOT p90 at most this many seconds (default: 0.005 on the CPU, 0.05 on a GPU)")
    p.add_argument("--every-rate", action="store_true",
                   help="run every rate; by default a chapter stops at the first rate where it misses the SLO")
    p.add_argument("--out", default=None, help="write the sweep as JSON here")
    p.add_argument("--figure", default=None, help="draw p90 TTFT and TPOT against the rate here (PNG)")
    args = p.parse_args(argv)
    check_arguments(p, args)
    set_threads(args.device, args.threads)
    cpu = args.device == "cpu"  # the tiny model's steps take milliseconds: higher rates, a tighter SLO
    args.rates = args.rates or ("20,40,80,160,320" if cpu else "4,8,16,32,64")
    args.slo_ttft = args.slo_ttft if args.slo_ttft is not None else (0.25 if cpu else 1.0)
    args.slo_tpot = args.slo_tpot if args.slo_tpot is not None else (0.005 if cpu else 0.05)
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        p.error(f"--rates: expected numbers separated by commas, got {args.rates!r}")
    chapters = args.chapters.split(",")
    if unknown := [c for c in chapters if c not in CHAPTERS]:
        p.error(f"--chapters: unknown {', '.join(unknown)}; choose from {', '.join(CHAPTERS)}")
    check_chapters_named(p, args, chapters)
    workload = get_workload(args.workload)
    model = from_config(args.preset or workload.preset, device=args.device, dtype=default_dtype(args.device))
    options = {}
    for chapter, option in args.option:
        options.setdefault(chapter, {}).update(option)
    slo = {"ttft_p90_s": args.slo_ttft, "tpot_p90_s": args.slo_tpot}
    rows, stages, subsets = [], {}, dict(args.subset)
    for chapter in chapters:
        generate, opts = chapter_module(chapter).generate, options.get(chapter, {})
        first_stage, count = len(STAGES), subsets.get(chapter, args.requests)
        warm_up_stages(chapter, model, workload.requests(model.config.vocab_size), opts)  # each shown with its seconds
        with stage(f"{chapter}: its requests once, all at once, untimed (every shape they meet is met here)"):
            generate(model, workload.requests(model.config.vocab_size, args.requests)[:count], **opts)
        stages[chapter] = STAGES[first_stage:]
        for rate in sorted(rates):
            requests = workload.requests(model.config.vocab_size, args.requests, rate=rate, burst=args.burst)[:count]
            completions = generate(model, requests, **opts)
            wall = max(c.token_times[-1] for c in completions if c.token_times)
            rows.append({"chapter": chapter, "rate": rate, "burst": args.burst, "requests": len(requests),
                         "tokens_per_s": sum(len(c.tokens) for c in completions) / wall,
                         **latency_summary(completions), **step_kinds(completions.stats)})
            r = rows[-1]
            console.print(f"{chapter} at {rate:g} req/s: TTFT p90 {r['ttft']['p90'] * 1e3:,.0f} ms, TPOT p90 "
                          f"{r['tpot']['p90'] * 1e3:,.1f} ms, {r['tokens_per_s']:,.0f} tokens/s" +
                          (f"; {r['prompt_steps']:,} of {r['steps']:,} steps carried a prompt" if "steps" in r else ""),
                          highlight=False)
            if not args.every_rate and not goodput([r], slo)[chapter]:
                console.print(f"{chapter}: misses the SLO at {rate:g} req/s; higher rates only queue longer, not run",
                              highlight=False)
                break
    for chapter, rate in goodput(rows, slo).items():
        console.print(f"{chapter}: sustains {rate:g} req/s within the SLO" if rate else
                      f"{chapter}: misses the SLO at every rate tried", highlight=False)
    data = {"command": "python -m tools.bench latency " + shlex.join(argv), "environment": environment(),
            "workload": workload.name, "preset": model.config.name, "slo": slo, "stages": stages, "warm_pass": True,
            "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    if args.figure:
        plots.latency_vs_rate(rows, slo, goodput(rows, slo), args.figure,
                              f"{workload.name} on {args.device}: latency under load")
    return data


def step_kinds(stats: dict) -> dict:
    """How the engine's steps split under load: those that carry a prompt chunk, those that replay a decode
    graph, and (where chapter 5's timeline has them) the median wall time from one step's start to the next's
    of either kind. Empty for an engine without a step trace (chapter 2)."""
    trace = stats.get("trace")
    if not trace:
        return {}
    kinds = {"steps": len(trace), "prompt_steps": sum(s["tokens"] > s["decode"] for s in trace),
             "graph_steps": sum(bool(s.get("graph")) for s in trace)}
    timeline = stats.get("timeline") or []
    for name, graph in (("graph_step_ms", True), ("other_step_ms", False)):
        gaps = [b["start"] - a["start"] for a, b in zip(timeline, timeline[1:]) if bool(a["graph"]) == graph]
        if gaps:
            kinds[name] = statistics.median(gaps) * 1e3
    return kinds


def goodput(rows: list[dict], slo: dict) -> dict[str, float]:
    """Each chapter's largest rate tried whose p90 TTFT and TPOT are both within the SLO (0: none)."""
    best = {}
    for r in rows:
        ok = r["ttft"]["p90"] <= slo["ttft_p90_s"] and r["tpot"]["p90"] <= slo["tpot_p90_s"]
        best[r["chapter"]] = max(best.get(r["chapter"], 0.0), r["rate"] if ok else 0.0)
    return best


def kernel_kind(name: str) -> str:
    """A rough class of a CUDA kernel, by its name."""
    n = name.lower()
    if "paged_decode" in n or "flash" in n or "fmha" in n or "attention" in n:
        return "attention"
    if "gemm" in n or "gemv" in n or "nvjet" in n or "cutlass" in n or "xmma" in n:
        return "matmul"
    return "other (norms, RoPE, copies, elementwise)"


def bench_profile(argv):
    """Where a chapter's GPU time goes: torch.profiler over one run, its kernels grouped by name and kind."""
    import dataclasses
    import importlib

    from torch.profiler import ProfilerActivity, profile

    p = argparse.ArgumentParser(prog="python -m tools.bench profile")
    p.add_argument("--chapter", default="ch05_async")
    p.add_argument("--workload", default="W1")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--option", action="append", default=[], help="NAME=VALUE, an engine option")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap each request's output (a shorter run)")
    p.add_argument("--cpu", action="store_true", help="also the CPU side: the top operators by their own CPU time")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    workload = get_workload(args.workload)
    model = from_config(workload.preset, device="cuda", dtype=torch.bfloat16)
    requests = workload.requests(model.config.vocab_size, args.requests)
    if args.max_new_tokens:  # the CPU side's profile grows with every operator of every step: keep it short
        requests = [dataclasses.replace(r, max_new_tokens=min(r.max_new_tokens, args.max_new_tokens)) for r in requests]
    generate, options = importlib.import_module(f"chapters.{args.chapter}").generate, parse_options(args.option)
    generate(model, requests[:8], **options)  # warm-up: compile, allocate
    with profile(activities=[ProfilerActivity.CUDA] + [ProfilerActivity.CPU] * args.cpu) as prof:
        out = generate(model, requests, **options)
    steps = out.stats["steps"]
    events = prof.key_averages()
    kernels = [e for e in events if e.device_time_total > 0 and e.self_cpu_time_total == 0]
    total = sum(e.device_time_total for e in kernels)
    rows = sorted(({"kernel": e.key[:100], "kind": kernel_kind(e.key), "count": e.count,
                    "per_step": e.count / steps, "ms": e.device_time_total / 1e3,
                    "share": e.device_time_total / total} for e in kernels), key=lambda r: -r["ms"])
    kinds = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], {"kind": r["kind"], "ms": 0.0, "per_step": 0.0, "share": 0.0})
        k["ms"], k["per_step"], k["share"] = k["ms"] + r["ms"], k["per_step"] + r["per_step"], k["share"] + r["share"]
    for r in list(kinds.values()) + rows[:25]:
        console.print(f"{r['share']:6.1%} {r['ms']:9.1f} ms {r['per_step']:7.1f}/step  {r.get('kernel', r['kind'])}")
    console.print(f"{steps} steps, {total / 1e3:.0f} ms of kernels, {sum(r['per_step'] for r in rows):.0f} kernels a step")
    cpu = sorted(({"op": e.key[:100], "count": e.count, "per_step": e.count / steps, "self_ms": e.self_cpu_time_total / 1e3}
                  for e in events if e.self_cpu_time_total > 0), key=lambda r: -r["self_ms"])
    for r in cpu[:25]:
        console.print(f"CPU {r['self_ms']:9.1f} ms {r['per_step']:7.1f}/step  {r['op']}")
    if args.out:
        data = {"command": "python -m tools.bench profile " + shlex.join(argv), "environment": environment(),
                "steps": steps, "kernel_ms": total / 1e3, "kinds": list(kinds.values()), "kernels": rows,
                "cpu_ops": cpu[:100]}
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")


# ----- the report: figures and the README's tables, from the committed JSON ----------------------------------
W1_FILE = "h200_w1.json"  # the ladder: every chapter on W1 in one process, chapters 1-2 on stated subsets
W2_FILE = "h200_w2.json"  # W2 in full: the seed article's experiment
STEP_SPLIT_FILE = "lab/h200_latency_steps_ch05_03f4a64.json"  # chapter 5 under load, its steps counted by kind
TP_FILE = "h200_tp.json"  # chapter 7 on one H200 and on two
# transformers' continuous batching: its configurations tried on W1's first 32 requests, then the fastest on
# full W1 at the ladder's commit; its own logs beside them (the warnings it printed)
PEER_SEARCH, PEER_FILE = "h200_w1_transformers_search.json", "h200_w1_transformers.json"
PEER_LOG = "h200_w1_transformers.log"
PEER_SEARCH_LOG = "lab/h200_w1_transformers_828177d.log"  # the search's process (and a full run)
LATENCY_FILE = "h200_latency.json"  # latency under load on the H200 (`bench latency`)
WARM_FILE = "h200_first_run_warm.json"  # chapters 4-6 in a later process, inductor's and Triton's caches on disk
CPU_LATENCY_AGAIN = "lab/cpu_latency_2d93929.json"  # cpu_latency.json's command run again, later
SDPA_LOG = "lab/h200_sdpa_first_call.log"  # SDPA's first call at each new key length against its next
CHAPTER_ROWS = [  # (result label, row name, idea, what its engine runs)
    ("ch01_naive", "ch01_naive", "one request at a time, KV cache", "eager"),
    ("ch02_padded", "ch02_padded", "static batches, left padding + mask", "eager"),
    ("ch03_continuous", "ch03_continuous", "ragged batches, token budget, chunked prefill", "eager"),
    ("ch04_paged", "ch04_paged", "paged KV cache, Triton paged attention, preemption", "eager"),
    ("ch05_async@use_async=false", "ch05_async --no-use-async", "ch05's engine run synchronously", "eager, decode as CUDA graphs"),
    ("ch05_async", "ch05_async", "streams + events, two slots, carry-over on the GPU", "eager, decode as CUDA graphs"),
    ("ch06_compiled", "ch06_compiled", "ch05 with the model compiled around attention",
     "compiled (inductor), decode as CUDA graphs"),
]


def load(name: str) -> dict:
    return json.loads((FIGURES / name).read_text())


def w1_results() -> dict:
    """The ladder's rows: label -> result dict."""
    return {r["chapter"]: r for r in load(W1_FILE)["results"]}


def report(argv):
    """The figures and the README's results section, drawn from the committed JSON in figures/."""
    from minigpt import plots

    argparse.ArgumentParser(prog="python -m tools.bench report", description=report.__doc__).parse_args(argv)
    latest, ref, peer = w1_results(), load("reference_h200.json"), load(PEER_FILE)["results"][0]
    rows = [(row, latest[label]) for label, row, _, _ in CHAPTER_ROWS if label in latest]
    ladder_rows = [(name, r["tokens_per_s"], f"{r['num_requests']} req" if r["num_requests"] < 256 else "")
                   for name, r in rows]
    plots.ladder(ladder_rows, {"limit: W1's KV bytes at the copy bandwidth": ref["w1_floor_tokens_per_s"],
                               "transformers' continuous batching, full W1, its fastest configuration tried":
                                   peer["tokens_per_s"]},
                 FIGURES / "ladder_w1.png", "W1 on one H200 (qwen3-0.6b shape, bf16): output tokens/s")
    ch02 = latest["ch02_padded"]
    plots.padding_waste(ch02["extra"], FIGURES / "padding_waste_w1.png",
                        f"ch02 on W1 ({ch02['num_requests']} requests, one batch): wasted slots")
    sweep = load(LATENCY_FILE)
    plots.latency_vs_rate(sweep["results"], sweep["slo"], goodput(sweep["results"], sweep["slo"]),
                          FIGURES / "h200_latency.png", f"{sweep['workload']} on one H200: latency under load")
    ch03, ch04 = latest["ch03_continuous"], latest["ch04_paged"]
    plots.kv_memory({"ch03 slots": ch03["extra"]["trace"], "ch04 blocks": ch04["extra"]["trace"]},
                    ch03["extra"]["kv_bytes_per_token"], FIGURES / "kv_memory_w1.png",
                    "KV memory over W1 on the H200: reserved vs holding keys")
    plots.occupancy(ch03["extra"]["trace"], FIGURES / "occupancy_w1.png", "ch03 on W1: batch occupancy per step")
    sync_w1, async_w1 = latest["ch05_async@use_async=false"], latest["ch05_async"]
    plots.async_timeline({"sync": sync_w1["extra"]["timeline"], "async": async_w1["extra"]["timeline"]},
                         FIGURES / "async_timeline_w1.png", "ch05 on W1, decode steps 500-519, one H200", first=500)
    w2 = {r["chapter"]: r for r in load(W2_FILE)["results"]}
    plots.async_timeline({"sync": w2["ch05_async@use_async=false"]["extra"]["timeline"],
                          "async": w2["ch05_async"]["extra"]["timeline"]},
                         FIGURES / "async_timeline_w2.png", "ch05 on W2 (llama3-8b shape), steps 4000-4019",
                         first=4000)
    memory = load("fixed_memory_w1.json")
    plots.running_requests({r["engine"]: r["running"] for r in memory["results"]}, FIGURES / "fixed_memory_w1.png",
                           f"W1's first {memory['num_requests']} requests in the same KV memory "
                           f"({memory['kv_tokens']:,} tokens): requests running per step")
    plots.step_split(tp_step_split(load(TP_FILE)), FIGURES / "tp_step_split.png",
                     "chapter 7: a decode step on one H200 and on two (the all-reduces from the in-graph sweep)")
    tp_runs = {}
    for r in load(TP_FILE)["results"]:
        workload, gpus = r["chapter"].split(", ")
        tp_runs.setdefault(workload, []).append((gpus, r["tokens_per_s"]))
    plots.scaling(tp_runs, FIGURES / "tp_scaling.png", "chapter 7 on H200s")
    sweep = load("cpu_latency.json")  # latency under load on the CPU (`bench latency`)
    plots.latency_vs_rate(sweep["results"], sweep["slo"], goodput(sweep["results"], sweep["slo"]),
                          FIGURES / "cpu_latency.png", f"{sweep['workload']} on a CPU: latency under load")
    write_generated_sections()
    for label in ("ch05_async@use_async=false", "ch05_async"):  # NOTES.md's W1 analysis, from the same data
        r = latest[label]
        tl, tr = r["extra"]["timeline"], r["extra"]["trace"]
        decode_gpu = sum(s["gpu_end"] - s["gpu_start"] for s in tl if s["graph"])
        kv_read = sum(s["kv_used"] for s in tr if s["graph"]) * r["extra"]["kv_bytes_per_token"]
        eager = [s for s in tl if not s["graph"]]
        console.print(f"{label} on W1: decode steps {decode_gpu:.2f} s of GPU work reading {kv_read / 1e12:.1f} TB of KV "
                      f"({kv_read / 4.24e12:.2f} s at 4.24 TB/s); {len(eager)} eager steps, "
                      f"{sum(s['gpu_end'] - s['gpu_start'] for s in eager):.2f} s of GPU span")
    console.print(f"wrote figures and README results from {', '.join([W1_FILE, W2_FILE, PEER_SEARCH, PEER_FILE])}")


def tp_step_split(data: dict) -> dict[str, list[tuple[str, float, float]]]:
    """Per workload: (run, median decode step ms, its all-reduces ms) for one GPU and two. A step's all-reduces
    are two a layer at the step's batch size, timed by the run's in-graph sweep (interpolated)."""
    import numpy as np

    from minigpt import get_config

    split = {}
    for r in data["results"]:
        workload, gpus = r["chapter"].split(", ")
        steps = [(s["gpu_end"] - s["gpu_start"], s["tokens"]) for s in r["extra"]["timeline"] if s["graph"]]
        step, batch = float(np.median([t for t, _ in steps])), float(np.median([n for _, n in steps]))
        sweep = r["extra"].get("all_reduce")
        reduce_ms = 0.0 if not sweep else 2 * get_config(r["preset"]).num_hidden_layers * float(
            np.interp(batch, [x["tokens"] for x in sweep], [x["us"] for x in sweep])) / 1e3
        split.setdefault(workload, []).append((gpus, step * 1e3, reduce_ms))
    return split


def run_spread(r: dict) -> str:
    """The slowest and fastest of a row's timed runs, in tokens/s ("one run" where it ran once)."""
    walls = r["extra"].get("walls_s", [])
    return f"{r['output_tokens'] / max(walls):,.0f}-{r['output_tokens'] / min(walls):,.0f}" if len(walls) > 1 else "one run"


def sdpa_first_call() -> tuple[float, float]:
    """SDPA's default choice on the H200: ms for its first call at a new key length, and for a call again."""
    line = next(x for x in (FIGURES / SDPA_LOG).read_text().splitlines() if x.startswith("default:"))
    first, again = re.findall(r"([\d.]+) ms", line)
    return float(first), float(again)


def slow_first_runs(rows: list[dict]) -> list[tuple[str, float, float]]:
    """(chapter, first run s, median run s) for rows whose first timed run took over 1.5x their median."""
    return [(r["chapter"], r["extra"]["walls_s"][0], r["wall_s"]) for r in rows
            if len(r["extra"].get("walls_s", [])) > 1 and r["extra"]["walls_s"][0] > 1.5 * r["wall_s"]]


def first_run_stages(cold: list, warm: list) -> list[tuple[str, float, float]]:
    """(stage, cold s, warm s) for each stage a chapter's warm-up waited on, in order, its repeats summed (the
    warm-up runs the engine twice: a second engine captures its graphs again), without those that took no time."""
    def totals(stages):
        out = {}
        for name, seconds in stages:
            out[name] = out.get(name, 0.0) + seconds
        return out

    cold_s, warm_s = totals(cold), totals(warm)
    return [("the whole warm-up" if "warming up" in name else name, seconds, warm_s.get(name, float("nan")))
            for name, seconds in cold_s.items() if max(seconds, warm_s.get(name, 0.0)) >= 0.05]


def command_options(command: str, label: str) -> list[str]:
    """The engine options a bench command's --option gave the row `label` (its own, after "@", its name shows)."""
    words, name = shlex.split(command), label.partition("@")[0]
    return [w.partition(":")[2] for flag, w in zip(words, words[1:]) if flag == "--option" and w.startswith(name + ":")]


def results_markdown() -> str:
    """The README's results section, from the JSON files alone."""
    latest, ladder = w1_results(), load(W1_FILE)
    w2 = {r["chapter"]: r for r in load(W2_FILE)["results"]}
    w1_tokens = latest["ch03_continuous"]["output_tokens"]  # all of W1
    minutes = {c: w1_tokens / latest[c]["tokens_per_s"] / 60 for c in ("ch01_naive", "ch02_padded")}
    commits = ", ".join(sorted({load(f)["environment"]["commit"] for f in (W1_FILE, PEER_FILE)}))
    beside = " and ".join(name for f, name in ((LATENCY_FILE, "the latency sweep"), (WARM_FILE, "the warm first run"))
                          if load(f)["environment"]["commit"] == ladder["environment"]["commit"])
    lines = [f"Every W1 row below, the full-W1 peer's too, comes from one commit ({commits}) on one H200: the "
             "chapters one after another in one process, each warmed up untimed on a few short requests, then timed "
             "three times, and the peer after them in its own process. That H200 was one of two in its host: the "
             "ladder, the peer and W2 ran on it and 16 of the host's 32 cores, while "
             f"{beside} ran on the other GPU and the other 16 cores, at the same time (`taskset`; each file's command "
             "and commit are listed at the end). Chapters 1 and 2 ran a stated subset of W1: all of it "
             f"would take them about {minutes['ch01_naive']:.0f} and {minutes['ch02_padded']:.0f} minutes at these rates.",
             "", "| chapter | idea | what it runs; its options | H200 output tokens/s on W1 | its runs, slowest-fastest | gain over the "
             "previous | requests run | commit |", "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    prev = None
    for label, name, idea, runs in CHAPTER_ROWS:
        r = latest[label]
        module = name.split(" ")[0]
        gain = f"{r['tokens_per_s'] / prev:.1f}x" if prev else ""
        runs = "; ".join([runs] + command_options(ladder["command"], label))
        lines.append(f"| [`{name}`](chapters/{module}.py) | {idea} | {runs} | {r['tokens_per_s']:,.0f} | "
                     f"{run_spread(r)} | {gain} | {r['num_requests']} of 256 | {ladder['environment']['commit']} |")
        prev = r["tokens_per_s"]
    first, again = sdpa_first_call()
    slow = slow_first_runs([latest[label] for label, *_ in CHAPTER_ROWS])  # cuDNN's plans, built in a first run
    if slow:
        lines += ["", f"{' and '.join(name for name, *_ in slow)}: the first timed run is much the slowest "
                  f"({', '.join(f'{a:.1f} s against a median of {m:.1f}' for _, a, m in slow)}). These chapters "
                  "attend with PyTorch's SDPA, which on the H200 hands the call to cuDNN, and cuDNN builds a plan the "
                  f"first time it meets each key length: {first:.0f} ms, then {again:.2f} ms a call (`figures/{SDPA_LOG}`). "
                  "The warm-up's short requests meet few lengths, a first timed run most of W1's; the median is a "
                  "later run, with the plans built. Chapters 4-6 decode with their own Triton kernel and prefill with "
                  "FlashAttention's, no cuDNN."]
    search, full = load(PEER_SEARCH), load(PEER_FILE)
    peer, top = full["results"][0], latest["ch06_compiled"]
    logs = {f: (FIGURES / f).read_text() for f in (PEER_SEARCH_LOG, PEER_LOG)}
    failed_warmups = {f: log.count("Failed to warm up") for f, log in logs.items()}
    loop_errors = [line.split(" - ERROR - ")[1] for log in logs.values() for line in log.splitlines()
                   if " - ERROR - " in line]
    as_installed = load("reference_h200.json")["transformers_continuous_batching_sync_tokens_per_s"]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731  ("paged|sdpa" is not two columns)
    lines += ["", f"**Chapter 6 against transformers' own continuous batching on full W1, at the same commit on the "
              f"same machine: {top['tokens_per_s']:,.0f} against {peer['tokens_per_s']:,.0f} output tokens/s, "
              f"{top['tokens_per_s'] / peer['tokens_per_s']:.1f}x (and {top['tokens_per_s'] / as_installed:.1f}x against "
              f"the {as_installed:,} it ran once earlier as installed, without CUDA graphs: `figures/reference_h200.json`)" +
              ("; its warm-up failed in both its runs, so both include its graph captures (below)"
               if failed_warmups[PEER_LOG] > 1 else "") + ".** "
              "The peer (transformers' continuous batching) ran the same weights and requests (EOS ignored), each configuration below first on W1's "
              f"first {search['results'][0]['num_requests']} requests (commit {search['environment']['commit']}), "
              f"then the fastest, with `max_memory_percent=0.8` added, on all 256 (commit {full['environment']['commit']}). "
              "A configuration is its options joined by `+`: `use_cuda_graph`, `block_size` (tokens a KV block), "
              "`use_async`, `max_memory_percent` (the share of free memory its KV cache takes) are transformers' "
              "own; `deadline_s` is the bench's, the seconds after which it stops waiting and the row says what was "
              "done. `paged|sdpa` is the attention it ran (its paged cache with PyTorch's SDPA; flash-attn is not "
              "installed):", "",
              "| transformers_cb configuration | requests sent | output tokens/s | wall s | what it ran |",
              "| --- | ---: | ---: | ---: | --- |"]
    for r in search["results"] + full["results"]:
        speed = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] == r["tokens_per_s"] else "did not finish"
        note = r["note"]
        if r is peer:  # its note as the bench writes it now, the failed warm-ups counted from its log
            note = note.split(";")[0] + peer_run_note(r["extra"]["walls_s"], failed_warmups[PEER_LOG],
                                                      r["extra"].get("allocator"))
        lines.append(f"| `{r['chapter'].removeprefix('transformers_cb@')}` | {r['num_requests']} | {speed} | "
                     f"{r['wall_s']:.1f} | {cell(note)} |")
    if sum(failed_warmups.values()) or loop_errors:
        n = failed_warmups[PEER_LOG]
        full_run = f"in {'both' if n == 2 else n} runs on full W1 (`figures/{PEER_LOG}`), and " if n else ""
        searched = [c.removeprefix("transformers_cb@") for c in failed_warm_up_runs(logs[PEER_SEARCH_LOG])
                     if c in {r["chapter"] for r in search["results"]}]
        lines += ["", f"Its warm-up ran out of GPU memory {full_run}{failed_warmups[PEER_SEARCH_LOG]} times in the runs "
                  f"at commit {search['environment']['commit']}, among them the search's "
                  f"{' and '.join(f'`{c}`' for c in searched)} (their notes above predate the bench's mark for it; "
                  f"`figures/{PEER_SEARCH_LOG}`), so the fastest configuration was chosen among runs whose graph captures "
                  "were timed. It sizes its KV cache from the free memory, then "
                  "its warm-up asks for more, `max_memory_percent=0.8` notwithstanding. Such a run captures its CUDA graphs "
                  "inside its timed run, and its SDPA may build cuDNN's plans there too, as chapters 2 and 3 do in their "
                  "first run above. Each run opens a new manager with its own warm-up, and in the full run's process both "
                  f"failed; the second run, cuDNN's plans built by the first, took as long "
                  f"({' and '.join(f'{w:.1f}' for w in peer['extra']['walls_s'])} s). So the plans cost it nothing one "
                  "can see; what its graph captures cost inside the timed runs is not measured" +
                  (f" (`PYTORCH_CUDA_ALLOC_CONF={peer['extra']['allocator']}`, against the fragments, did not keep its "
                   "warm-up within memory)" if peer["extra"].get("allocator") else "") +
                  (f"; its async run's loop failed: \"{loop_errors[0].rstrip('.')}\"" if loop_errors else "") + "."]
    for title, runs in (("W1, sync against async, eager model (the decode phase is the fair comparison: NOTES.md)", latest),
                        ("W2 (llama3-8b shape, 32 requests x 8192 new tokens), the seed article's experiment, at "
                         f"commit {load(W2_FILE)['environment']['commit']}",
                         w2)):
        lines += ["", title + ":", "",
                  "| ch05 engine | wall s | output tokens/s | GPU busy, whole run | decode phase s | GPU busy, decode phase |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, name in (("ch05_async@use_async=false", "sync"), ("ch05_async", "async")):
            r = runs[label]
            span, busy = decode_phase(r["extra"]["timeline"])
            lines.append(f"| {name} | {r['wall_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['extra']['gpu_busy']:.1%} "
                         f"| {span:.2f} | {busy:.1%} |")
    warm = {r["chapter"]: r for r in load(WARM_FILE)["results"]}  # a later process, the caches on disk
    warm_commit = load(WARM_FILE)["environment"]["commit"]
    warm_commit = "" if warm_commit == ladder["environment"]["commit"] else f", commit {warm_commit}"
    lines += ["", "A first run on the H200 (the warm-up a chapter pays once, untimed): cold is the ladder's process, "
              "the first after emptying inductor's and Triton's caches, warm a process started with them on disk, "
              "filled by an earlier one "
              f"(`{WARM_FILE}`{warm_commit}). Chapter 5 reuses chapter 4's kernels in the cold process; a stage the warm-up "
              "meets twice (each of its two engines captures graphs) is summed.",
              "", "| chapter | stage | cold s | warm s |", "| --- | --- | ---: | ---: |"]
    for chapter in ("ch04_paged", "ch05_async", "ch06_compiled"):
        cold = latest[chapter]  # the ladder ran first on a fresh machine, the compile caches emptied
        for name, c, w in first_run_stages(cold["extra"]["stages"], warm[chapter]["extra"]["stages"]):
            lines.append(f"| {chapter} | {name} | {c:.1f} | {w:.1f} |")
    sweep = load(LATENCY_FILE)
    best, slo = goodput(sweep["results"], sweep["slo"]), sweep["slo"]
    ms = lambda r: f"{r['ttft']['p90'] * 1e3:,.0f} / {r['tpot']['p90'] * 1e3:,.1f}"  # noqa: E731
    workload = get_workload(sweep["workload"])
    mean_tokens = statistics.mean(r.max_new_tokens for r in workload.requests(get_config(sweep["preset"]).vocab_size))
    counts = {x["chapter"]: x["requests"] for x in sweep["results"]}
    few = [c for c, n in counts.items() if n < max(counts.values())]  # a burst each, not a load kept up
    bound = {c: latest[c]["tokens_per_s"] / mean_tokens for c in counts if latest[c]["num_requests"] == 256}
    lines += ["", f"Latency under load on the H200 ({sweep['workload']}, each chapter's requests arriving as a Poisson "
              f"process at each rate; SLO: TTFT p90 at most {slo['ttft_p90_s'] * 1e3:,.0f} ms and TPOT p90 at most "
              f"{slo['tpot_p90_s'] * 1e3:,.0f} ms; a chapter stops at its first miss; `{LATENCY_FILE}`, drawn in "
              "[figures/h200_latency.png](figures/h200_latency.png)). Its goodput is the largest rate tried whose "
              f"{max(counts.values()):,} requests met the SLO; the knee, where requests start to queue, lies near it or "
              "between it and the first miss. The last column bounds what a chapter can sustain: its tokens/s on all "
              f"of W1 at once (the ladder above) over the new tokens a {sweep['workload']} request asks for on average "
              f"({mean_tokens:.0f}):", "",
              "| chapter | requests | goodput, requests/s | p90 TTFT / TPOT ms there | first miss, requests/s | "
              "p90 TTFT / TPOT ms there | what missed | bound from the ladder, requests/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    queued = []
    for chapter, rate in best.items():
        mine = [x for x in sweep["results"] if x["chapter"] == chapter]
        held = next((x for x in mine if x["rate"] == rate), None)
        miss = next((x for x in mine if x["rate"] > rate), None)
        missed = miss and " and ".join(name for name, key in (("TTFT", "ttft"), ("TPOT", "tpot"))
                                       if miss[key]["p90"] > slo[f"{key}_p90_s"])
        bound_cell = f"{bound[chapter]:,.1f}" if chapter in bound else "none"
        if chapter in few:
            lines.append(f"| {chapter} | {counts[chapter]} | none: a burst (below) | | | | | {bound_cell} |")
            continue
        goodput_cell = format(rate, "g") if rate else "under " + format(mine[0]["rate"], "g")
        lines.append(f"| {chapter} | {counts[chapter]} | {goodput_cell} | {ms(held) if held else ''} | "
                     f"{format(miss['rate'], 'g') if miss else 'none tried'} | {ms(miss) if miss else ''} | "
                     f"{missed or ''} | {bound_cell} |")
        if missed == "TTFT" and held:
            queued.append((chapter, held, miss))
    ch02 = [x["tokens_per_s"] for x in sweep["results"] if x["chapter"] == "ch02_padded"]
    lines += ["", f"The requests column: {' and '.join(few)} run the first {' and '.join(str(counts[c]) for c in few)} of "
              f"the workload's {max(counts.values())} requests (all of them would take a static batch, or chapter 3's "
              f"slower step, minutes a rate). At {min(x['rate'] for x in sweep['results']):g} a second and more those "
              f"arrive within {max(counts[c] for c in few) / min(x['rate'] for x in sweep['results']):.0f} s: a burst "
              "the chapter works off, not a load it keeps up with, so the table gives them no goodput (the figure draws "
              "them dotted). Chapter 3's bound is "
              f"{bound['ch03_continuous']:.1f} requests a second; chapter 2's ladder ran one batch of "
              f"{latest['ch02_padded']['num_requests']}, no bound for a load, and on the sweep's {counts['ch02_padded']} "
              f"it served {min(ch02):,.0f}-{max(ch02):,.0f} tokens/s, {max(ch02) / mean_tokens:.1f} requests a second's worth."]
    if queued:
        lines += ["", f"Past the knee the queue shows in TTFT. At R requests a second about {mean_tokens:.0f}R tokens a "
                  "second arrive: " + "; ".join(f"{c} at {m['rate']:g}, {m['rate'] * mean_tokens:,.0f} against the "
                                               f"{m['tokens_per_s']:,.0f} it served" for c, _, m in queued) +
                  ". Requests wait longer for their first token for as long as they keep coming, while the steps slow "
                  "only a little (TPOT p90 " + "; ".join(f"{c} {h['tpot']['p90'] * 1e3:.1f} to {m['tpot']['p90'] * 1e3:.1f} ms"
                                                       for c, h, m in queued) + ")."]
    split = load(STEP_SPLIT_FILE)
    share = lambda r: (r["prompt_steps"] / r["steps"], r["prompt_steps"] * r["other_step_ms"] /  # noqa: E731
                       (r["prompt_steps"] * r["other_step_ms"] + r["graph_steps"] * r["graph_step_ms"]))
    low, high = split["results"][0], split["results"][-1]
    edge = {c: (h, m) for c, h, m in queued}
    (h5, m5), (h6, m6) = edge["ch05_async"], edge["ch06_compiled"]
    lines += ["", f"At {h5['rate']:g} a second chapters 5 and 6 are at their limit. Past their knee they served "
              f"{m5['tokens_per_s']:,.0f} and {m6['tokens_per_s']:,.0f} tokens/s, about "
              f"{m5['tokens_per_s'] / mean_tokens:.1f} and {m6['tokens_per_s'] / mean_tokens:.1f} requests a second "
              f"(ramp-up and drain included), under their bounds of {bound['ch05_async']:.1f} and "
              f"{bound['ch06_compiled']:.1f}. At {h5['rate']:g} their p90s held, with TTFT p99 at "
              f"{h5['ttft']['p99']:.1f} and {h6['ttft']['p99']:.1f} s, because the {counts['ch05_async']:,} requests stop "
              f"arriving after {counts['ch05_async'] / h5['rate']:.0f} s. Both met the same seeded arrivals; chapter 6's "
              f"higher TTFT p90 there ({h6['ttft']['p90'] * 1e3:,.0f} ms against chapter 5's "
              f"{h5['ttft']['p90'] * 1e3:,.0f}) is one run of each at its limit, and not explained: its steps were not "
              "counted.", "",
              "Why below the bound: under load most new prompts come one at a time, and a step that carries a prompt's "
              "chunk is not a decode-only step, so it runs the model without a graph. Chapter 5 in a later run "
              f"(`figures/{STEP_SPLIT_FILE}`, commit {split['environment']['commit']}; the first {high['requests']} "
              f"requests, so fewer running at once than above), its steps counted: at {high['rate']:g} a second, "
              f"{high['prompt_steps']:,} of its {high['steps']:,} steps carried a prompt, a median "
              f"{high['other_step_ms']:.1f} ms each from one step's start to the next, against "
              f"{high['graph_step_ms']:.1f} ms for a graph step: {share(high)[0]:.0%} of the steps and about "
              f"{share(high)[1]:.0%} of the time (count times median); at {low['rate']:g} a second, "
              f"{share(low)[0]:.0%} and {share(low)[1]:.0%}. Chapter 6 runs the same two kinds of step."]
    tp = load(TP_FILE)
    lines += ["", "Two H200s of one host, tensor parallelism (chapter 7, its model eager, decode as CUDA graphs with the "
              f"all-reduces inside; commit {tp['environment']['commit']}):", "",
              "| run | requests | output tokens/s | speed-up | median decode step ms | its all-reduces ms | KV pool, tokens |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    single, split = {}, tp_step_split(tp)
    for r in tp["results"]:
        workload, gpus = r["chapter"].split(", ")
        single.setdefault(workload, r["tokens_per_s"])
        _, step, reduce_ms = next(b for b in split[workload] if b[0] == gpus)
        lines.append(f"| {r['chapter']} | {r['num_requests']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s'] / single[workload]:.2f}x | {step:.2f} | {reduce_ms:.2f} | "
                     f"{r['extra']['kv_capacity_tokens']:,} |")
    cpu = load("cpu_w1small.json")
    lines += ["", f"On a {cpu['environment']['cpu_count']}-core CPU (torch {cpu['environment']['torch']}), the tiny "
              f"model on W1-small in float32, {cpu['environment'].get('threads', 1)} thread (`python -m tools.bench`; "
              "each row the median of three runs, the spread in the data). Chapter 5's overlap is a worker thread "
              "here, which Python's lock keeps from gaining: it loses to chapter 4; chapters 6 and 7 do not compile or "
              "split on a CPU:", "",
              "| chapter | output tokens/s | every run's tokens/s | TTFT p50 ms |", "| --- | ---: | --- | ---: |"]
    lines += [f"| {r['chapter']} | {r['tokens_per_s']:,.0f} | "
              f"{', '.join(format(r['output_tokens'] / w, ',.0f') for w in r['extra'].get('walls_s', []))} | "
              f"{'' if r['ttft_p50_s'] != r['ttft_p50_s'] else format(r['ttft_p50_s'] * 1e3, ',.0f')} |"  # NaN: not timed
              for r in cpu["results"]]
    runs = [load(f"cpu_chapters/run{i}.json") for i in (1, 2, 3)]  # three runs of `python -m chapters`
    lines += ["", "Three runs of `python -m chapters` (which runs `chapters.ch07_tensor_parallel --compare`) one after "
              f"another on the same machine, {', '.join(format(run['elapsed_s'], '.0f') for run in runs)} s each after "
              "Python's imports (`cpu_chapters/`; each row the median of five runs, timed in rounds of one run a "
              "chapter; spread: the fastest over the slowest, minus one). The host's speed moves between runs "
              "(NOTES.md measures why), so compare the gains, each measured within one run:", "",
              "| chapter | tokens/s, runs 1-3 | spread | gain over the previous, runs 1-3 |", "| --- | --- | ---: | --- |"]
    for i, r in enumerate(runs[0]["results"]):
        speeds = [run["results"][i]["tokens_per_s"] for run in runs]
        gains = [run["results"][i]["tokens_per_s"] / run["results"][i - 1]["tokens_per_s"] for run in runs] if i else []
        lines.append(f"| {r['chapter']} | {', '.join(f'{v:,.0f}' for v in speeds)} | {max(speeds) / min(speeds) - 1:.0%} "
                     f"| {', '.join(f'{g:.2f}x' for g in gains)} |")
    sweep, again = load("cpu_latency.json"), load(CPU_LATENCY_AGAIN)
    best = goodput(sweep["results"], sweep["slo"])
    lines += ["", f"Latency under load on the same CPU ({sweep['workload']}, {sweep['results'][0]['requests']} requests "
              f"arriving as a Poisson process; SLO: TTFT p90 at most {sweep['slo']['ttft_p90_s'] * 1e3:,.0f} ms and TPOT "
              f"p90 at most {sweep['slo']['tpot_p90_s'] * 1e3:,.0f} ms; `cpu_latency.json`, drawn in "
              "[figures/cpu_latency.png](figures/cpu_latency.png)), and the same command run again later "
              f"(`{CPU_LATENCY_AGAIN}`, commit {again['environment']['commit']}, with the untimed pass). The tiny "
              "model's TPOT sits near the SLO's 5 ms, so a chapter's goodput moves by a rate step or more between "
              "runs: read the curves' shapes, not one rate:", "",
              "| chapter | largest rate within the SLO, requests/s | the later run |", "| --- | ---: | ---: |"]
    best_again = goodput(again["results"], again["slo"])
    rate_cell = lambda rate: f"{rate:g}" if rate else "none of those tried"  # noqa: E731
    lines += [f"| {chapter} | {rate_cell(rate)} | {rate_cell(best_again.get(chapter, 0))} |" for chapter, rate in best.items()]
    seen_cpu = [("cpu_latency.json", sweep["command"]), (CPU_LATENCY_AGAIN, again["command"])]
    env = ladder["environment"]
    lines += ["", "Test configuration (H200, the ladder's process): " +
              ", ".join(f"{k} {v}" for k, v in env.items() if k != "commit") +
              "; model: seeded random weights (`from_config`, seed 0) in bf16; W1: seed 0, EOS ignored.", "",
              "Every number above comes from these commands, each at the commit named, the H200's run with "
              "`--out $OUT/...` and the file saved under `figures/` as named:", ""]
    seen = [(f, load(f)["command"]) for f in [W1_FILE, PEER_SEARCH, PEER_FILE, W2_FILE, WARM_FILE, LATENCY_FILE,
                                              STEP_SPLIT_FILE, TP_FILE]]
    seen += [("cpu_w1small.json", cpu["command"])]
    seen += [(f"cpu_chapters/run{i}.json", run["command"]) for i, run in enumerate(runs, 1)]
    seen += seen_cpu
    lines += [f"- `{f}` (commit {load(f)['environment']['commit']}): `{re.sub('/root/(out|res)/', '$OUT/', c)}`"
              f"{missing_rows(f, c)}{before_warm_pass(f)}" for f, c in seen]  # $OUT: the device's output folder
    return "\n".join(lines)


def missing_rows(file: str, command: str) -> str:
    """" (named but not in the file: ...)" for chapters a bench command names that its results lack (a
    process that stopped early), else ""."""
    named = command.split("--chapters ")[1].split()[0].split(",") if "--chapters " in command else []
    have = {r["chapter"] for r in load(file)["results"]} | set(load(file).get("failed", {}))
    lacking = [c for c in named if c not in have]
    return f" (named, not in the file: {', '.join(lacking)}; NOTES.md says why)" if lacking else ""


def before_warm_pass(file: str) -> str:
    """" (...)" for a latency sweep run before the bench served each chapter's requests once untimed, else ""."""
    data = load(file)
    return "" if "slo" not in data or data.get("warm_pass") else " (before the bench's untimed pass, which it now adds)"


README_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
TALK_MARKERS = ("<!-- talk:start -->", "<!-- talk:end -->")  # WORKSHOP.md's talk, its H200 numbers


def generated_section(text: str, markers: tuple[str, str] = README_MARKERS) -> str:
    """The generated section of the README (or of the workshop plan, with its markers) as it stands."""
    return text.split(markers[0])[1].split(markers[1])[0].strip("\n")


def write_generated_sections():
    for name, markers, markdown in (("README.md", README_MARKERS, results_markdown),
                                    ("WORKSHOP.md", TALK_MARKERS, talk_markdown)):
        path = FIGURES.parent / name
        head, rest = path.read_text().split(markers[0])
        _, tail = rest.split(markers[1])
        path.write_text(head + markers[0] + "\n" + markdown() + "\n" + markers[1] + tail)


def talk_markdown() -> str:
    """The opening talk's three H200 points in WORKSHOP.md, their numbers from the same files as the README's."""
    import textwrap

    latest, peer = w1_results(), load(PEER_FILE)["results"][0]
    ladder = [latest[label] for label, *_ in CHAPTER_ROWS]
    speed = [f"**{r['tokens_per_s']:,.0f}**" for r in ladder]
    gain = [""] + [f"{b['tokens_per_s'] / a['tokens_per_s']:.1f}x" for a, b in zip(ladder, ladder[1:])]
    minutes = [latest["ch03_continuous"]["output_tokens"] / r["tokens_per_s"] / 60 for r in ladder[:2]]
    steps = load(STEP_SPLIT_FILE)["results"][-1]  # chapter 5's steps by kind, at its highest rate
    sweep = load(LATENCY_FILE)
    best = goodput(sweep["results"], sweep["slo"])
    sync, run_async = latest["ch05_async@use_async=false"], latest["ch05_async"]
    w2 = {r["chapter"]: r for r in load(W2_FILE)["results"]}
    w2_sync, w2_async = w2["ch05_async@use_async=false"], w2["ch05_async"]
    window = [gpu_busy(r["extra"]["timeline"][500:520]) for r in (sync, run_async)]  # the figure's 20 steps

    def span(values, between="-", form="{:.0f}"):  # "30" where they round alike, else "29-32"
        low, high = form.format(min(values)), form.format(max(values))
        return low if low == high else low + between + high

    ladder_point = (
        "3. **4-6 min: show `figures/ladder_w1.png`.** W1 is 256 requests with prompts and outputs of 100 to 1024 "
        "tokens on the Qwen3-0.6B shape; one H200; output tokens/s, the median of three runs. Chapter 1, one request "
        f"at a time, {speed[0]}; chapter 2, one static batch of W1's first {ladder[1]['num_requests']} requests, "
        f"{speed[1]} ({gain[1]}); chapter 3, continuous batching, {speed[2]} ({gain[2]}); chapter 4, the paged KV "
        f"cache, {speed[3]} ({gain[3]}: the H200 holds all of W1 in either cache, so chapter 4 gains by its faster "
        f"step); chapter 5's engine run synchronously, {speed[4]} ({gain[4]}: its decode steps replayed as CUDA "
        f"graphs), and asynchronously, {speed[5]} ({gain[5]}: the overlap); chapter 6, the model compiled, "
        f"{speed[6]} ({gain[6]}). Chapters 1 and 2 ran 1 and {ladder[1]['num_requests']} of the requests: all of W1 "
        f"would take them about {minutes[0]:.0f} and {minutes[1]:.0f} minutes. "
        "The grey dashed line is transformers' own continuous batching at its fastest configuration tried, "
        f"**{peer['tokens_per_s']:,.0f}**: chapter 6 runs W1 about {ladder[6]['tokens_per_s'] / peer['tokens_per_s']:.0f} "
        "times as fast (its warm-up failed for lack of memory, so its runs include its graph captures: the README "
        "says more). The red line is the bound set by reading the KV cache at the H200's copy bandwidth.")
    held = {c: next(r for r in sweep["results"] if r["chapter"] == c and r["rate"] == best[c])
            for c in ("ch05_async", "ch06_compiled")}
    latency_point = (
        "4. **6-7.5 min: show `figures/h200_latency.png`.** Now the requests arrive over time, "
        f"{span([r['rate'] for r in sweep['results']], ' to ', '{:g}')} a second. A user feels two numbers: TTFT, the "
        "wait from sending a request to its first token, and TPOT, the time between its tokens after that; p90 is "
        "the value 90% of requests stay under. The service-level objective (SLO) here: TTFT p90 under "
        f"{sweep['slo']['ttft_p90_s']:g} s, TPOT p90 under {sweep['slo']['tpot_p90_s'] * 1e3:g} ms. Chapter 4 keeps "
        f"within it up to {best['ch04_paged']:g} requests a second, chapters 5 and 6 up to "
        f"{span([best['ch05_async'], best['ch06_compiled']], ' and ', '{:g}')}, at their limit there: the slowest "
        f"requests already waited {held['ch05_async']['ttft']['p99']:.1f} and "
        f"{held['ch06_compiled']['ttft']['p99']:.1f} s. Past that the queue grows, and the wait for a first token "
        "with it. Their time between tokens grows with the rate too: more requests share each step, and a step that "
        f"carries a new prompt runs without a graph, about {steps['other_step_ms']:.0f} ms against "
        f"{steps['graph_step_ms']:.0f}. Chapters 2 and 3 (dotted) ran a burst "
        "of a few requests, not a load.")
    timeline_point = (
        "5. **7.5-9 min: show `figures/async_timeline_w1.png`.** The same engine, sync above async. In the synchronous "
        "loop the GPU waits while the CPU reads the tokens back and prepares the next step. Over the whole W1 run "
        f"the GPU is busy **{sync['extra']['gpu_busy']:.1%}** of the time synchronously and "
        f"**{run_async['extra']['gpu_busy']:.1%}** asynchronously ({sync['wall_s']:.2f} s against "
        f"{run_async['wall_s']:.2f} s); the figure's 20 steps say {window[0]:.0%} and {window[1]:.0%}. On W2, the "
        "Llama-3.1-8B shape with 32 requests of 8192 new tokens, steps are longer and the gain smaller: "
        f"**{w2_sync['extra']['gpu_busy']:.1%}** against **{w2_async['extra']['gpu_busy']:.1%}** busy, "
        f"**{w2_sync['tokens_per_s']:,.0f}** against **{w2_async['tokens_per_s']:,.0f}** tokens/s.")
    return "\n".join(textwrap.fill(point, width=108, subsequent_indent="   ", break_on_hyphens=False,
                                    break_long_words=False) for point in (ladder_point, latency_point, timeline_point))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["attention"], ["profile"]) and not torch.cuda.is_available():
        raise SystemExit(f"`python -m tools.bench {argv[0]}` measures CUDA kernels: it needs a CUDA GPU")
    if argv[:1] == ["attention"]:
        return bench_attention(argv[1:])
    if argv[:1] == ["memory"]:
        return bench_fixed_memory(argv[1:])
    if argv[:1] == ["latency"]:
        return bench_latency(argv[1:])
    if argv[:1] == ["profile"]:
        return bench_profile(argv[1:])
    if argv[:1] == ["report"]:
        return report(argv[1:])
    return run_chapters(argv)


if __name__ == "__main__":
    main()
