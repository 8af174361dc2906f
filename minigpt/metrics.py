"""Measuring the same way in every chapter: clocks, results, JSON files, rich tables and progress."""
from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .engine import Completion

# Logs get full-width tables. A process a notebook started (its environment says Jupyter, and may force
# colour) but that is not the kernel writes plain text to its pipe.
_kernel = "ipykernel" in sys.modules
console = Console(width=None if sys.stdout.isatty() else 150, force_jupyter=None if _kernel else False,
                  color_system="auto" if sys.stdout.isatty() or _kernel else None)


class Clock:
    """Seconds since the clock started. On a GPU, `now(sync=True)` first waits for queued work,
    because a host clock read while kernels are still queued measures only the queuing."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.start = time.perf_counter()

    def now(self, sync: bool = False) -> float:
        if sync and self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self.start


@dataclass
class RunResult:
    """One engine on one workload: what the tables, the JSON files and the figures are made from."""

    chapter: str
    workload: str
    preset: str
    device: str
    dtype: str
    num_requests: int
    output_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_s: float
    tpot_p50_s: float
    note: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_completions(cls, completions: list[Completion], wall_s: float, **info) -> "RunResult":
        tokens = sum(len(c.tokens) for c in completions)
        ttfts = [c.ttft for c in completions if c.token_times]
        tpots = [c.tpot for c in completions if len(c.token_times) > 1]
        return cls(num_requests=len(completions), output_tokens=tokens, wall_s=wall_s,
                   tokens_per_s=tokens / wall_s if wall_s > 0 else float("nan"),
                   ttft_p50_s=statistics.median(ttfts) if ttfts else float("nan"),
                   tpot_p50_s=statistics.median(tpots) if tpots else float("nan"), **info)


def code_version() -> str:
    """The commit measured: $MINIGPT_COMMIT (set it where the tree travels without .git), else git's HEAD."""
    import os
    import subprocess

    if os.environ.get("MINIGPT_COMMIT"):
        return os.environ["MINIGPT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent)
        return head.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def gpu_busy(timeline: list[dict]) -> float:
    """Fraction of the run's GPU span (first step's start to last step's end) spent inside steps."""
    busy = sum(s["gpu_end"] - s["gpu_start"] for s in timeline)
    return busy / (timeline[-1]["gpu_end"] - timeline[0]["gpu_start"])


def decode_phase(timeline: list[dict]) -> tuple[float, float]:
    """(seconds, GPU-busy fraction) over consecutive decode-only steps; a step's span runs from the previous
    step's GPU end to its own, so the gap before it counts as idle."""
    def decode(s):  # results recorded before "decode" was stored: decode steps were the graph-replayed ones
        return s.get("decode", s["graph"] > 0)

    steps = [i for i in range(1, len(timeline)) if decode(timeline[i]) and decode(timeline[i - 1])]
    span = sum(timeline[i]["gpu_end"] - timeline[i - 1]["gpu_end"] for i in steps)
    busy = sum(timeline[i]["gpu_end"] - timeline[i]["gpu_start"] for i in steps)
    return span, busy / span if span else float("nan")


def environment() -> dict:
    """The test configuration a results file states: machine, GPU, library versions."""
    import transformers

    env = {"commit": code_version(), "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "machine": platform.machine(),
           "cpu_count": __import__("os").cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def save_results(results: list[RunResult], path: str | Path, command: str = "", failed: dict | None = None,
                 elapsed_s: float | None = None) -> Path:
    """The runs as JSON; `failed`: label -> why, for runs that gave no result; `elapsed_s`: the command's time
    after its imports, warm-ups included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "environment": environment(), "results": [asdict(r) for r in results],
            "failed": failed or {}, **({"elapsed_s": elapsed_s} if elapsed_s is not None else {})}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def load_results(path: str | Path) -> list[RunResult]:
    return [RunResult(**r) for r in json.loads(Path(path).read_text())["results"]]


def results_table(results: list[RunResult], title: str) -> Table:
    """One row per run, narrow enough for an 80-column terminal; the gain column compares each row with the
    one before it. What all rows share (workload, request count) goes in the title; a row's note below."""
    counts = {(r.workload, r.num_requests) for r in results}
    if len(counts) == 1:
        workload, n = counts.pop()
        title = ", ".join(filter(None, [title, f"{n} requests of {workload}"]))
    table = Table(title=title, title_justify="left", caption_justify="left")
    columns = ["chapter"] + (["requests"] if len({r.num_requests for r in results}) > 1 else []) + [
        "tokens/s", "gain", "TTFT ms", "TPOT ms", "wall s"]
    for col in columns:
        table.add_column(col, justify="left" if col == "chapter" else "right", no_wrap=True)
    prev, notes = None, []
    for r in results:
        same_work = prev and prev.workload == r.workload and prev.num_requests == r.num_requests
        gain = f"{r.tokens_per_s / prev.tokens_per_s:.1f}x" if same_work and prev.tokens_per_s else ""
        cells = {"chapter": r.chapter, "requests": str(r.num_requests), "tokens/s": f"{r.tokens_per_s:,.0f}",
                 "gain": gain, "TTFT ms": f"{r.ttft_p50_s * 1e3:,.1f}", "TPOT ms": f"{r.tpot_p50_s * 1e3:,.2f}",
                 "wall s": f"{r.wall_s:.2f}"}
        table.add_row(*(cells[c] for c in columns))
        notes += [f"{r.chapter}: {r.note}"] if r.note and not r.note.startswith("first ") else []
        prev = r
    table.caption = "\n".join(notes) or None
    return table


@contextmanager
def token_progress(total: int, description: str, progress=True):
    """Yields `emit(request_index, token)`, which the engine calls as each output token becomes known.

    `progress`: True shows a rich progress bar counting tokens; a function (request_index, token) is
    called instead (to stream text); False does nothing."""
    if callable(progress):
        yield progress
        return
    if not progress:
        yield lambda i, token: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("tokens"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda i, token: bar.advance(task, 1)


@contextmanager
def requests_live(requests: list, title: str):
    """Yields `emit(request_index, token)` for an engine's `progress` option, and shows, live, how many requests
    have arrived (by their arrival times, counted from the first token), run, and finished (their last token),
    and the tokens so far: a serving engine under load, watched."""
    from rich.live import Live

    start, done = [], [0] * len(requests)  # start: when the first token came (warm-up runs emit none)

    def view() -> Table:
        now = time.perf_counter() - start[0] if start else 0.0
        arrived = sum(r.arrival_time <= now for r in requests)
        finished = sum(d >= r.max_new_tokens for d, r in zip(done, requests))
        table = Table(title=f"{title}, {now:.1f} s", title_justify="left")
        for col in ("arrived", "waiting or running", "finished", "tokens"):
            table.add_column(col, justify="right")
        table.add_row(str(arrived), str(arrived - finished), str(finished), f"{sum(done):,}")
        return table

    with Live(view(), console=console, refresh_per_second=8, transient=True) as live:
        def emit(i: int, token: int):
            start[:] = start or [time.perf_counter()]
            done[i] += 1
            live.update(view())

        emit.view = view  # the table as it stands (the tests read it)
        yield emit


STAGES: list[tuple[str, float]] = []  # every stage this process waited on, (name, seconds), shown or not


@contextmanager
def stage(name: str, show: bool = True):
    """A one-time stage a run waits on (compiling, capturing graphs): a line with its name, then its seconds.
    The seconds are kept in `STAGES` too, for the bench to save."""
    start = time.perf_counter()
    with console.status(f"{name}...", spinner="dots") if show else nullcontext():
        yield
    STAGES.append((name, time.perf_counter() - start))
    if show:
        console.print(f"{name}: {STAGES[-1][1]:.1f} s", highlight=False)


FIGURES = Path(__file__).resolve().parent.parent / "figures"  # the book's committed data and figures


def show_committed(file: str, title: str, chapters: list[str] | None = None):
    """Print a committed results file (figures/FILE) as a table: the rows a chapter's measurement cites."""
    results = [r for r in load_results(FIGURES / file) if chapters is None or r.chapter in chapters]
    console.print(results_table(results, title))
    for r in results:
        if line := describe(r):
            console.print(f"{r.chapter}: {line}", highlight=False)


def describe(r: RunResult) -> str:
    """What a chapter measures beside throughput, from its engine's counters."""
    e, parts = r.extra, []
    if "prefill_waste" in e:
        parts.append(f"padding waste {e['prefill_waste']:.0%} of prefill columns, "
                     f"{e['decode_waste']:.0%} of decode rows idle")
    if "kv_utilisation" in e:
        parts.append(f"{e['steps']} steps, {e['mean_batch_tokens']:.0f} tokens a step, "
                     f"KV memory reserved and used: {e['kv_utilisation']:.0%}")
    if "preemptions" in e:
        parts.append(f"preemptions: {e['preemptions']}")
    if "compiled" in e:
        parts.append(f"model compiled with {e['compiled']}{' (C++ wrapper)' if e.get('cpp_wrapper') else ''}"
                     if e["compiled"] else "model not compiled (compile=auto compiles on a GPU only)")
    if e.get("prefix_hit_tokens"):
        parts.append(f"prefill saved by shared prefixes: {e['prefix_hit_tokens']} tokens")
    if "gpu_busy" in e:
        where = "GPU" if r.device == "cuda" else "model work"  # on the CPU: the thread that runs the model
        parts.append(f"{where} busy {e['gpu_busy']:.1%} of the run, {e['decode_gpu_busy']:.1%} of the decode phase")
    return "; ".join(parts)


def percentiles(values: list[float], qs=(50, 90, 99)) -> dict[str, float]:
    """{"p50": .., "p90": .., "p99": ..} of the values (nearest rank), NaN when there are none."""
    values = sorted(v for v in values if v == v)
    if not values:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))] for q in qs}


def latency_summary(completions: list[Completion]) -> dict:
    """What a user feels, per request: TTFT, TPOT and end-to-end latency percentiles (seconds)."""
    return {name: percentiles([getattr(c, name) for c in completions]) for name in ("ttft", "tpot", "latency")}
