"""Chapter 4: the allocator's invariants, preemption that changes no token, the paged kernel (GPU)."""
import random

import pytest
import torch

import minigpt
from chapters import ch01_naive, ch04_paged
from chapters.ch03_continuous import Sequence
from chapters.ch04_paged import PagedCache, PagedEngine, paged_decode_reference
from minigpt import Completion, Request
from tests.conftest import cuda, mixed_requests


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config("tiny")


def seq(i, n_tokens):
    return Sequence(i, Request([1] * n_tokens, 1), Completion(), [1] * n_tokens, n_tokens + 1)


def test_allocator_all_or_nothing_and_no_double_free(model):
    cache = PagedCache(model.config, num_blocks=4, block_size=4, device="cpu", dtype=torch.float32,
                       num_rows=2, max_blocks=3)
    a, b = seq(0, 10), seq(1, 10)
    assert cache.allocate(a, 10) and cache.tables[0] == [0, 1, 2] == cache.host_tables[0].tolist()
    assert not cache.allocate(b, 10) and 1 not in cache.tables  # needs 3, 1 free: nothing taken
    assert cache.allocate(b, 4) and len(cache.free_blocks) == 0
    assert cache.cache_rows(a, range(3, 6)) == [3, 4 * 1 + 0, 4 * 1 + 1]
    cache.free(a)
    cache.free(a)  # a second free of the same sequence frees nothing more
    assert sorted(cache.free_blocks) == [0, 1, 2] and cache.ref_count == [0, 0, 0, 1]


