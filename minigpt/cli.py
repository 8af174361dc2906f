"""The command line every chapter shares: `python -m chapters.chNN_... [--device cuda] [--compare] ...`."""
from __future__ import annotations

import argparse
import importlib
from contextlib import contextmanager, nullcontext
import shlex
import sys
import time

from pathlib import Path

import torch
from rich.markup import escape
from rich.table import Table

from .config import PRESETS
from .engine import Request
from .loading import from_config, load_pretrained, load_tokenizer, stream_text
from .metrics import (STAGES, RunResult, console, describe, latency_summary, requests_live, results_table,
                      save_results, stage)
from .workloads import WORKLOADS, get_workload

CHAPTERS = ["ch01_naive", "ch02_padded", "ch03_continuous", "ch04_paged", "ch05_async", "ch06_compiled",
            "ch07_tensor_parallel"]


def chapter_module(name: str):
    return importlib.import_module(f"chapters.{name}")


def chapter_summary(chapter: str) -> str:
    """The chapter's title and its "What you will learn" paragraph, from its opening markdown cell."""
    lines = Path(chapter_module(chapter).__file__).read_text().splitlines()
    title = next((line[4:] for line in lines if line.startswith("# # ")), chapter)
    start = next((i for i, line in enumerate(lines) if "**What you will learn:**" in line), None)
    learn = []
    for line in lines[start:] if start is not None else []:
        if line.strip() == "#":
            break
        learn.append(line[2:].replace("**What you will learn:**", "You will learn"))
    return title + ("\n\n" + "\n".join(learn) if learn else "") + "\n\nRuns it on a workload and prints a table."


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 and finite, got {text}")
    return value


def check_arguments(parser: argparse.ArgumentParser, args):
    """What argparse cannot check alone: a GPU that is not there, more requests than the workload has."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here (this PyTorch is "
                     f"{torch.__version__}); run on the CPU with --device cpu")
    workload = get_workload(args.workload)
    if args.requests and args.requests > workload.num_requests:
        parser.error(f"--requests {args.requests}: {workload.name} has {workload.num_requests} requests")


def set_threads(device: str, threads: int | None) -> int:
    """The number of CPU threads PyTorch computes with: fixed, so that CPU timings repeat. On a busy
    machine PyTorch's default (one per core) lets threads wait on each other and timings swing 10x."""
    if threads is None:
        threads = 1 if torch.device(device).type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def add_common_arguments(p: argparse.ArgumentParser):
    """What every command that runs a model takes: where, how many threads, which workload."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                   help="where the model runs (default: cuda when a GPU is visible)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads PyTorch uses (default on the CPU: 1, for timings that repeat)")
    p.add_argument("--workload", default="W1-small", choices=sorted(WORKLOADS), help="the requests to run")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="model shape (default: the workload's; tiny for the small ones)")
    p.add_argument("--requests", type=positive_int, default=None, help="run only the first N requests of the workload")
    p.add_argument("--rate", type=positive_float, default=None,
                   help="requests arrive over time, this many a second (Poisson, seeded); default: all at once")
    p.add_argument("--burst", type=positive_int, default=1, help="with --rate: requests arriving together")


def parser_for(chapter: str, options: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m chapters.{chapter}", description=chapter_summary(chapter),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: float32 on the CPU, bfloat16 on a GPU")
    p.add_argument("--compare", action="store_true", help="also run the earlier chapters on the same requests")
    p.add_argument("--repeat", type=positive_int, default=None,
                   help="time each chapter this many times and show the median run (default: 5 on the CPU, with "
                        "--compare in rounds of one run a chapter; 1 on a GPU)")
    p.add_argument("--compare-requests", type=positive_int, default=None,
                   help="with --compare: give ch01 and ch02 only the first N requests (they are slow)")
    p.add_argument("--model", default=None, help="a Hugging Face checkpoint instead of random weights: a local folder, "
                                                "or a hub id such as Qwen/Qwen3-0.6B when the machine is online")
    p.add_argument("--prompt", action="append", help="with --model: generate from this text (repeatable)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="with --prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="with --prompt: 0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="with --prompt: nucleus sampling's cut")
    p.add_argument("--top-k", type=int, default=0, help="with --prompt: keep the k likeliest tokens (0: all)")
    p.add_argument("--seed", type=int, default=0, help="with --prompt: the sampler's seed")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, (typ, default, help_) in options.items():
        flag = "--" + name.replace("_", "-")
        if typ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f"{help_} (default: {default})")
        else:
            p.add_argument(flag, type=typ, default=default, help=f"{help_} (default: {default})")
    return p


def default_dtype(device: str) -> torch.dtype:
    """float32 on the CPU (the correctness checks), bfloat16 on a GPU (the measurements)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def build_model(args):
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype(args.device)
    if args.model:
        return load_pretrained(args.model, device=args.device, dtype=dtype), load_tokenizer(args.model)
    workload = get_workload(args.workload)
    return from_config(args.preset or workload.preset, device=args.device, dtype=dtype), None


