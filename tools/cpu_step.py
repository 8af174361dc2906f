"""The CPU's share of a decode step in chapters 4 and 5 (schedule + prepare) while 250-256 requests decode:
the tiny model on the CPU, 256 requests of 20-600 prompt tokens and 40 new tokens, five runs after a
warm-up; the median over each run's decode steps, in ms. This measures the Python, not a GPU host: on the
H200, chapter 5's took 3-7.2 ms a step on W1 (NOTES.md).

    PYTHONPATH=. python tools/cpu_step.py
"""
import statistics
import time

import torch

from chapters import ch03_continuous, ch04_paged, ch05_async
from minigpt import Request, from_config

model = from_config("tiny")
g = torch.Generator().manual_seed(0)
requests = [Request(torch.randint(0, model.config.vocab_size, (int(torch.randint(20, 600, (1,), generator=g)),),
                                  generator=g).tolist(), max_new_tokens=40) for _ in range(256)]
spent: list[float] = []  # seconds of schedule + prepare, one entry per call


def timed(cls, name):
    method = getattr(cls, name)

    def wrapper(self, *args):
        t = time.perf_counter()
        out = method(self, *args)
        spent.append(time.perf_counter() - t)
        return out
    setattr(cls, name, wrapper)


def ch04_ms() -> float:
    spent.clear()
    engine = ch04_paged.PagedEngine(model, max_batch_tokens=4096)
    engine.generate(requests)
    per_step = [a + b for a, b in zip(spent[0::2], spent[1::2])]  # schedule, then prepare, each step
    return statistics.median(1e3 * s for s, t in zip(per_step, engine.trace)
                             if t["running"] >= 250 and t["decode"] == t["tokens"])


def ch05_ms() -> float:
    engine = ch05_async.AsyncEngine(model, max_batch_tokens=4096)
    engine.generate(requests)
    return statistics.median(1e3 * (times["prepared"] - times["start"])
                             for (times, _), t in zip(engine.done, engine.trace) if t["running"] >= 250 and times["decode"])


for measure in (ch05_ms, ch04_ms):
    if measure is ch04_ms:
        timed(ch03_continuous.Scheduler, "schedule")
        timed(ch03_continuous.ContinuousEngine, "prepare")
    measure()
    print(f"{measure.__name__[:4]}: schedule + prepare, ms a decode step at 250-256 requests:",
          [round(measure(), 3) for _ in range(5)])
