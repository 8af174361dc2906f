"""The figures, drawn from measured results (never from typed numbers)."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a script or a test: draw to files, no window; a notebook shows them inline
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minigpt.metrics import gpu_busy  # noqa: E402


def _save(fig, path):
    """Write the figure to `path`, or with path None show it (in a notebook, inline)."""
    fig.tight_layout()
    if path is None:
        plt.show()
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def ladder(rows: list[tuple[str, float, str]], references: dict, path, title: str):
    """Output tokens/s per chapter, log scale; rows: (label, tokens/s, note); references: label -> tokens/s."""
    fig, ax = plt.subplots(figsize=(9, 4.6))
    labels = [r[0].replace(" ", "\n", 1) for r in rows]  # an option goes under its chapter's name
    bars = ax.bar(labels, [r[1] for r in rows], color=["#9ab" if "--" in r[0] else "#357" for r in rows])
    for bar, (_, v, note) in zip(bars, rows):
        ax.annotate(f"{v:,.0f}" + (f"\n({note})" if note else ""), (bar.get_x() + bar.get_width() / 2, v),
                    ha="center", va="bottom", fontsize=7)
    for (name, value), style in zip(references.items(), ["-", "--", ":", "-."]):
        ax.axhline(value, color="#c44" if "limit" in name else "#888", linestyle=style, linewidth=1)
        ax.annotate(f"{name}: {value:,.0f}", (len(rows) - 0.5, value), ha="right", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("output tokens / s")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    return _save(fig, path)


def padding_waste(stats: dict, path, title: str):
    fig, ax = plt.subplots(figsize=(5, 3.2))
    parts = [("prefill", stats["prefill_slots"], stats["prefill_pad"]),
             ("decode", stats["decode_slots"], stats["decode_idle"])]
    for i, (name, total, waste) in enumerate(parts):
        ax.barh(i, total - waste, color="#357", label="real tokens" if i == 0 else None)
        ax.barh(i, waste, left=total - waste, color="#db8", label="padding / finished rows" if i == 0 else None)
        ax.annotate(f"{waste / total:.0%} wasted", (total, i), ha="right", va="center", fontsize=8)
    ax.set_yticks(range(len(parts)), [p[0] for p in parts])
    ax.set_xlabel("token slots computed")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def kv_memory(traces: dict[str, list[dict]], bytes_per_token: int, path, title: str):
    """KV memory reserved and actually holding keys, over each run (GB, at bytes_per_token)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (name, trace), color in zip(traces.items(), ["#c63", "#357", "#393"]):
        t = [s["t"] for s in trace]
        ax.plot(t, [s["kv_reserved"] * bytes_per_token / 1e9 for s in trace], color=color, linestyle="--",
                label=f"{name}: reserved")
        ax.plot(t, [s["kv_used"] * bytes_per_token / 1e9 for s in trace], color=color, label=f"{name}: used")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("KV cache, GB")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def occupancy(trace: list[dict], path, title: str):
    """Tokens per step and running sequences, step by step."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([s["tokens"] for s in trace], color="#357", linewidth=0.8, label="tokens in the step")
    ax.plot([s["running"] for s in trace], color="#c63", linewidth=0.8, label="sequences running")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def async_timeline(runs: dict[str, list[dict]], path, title: str, first: int, steps: int = 20, device: str = "GPU"):
    """CPU and device lanes over `steps` consecutive steps of each run, one panel per run (sync above async).
    `device` names the lane of the model's work: the GPU, or on a CPU the thread that runs the model."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 1.9 * len(runs)), sharex=True)
    for ax, (name, timeline) in zip(axes, runs.items()):
        window = timeline[first:first + steps]
        t0 = window[0]["start"]
        for s in window:
            ax.broken_barh([(s["start"] - t0, s["prepared"] - s["start"])], (2, 0.8), color="#db8")
            ax.broken_barh([(s["prepared"] - t0, s["launched"] - s["prepared"])], (2, 0.8), color="#c63")
            ax.broken_barh([(s["launched"] - t0, s["resolved"] - s["launched"])], (1, 0.8), color="#ccc")
            ax.broken_barh([(s["gpu_start"] - t0, s["gpu_end"] - s["gpu_start"])], (0, 0.8), color="#357")
        ax.set_yticks([0.4, 1.4, 2.4], [device, "CPU waits", "CPU works"], fontsize=8)
        ax.set_title(f"{name}: {device} busy {gpu_busy(window):.0%} of these {steps} steps", fontsize=9, loc="left")
    axes[-1].set_xlabel(f"seconds (schedule+prepare: sand, launch: red, waiting for tokens: grey, {device} step: blue)",
                        fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def running_requests(runs: dict[str, list[int]], path, title: str):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for (name, running), color in zip(runs.items(), ["#c63", "#357"]):
        ax.plot(running, color=color, linewidth=0.8, label=f"{name}: {sum(running) / len(running):.1f} on average")
    ax.set_xlabel("step")
    ax.set_ylabel("requests running")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def latency_vs_rate(rows: list[dict], slo: dict, goodput: dict, path, title: str):
    """p90 TTFT and p90 TPOT against the request rate, a line per chapter, the SLO dashed; each chapter's
    largest rate within the SLO (its goodput) marked with a ring. A chapter run on fewer requests than the others
    saw a burst, not a load: dotted, and no ring."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    chapters = list(dict.fromkeys(r["chapter"] for r in rows))
    counts = {r["chapter"]: r.get("requests", 0) for r in rows}
    bursts = {c: f"{c}: its first {n} requests, a burst" for c, n in counts.items() if n < max(counts.values())}
    for ax, key, limit, label in ((axes[0], "ttft", slo["ttft_p90_s"], "TTFT p90 (s)"),
                                  (axes[1], "tpot", slo["tpot_p90_s"], "TPOT p90 (ms)")):
        scale = 1e3 if key == "tpot" else 1
        for chapter in chapters:
            mine = [r for r in rows if r["chapter"] == chapter]
            burst = chapter in bursts
            line, = ax.plot([r["rate"] for r in mine], [r[key]["p90"] * scale for r in mine], marker="o", ms=3,
                            label=bursts.get(chapter, chapter), ls=":" if burst else "-", lw=1 if burst else 1.5)
            knee = [r for r in mine if r["rate"] == goodput.get(chapter) and not burst]
            if knee:
                ax.plot(knee[0]["rate"], knee[0][key]["p90"] * scale, "o", ms=10, mfc="none", color=line.get_color())
        ax.axhline(limit * scale, ls="--", color="grey", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        rates = sorted({r["rate"] for r in rows})
        ax.set_xticks(rates, [f"{r:g}" for r in rates], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("requests a second")
        ax.set_ylabel(label)
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))  # 1, 2, 5, 10, 20, 50...
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 50, not 5 x 10^1
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].legend(fontsize=7, loc="best")  # TTFT climbs into the top corners past a knee
    fig.suptitle(title + (" (dashed: the SLO; ring: the largest rate within it)" if goodput else " (dashed: the SLO)"),
                 fontsize=10)
    return _save(fig, path)


def step_split(runs: dict[str, list[tuple[str, float, float]]], path, title: str):
    """A decode step's time on one GPU and on two, a bar each, split into the all-reduces and the rest;
    runs: workload -> [(label, step ms, all-reduce ms)]."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.4), squeeze=False)
    for ax, (workload, bars) in zip(axes[0], runs.items()):
        labels = [b[0] for b in bars]
        rest = [b[1] - b[2] for b in bars]
        ax.bar(labels, rest, color="#357", label="the rest of the step")
        ax.bar(labels, [b[2] for b in bars], bottom=rest, color="#c63", label="all-reduces")
        for i, (_, step, _) in enumerate(bars):
            ax.annotate(f"{step:.2f} ms", (i, step), ha="center", va="bottom", fontsize=8)
        ax.set_title(workload, fontsize=9)
        ax.set_ylim(0, max(b[1] for b in bars) * 1.15)
        ax.set_ylabel("median decode step, ms")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def scaling(runs: dict[str, list[tuple[str, float]]], path, title: str):
    """Output tokens/s on one GPU and on two, per workload, beside the ideal (twice the one-GPU rate)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, (workload, bars) in enumerate(runs.items()):
        for j, (gpus, rate) in enumerate(bars):
            x = i * 3 + j
            ax.bar(x, rate, color="#357" if j == 0 else "#c63")
            ax.annotate(f"{gpus}\n{rate:,.0f}", (x, rate), ha="center", va="bottom", fontsize=7)
        ax.hlines(2 * bars[0][1], i * 3 - 0.4, i * 3 + 1.4, colors="#888", linestyles="--", linewidth=1)
    ax.set_xticks([i * 3 + 0.5 for i in range(len(runs))], list(runs))
    ax.set_ylim(0, max(2 * b[0][1] for b in runs.values()) * 1.2)
    ax.set_ylabel("output tokens / s")
    ax.set_title(title + " (dashed: the ideal, twice one GPU)", fontsize=9)
    return _save(fig, path)
