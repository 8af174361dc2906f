"""Requests arriving over time: reproducible arrivals, nothing served before it arrives, TTFT from arrival,
the same tokens as chapter 1, and the latency sweep's goodput."""
import importlib
import math

import pytest

import minigpt
from chapters import ch01_naive
from minigpt.metrics import latency_summary, percentiles
from minigpt.workloads import get_workload, poisson_arrivals
from tools.bench import goodput


def test_arrivals_are_reproducible_from_the_seed_and_keep_the_requests():
    w = minigpt.get_workload("W1-small")
    a, b = w.requests(1024, 16, rate=20.0), w.requests(1024, 16, rate=20.0)
    assert [r.arrival_time for r in a] == [r.arrival_time for r in b]
    assert [r.arrival_time for r in a] != [r.arrival_time for r in w.requests(1024, 16, rate=20.0, seed=1)]
    assert [r.prompt_ids for r in a] == [r.prompt_ids for r in w.requests(1024, 16)]  # every rate: same requests
    times = [r.arrival_time for r in a]
    assert times[0] == 0.0 and times == sorted(times) and len(set(times)) == 16


def test_poisson_gaps_have_the_rate_asked_for_and_bursts_arrive_together():
    times = poisson_arrivals(4000, rate=50.0)
    assert math.isclose(len(times) / times[-1], 50.0, rel_tol=0.08)
    bursty = poisson_arrivals(12, rate=50.0, burst=4)
    assert bursty[:4] == [0.0] * 4 and len(set(bursty)) == 3
    with pytest.raises(ValueError, match="rate must be a positive number"):
        poisson_arrivals(3, rate=float("nan"))


@pytest.mark.parametrize("chapter", ["ch02_padded", "ch03_continuous", "ch04_paged", "ch05_async", "ch06_compiled"])
def test_under_load_no_request_starts_before_it_arrives_and_tokens_equal_chapter1(chapter):
    model = minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, 10, rate=200.0, burst=2)
    out = importlib.import_module(f"chapters.{chapter}").generate(model, requests)
    for r, c in zip(requests, out):
        assert c.arrival == r.arrival_time and c.token_times[0] >= r.arrival_time
        assert c.ttft == pytest.approx(c.token_times[0] - r.arrival_time)  # from its arrival, not the run's start
    assert [c.tokens for c in out] == [c.tokens for c in ch01_naive.generate(model, requests)]
    summary = latency_summary(out)
    assert 0 < summary["ttft"]["p50"] <= summary["ttft"]["p90"] <= summary["latency"]["p99"]


def test_percentiles_and_goodput():
    assert percentiles([3, 1, 2, float("nan")]) == {"p50": 2, "p90": 3, "p99": 3}
    rows = [{"chapter": "a", "rate": r, "ttft": {"p90": t}, "tpot": {"p90": 0.01}} for r, t in ((1, 0.1), (2, 0.5), (4, 3.0))]
    rows.append({"chapter": "b", "rate": 1, "ttft": {"p90": 2.0}, "tpot": {"p90": 0.01}})
    assert goodput(rows, {"ttft_p90_s": 1.0, "tpot_p90_s": 0.05}) == {"a": 2, "b": 0.0}


def test_the_latency_sweep_runs_and_draws(tmp_path):
    from tools.bench import bench_latency

    data = bench_latency(["--requests", "6", "--rates", "50,400", "--chapters", "ch02_padded,ch03_continuous",
                          "--subset", "ch02_padded=3", "--every-rate", "--out", str(tmp_path / "sweep.json"),
                          "--figure", str(tmp_path / "sweep.png")])
    assert [(r["chapter"], r["rate"], r["requests"]) for r in data["results"]] == [
        ("ch02_padded", 50.0, 3), ("ch02_padded", 400.0, 3), ("ch03_continuous", 50.0, 6), ("ch03_continuous", 400.0, 6)]
    ch02, ch03 = data["results"][0], data["results"][2]
    assert "steps" not in ch02  # a static batch keeps no step trace
    assert 1 <= ch03["prompt_steps"] < ch03["steps"] and ch03["graph_steps"] == 0  # chapter 3 replays no graphs
    assert (tmp_path / "sweep.json").exists() and (tmp_path / "sweep.png").stat().st_size > 0


