"""Chapter 4's CPU step, on a GPU: the CPU cost of one launch (matmul, addmm, add, empty) under each cuBLAS
front end, then ch04 on W1's 256 requests (outputs capped at 128 tokens) with two knobs that might cut the
CPU's share of a step, each run three times in turn; medians of ms a step.

    PYTHONPATH=. python tools/ch04_knobs.py    # figures/h200_ch04_knobs.log is its output
"""
import dataclasses
import statistics
import time

import torch

from chapters import ch04_paged
from minigpt import from_config, get_workload


def cpu_us_per_call(f, n: int = 2000) -> float:
    for _ in range(50):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        f()
    per_call = (time.perf_counter() - t) / n  # the CPU's time: the GPU runs behind, never full at these sizes
    torch.cuda.synchronize()
    return per_call * 1e6


bf16 = dict(device="cuda", dtype=torch.bfloat16)
x, w, r, s = (torch.randn(256, 1024, **bf16), torch.randn(4096, 1024, **bf16), torch.randn(256, 4096, **bf16),
              torch.randn(256, 1024, **bf16))
wt = w.t()
for library in ("cublas", "cublaslt"):
    torch.backends.cuda.preferred_blas_library(library)
    print(library, f"mm {cpu_us_per_call(lambda: torch.mm(x, wt)):.1f} us, "
          f"addmm {cpu_us_per_call(lambda: torch.addmm(r, x, wt)):.1f} us, "
          f"add {cpu_us_per_call(lambda: torch.add(s, s)):.1f} us, "
          f"empty {cpu_us_per_call(lambda: torch.empty(256, 1024, device='cuda')):.1f} us", flush=True)
torch.backends.cuda.preferred_blas_library("cublas")

workload = get_workload("W1")
model = from_config(workload.preset, **bf16)
requests = [dataclasses.replace(q, max_new_tokens=min(q.max_new_tokens, 128))
            for q in workload.requests(model.config.vocab_size, 256)]
options = dict(max_batch_tokens=8192)
ch04_paged.generate(model, requests[:8], **options)


def ms_per_step() -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = ch04_paged.generate(model, requests, **options)
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / out.stats["steps"]


variants = {"base": lambda: None,
            "skip_guard_eval_unsafe": lambda: torch.compiler.set_stance("default", skip_guard_eval_unsafe=True),
            "cublaslt": lambda: torch.backends.cuda.preferred_blas_library("cublaslt")}
results = {k: [] for k in variants}
for rep in range(3):
    for name, apply in variants.items():
        apply()
        results[name].append(ms_per_step())
        torch.compiler.set_stance("default")
        torch.backends.cuda.preferred_blas_library("cublas")
    print(rep, {k: round(v[-1], 2) for k, v in results.items()}, flush=True)
print("median ms/step", {k: round(statistics.median(v), 2) for k, v in results.items()})