def run_chapter(chapter: str, argv=None, options: dict | None = None) -> list[RunResult]:
    """Parse the command line, run `chapter` (and with --compare the ones before it), print a table."""
    options, started = options or {}, time.perf_counter()
    parser = parser_for(chapter, options)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    threads = set_threads(args.device, args.threads)
    try:
        model, tokenizer = build_model(args)
    except (OSError, ValueError) as error:  # a checkpoint that is missing or cannot run: one line, no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    engine_options = {name: getattr(args, name) for name in options}
    if args.prompt:
        return run_text(chapter, model, tokenizer, args, engine_options)
    workload = get_workload(args.workload)
    requests = workload.requests(model.config.vocab_size, args.requests, rate=args.rate, burst=args.burst)
    chapters = CHAPTERS[: CHAPTERS.index(chapter) + 1] if args.compare else [chapter]
    results, tokens = [], {}
    live = args.rate and not args.no_progress  # watch the requests arrive and finish
    repeat = args.repeat or (1 if live or model.device.type != "cpu" else 5)
    jobs = [(name, requests[: args.compare_requests] if name != chapter and args.compare_requests
             and name in ("ch01_naive", "ch02_padded") else requests, engine_options if name == chapter else {})
            for name in chapters]
    try:
        if len(jobs) > 1 and repeat > 1:  # CPU timings: every chapter in each round
            results = measure_in_rounds(jobs, model, workload.name, repeat, not args.no_progress, tokens)
        else:
            for name, subset, opts in jobs:
                with naming_chapter(name), requests_live(subset, f"{name} at {args.rate:g} requests a second") \
                        if live and name == chapter else nullcontext() as emit:
                    results.append(measure(name, model, subset, workload.name, opts,
                                           progress=emit or not args.no_progress, repeat=repeat,
                                           tokens=tokens.setdefault(name, [])))
    except (ValueError, TypeError) as error:  # an option the engine refuses: one line, no traceback
        if getattr(error, "chapter", chapter) != chapter:
            raise
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    where = f"{args.device}, {threads} thread{'s' * (threads > 1)}" if args.device == "cpu" else args.device
    console.print(results_table(results, f"{model.config.name} model ({params:,.1f}M parameters), {where}, "
                                         f"{str(model.dtype).removeprefix('torch.')}"))
    for r in results:
        if line := describe(r):
            console.print(f"{r.chapter}: {line}", highlight=False)
    if len(tokens) > 1:
        console.print(same_tokens(tokens), highlight=False)
    if args.rate:
        console.print(latency_table(results, f"latency (ms) at {args.rate:g} requests a second"))
    if args.device == "cpu":
        for before, after in zip(results, results[1:]):
            if after.tokens_per_s < 0.95 * before.tokens_per_s and after.chapter in SLOWER_ON_A_CPU:
                console.print(f"{after.chapter} is slower than {before.chapter} here: {SLOWER_ON_A_CPU[after.chapter]}",
                              highlight=False)
    if args.out:
        save_results(results, args.out, command="python -m chapters." + chapter + " " + shlex.join(argv or sys.argv[1:]),
                     elapsed_s=time.perf_counter() - started)
    return results