def test_the_live_view_counts_arrivals_and_finished_requests():
    from minigpt.metrics import requests_live

    requests = minigpt.get_workload("W1-small").requests(1024, 4, rate=1000.0)
    with requests_live(requests, "test") as emit:
        cells = lambda: [column._cells[0] for column in emit.view().columns]  # noqa: E731
        assert cells() == ["1", "1", "0", "0"]  # before any token: the first request, at t = 0
        for _ in range(requests[0].max_new_tokens):
            emit(0, 7)
        assert cells()[2:] == ["1", str(requests[0].max_new_tokens)]  # the first one finished
        for i, r in enumerate(requests[1:], 1):
            for _ in range(r.max_new_tokens):
                emit(i, 7)
        assert cells()[2] == "4"


def test_w1_load_extends_w1_with_more_requests_of_its_shape():
    """W1-load, for latency sweeps on a GPU, is W1 followed by 768 more requests drawn the same way."""
    w1, load = get_workload("W1").requests(1024), get_workload("W1-load").requests(1024)
    assert len(load) == 1024 and [r.prompt_ids for r in load[:256]] == [r.prompt_ids for r in w1]
    assert [r.max_new_tokens for r in load[:256]] == [r.max_new_tokens for r in w1]


def test_a_subset_or_option_for_a_chapter_not_run_is_refused(capsys):
    """A typo in --subset or --option would run that chapter unchanged (minutes on a GPU): refused in one line."""
    from tools.bench import bench_latency, run_chapters

    for run, argv in ((bench_latency, ["--chapters", "ch03_continuous", "--subset", "ch02_paded=3"]),
                      (run_chapters, ["--chapters", "ch01_naive", "--option", "ch04_paged:num_blocks=3"])):
        with pytest.raises(SystemExit) as exit:
            run(argv)
        assert exit.value.code == 2 and "is not among --chapters" in capsys.readouterr().err


def test_the_sweep_stops_a_chapter_at_its_first_miss():
    """Past a chapter's first miss of the SLO, higher rates only queue longer: they are not run."""
    from tools.bench import bench_latency

    data = bench_latency(["--requests", "3", "--rates", "400,50", "--chapters", "ch03_continuous,ch04_paged",
                          "--slo-ttft", "0"])  # nothing meets a TTFT of 0
    assert [(r["chapter"], r["rate"]) for r in data["results"]] == [("ch03_continuous", 50.0), ("ch04_paged", 50.0)]


def test_each_chapter_serves_its_requests_once_untimed_before_the_sweep(monkeypatch):
    """A shape's first use (on a GPU, a cuDNN plan for each new key length) is paid before the timed rates."""
    from chapters import ch03_continuous
    from tools.bench import bench_latency

    calls, generate = [], ch03_continuous.generate

    def recording(model, requests, **options):
        calls.append((len(requests), max(r.arrival_time for r in requests) > 0, requests[0].max_new_tokens))
        return generate(model, requests, **options)

    monkeypatch.setattr(ch03_continuous, "generate", recording)
    data = bench_latency(["--requests", "3", "--rates", "50", "--chapters", "ch03_continuous", "--every-rate"])
    warm_ups, untimed, timed = calls[:2], calls[2], calls[3]
    assert all(new_tokens == 2 for *_, new_tokens in warm_ups)  # the short warm-up, then:
    assert untimed[:2] == (3, False) and untimed[2] > 2  # the sweep's requests, whole, all at once
    assert timed[:2] == (3, True) and len(calls) == 4  # then each rate, arriving over time
    assert data["warm_pass"] and any("untimed" in name for name, _ in data["stages"]["ch03_continuous"])
