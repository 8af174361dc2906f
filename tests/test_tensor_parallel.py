"""Chapter 7 on two CPU ranks over gloo, the code the GPUs run over NCCL: the split model computes one rank's
logits and chapter 1's tokens on every rank, and a rank that fails ends the run with its error, without a hang.

The ranks are processes this file starts as torchrun would (its environment variables); each runs `worker`
below and leaves what it computed in a file for the test to check."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import minigpt
from chapters import ch01_naive
from chapters import ch07_tensor_parallel as ch07
from tests.conftest import mixed_requests

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # every launch; a hang fails the test after this, the processes killed


def requests_with_arrivals(vocab: int) -> list[minigpt.Request]:
    """conftest's mixed requests, then W1-small's first eight arriving 20 ms apart (rank 0's clock decides)."""
    late = minigpt.get_workload("W1-small").requests(vocab, 8)
    for i, r in enumerate(late):
        r.arrival_time = 0.02 * (i + 1)
    return mixed_requests(vocab) + late


RUNS = {"async, preempting": dict(num_blocks=30, max_batch_tokens=64), "sync": dict(use_async=False)}
PROMPT = list(range(3, 40, 2))  # a forward of 19 tokens at once, every row's logits compared
# Beside the tiny model (Qwen3's q, k norms): Qwen2's q, k, v bias, tied embeddings, Llama 3.1's RoPE scaling.
VARIANT = minigpt.PRESETS["tiny"].with_(name="tiny-qwen2", qk_norm=False, attention_bias=True, tie_word_embeddings=True,
                                         rope_scaling=minigpt.PRESETS["llama3-8b"].rope_scaling)


@torch.inference_mode()
def all_logits(model, ids: list[int]) -> torch.Tensor:
    cache = ch01_naive.ContiguousKVCache(model.config, len(ids), model.device, model.dtype)
    cache.cache_rows = torch.arange(len(ids))
    return model(torch.tensor(ids), cache.cache_rows, cache)


def worker(case: str, out: Path):
    """One rank's part of a test (run as `python -m tests.test_tensor_parallel CASE OUT`)."""
    if case == "fail":  # rank 1 raises at its 5th step, mid-run; rank 0 must not wait for it for ever
        if os.environ["RANK"] == "1":
            original, steps = ch07.TensorParallelEngine.step, iter(range(1, 10**9))

            def step(self):
                if next(steps) == 5:
                    raise RuntimeError("injected failure on rank 1")
                original(self)
            ch07.TensorParallelEngine.step = step
        return ch07.main(["--device", "cpu", "--requests", "6", "--no-progress"])
    with ch07.ranks("cpu") as rank:
        model = minigpt.from_config("tiny")
        found = {"logits": {c.name: all_logits(ch07.shard(minigpt.from_config(c), rank, 2), PROMPT)
                            for c in (model.config, VARIANT)}}
        options = {"compile": "aot_eager"} if case == "compiled" else {}
        requests = requests_with_arrivals(model.config.vocab_size)
        for name, run in RUNS.items():
            completions = ch07.generate(model, requests, **run, **options)
            found[name] = ([c.tokens for c in completions], completions.stats)
        torch.save(found, out / f"rank{rank}.pt")


def launch(case: str, out: Path, world: int = 2) -> list[tuple[int, str]]:
    """Start `world` ranks of `worker(case)`; each one's (exit code, stderr) once all have ended."""
    with socket.socket() as s:  # a free port for rank 0's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, logs = [], []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
        logs.append(open(out / f"rank{rank}.log", "w+"))
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.test_tensor_parallel", case, str(out)], cwd=ROOT,
                                      env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{case}: the ranks were still running after {TIMEOUT_S} s: a hang")
    finally:
        for log in logs:
            log.seek(0)
    return [(p.returncode, log.read()) for p, log in zip(procs, logs)]


def explain(model, request, ours: list[int], reference: list[int]) -> str:
    """Where a rank's tokens leave chapter 1's, and by how much chapter 1's choice won there."""
    k = next(k for k, (a, b) in enumerate(zip(ours, reference)) if a != b)
    top = all_logits(model, request.prompt_ids + reference[:k])[-1].topk(2).values
    margin = (top[0] - top[1]).item()
    why = ("a near-tie, which the all-reduce's order of summation can flip: choose other requests" if margin < 1e-4
           else "not a near-tie: the split model computes something else")
    return f"token {k}: {ours[k]} where chapter 1 has {reference[k]}, chosen by a margin of {margin:.1e}, {why}"


def check_ranks(model, out: Path, codes: list[tuple[int, str]]):
    for rank, (code, log) in enumerate(codes):
        assert code == 0, f"rank {rank} failed:\n{log[-3000:]}"
    found = [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    expected = {c.name: all_logits(minigpt.from_config(c), PROMPT) for c in (model.config, VARIANT)}
    requests = requests_with_arrivals(model.config.vocab_size)
    reference = [c.tokens for c in ch01_naive.generate(model, requests)]
    for rank, f in enumerate(found):
        for name, logits in f["logits"].items():
            torch.testing.assert_close(logits, expected[name], atol=1e-4, rtol=0,
                                       msg=lambda m: f"{name}, rank {rank}'s logits against one rank's: {m}")
            assert torch.equal(logits, found[0]["logits"][name]), f"{name}: the ranks' logits differ"
        for name in RUNS:
            tokens, stats = f[name]
            assert stats["world_size"] == 2
            for i, (ours, theirs) in enumerate(zip(tokens, reference)):
                assert ours == theirs, f"{name}, rank {rank}, request {i}: {explain(model, requests[i], ours, theirs)}"
    return found


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config("tiny")


def test_two_ranks_compute_one_ranks_logits_and_chapter_1s_tokens(model, tmp_path):
    found = check_ranks(model, tmp_path, launch("match", tmp_path))
    async_run = found[0]["async, preempting"][1]
    assert async_run["preemptions"] > 0, "the small pool preempts (the ranks preempt alike, or they hang)"
    assert async_run["clock_broadcasts"] > 0, "requests arriving mid-run are admitted by rank 0's clock"


def test_a_failing_rank_ends_the_run_with_its_error_and_nothing_hangs(tmp_path):
    start = time.monotonic()
    (code0, log0), (code1, log1) = launch("fail", tmp_path)
    assert code1 != 0 and "injected failure on rank 1" in log1, log1[-3000:]
    assert code0 != 0, f"rank 0 went on without rank 1:\n{log0[-3000:]}"
    assert "Traceback" in log0, "rank 0 says why it stopped (its peer is gone)"
    assert time.monotonic() - start < TIMEOUT_S


@pytest.mark.slow
def test_two_ranks_trace_the_all_reduce_op_in_the_compiled_model(model, tmp_path):
    """compile='aot_eager': the model traced around the attention op and the all-reduce op, on two ranks."""
    check_ranks(model, tmp_path, launch("compiled", tmp_path))


def test_alone_it_is_chapter_6(model):
    requests = mixed_requests(model.config.vocab_size)
    engine = ch07.TensorParallelEngine(model, num_blocks=30, max_batch_tokens=64)
    assert engine.world == 1 and engine.model is model
    assert [c.tokens for c in engine.generate(requests)] == [c.tokens for c in ch01_naive.generate(model, requests)]


def test_kv_heads_that_do_not_split_are_refused(model):
    assert ch07.rank_config(model.config, 2).num_key_value_heads == 1
    with pytest.raises(ValueError, match="2 KV heads and 384 MLP features do not split over 4 GPUs"):
        ch07.rank_config(model.config, 4)


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
