"""The named, seeded workloads every chapter is measured on (the README says why each was chosen)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .engine import Request


@dataclass(frozen=True)
class Workload:
    name: str
    preset: str  # the model shape it is meant for
    num_requests: int
    prompt_len: tuple[int, int]  # uniform, inclusive
    output_len: tuple[int, int]  # uniform, inclusive
    description: str

    def requests(self, vocab_size: int, num_requests: int | None = None, seed: int = 0, rate: float | None = None,
                 burst: int = 1) -> list[Request]:
        """The requests, seeded: the same list on every machine. `num_requests` takes the first n.

        All arrive at t = 0 unless `rate` is given: then they arrive over time, a Poisson process of `rate`
        requests a second (seeded apart from the prompts, so every rate serves the same requests), in bursts
        of `burst` requests arriving together (bursts at rate / burst a second)."""
        rng = random.Random(seed)
        out = []
        for _ in range(self.num_requests):
            p, o = rng.randint(*self.prompt_len), rng.randint(*self.output_len)
            prompt = [rng.randrange(vocab_size) for _ in range(p)]
            out.append(Request(prompt_ids=prompt, max_new_tokens=o, ignore_eos=True))
        out = out if num_requests is None else out[:num_requests]
        if rate is not None:
            for r, t in zip(out, poisson_arrivals(len(out), rate, burst, seed)):
                r.arrival_time = t
        return out


def poisson_arrivals(n: int, rate: float, burst: int = 1, seed: int = 0) -> list[float]:
    """n arrival times (seconds) of a Poisson process of `rate` requests a second, `burst` at a time: the
    gaps between bursts are exponential with mean burst / rate. The first burst arrives at t = 0."""
    if not (rate > 0 and math.isfinite(rate)) or burst < 1:
        raise ValueError(f"rate must be a positive number of requests a second and burst at least 1, got {rate}, {burst}")
    rng, t, times = random.Random(f"arrivals-{seed}"), 0.0, []
    while len(times) < n:
        times += [t] * burst
        t += rng.expovariate(rate / burst)
    return times[:n]


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("W1", "qwen3-0.6b", 256, (100, 1024), (100, 1024),
                 "nano-vllm's benchmark: 256 requests, prompt and output lengths uniform in [100, 1024]"),
        Workload("W1-load", "qwen3-0.6b", 1024, (100, 1024), (100, 1024),
                 "W1's shape with 1,024 requests, the first 256 W1's own: enough to queue on an H200 (latency sweeps)"),
        Workload("W2", "llama3-8b", 32, (16, 64), (8192, 8192),
                 "the seed article's experiment: 32 requests, short prompts, 8192 new tokens each"),
        Workload("W2-short", "llama3-8b", 32, (16, 64), (1024, 1024),
                 "W2 with 1024 new tokens each, for a quick run"),
        Workload("W1-small", "tiny", 32, (4, 96), (4, 96),
                 "W1 in miniature for a laptop CPU: 32 requests, lengths uniform in [4, 96]"),
        Workload("W2-small", "tiny", 8, (4, 16), (256, 256),
                 "W2 in miniature: 8 requests, short prompts, 256 new tokens each"),
    ]
}


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {sorted(WORKLOADS)}") from None
