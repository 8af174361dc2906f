"""Pictures of the book's ideas, drawn from the engines' own data structures on a tiny CPU run.

    python -m tools.pictures              # figures/idea_*.png
    python -m tools.pictures --out DIR

Each picture has a function that returns a matplotlib Figure, so a notebook cell can show it inline:

    from tools.pictures import padded_batch_figure
    padded_batch_figure()

Each figure function takes an optional capture: what a `capture_*` function recorded from a real run of
the chapter's engine on `from_config("tiny")` (seconds on a CPU). Without one, it runs the engine itself.
"""
from __future__ import annotations

import argparse
import io
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from minigpt import Request, from_config, get_workload
from minigpt.metrics import FIGURES

BLUE, LIGHT_BLUE, SAND, RED, GREY = "#357", "#8ab4d4", "#db8", "#c63", "#ddd"  # minigpt/plots.py's palette
SLOT_COLOURS = ("#357", "#e8a33d")  # slot 0, slot 1
REQUEST_COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")


class Picture(Figure):
    """A matplotlib Figure that a notebook shows as a PNG whatever its backend: IPython asks an object for
    `_repr_png_`. Made without pyplot, so that pyplot neither keeps it nor shows it a second time."""

    def _repr_png_(self) -> bytes:
        png = io.BytesIO()
        self.savefig(png, format="png", dpi=100, bbox_inches="tight")
        return png.getvalue()


@lru_cache(maxsize=1)
def tiny_model():
    """The seeded random tiny model every picture runs (float32, CPU)."""
    return from_config("tiny")


def small_requests(n: int) -> list[Request]:
    """W1-small's first n requests, for the tiny model's vocabulary."""
    return get_workload("W1-small").requests(tiny_model().config.vocab_size, n)


def legend_below(ax, handles, columns: int, offset: float = -0.22):
    """A legend under the axes (offset: its top, in axes heights), outside the data."""
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, offset), ncol=columns, fontsize=8,
              frameon=False)


# ----- chapter 2: the padded rectangle ----------------------------------------------------------------

PAD, PROMPT, GENERATED, FINISHED = range(4)  # what each cell of the rectangle computed


class ForwardRecorder:
    """Chapter 2's model, recording what each forward call is given: the width of the step's token rectangle
    and, from the engine's own PaddedKVCache, the pads and the column the step starts at."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):  # config, device, dtype: the model's
        return getattr(self.model, name)

    def __call__(self, ids, positions, cache, **kwargs):
        self.calls.append({"start": cache.start, "width": len(ids) // len(cache.pads), "pads": cache.pads.tolist()})
        return self.model(ids, positions, cache, **kwargs)


@dataclass
class PaddedCapture:
    cells: np.ndarray  # (requests, columns): PAD, PROMPT, GENERATED or FINISHED
    prompt_lens: list[int]
    output_lens: list[int]
    longest_prompt: int  # P: the prefill's width
    stats: dict  # the engine's own counts: prefill_pad, decode_idle, ...


def capture_padded(num_requests: int = 6) -> PaddedCapture:
    """Run chapter 2's engine on one batch of W1-small requests and lay out every cell it computed."""
    from chapters.ch02_padded import PaddedEngine

    requests = small_requests(num_requests)
    model = ForwardRecorder(tiny_model())
    result = PaddedEngine(model, batch_size=num_requests).generate(requests)
    output_lens = [len(c.tokens) for c in result]
    return PaddedCapture(rectangle_cells(model.calls, output_lens), [len(r.prompt_ids) for r in requests],
                         output_lens, model.calls[0]["width"], result.stats)


def rectangle_cells(calls: list[dict], output_lens: list[int]) -> np.ndarray:
    """Each computed cell of the batch's rectangle: the prefill call's columns hold pads then prompt; decode
    step k (column P+k-1) feeds each row its k-th token, or, once a row has all its tokens, a wasted one."""
    pads, P = calls[0]["pads"], calls[0]["width"]
    columns = calls[-1]["start"] + calls[-1]["width"]
    cells = np.empty((len(pads), columns), dtype=int)
    for row, (pad, n) in enumerate(zip(pads, output_lens)):
        cells[row, :pad], cells[row, pad:P] = PAD, PROMPT
        for column in range(P, columns):
            cells[row, column] = GENERATED if column - P + 1 < n else FINISHED
    return cells


