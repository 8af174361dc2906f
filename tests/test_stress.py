"""Random small configurations of the paged engines, each under a watchdog: no run stalls, every token equals
chapter 1's, and the block pool is whole again at the end. A few seconds by default; `pytest -m slow` (run by
.ci/run) sweeps many more."""
import random
import threading

import pytest

import minigpt
from chapters import ch01_naive, ch04_paged, ch05_async
from minigpt import PRESETS, Request

WATCHDOG_S = 60  # a run of these sizes takes well under a second: this long means it stalled


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config(PRESETS["tiny"].with_(num_hidden_layers=2, eos_token_id=[7, 11, 13]))


def random_case(seed: int, vocab: int):
    """Requests and engine options drawn from `seed`: block sizes 1-8, pools from just enough up, prefix
    sharing on and off, greedy and sampled requests, EOS honoured or not, arrivals over time, sync or async."""
    rng = random.Random(seed)
    system = [rng.randrange(vocab) for _ in range(rng.randint(0, 24))]  # a shared prefix for some requests
    requests = []
    for i in range(rng.randint(1, 10)):
        prompt = (system if rng.random() < 0.5 else []) + [rng.randrange(vocab) for _ in range(rng.randint(1, 30))]
        sampled = rng.random() < 0.3
        requests.append(Request(prompt, rng.randint(1, 25), temperature=0.8 if sampled else 0.0,
                                top_p=rng.choice([1.0, 0.9]), seed=rng.randrange(100), ignore_eos=rng.random() < 0.5,
                                arrival_time=rng.choice([0.0, 0.0, 0.002 * i])))
    block_size = rng.randint(1, 8)
    largest = max(-(-(len(r.prompt_ids) + r.max_new_tokens) // block_size) for r in requests)
    options = dict(block_size=block_size, num_blocks=largest + rng.choice([0, 0, 1, 3, 20]),
                   max_batch_tokens=rng.choice([1, 4, 16, 64, 512]), max_seqs=rng.choice([1, 2, 4, 256]),
                   share_prefixes=rng.random() < 0.5)
    module = rng.choice([ch04_paged, ch05_async])
    if module is ch05_async:
        options["use_async"] = rng.random() < 0.7
    return module, requests, options


def run_with_watchdog(fn):
    """fn() in a thread; fails the test if it has not returned after WATCHDOG_S seconds."""
    result, error = [], []
    thread = threading.Thread(target=lambda: _capture(fn, result, error), daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    assert not thread.is_alive(), f"the run stalled: no result after {WATCHDOG_S} s"
    if error:
        raise error[0]
    return result[0]


def _capture(fn, result, error):
    try:
        result.append(fn())
    except BaseException as e:  # handed to the test's thread, which raises it
        error.append(e)


def check_case(seed: int, model):
    module, requests, options = random_case(seed, model.config.vocab_size)
    engine_cls = module.AsyncEngine if module is ch05_async else module.PagedEngine
    engine = engine_cls(model, **options)
    out = run_with_watchdog(lambda: engine.generate(requests))
    expected = ch01_naive.generate(model, requests)
    assert [c.tokens for c in out] == [c.tokens for c in expected], f"seed {seed}: {module.__name__} {options}"
    assert [c.finish_reason for c in out] == [c.finish_reason for c in expected]
    cache = engine.cache
    scratch = {0} if module is ch05_async else set()
    assert sorted(cache.free_blocks) == sorted(set(range(len(cache.ref_count))) - scratch), f"seed {seed}: leaked"
    assert all(r == 0 for r in cache.ref_count) and not cache.tables, f"seed {seed}: blocks still held"


@pytest.mark.parametrize("seed", range(12))
def test_random_configurations_finish_and_equal_chapter1(seed, model):
    check_case(seed, model)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12, 300))
def test_random_configurations_sweep(seed, model):
    check_case(seed, model)


@pytest.mark.parametrize("module", [ch04_paged, ch05_async])
def test_prefix_sharing_under_preemption_returns(module, model):
    """The queue's head once held the blocks of its cached prefix while it waited for more, and nothing
    running could free them: the run looped for ever. A waiting request now holds nothing."""
    tiny = minigpt.from_config("tiny")
    requests = [Request(list(range(1, 9)), 12), Request(list(range(100, 106)), 4)]
    out = run_with_watchdog(lambda: module.generate(tiny, requests, block_size=4, num_blocks=5, share_prefixes=True))
    assert [c.tokens for c in out] == [c.tokens for c in ch01_naive.generate(tiny, requests)]
