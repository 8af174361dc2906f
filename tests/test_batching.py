"""Every chapter gives chapter 1's tokens (and so transformers') on workloads that take every path."""
import pytest

import minigpt
from chapters import ch01_naive, ch02_padded, ch03_continuous, ch04_paged, ch05_async, ch06_compiled
from minigpt import Request
from minigpt.reference import hf_greedy
from tests.conftest import mixed_requests

ENGINES = {
    "ch02 batch 4": (ch02_padded, dict(batch_size=4)),
    "ch02 batch 1": (ch02_padded, dict(batch_size=1)),
    "ch03 batched": (ch03_continuous, dict(max_batch_tokens=64, max_seqs=3)),
    "ch03 reference": (ch03_continuous, dict(max_batch_tokens=64, max_seqs=3, attention="reference")),
    "ch03 budget 1": (ch03_continuous, dict(max_batch_tokens=1, max_seqs=8)),
    "ch03 roomy": (ch03_continuous, dict(max_batch_tokens=4096, max_seqs=64)),
    "ch04 small pool": (ch04_paged, dict(max_batch_tokens=64, num_blocks=30, block_size=8)),
    "ch05 async": (ch05_async, dict(max_batch_tokens=64, num_blocks=30, block_size=8)),
    "ch06 traced": (ch06_compiled, dict(max_batch_tokens=64, compile="aot_eager")),
}


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config("tiny")


@pytest.fixture(scope="module")
def workload(model):
    """Every path: 1-token prompts, prompts longer than the budget, max_new_tokens 1, duplicates,
    more requests than fit at once, arrivals mid-run."""
    requests = mixed_requests(model.config.vocab_size)
    requests += minigpt.get_workload("W1-small").requests(model.config.vocab_size, 10)
    for i, r in enumerate(requests[-5:]):
        r.arrival_time = 0.02 * (i + 1)
    return requests


@pytest.fixture(scope="module")
def reference_tokens(model, workload):
    tokens = [c.tokens for c in ch01_naive.generate(model, workload)]
    pairs = [(a, b) for t in tokens for a, b in zip(t, t[1:])]
    assert sum(a == b for a, b in pairs) < 0.3 * len(pairs), "degenerate output: tests would catch little"
    return tokens


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_tokens_equal_chapter1(engine, model, workload, reference_tokens):
    module, options = ENGINES[engine]
    completions = module.generate(model, workload, **options)
    assert [c.tokens for c in completions] == reference_tokens
    assert all(c.finish_reason == "length" for c in completions)
    assert all(c.token_times[0] >= r.arrival_time for c, r in zip(completions, workload))


@pytest.mark.parametrize("module", [ch02_padded, ch03_continuous, ch04_paged, ch05_async, ch06_compiled])
def test_equal_transformers_on_a_loaded_checkpoint(module, hf_checkpoint):
    path, hf = hf_checkpoint
    model = minigpt.load_pretrained(path)
    requests = mixed_requests(256, seed=3)
    for r, c in zip(requests, module.generate(model, requests)):
        assert c.tokens == hf_greedy(hf, r)


@pytest.mark.parametrize("module", [ch02_padded, ch03_continuous, ch04_paged, ch05_async, ch06_compiled])
def test_sampled_tokens_do_not_depend_on_batch_mates(module, model):
    r = Request([3, 4, 5], max_new_tokens=20, temperature=0.9, top_p=0.95, seed=11)
    alone = ch01_naive.generate(model, [r])[0].tokens
    others = [Request(list(range(1, 30)), 25, temperature=1.0, seed=2), Request([7], 5)]
    assert module.generate(model, others + [r])[-1].tokens == alone


@pytest.mark.parametrize("module", [ch02_padded, ch03_continuous, ch04_paged, ch05_async, ch06_compiled])
@pytest.mark.parametrize("bad,message", [(Request([], 5), "prompt_ids is empty"),
                                         (Request([1, 99999], 5), "outside the vocabulary"),
                                         (Request([1], 0), "max_new_tokens"),
                                         (Request([1] * 5000, 1), "context holds")])
def test_a_bad_request_fails_alone(module, bad, message, model):
    good = [Request([1], 2), Request([3, 4], 3, arrival_time=0.01)]
    out = module.generate(model, [good[0], bad, good[1]])
    assert out[1].finish_reason == "error" and out[1].tokens == [] and message in out[1].error
    assert [c.tokens for c in (out[0], out[2])] == [c.tokens for c in ch01_naive.generate(model, good)]
    assert module.generate(model, [bad])[0].finish_reason == "error"  # nothing left to run


def test_padding_waste_is_measured(model, workload):
    stats = ch02_padded.generate(model, workload, batch_size=8).stats
    assert 0.2 < stats["prefill_waste"] < 0.95 and 0 < stats["decode_waste"] < 1


def test_chunked_prefill_and_memory_trace(model):
    requests = [Request(list(range(100)), 5), Request([1, 2], 30)]
    stats = ch03_continuous.generate(model, requests, max_batch_tokens=16).stats
    assert max(s["tokens"] for s in stats["trace"]) <= 16
    assert stats["steps"] >= 100 // 16 + 4  # the prompt took several steps
    assert 0 < stats["kv_utilisation"] < 1


@pytest.mark.parametrize("chapter", ["ch01_naive", "ch02_padded", "ch03_continuous", "ch04_paged", "ch05_async",
                                     "ch06_compiled"])
def test_empty_request_list(chapter, model):
    import importlib

    assert importlib.import_module(f"chapters.{chapter}").generate(model, []) == []