# Why a chapter can run slower than the one before it on a CPU, where its idea has nothing to win.
SLOWER_ON_A_CPU = {
    "ch04_paged": "paging pays off in memory (more requests at once on a GPU); on a CPU its block bookkeeping "
                  "and the reference decode, which gathers every block each step, are pure cost",
    "ch05_async": "on a CPU its overlap is a worker thread, and Python's lock, which every kernel launch "
                  "takes, lets the two threads overlap little; the slots and placeholders are bookkeeping",
    "ch06_compiled": "on a CPU chapter 6 does not compile (compile=auto), so it is chapter 5 plus noise",
    "ch07_tensor_parallel": "run as one process it is chapter 6; split over CPU processes, they share the same "
                            "cores and every layer adds two all-reduces",
}


LATENCY_COLUMNS = [("TTFT", "ttft", "p50"), ("TTFT", "ttft", "p90"), ("TPOT", "tpot", "p50"), ("TPOT", "tpot", "p90"),
                   ("e2e", "latency", "p90")]


def latency_table(results: list[RunResult], title: str) -> Table:
    """What a user feels under load, in ms, a row per chapter: time to first token and per output token
    (median and 90th percentile over the requests), and end to end (arrival to last token)."""
    table = Table(title=title, title_justify="left")
    table.add_column("chapter", no_wrap=True)
    for name, _, q in LATENCY_COLUMNS:
        table.add_column(f"{name} {q}", justify="right")
    for r in results:
        s = r.extra["latency"]
        table.add_row(r.chapter, *(f"{s[key][q] * 1e3:,.0f}" for _, key, q in LATENCY_COLUMNS))
    return table


def same_tokens(tokens: dict[str, list[list[int]]]) -> str:
    """One line: does every chapter give chapter 1's tokens, request by request, on the requests both ran?"""
    reference_name, reference = next(iter(tokens.items()))
    differ = [f"{name} (request {next(i for i, (a, b) in enumerate(zip(ours, reference)) if a != b)})"
              for name, ours in list(tokens.items())[1:] if any(a != b for a, b in zip(ours, reference))]
    if differ:
        return f"tokens: DIFFER from {reference_name}'s: {', '.join(differ)} (expected only for sampled requests)"
    return f"tokens: every chapter's equal {reference_name}'s, request by request"


def warm_up_stages(name, model, requests, options: dict, progress: bool = True) -> list[tuple[str, float]]:
    """Run chapter `name` on small and large batches, short and full prompts, 2 tokens each, untimed: kernels
    compile and first-use costs (new shapes) are paid here, not in a timed run. Returns the stages it waited
    on, each with its seconds: what a first run costs."""
    first_stage = len(STAGES)
    with stage(f"{name}: warming up, not timed (first use of each shape; compiling, where the chapter compiles)",
               progress):
        for n, prompt_len in ((4, 8), (48, None)):
            warm = [Request(r.prompt_ids[:prompt_len], max_new_tokens=2, ignore_eos=True) for r in requests[:n]]
            chapter_module(name).generate(model, warm, **options)
    return STAGES[first_stage:]


def timed_run(name, model, requests, options: dict, progress) -> tuple[float, list]:
    """One run of chapter `name`: its wall time from the engine's start (after its one-time setup: cache
    allocation, graph capture) to the last token, and its completions."""
    completions = chapter_module(name).generate(model, requests, progress=progress, **options)
    return max((c.token_times[-1] for c in completions if c.token_times), default=0.0), completions


