"""Chapter 4's decode steps on a GPU, for A/B runs of two versions of the code on one machine: the qwen3-0.6b
shape (random weights), W1's 256 requests with outputs capped at 64 tokens, six runs in one process. For each
run: the wall time and the decode steps' minimum, tenth percentile and median (each step timed on the CPU;
the steps after the first 20, all of 200+ rows). Runs 1, 3, 5 skip Dynamo's guards
(`skip_guard_eval_unsafe`). Then one run under cProfile, and one decode step (the 40th) under the torch
profiler: its GPU kernels, the launch calls, the CPU time of each op.

    PYTHONPATH=. python tools/ch04_decode_probe.py CODE_ROOT LABEL

CODE_ROOT is the folder holding the `minigpt` and `chapters` to run (`.`, or an older commit unpacked with
`git archive COMMIT minigpt chapters | tar -x -C DIR`). Inductor's wrapper language follows
TORCHINDUCTOR_CPP_WRAPPER (1: C++, else Python), for code with and without the engine's `cpp_wrapper` option.
`figures/h200_ch04_decode_probe.log` holds two sessions of runs on the H200.
"""
import cProfile
import collections
import dataclasses
import inspect
import io
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])
import torch  # noqa: E402
from chapters import ch04_paged  # noqa: E402
from minigpt import PRESETS, Transformer, get_workload  # noqa: E402

label = sys.argv[2]
config = PRESETS["qwen3-0.6b"]
torch.manual_seed(0)
model = Transformer(config).to("cuda", torch.bfloat16)
requests = [dataclasses.replace(r, max_new_tokens=64) for r in get_workload("W1").requests(config.vocab_size, 256)]
options = {"max_batch_tokens": 8192}
if "cpp_wrapper" in inspect.signature(ch04_paged.PagedEngine.__init__).parameters:
    options["cpp_wrapper"] = os.environ.get("TORCHINDUCTOR_CPP_WRAPPER") == "1"
t0 = time.perf_counter()
engine = ch04_paged.PagedEngine(model, **options)
print(label, f"compile {time.perf_counter() - t0:.1f} s", flush=True)

times, profile_at, profiles = [], [None], []
step = engine.step


def timed_step():
    t = time.perf_counter()
    if profile_at[0] == len(times):
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            result = step()
            torch.cuda.synchronize()
        profiles.append(prof)
    else:
        result = step()
    times.append((time.perf_counter() - t) * 1e3)
    return result


engine.step = timed_step
for i in range(6):
    skip = i % 2 == 1
    torch.compiler.set_stance("default", skip_guard_eval_unsafe=skip)
    times.clear()
    torch.cuda.synchronize()
    t = time.perf_counter()
    engine.generate(requests)
    torch.cuda.synchronize()
    dec = sorted(times[20:])
    print(label, "skip_guard" if skip else "guards", f"run {i}: {time.perf_counter() - t:.2f} s, {len(times)} steps, "
          f"decode steps min {dec[0]:.2f} p10 {dec[len(dec) // 10]:.2f} median {statistics.median(dec):.2f} ms",
          flush=True)
torch.compiler.set_stance("default", skip_guard_eval_unsafe=False)

profiler = cProfile.Profile()
profiler.enable()
engine.generate(requests)
torch.cuda.synchronize()
profiler.disable()
text = io.StringIO()
pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
print(label, "cProfile, one run\n", text.getvalue()[-5000:], flush=True)

profile_at[0] = 40
times.clear()
engine.generate(requests)
events = profiles[0].events()
kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
launches = collections.Counter(e.name for e in events
                               if e.device_type == torch.autograd.DeviceType.CPU and "aunchKernel" in e.name)
print(label, f"step 40: {len(kernels)} GPU kernels/ops; launch calls {dict(launches)}; "
      f"GPU busy {sum(e.device_time for e in kernels) / 1e3:.2f} ms")
print(profiles[0].key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