@pytest.mark.parametrize("seed", range(4))
def test_random_workloads_with_preemption_leak_nothing(seed, model):
    rng = random.Random(seed)
    requests = [Request([rng.randrange(1024) for _ in range(rng.randint(1, 40))], rng.randint(1, 30),
                        arrival_time=rng.choice([0.0, 0.0, 0.01 * i])) for i in range(12)]
    block_size = rng.choice([1, 4, 8])
    largest = max(-(-(len(r.prompt_ids) + r.max_new_tokens) // block_size) for r in requests)
    engine = PagedEngine(model, num_blocks=largest + rng.randint(0, 4), block_size=block_size,
                         max_batch_tokens=rng.choice([8, 32, 512]))
    completions = engine.generate(requests)
    assert [c.tokens for c in completions] == [c.tokens for c in ch01_naive.generate(model, requests)]
    cache = engine.cache
    assert sorted(cache.free_blocks) == list(range(cache.num_blocks)), "blocks leaked"
    assert all(r == 0 for r in cache.ref_count) and not cache.tables
    assert engine.scheduler.preemptions > 0


def test_tiny_pool_queues_and_preempts_yet_equals_chapter1(model):
    requests = mixed_requests(model.config.vocab_size) + minigpt.get_workload("W1-small").requests(1024, 8)
    ours = ch04_paged.generate(model, requests, num_blocks=14, block_size=16, max_batch_tokens=64)
    assert ours.stats["preemptions"] > 0
    assert [c.tokens for c in ours] == [c.tokens for c in ch01_naive.generate(model, requests)]


def test_request_that_never_fits_fails_alone(model):
    requests = [Request([1, 2, 3], 10), Request(list(range(100)), 100), Request([4], 10)]
    out = ch04_paged.generate(model, requests, num_blocks=8, block_size=8)
    assert out[1].finish_reason == "error" and "raise num_blocks" in out[1].error and out[1].tokens == []
    reference = ch01_naive.generate(model, [requests[0], requests[2]])
    assert [out[0].tokens, out[2].tokens] == [c.tokens for c in reference]


def test_reference_decode_equals_per_sequence_attention():
    from minigpt.attention import causal_attention

    g = torch.Generator().manual_seed(0)
    blocks, bs, Hkv, D, H = 20, 4, 2, 8, 4
    k_pool, v_pool = torch.randn(blocks, bs, Hkv, D, generator=g), torch.randn(blocks, bs, Hkv, D, generator=g)
    tables = torch.randperm(blocks, generator=g)[:12].view(3, 4)
    lens = torch.tensor([5, 16, 1])
    q = torch.randn(3, H, D, generator=g)
    out = paged_decode_reference(q, k_pool.flatten(0, 1), v_pool.flatten(0, 1), tables, lens, bs)
    for b in range(3):
        k = k_pool[tables[b]].flatten(0, 1)[: lens[b]]
        v = v_pool[tables[b]].flatten(0, 1)[: lens[b]]
        assert torch.allclose(out[b], causal_attention(q[b:b + 1], k, v, lens[b] - 1)[0], atol=1e-5)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("B,H,Hkv,bs,max_len,dtype", [
    (1, 4, 2, 16, 7, torch.float32), (5, 16, 8, 16, 300, torch.bfloat16), (33, 32, 8, 1, 100, torch.float16),
    (3, 8, 8, 32, 2000, torch.bfloat16), (256, 16, 8, 16, 1100, torch.bfloat16), (2, 28, 4, 8, 5000, torch.float32),
])
def test_triton_kernel_equals_reference(B, H, Hkv, bs, max_len, dtype):
    from chapters.ch04_paged import paged_decode_triton

    g = torch.Generator(device="cuda").manual_seed(B)
    D = 128
    lens = torch.randint(1, max_len + 1, (B,), device="cuda", generator=g)
    width = (max_len + bs - 1) // bs
    blocks = B * width + 3
    k_pool = torch.randn(blocks, bs, Hkv, D, device="cuda", dtype=dtype, generator=g)
    v_pool = torch.randn(blocks, bs, Hkv, D, device="cuda", dtype=dtype, generator=g)
    tables = torch.randperm(blocks, device="cuda", generator=g)[: B * width].view(B, width)
    q = torch.randn(B, H, D, device="cuda", dtype=dtype, generator=g)
    k_cache, v_cache = k_pool.flatten(0, 1), v_pool.flatten(0, 1)  # the rows the engine's cache holds
    ref = paged_decode_reference(q.float(), k_cache.float(), v_cache.float(), tables, lens, bs)
    for splits in (None, 1, 3):
        out = paged_decode_triton(q, k_cache, v_cache, tables, lens, bs, splits=splits)
        tol = 2e-3 if dtype == torch.float32 else 3e-2
        assert out.dtype == dtype and torch.allclose(out.float(), ref, atol=tol, rtol=tol), (out.float() - ref).abs().max()


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_prefill_equals_the_masked_reference(dtype):
    """FlashAttention's variable-length kernel against chapter 3's masked SDPA, on chunks that start at 0
    and mid-prompt (bottom-right causal alignment), with grouped-query heads."""
    from chapters.ch03_continuous import packed_attention, prefill_mask, varlen_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    chunks = [(0, 300), (17, 1), (512, 200), (0, 1), (1000, 37), (64, 64)]  # (start, n)
    H, Hkv, D = 16, 8, 128
    T, S = sum(n for _, n in chunks), sum(s + n for s, n in chunks)
    q = torch.randn(T, H, D, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(S, Hkv, D, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    t = lambda x: torch.tensor(x, device="cuda")  # noqa: E731
    q_chunk = t([j for j, (s, n) in enumerate(chunks) for _ in range(n)])
    q_pos = t([p for s, n in chunks for p in range(s, s + n)])
    ctx_chunk = t([j for j, (s, n) in enumerate(chunks) for _ in range(s + n)])
    ctx_pos = t([p for s, n in chunks for p in range(s + n)])
    ref = packed_attention(q.float(), k.float(), v.float(), prefill_mask(q_chunk, q_pos, ctx_chunk, ctx_pos))
    cu = lambda lens: torch.tensor([0] + lens, device="cuda").cumsum(0).int()  # noqa: E731
    out = varlen_attention(q, k, v, cu([n for _, n in chunks]), cu([s + n for s, n in chunks]),
                           max(n for _, n in chunks), max(s + n for s, n in chunks))
    assert out.dtype == dtype and torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2), (out.float() - ref).abs().max()


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("chapter", ["ch02_padded", "ch03_continuous", "ch04_paged", "ch05_async", "ch06_compiled"])
def test_gpu_float32_tokens_equal_chapter1(chapter):
    import importlib

    model = minigpt.from_config("tiny", device="cuda")
    requests = mixed_requests(model.config.vocab_size) + minigpt.get_workload("W1-small").requests(1024, 12)
    paged = dict(num_blocks=30, max_batch_tokens=128)
    options = {"ch04_paged": paged, "ch05_async": paged, "ch06_compiled": paged}.get(chapter, {})
    ours = importlib.import_module(f"chapters.{chapter}").generate(model, requests, **options)
    assert [c.tokens for c in ours] == [c.tokens for c in ch01_naive.generate(model, requests)]


@pytest.mark.parametrize("chapter", ["ch04_paged", "ch05_async"])
def test_only_failing_requests_and_a_single_request_on_the_default_pool(chapter, model):
    import importlib

    generate = importlib.import_module(f"chapters.{chapter}").generate
    out = generate(model, [Request(list(range(100)), 100)], num_blocks=2, block_size=8)
    assert out[0].finish_reason == "error"
    alone = generate(model, [Request([1, 2, 3], 5)])  # the default pool is sized to exactly what it needs
    assert alone[0].tokens == ch01_naive.generate(model, [Request([1, 2, 3], 5)])[0].tokens


@pytest.mark.parametrize("chapter", ["ch04_paged", "ch05_async"])
@pytest.mark.parametrize("num_blocks", [None, 20])
def test_shared_prefixes_save_prefill_and_change_no_token(chapter, num_blocks, model):
    """Requests with a common system prompt reuse its blocks (also freed ones, also under preemption)."""
    import importlib

    rng = random.Random(1)
    system = [rng.randrange(1024) for _ in range(45)]
    requests = [Request(system + [rng.randrange(1024) for _ in range(rng.randint(1, 20))], rng.randint(1, 30),
                        arrival_time=0.003 * i) for i in range(10)]
    requests.append(Request(system[:16], 5))  # a prompt that is all shared blocks still computes its last token
    module = importlib.import_module(f"chapters.{chapter}")
    engine = (module.AsyncEngine if chapter == "ch05_async" else module.PagedEngine)(
        model, share_prefixes=True, block_size=8, num_blocks=num_blocks, max_batch_tokens=32)
    out = engine.generate(requests)
    assert [c.tokens for c in out] == [c.tokens for c in ch01_naive.generate(model, requests)]
    assert out.stats["prefix_hit_tokens"] >= 8 * 40  # most requests found the 5 full system-prompt blocks
    cache, scratch = engine.cache, {0} if chapter == "ch05_async" else set()
    assert sorted(cache.free_blocks) == sorted(set(range(len(cache.ref_count))) - scratch)
    assert all(r == 0 for r in cache.ref_count) and not cache.tables


def test_a_freed_block_given_to_other_tokens_loses_its_name(model):
    """A runs and frees its named blocks; B (other tokens) takes them; C, with A's prompt, must not find them."""
    rng = random.Random(2)
    system = [rng.randrange(1024) for _ in range(40)]
    a, c = Request(system + [1], 3), Request(system + [2], 3)
    b = Request([rng.randrange(1024) for _ in range(60)], 3)
    engine = PagedEngine(model, share_prefixes=True, block_size=8, num_blocks=8, max_seqs=1)
    out = engine.generate([a, b, c])
    assert [o.tokens for o in out] == [o.tokens for o in ch01_naive.generate(model, [a, b, c])]
    assert out.stats["prefix_hit_tokens"] == 0  # C came after B had overwritten A's blocks


def test_a_freed_block_is_revived_by_a_later_request_with_the_same_prefix(model):
    rng = random.Random(3)
    system = [rng.randrange(1024) for _ in range(40)]
    a, c = Request(system + [1], 3), Request(system + [2, 3], 3)
    out = PagedEngine(model, share_prefixes=True, block_size=8, num_blocks=12, max_seqs=1).generate([a, c])
    assert [o.tokens for o in out] == [o.tokens for o in ch01_naive.generate(model, [a, c])]
    assert out.stats["prefix_hit_tokens"] == 40  # C found A's five full blocks, freed but intact
