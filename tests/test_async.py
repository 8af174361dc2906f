"""Chapter 5: async equals sync equals chapter 1, with preemption, early finishes, arrivals; GPU stress."""
import random
import time

import pytest
import torch

import minigpt
from chapters import ch01_naive, ch05_async
from minigpt import Request
from tests.conftest import cuda, mixed_requests


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config("tiny")


def random_workload(seed: int, vocab: int) -> list[Request]:
    rng = random.Random(seed)
    return [Request([rng.randrange(vocab) for _ in range(rng.randint(1, 60))], rng.randint(1, 40),
                    arrival_time=rng.choice([0.0, 0.0, 0.005 * i])) for i in range(14)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_async", [False, True])
def test_async_and_sync_equal_chapter1_under_preemption(seed, use_async, model):
    requests = random_workload(seed, model.config.vocab_size)
    reference = [c.tokens for c in ch01_naive.generate(model, requests)]
    largest = max(-(-(len(r.prompt_ids) + r.max_new_tokens) // 8) for r in requests)
    out = ch05_async.generate(model, requests, use_async=use_async, num_blocks=largest + 3, block_size=8,
                              max_batch_tokens=32, max_graph_batch=4)
    assert [c.tokens for c in out] == reference
    assert out.stats["preemptions"] > 0


def test_timeline_from_the_kept_step_records(model, monkeypatch):
    """The GPU timeline (built on CUDA only) from what each resolved step keeps: its host times and two events.
    Stand-in events that say step i ran on the GPU from i to i + 0.5 s give a run half busy."""
    class Event:
        def __init__(self, t):
            self.t = t

        def elapsed_time(self, other):  # ms, as torch.cuda.Event's
            return (other.t - self.t) * 1e3

    engine = ch05_async.AsyncEngine(model, max_batch_tokens=16)
    requests = [Request(list(range(1, 40)), 6), Request([5, 6], 9)]
    engine.generate(requests)
    kept = engine.timeline
    steps = len(kept.steps)
    kept.steps = [(times, (Event(i), Event(i + 0.5))) for i, (times, _) in enumerate(kept.steps)]
    kept.cuda, kept.ref, kept.ref_host = True, Event(0.0), 0.0
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    timeline = engine.summary()["timeline"]
    assert len(timeline) == steps == len(engine.trace)
    assert [s["tokens"] for s in timeline] == [s["tokens"] for s in engine.trace]
    assert sum(s["tokens"] for s in timeline) == 39 + 2 + 5 + 8  # the prompts, then one token a decode step
    assert timeline[0]["decode"] is False and timeline[-1]["decode"] is True
    assert all(s["start"] <= s["prepared"] <= s["launched"] <= s["resolved"] for s in timeline)
    assert engine.summary()["gpu_busy"] == pytest.approx(steps * 0.5 / (steps - 0.5))


def test_eos_mid_batch_drops_the_extra_token_and_frees_once(model):
    """A request that stops on EOS at step N was already scheduled into step N+1 (async): its extra token
    must be dropped, its blocks freed exactly once, its completion exact."""
    probe = ch01_naive.generate(model, [Request([5, 6, 7], 30)])[0].tokens
    first_new = [j for j in range(2, len(probe)) if probe[j] not in probe[:j]]
    assert first_new, "the probe needs a token that appears first after a few steps"
    eos = probe[first_new[0]]
    model_eos = minigpt.from_config("tiny")
    model_eos.config = model_eos.config.with_(eos_token_id=[eos])
    requests = [Request([5, 6, 7], 30), Request(list(range(40)), 25), Request([5, 6, 7], 30, ignore_eos=True)]
    reference = ch01_naive.generate(model_eos, requests)
    engine = ch05_async.AsyncEngine(model_eos, use_async=True)
    out = engine.generate(requests)
    assert [c.tokens for c in out] == [c.tokens for c in reference]
    assert out[0].finish_reason == "stop" and out[0].tokens[-1] == eos
    assert len(out[0].tokens) == len(out[0].token_times) == first_new[0] + 1
    assert sorted(engine.cache.free_blocks) == list(range(1, engine.cache.num_blocks + 1))  # block 0: scratch
    assert all(r == 0 for r in engine.cache.ref_count)


def test_sampled_requests_and_mixed_paths(model):
    requests = mixed_requests(model.config.vocab_size)
    requests.append(Request([1, 2, 3], 20, temperature=0.8, top_k=40, seed=5))
    reference = [c.tokens for c in ch01_naive.generate(model, requests)]
    for use_async in (False, True):
        assert [c.tokens for c in ch05_async.generate(model, requests, use_async=use_async)] == reference


def test_bad_input_and_too_big_request(model):
    out = ch05_async.generate(model, [Request([], 3), Request([2, 3], 4)])
    assert out[0].finish_reason == "error" and "request 0: prompt_ids is empty" in out[0].error
    assert out[1].tokens == ch01_naive.generate(model, [Request([2, 3], 4)])[0].tokens
    out = ch05_async.generate(model, [Request([1], 5), Request(list(range(50)), 50)], num_blocks=4, block_size=8)
    assert out[1].finish_reason == "error" and len(out[0].tokens) == 5


class JitteryEngine(ch05_async.AsyncEngine):
    """Chapter 5's engine with random delays before each step on the CPU and before each step's model work
    (on the GPU, a sleep queued on the compute stream; on the CPU, on the worker thread): races shake out."""

    def __init__(self, model, jitter: float, **options):
        super().__init__(model, **options)
        self.jitter, self.rng = jitter, random.Random(0)

    def step(self):
        time.sleep(self.rng.random() * self.jitter)
        super().step()

    def compute_step(self, batch, slot, previous):
        delay = self.rng.random() * self.jitter
        torch.cuda._sleep(int(delay * 1e9)) if self.cuda else time.sleep(delay)
        super().compute_step(batch, slot, previous)


def stress(device: str, use_async: bool):
    model = minigpt.from_config("tiny", device=device)
    requests = random_workload(7, model.config.vocab_size) + minigpt.get_workload("W1-small").requests(1024, 16)
    reference = [c.tokens for c in ch01_naive.generate(model, requests)]
    for jitter in (0.0, 0.002):
        out = JitteryEngine(model, jitter, use_async=use_async, num_blocks=60, max_batch_tokens=64).generate(requests)
        assert [c.tokens for c in out] == reference
        assert out.stats["decode_gpu_busy"] > 0


@pytest.mark.parametrize("use_async", [False, True])
def test_cpu_worker_with_random_delays_equals_chapter1(use_async):
    """On the CPU the model's work runs on a worker thread: random delays on both threads change no token."""
    stress("cpu", use_async)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("use_async", [False, True])
def test_gpu_stress_with_random_delays_equals_chapter1(use_async):
    """Random delays on the CPU and the GPU side shake out races; CUDA graphs and streams on."""
    stress("cuda", use_async)


@cuda
@pytest.mark.gpu
def test_gpu_sampling_and_shared_prefixes_equal_chapter1():
    """The eager (sampling) path and prefix sharing, with graphs and streams on, in float32 on the GPU."""
    model = minigpt.from_config("tiny", device="cuda")
    rng = random.Random(5)
    system = [rng.randrange(1024) for _ in range(40)]
    requests = [Request(system + [rng.randrange(1024) for _ in range(rng.randint(1, 30))], rng.randint(1, 40),
                        temperature=0.9 if i % 3 == 0 else 0.0, top_p=0.9, seed=i, arrival_time=0.002 * i)
                for i in range(16)]
    reference = [c.tokens for c in ch01_naive.generate(model, requests)]
    for use_async in (False, True):
        out = ch05_async.generate(model, requests, use_async=use_async, share_prefixes=True, block_size=8,
                                  num_blocks=40, max_batch_tokens=64)
        assert [c.tokens for c in out] == reference
        assert out.stats["prefix_hit_tokens"] > 0