def padded_batch_figure(capture: PaddedCapture | None = None) -> Figure:
    """Chapter 2's batch as the rectangle it is: a row per request, a column per position of the cache."""
    c = capture or capture_padded()
    fig = Picture(figsize=(9, 3.6))
    ax = fig.add_subplot()
    colours = [SAND, BLUE, LIGHT_BLUE, RED]
    ax.imshow(c.cells, cmap=ListedColormap(colours), vmin=0, vmax=3, aspect="auto", interpolation="nearest")
    rows = len(c.prompt_lens)
    for row in range(rows - 1):  # white rules between requests
        ax.axhline(row + 0.5, color="white", linewidth=2)
    ax.axvline(c.longest_prompt - 0.5, color="black", linewidth=1.2, linestyle="--")
    ax.text(c.longest_prompt / 2, -0.7, f"prefill: one call, P = {c.longest_prompt} columns", ha="center", fontsize=8)
    ax.text(c.longest_prompt + (c.cells.shape[1] - c.longest_prompt) / 2, -0.7, "decode: one column per step",
            ha="center", fontsize=8)
    ax.set_yticks(range(rows), [f"req {i}: {p} + {n}" for i, (p, n) in enumerate(zip(c.prompt_lens, c.output_lens))],
                  fontsize=8)
    ax.set_ylim(rows - 0.5, -1.1)
    ax.set_xlabel("column of the cache rectangle (the batch's position axis)", fontsize=9)
    ax.set_ylabel("request: prompt + output", fontsize=9)
    s = c.stats
    ax.set_title(f"ch02: one padded batch of {rows} W1-small requests (tiny model). The engine's counts: padding\n"
                 f"is {s['prefill_waste']:.0%} of the prefill slots, finished rows {s['decode_waste']:.0%} of the "
                 f"decode slots", fontsize=10)
    labels = ["left padding (masked out)", "prompt token", "generated token, fed back",
              "row already finished, still computed"]
    legend_below(ax, [Patch(color=col, label=lab) for col, lab in zip(colours, labels)], 4)
    fig.tight_layout()
    return fig


# ----- chapter 3: one step's flat ragged batch ----------------------------------------------------------

@dataclass
class RaggedCapture:
    chunks: list[tuple[int, int, int, bool, bool]]  # (request, start, n, decoding, samples), in batch order
    num_decode: int
    prefill_mask: np.ndarray  # (prompt tokens, packed context): the engine's Batch.prefill_mask
    positions: list[int]  # the batch's positions, token by token
    step: int
    budget: int  # the engine's max_batch_tokens


def capture_ragged(num_requests: int = 6, max_batch_tokens: int = 32) -> RaggedCapture:
    """Run chapter 3's engine with a small token budget and keep the Batch of the step that best shows a
    mix: decode tokens beside several prompt chunks, one of them starting mid-prompt."""
    from chapters.ch03_continuous import ContinuousEngine

    engine = ContinuousEngine(tiny_model(), max_batch_tokens=max_batch_tokens, attention="batched")
    steps = []
    prepare = engine.prepare

    def keep(chunks):  # the chunks' sequences advance after the step: record them as they are now
        batch = prepare(chunks)
        steps.append(RaggedCapture([(ch.seq.index, ch.start, ch.n, ch.seq.decoding, ch.samples) for ch in chunks],
                                   batch.num_decode, None if batch.prefill_mask is None else
                                   batch.prefill_mask.cpu().numpy(), batch.positions.tolist(), len(steps),
                                   max_batch_tokens))
        return batch

    engine.prepare = keep
    engine.generate(small_requests(num_requests))
    return max(steps, key=mix_score)


def mix_score(step: RaggedCapture) -> tuple:
    """Prefer steps with decode tokens, then with more prompt chunks, then with one that starts mid-prompt."""
    prompt = [ch for ch in step.chunks if not ch[3]]
    return min(step.num_decode, 2), len(prompt), any(ch[1] > 0 for ch in prompt), -step.step


