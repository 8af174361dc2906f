"""Chapter 5's CPU work a step (schedule + prepare, `prepared - start` in its timeline) while 250-256
requests decode: the tiny model on the CPU, 256 requests of 20-600 prompt tokens and 40 new tokens,
five runs after a warm-up; the median of each run's decode steps, in ms. On the H200 the same stretch of
W1 took 3-7.6 ms a step (NOTES.md); this measures the Python, not the host.

    PYTHONPATH=. python tools/ch05_cpu_step.py
"""
import statistics

import torch

from chapters import ch05_async
from minigpt import Request, from_config

model = from_config("tiny")
g = torch.Generator().manual_seed(0)
requests = [Request(torch.randint(0, model.config.vocab_size, (int(torch.randint(20, 600, (1,), generator=g)),),
                                  generator=g).tolist(), max_new_tokens=40) for _ in range(256)]


def median_ms() -> float:
    engine = ch05_async.AsyncEngine(model, max_batch_tokens=4096)
    engine.generate(requests)
    return statistics.median(1e3 * (times["prepared"] - times["start"])
                             for (times, _), t in zip(engine.done, engine.trace) if t["running"] >= 250 and times["decode"])


median_ms()
print("schedule + prepare, ms a decode step at 250-256 requests:", [round(median_ms(), 3) for _ in range(5)])
