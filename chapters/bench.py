"""The whole-book benchmark: every chapter on one workload, results as JSON under figures/.

    python -m chapters.bench                        # CPU: W1-small, every chapter, in seconds
    python -m chapters.bench --device cuda --workload W1 --subset ch01_naive=16 --out figures/h200_w1.json
    python -m chapters.bench attention --out figures/h200_attention.json   # the paged kernel's bandwidth
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from minigpt import from_config, get_workload, results_table, save_results
from minigpt.cli import CHAPTERS, measure
from minigpt.metrics import console, environment


def parse_options(items: list[str]) -> dict:
    """["use_async=false", "num_blocks=100"] -> {"use_async": False, "num_blocks": 100}"""
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        out[k] = json.loads(v) if v[:1] in "0123456789[{tf-" else v
    return out


def run_chapters(argv):
    p = argparse.ArgumentParser(prog="python -m chapters.bench")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workload", default="W1-small")
    p.add_argument("--preset", default=None)
    p.add_argument("--chapters", default=",".join(CHAPTERS))
    p.add_argument("--subset", action="append", default=[], help="CHAPTER=N: run only the first N requests")
    p.add_argument("--option", action="append", default=[], help="CHAPTER:NAME=VALUE, an engine option")
    p.add_argument("--out", default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.requests = None
    workload = get_workload(args.workload)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = from_config(args.preset or workload.preset, device=args.device, dtype=dtype)
    requests = workload.requests(model.config.vocab_size)
    subsets = {k: int(v) for k, v in (s.split("=") for s in args.subset)}
    options: dict[str, dict] = {}
    for o in args.option:
        chapter, kv = o.split(":", 1)
        options.setdefault(chapter, {}).update(parse_options([kv]))
    results = []
    for label in args.chapters.split(","):
        # "ch05_async@use_async=false": a chapter with options of its own, labelled as given
        name, _, variant = label.partition("@")
        opts = {**options.get(name, {}), **parse_options(variant.split("+") if variant else [])}
        subset = requests[: subsets.get(label, subsets.get(name, len(requests)))]
        results.append(measure(name, model, subset, workload.name, args, opts, label=label))
        console.print(results_table(results[-1:], ""))
        if args.out:  # write as we go: a long run that is cut off keeps what it measured
            save_results(results, args.out, command="python -m chapters.bench " + shlex.join(argv))
    console.print(results_table(results, f"{workload.name} on {args.device}: {model.config.name}, {dtype}"))


def bench_attention(argv):
    """Paged decode attention at W1's decode shape: bytes read / time, against the copy ceiling."""
    import triton.testing

    from chapters.ch04_paged import paged_decode_reference, paged_decode_triton

    p = argparse.ArgumentParser(prog="python -m chapters.bench attention")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    copy_ms = triton.testing.do_bench(lambda: y.copy_(x), return_mode="median")
    ceiling = 2 * x.numel() / copy_ms / 1e9  # TB/s, bytes read + written
    del x, y
    for B, ctx, H, Hkv, bs in [(256, 1024, 16, 8, 16), (256, 1024, 16, 8, 64), (32, 8192, 32, 8, 16),
                               (32, 1024, 32, 8, 16), (64, 2048, 16, 8, 16)]:
        D = 128
        width = ctx // bs
        blocks = B * width
        k = torch.randn(blocks, bs, Hkv, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        tables = torch.randperm(blocks, device="cuda").view(B, width)
        lens = torch.full((B,), ctx, device="cuda")
        q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * k.numel() * k.element_size()
        for name, fn in [("triton", lambda: paged_decode_triton(q, k, v, tables, lens)),
                         ("gather+sdpa", lambda: paged_decode_reference(q, k, v, tables, lens))]:
            ms = triton.testing.do_bench(fn, return_mode="median")
            rows.append({"kernel": name, "batch": B, "context": ctx, "heads": H, "kv_heads": Hkv,
                         "block_size": bs, "us": ms * 1e3, "tb_per_s": nbytes / ms / 1e9,
                         "of_ceiling": nbytes / ms / 1e9 / ceiling})
            console.print(rows[-1])
    data = {"command": "python -m chapters.bench attention " + shlex.join(argv), "environment": environment(),
            "copy_ceiling_tb_per_s": ceiling, "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attention"]:
        return bench_attention(argv[1:])
    return run_chapters(argv)


if __name__ == "__main__":
    main()
