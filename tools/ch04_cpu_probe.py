"""Where chapter 4's CPU step goes, on a GPU: W1's 256 requests (outputs capped at 96 tokens) timed, then
once under cProfile (top functions by own and by cumulative time).

    PYTHONPATH=. OUT=/tmp python tools/ch04_cpu_probe.py    # figures/h200_ch04_cpu_probe.log is its output

(figures/h200_ch04_cpu_probe_halves.log: its output when each layer compiled as two halves around an eager
attention, 56 compiled calls a step; it then also tried inductor's C++ wrapper.)
"""
import cProfile
import dataclasses
import io
import os
import pstats
import time

import torch

from chapters import ch04_paged
from minigpt import from_config, get_workload

workload = get_workload("W1")
model = from_config(workload.preset, device="cuda", dtype=torch.bfloat16)
requests = [dataclasses.replace(r, max_new_tokens=min(r.max_new_tokens, 96))
            for r in workload.requests(model.config.vocab_size, 256)]
options = dict(max_batch_tokens=8192)
t = time.perf_counter()
model.compile_layers("inductor")
print(f"compile_layers: {time.perf_counter() - t:.1f} s", flush=True)
ch04_paged.generate(model, requests[:8], **options)  # warm-up


def timed(tag: str):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = ch04_paged.generate(model, requests, **options)
    torch.cuda.synchronize()
    wall, steps = time.perf_counter() - t, out.stats["steps"]
    print(f"{tag}: {wall:.2f} s, {steps} steps, {1e3 * wall / steps:.2f} ms/step, "
          f"{sum(len(c.tokens) for c in out) / wall:.0f} tok/s", flush=True)


timed("ch04 inductor")
timed("ch04 inductor again")
profiler = cProfile.Profile()
profiler.enable()
timed("ch04 under cProfile")
profiler.disable()
text = io.StringIO()
stats = pstats.Stats(profiler, stream=text)
stats.sort_stats("tottime").print_stats(45)
stats.sort_stats("cumulative").print_stats(60)
print(text.getvalue()[:30000])
stats.dump_stats(f"{os.environ.get('OUT', '/tmp')}/ch04.prof")