def ragged_batch_figure(capture: RaggedCapture | None = None) -> Figure:
    """Chapter 3's step: the flat token row above, and the prompt chunks' mask below, query by query."""
    c = capture or capture_ragged()
    fig = Picture(figsize=(9, 4.6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 3.2]})
    draw_token_row(top, c)
    draw_prefill_mask(bottom, c)
    top.set_title(f"ch03: step {c.step} of a W1-small run, {len(c.positions)} tokens in one flat row (budget "
                  f"{c.budget}), no padding.\nBelow, Batch.prefill_mask: which keys each prompt token sees",
                  fontsize=10)
    legend_below(bottom, [Patch(color=RED, label="decode token (1 per request)"),
                          Patch(color=BLUE, label="prompt token / key it sees"),
                          Patch(color=GREY, label="masked out"),
                          Patch(facecolor="white", edgecolor="white", label="*: its last token is sampled")], 4)
    fig.tight_layout()
    return fig


def draw_token_row(ax, c: RaggedCapture):
    """The batch's tokens left to right, a box per chunk labelled with its request and positions."""
    t = 0
    for request, start, n, decoding, samples in c.chunks:
        ax.add_patch(Rectangle((t - 0.5, 0), n, 1, facecolor=RED if decoding else BLUE, edgecolor="white",
                               linewidth=2))
        label = f"r{request}" if n < 4 else f"req {request}: positions {start}-{start + n - 1}"
        ax.text(t - 0.5 + n / 2, 0.5, label + ("*" if samples else ""), ha="center", va="center", color="white",
                fontsize=7 if n < 4 else 8)
        t += n
    ax.set_ylim(0, 1)
    ax.set_yticks([0.5], ["tokens"], fontsize=8)
    ax.tick_params(axis="x", labelbottom=False)


def draw_prefill_mask(ax, c: RaggedCapture):
    """Batch.prefill_mask, transposed so that its columns line up with the query tokens in the row above:
    query token i (x) may attend to packed context entry j (y) where coloured."""
    d, T = c.num_decode, len(c.positions)
    mask = c.prefill_mask.T  # (context, prompt tokens)
    ax.imshow(mask, cmap=ListedColormap([GREY, BLUE]), vmin=0, vmax=1, aspect="auto", interpolation="nearest",
              extent=(d - 0.5, T - 0.5, mask.shape[0] - 0.5, -0.5))
    q = k = 0
    for request, start, n, decoding, _ in c.chunks:
        if decoding:
            continue
        ax.add_patch(Rectangle((d + q - 0.5, k - 0.5), n, start + n, fill=False, edgecolor="black", linewidth=1))
        if start >= 4 and n >= 8:  # room inside: name the keys earlier steps cached
            ax.text(d + q + n / 2 - 0.5, k + start / 2 - 0.5, f"req {request}: positions 0-{start - 1},\n"
                    f"cached by earlier steps", ha="center", va="center", fontsize=7, color="white")
        ax.text(d + q - 0.5, k + start + n - 0.5, f" req {request}", ha="left", va="bottom", fontsize=7)
        q, k = q + n, k + start + n
    if d:
        ax.text((d - 1) / 2, mask.shape[0] / 2, "decode tokens:\nbatched decode\nattention over\ntheir own slots",
                ha="center", va="center", fontsize=7, rotation=90 if d < 4 else 0)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(mask.shape[0] - 0.5, -0.5)
    ax.set_xlabel("token of the flat batch (the query)", fontsize=9)
    ax.set_ylabel("packed context entry (key)", fontsize=9)


# ----- chapter 4: block tables into a block pool ---------------------------------------------------------

@dataclass
class BlockCapture:
    tables: dict[int, list[int]]  # request index -> its block table (the cache's own lists, copied)
    ref_count: list[int]
    free_blocks: list[int]
    step: int
    block_size: int
    system_len: int  # tokens of the system prompt every request starts with
    prefix_hit_tokens: int  # prefill tokens the run did not compute, from the engine's summary


def shared_prompt_requests(num_requests: int = 6, system_len: int = 24, seed: int = 0) -> list[Request]:
    """Requests that start with the same system prompt, each with its own question and output length."""
    rng = random.Random(seed)
    vocab = tiny_model().config.vocab_size
    system = [rng.randrange(vocab) for _ in range(system_len)]
    return [Request(system + [rng.randrange(vocab) for _ in range(rng.randint(3, 20))],
                    max_new_tokens=rng.randint(4, 30), ignore_eos=True) for _ in range(num_requests)]


