"""The exercises with a checkable answer, each with its reference solution."""
import minigpt
from chapters import ch01_naive, ch02_padded, ch03_continuous, ch04_paged
from minigpt import Request


def model():
    return minigpt.from_config("tiny")


def test_ch01_exercise1_without_a_cache_the_tokens_are_the_same():
    """Solution: re-run the whole sequence every step; same tokens, but each step costs the full length."""
    m = model()
    request = Request(list(range(1, 20)), max_new_tokens=15)
    tokens = list(request.prompt_ids)
    for _ in range(request.max_new_tokens):  # every step a new, empty cache: the whole sequence again
        cache = ch01_naive.ContiguousKVCache(m.config, len(tokens), m.device, m.dtype)
        tokens.append(int(ch01_naive.prefill(m, cache, tokens).argmax()))
    assert tokens[len(request.prompt_ids):] == ch01_naive.generate(m, [request])[0].tokens


def test_ch02_exercise1_sorting_by_prompt_length_cuts_prefill_waste():
    m = model()
    requests = minigpt.get_workload("W1-small").requests(m.config.vocab_size)
    unsorted = ch02_padded.generate(m, requests, batch_size=8).stats["prefill_waste"]
    by_length = sorted(requests, key=lambda r: len(r.prompt_ids))
    sorted_waste = ch02_padded.generate(m, by_length, batch_size=8).stats["prefill_waste"]
    assert sorted_waste < unsorted / 2  # W1-small: 47% -> 17%


def test_ch03_exercise1_a_tiny_budget_chunks_every_prompt_and_changes_no_token():
    m = model()
    requests = minigpt.get_workload("W1-small").requests(m.config.vocab_size, 6)
    roomy = ch03_continuous.generate(m, requests)
    tight = ch03_continuous.generate(m, requests, max_batch_tokens=16)
    assert [c.tokens for c in tight] == [c.tokens for c in roomy]
    assert tight.stats["steps"] > roomy.stats["steps"]


def test_ch04_exercise1_a_small_pool_preempts_and_changes_no_token():
    m = model()
    requests = minigpt.get_workload("W1-small").requests(m.config.vocab_size, 12)
    out = ch04_paged.generate(m, requests, num_blocks=20)
    assert out.stats["preemptions"] > 0
    assert [c.tokens for c in out] == [c.tokens for c in ch01_naive.generate(m, requests)]