def result_of_runs(name, model, requests, workload: str, runs: list, warm_up: list, label: str = "",
                   tokens: list | None = None) -> RunResult:
    """A chapter's row from its timed runs: the run of median wall time, every run's wall time kept
    (`extra["walls_s"]`)."""
    walls = [wall for wall, _ in runs]
    wall, completions = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]
    if tokens is not None:  # each request's tokens, for a comparison across chapters
        tokens[:] = [c.tokens for c in completions]
    if failed := [c.error for c in completions if c.error]:
        console.print(f"[red]{name}: {len(failed)} request(s) failed[/red], the first: {escape(failed[0])}")
    note = f"first {len(requests)} requests" if len(requests) < get_workload(workload).num_requests else ""
    if len(runs) > 1:
        note = ", ".join(filter(None, [note, f"median of {len(runs)} runs ({min(walls):.2f}-{max(walls):.2f} s)"]))
    extra = {**getattr(completions, "stats", {}), **({"walls_s": walls} if len(runs) > 1 else {}),
             "latency": latency_summary(completions), "stages": warm_up}
    return RunResult.from_completions(completions, wall, chapter=label or name, workload=workload,
                                      preset=model.config.name, device=model.device.type,
                                      dtype=str(model.dtype).removeprefix("torch."), note=note, extra=extra)


def measure(name, model, requests, workload: str, options: dict, label: str = "", progress: bool = True,
            repeat: int = 1, tokens: list | None = None) -> RunResult:
    """Warm up (excluded), then time `repeat` runs of `name` from the first submit to the last token; the
    run of median wall time is reported: a CPU-bound engine's time moves with the host's CPU, which on
    shared machines changes speed for seconds at a time (NOTES.md)."""
    warm_up = warm_up_stages(name, model, requests, options, progress)
    runs = [timed_run(name, model, requests, options, progress) for _ in range(max(repeat, 1))]
    return result_of_runs(name, model, requests, workload, runs, warm_up, label, tokens)


@contextmanager
def naming_chapter(name: str):
    """An engine's refusal (ValueError, TypeError) leaves with the chapter that raised it (`error.chapter`)."""
    try:
        yield
    except (ValueError, TypeError) as error:
        error.chapter = getattr(error, "chapter", name)
        raise


def measure_in_rounds(jobs: list[tuple[str, list, dict]], model, workload: str, repeat: int, progress: bool,
                      tokens: dict) -> list[RunResult]:
    """`measure` for several chapters, jobs (name, requests, options), each warmed up first, then timed in
    `repeat` rounds of one run each: a slow spell of the host's CPU falls on every chapter's runs alike,
    not on all of one chapter's."""
    warm_ups = []
    for name, requests, options in jobs:
        with naming_chapter(name):
            warm_ups.append(warm_up_stages(name, model, requests, options, progress))
    runs = [[] for _ in jobs]
    for _ in range(repeat):
        for (name, requests, options), mine in zip(jobs, runs):
            mine.append(timed_run(name, model, requests, options, progress))
    return [result_of_runs(name, model, requests, workload, mine, warm_up, tokens=tokens.setdefault(name, []))
            for (name, requests, _), mine, warm_up in zip(jobs, runs, warm_ups)]


def run_text(chapter, model, tokenizer, args, options):
    """Generate from text prompts; with one prompt, print the text as it is produced."""
    if tokenizer is None:
        raise SystemExit("--prompt needs --model DIR with a tokenizer in the folder")
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    requests = [Request(tokenizer(p)["input_ids"] or [tokenizer.bos_token_id or 0], max_new_tokens=args.max_new_tokens,
                        **sampling) for p in args.prompt]
    stream = len(requests) == 1
    if stream:
        console.print(args.prompt[0], end="", style="bold", highlight=False, markup=False)
    printer = stream_text(tokenizer, lambda text: console.print(text, end="", highlight=False, markup=False))
    completions = chapter_module(chapter).generate(model, requests, progress=printer if stream else False, **options)
    for p, c in zip(args.prompt, completions):
        text = "" if stream else escape(p + tokenizer.decode(c.tokens))
        why = f": {escape(c.error)}" if c.error else ""
        console.print(text + f"  [dim]({c.finish_reason}, {len(c.tokens)} tokens{why})[/dim]", highlight=False)
    return []