def capture_block_tables(num_blocks: int = 24, block_size: int = 8, system_len: int = 24) -> BlockCapture:
    """Run chapter 4's engine with prefix sharing and keep the cache's state after the step that shows most:
    a block freed by a finished request back in the pool, and the most tables sharing the prefix."""
    from chapters.ch04_paged import PagedEngine

    engine = PagedEngine(tiny_model(), block_size=block_size, num_blocks=num_blocks, share_prefixes=True,
                         max_batch_tokens=40)
    snapshots = []
    step = engine.step

    def snapshot():
        step()
        c = engine.cache
        snapshots.append(BlockCapture({i: list(t) for i, t in c.tables.items()}, list(c.ref_count),
                                      list(c.free_blocks), len(snapshots), block_size, system_len, 0))

    engine.step = snapshot
    result = engine.generate(shared_prompt_requests(system_len=system_len))
    best = max(snapshots, key=lambda s: (bool(holes(s)), len(s.tables), -s.step))
    best.prefix_hit_tokens = result.stats["prefix_hit_tokens"]
    return best


def holes(s: BlockCapture) -> list[int]:
    """Free blocks below the highest block in use: handed out once, freed, waiting in the free list."""
    used = [b for b, n in enumerate(s.ref_count) if n]
    return [b for b in s.free_blocks if used and b < max(used)]


def block_tables_figure(capture: BlockCapture | None = None) -> Figure:
    """Chapter 4's cache mid-run: each request's block table above, the pool below, an arrow per entry."""
    c = capture or capture_block_tables()
    fig = Picture(figsize=(9, 4.2))
    ax = fig.add_subplot()
    colour = {i: REQUEST_COLOURS[k % len(REQUEST_COLOURS)] for k, i in enumerate(sorted(c.tables))}
    pool_y, rows = 0.0, len(c.tables)
    draw_pool(ax, c, colour, pool_y)
    for row, (i, table) in enumerate(sorted(c.tables.items())):
        y = 2.2 + (rows - 1 - row) * 1.1
        ax.text(-0.7, y + 0.4, f"req {i}", ha="right", va="center", fontsize=8)
        for x, block in enumerate(table):
            shared = c.ref_count[block] > 1
            ax.add_patch(Rectangle((x, y), 0.9, 0.8, facecolor=colour[i], edgecolor="black", linewidth=0.6,
                                   hatch="///" if shared else None, zorder=2))
            ax.text(x + 0.45, y + 0.4, str(block), ha="center", va="center", fontsize=8, color="white",
                    fontweight="bold", zorder=3)
            ax.annotate("", xy=(block + 0.45, pool_y + 0.85), xytext=(x + 0.45, y - 0.02), zorder=1,
                        arrowprops=dict(arrowstyle="->", color=colour[i], alpha=0.6, linewidth=0.8,
                                        shrinkA=0, shrinkB=0))  # under the cells: entry j of every table lines up
    ax.set_xlim(-2.2, len(c.ref_count) + 0.3)
    ax.set_ylim(-1.0, 2.2 + rows * 1.1)
    ax.set_yticks([pool_y + 0.4, 2.2 + (rows - 1) * 0.55 + 0.4], ["pool", "block\ntables"], fontsize=9)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    shared = [b for b, n in enumerate(c.ref_count) if n > 1]
    ax.set_title(f"ch04: the paged cache after step {c.step} of a run with prefix sharing. {len(c.tables)} requests "
                 f"share a\n{c.system_len}-token system prompt: its {len(shared)} blocks of {c.block_size} tokens are "
                 f"stored once, each table points to them", fontsize=10)
    legend_below(ax, [Patch(facecolor=GREY, hatch="///", edgecolor="black", label="shared block (x ref_count)"),
                      Patch(facecolor=REQUEST_COLOURS[0], edgecolor="black", label="a request's own block"),
                      Patch(facecolor="white", edgecolor="grey", linestyle="--", label="free block"),
                      Patch(facecolor="white", edgecolor=RED, linewidth=2, label="freed by a finished request")], 4)
    fig.tight_layout()
    return fig


def draw_pool(ax, c: BlockCapture, colour: dict[int, str], y: float):
    """The pool: one cell per block, coloured by its owner, shared blocks hatched with their reference count."""
    owner = {block: i for i, table in c.tables.items() for block in table}
    freed = set(holes(c))
    for block, refs in enumerate(c.ref_count):
        if refs == 0:
            ax.add_patch(Rectangle((block, y), 0.9, 0.8, facecolor="white", linewidth=2 if block in freed else 0.8,
                                   edgecolor=RED if block in freed else "grey", linestyle="-" if block in freed
                                   else "--"))
        elif refs == 1:
            ax.add_patch(Rectangle((block, y), 0.9, 0.8, facecolor=colour[owner[block]], edgecolor="black",
                                   linewidth=0.6))
        else:
            ax.add_patch(Rectangle((block, y), 0.9, 0.8, facecolor=GREY, edgecolor="black", linewidth=0.6,
                                   hatch="///"))
            ax.text(block + 0.45, y - 0.3, f"x{refs}", ha="center", va="center", fontsize=8)
        ax.text(block + 0.45, y + 0.4, str(block), ha="center", va="center", fontsize=7,
                color="white" if refs == 1 else "black")
    ax.text(len(c.ref_count) / 2, y - 0.7, f"{len(c.free_blocks)} of {len(c.ref_count)} blocks free"
            + (f"; {', '.join(map(str, sorted(freed)))} freed by a finished request" if freed else "")
            + (f"; the free list hands out {c.free_blocks[-1]} next" if c.free_blocks else ""), ha="center", fontsize=8)


# ----- chapter 5: two slots, three streams --------------------------------------------------------------

@dataclass
class TimelineCapture:
    steps: list[dict]  # per step: start, prepared, launched, resolved (CPU), gpu_start, gpu_end (model work), seconds
    first: int  # the run's index of steps[0]; step i uses slot i % 2
    on_gpu: bool  # model work timed by CUDA events on a GPU, or on the CPU's worker thread
    source: str  # where the data comes from, for the caption

    @property
    def shown(self) -> range:
        """The steps drawn whole: all but the one before (its tail enters the window) and the one after
        (its launch starts the last shown step's resolve)."""
        return range(1, len(self.steps) - 1)


H200_FILE = FIGURES / "h200_w1.json"


def window(timeline: list[dict], first: int, steps: int) -> list[dict]:
    """Steps first .. first+steps-1 of a run's timeline, with the step before and the step after."""
    return timeline[first - 1:first + steps + 1]


def capture_h200_timeline(first: int = 500, steps: int = 6, path: Path = H200_FILE) -> TimelineCapture | None:
    """Steps first .. first+steps-1 of the committed ch05_async run on W1 on one H200, or None when the file
    or the run is not there."""
    if not Path(path).exists():
        return None
    runs = [r for r in json.loads(Path(path).read_text())["results"] if r["chapter"] == "ch05_async"]
    timeline = runs[0]["extra"].get("timeline") if runs else None
    if not timeline or len(timeline) < first + steps + 1:
        return None
    return TimelineCapture(window(timeline, first, steps), first - 1, True,
                           f"measured on one H200 ({Path(path).name}: ch05_async on W1, decode steps {first}-"
                           f"{first + steps - 1}); compute from CUDA events")


def capture_cpu_timeline(first: int = 10, steps: int = 6, num_requests: int = 4) -> TimelineCapture:
    """Chapter 5's engine on this CPU, asynchronous: its timeline (`stats["timeline"]`), where the model's
    work runs on a worker thread, the compute stream's stand-in."""
    from chapters.ch05_async import AsyncEngine

    result = AsyncEngine(tiny_model(), max_batch_tokens=64).generate(small_requests(num_requests))
    return TimelineCapture(window(result.stats["timeline"], first, steps), first - 1, False,
                           f"this CPU, tiny model, decode steps {first}-{first + steps - 1}; a worker thread "
                           f"stands in for the compute stream")


def capture_timeline() -> TimelineCapture:
    """The H200's measured timeline when it is committed, else a CPU run's."""
    return capture_h200_timeline() or capture_cpu_timeline()


LANES = {"CPU": 3, "copy-in stream": 2, "compute stream": 1, "copy-out stream": 0}
LANE_LABELS = {True: ["CPU: schedule, prepare,\nlaunch, commit, resolve", "copy-in stream", "compute stream",
                      "copy-out stream"],
               False: ["main thread: schedule,\nprepare, launch, commit,\nresolve", "copy-in (in prepare)",
                       "worker thread\n(the compute stream)", "copy-out (on the worker)"]}


def stream_spans(s: dict, tick: float) -> dict[str, tuple[float, float]]:
    """(start, width) of each stream's work on a step. Copies are not timed: copy-in is queued at the end
    of prepare (the model's work waits for it), copy-out after the model's work (resolve waits for it);
    each is drawn as a tick there."""
    return {"copy-in stream": (s["prepared"] - tick, tick),
            "compute stream": (s["gpu_start"], s["gpu_end"] - s["gpu_start"]),
            "copy-out stream": (s["gpu_end"], tick)}


def cpu_spans(steps: list[dict], k: int) -> list[tuple[float, float, str]]:
    """(start, width, hatch) of step k's CPU work: schedule + prepare, launch + commit, and its resolve,
    which starts once the loop reaches it (asynchronously: after the next step's launch) and ends when
    its tokens are handed out."""
    s = steps[k]
    resolve = max([t["launched"] for t in steps[k:k + 2] if t["launched"] <= s["resolved"]], default=s["launched"])
    return [(s["start"], s["prepared"] - s["start"], ""), (s["prepared"], s["launched"] - s["prepared"], "////"),
            (resolve, s["resolved"] - resolve, "....")]


def bar(ax, start: float, width: float, lane: str, colour: str, t0: float, **style):
    """One piece of work on a lane, in milliseconds from t0."""
    ax.broken_barh([((start - t0) * 1e3, width * 1e3)], (LANES[lane] - 0.35, 0.7), facecolor=colour,
                   edgecolor="white", **style)


def two_slots_figure(capture: TimelineCapture | None = None) -> Figure:
    """Chapter 5's loop over a few steps: the CPU's work and the three streams', coloured by input slot."""
    c = capture or capture_timeline()
    t0 = c.steps[c.shown[0]]["start"]
    end = max(c.steps[k]["resolved"] for k in c.shown)
    tick = (end - t0) / 150
    fig = Picture(figsize=(9, 4))
    ax = fig.add_subplot()
    for k in range(len(c.steps)):
        step, s = c.first + k, c.steps[k]
        colour = SLOT_COLOURS[step % 2]
        spans = cpu_spans(c.steps, k)
        for start, width, hatch in spans if k < len(c.steps) - 1 else spans[:2]:  # the step after: its resolve is later
            bar(ax, start, width, "CPU", colour, t0, hatch=hatch, alpha=0.5 if hatch == "...." else 1.0)
        spans = stream_spans(s, tick)
        for lane, (start, width) in spans.items():
            bar(ax, start, width, lane, colour, t0)
        compute_start, compute_width = spans["compute stream"]
        ax.text((compute_start - t0 + compute_width / 2) * 1e3, LANES["compute stream"], f"step {step}",
                ha="center", va="center", color="white", fontsize=8, clip_on=True)
        ax.text((s["start"] - t0) * 1e3, LANES["CPU"] + 0.4, f"prepare {step}", fontsize=7, va="bottom",
                clip_on=True)
    ax.set_yticks(list(LANES.values()), LANE_LABELS[c.on_gpu], fontsize=8)
    ax.set_xlim(0, (end - t0) * 1e3)
    ax.set_ylim(-0.6, LANES["CPU"] + 0.9)
    ax.set_xlabel(f"milliseconds; {c.source}.\nCopies are not timed: ticks where the engine queues them",
                  fontsize=8)
    ax.set_title(f"ch05: two input slots, three streams. While the {'GPU' if c.on_gpu else 'worker thread'} "
                 f"computes step N from one slot,\nthe CPU prepares step N+1 in the other, then waits for step N's "
                 f"tokens", fontsize=10)
    legend_below(ax, [Patch(color=SLOT_COLOURS[0], label="slot 0 (even steps)"),
                      Patch(facecolor=GREY, label="schedule + prepare"),
                      Patch(color=SLOT_COLOURS[1], label="slot 1 (odd steps)"),
                      Patch(facecolor=GREY, hatch="////", label="launch + commit"),
                      Patch(color="white"),
                      Patch(facecolor=GREY, hatch="....", label="resolve: wait for tokens, hand them out")], 3,
                 offset=-0.3)
    fig.tight_layout()
    return fig


# ----- the script ---------------------------------------------------------------------------------------

PICTURES = {"idea_padded_batch.png": padded_batch_figure, "idea_ragged_batch.png": ragged_batch_figure,
            "idea_block_tables.png": block_tables_figure, "idea_two_slots.png": two_slots_figure}


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = argparse.ArgumentParser(prog="python -m tools.pictures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNG files (default: figures/)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, draw in PICTURES.items():
        draw().savefig(args.out / name, dpi=130, bbox_inches="tight")
        print(args.out / name)


if __name__ == "__main__":
    main()
