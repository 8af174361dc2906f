"""Every chapter runs as a module and as a notebook; every notebook is in sync with its script."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tools import notebooks

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("ch0*.py"))


def test_there_are_seven_chapters():
    assert CHAPTERS == ["ch01_naive", "ch02_padded", "ch03_continuous", "ch04_paged", "ch05_async", "ch06_compiled",
                        "ch07_tensor_parallel"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_as_a_module(chapter, tmp_path):
    run = subprocess.run([sys.executable, "-m", f"chapters.{chapter}", "--requests", "3", "--compare",
                          "--no-progress"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert all(c in run.stdout for c in CHAPTERS[: CHAPTERS.index(chapter) + 1])


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_is_in_sync_with_its_script_and_has_outputs(chapter):
    script = notebooks.notebook_from_script(chapter)
    notebook = nbformat.read(ROOT / "chapters" / f"{chapter}.ipynb", as_version=4)
    assert notebooks.same_cells(notebook, script), (
        f"chapters/{chapter}.ipynb is out of date: run `python -m tools.notebooks {chapter}`")
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert outputs, f"chapters/{chapter}.ipynb has no outputs: run `python -m tools.notebooks {chapter}`"
    assert not [o for o in outputs if o.get("output_type") == "error"], f"chapters/{chapter}.ipynb holds an error"


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_executes_from_its_own_folder(chapter):
    """As a reader runs it: the kernel starts in chapters/, nothing is added to its path (the book is
    installed by requirements.txt's `-e .`)."""
    notebook = notebooks.execute(notebooks.notebook_from_script(chapter))
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert chapter in text  # the small run's table (rich shows it as display data in a notebook)


def test_book_main_job_runs():
    run = subprocess.run([sys.executable, "-m", "chapters", "--requests", "4", "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "ch07_tensor_parallel" in run.stdout and "ch01_naive" in run.stdout  # the comparison, whatever the flags


def test_text_in_and_out_with_a_local_checkpoint(tmp_path):
    """--model DIR --prompt TEXT: the tokenizer in the folder turns text into ids and back."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import tiny_hf_model

    tiny_hf_model("llama").save_pretrained(tmp_path)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0").save_pretrained(tmp_path)
    for chapter, prompts in (("ch05_async", ["w1 w2 w3"]), ("ch03_continuous", ["w7 w8", "w9"])):
        args = [a for p in prompts for a in ("--prompt", p)]
        run = subprocess.run([sys.executable, "-m", f"chapters.{chapter}", "--model", str(tmp_path), *args,
                              "--max-new-tokens", "5"], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        assert all(p in run.stdout for p in prompts)
        assert run.stdout.count("(length, 5 tokens)") + run.stdout.count("(stop, ") == len(prompts)  # EOS may come first
        assert "w" in run.stdout.split(prompts[0])[1]  # generated words follow the prompt


def test_readme_results_are_generated_from_the_committed_json():
    from tools import bench

    readme = (ROOT / "README.md").read_text()
    assert bench.generated_section(readme) == bench.results_markdown(), "run `python -m tools.bench report`"
    workshop = (ROOT / "WORKSHOP.md").read_text()
    assert bench.generated_section(workshop, bench.TALK_MARKERS) == bench.talk_markdown(), "run `python -m tools.bench report`"


@pytest.mark.slow  # the peer sizes its cache from free memory: a minute and most of the RAM on a CPU
def test_bench_runs_the_transformers_peer_and_survives_its_failure(tmp_path):
    """transformers' continuous batching runs beside the chapters (synchronous on the CPU; its async mode
    needs CUDA, so there it fails with its reason and the bench goes on)."""
    import json

    out = tmp_path / "b.json"
    run = subprocess.run([sys.executable, "-m", "tools.bench", "--device", "cpu", "--chapters",
                          "transformers_cb@use_async=true,transformers_cb,transformers_cb@deadline_s=0,ch01_naive",
                          "--subset", "transformers_cb=6",
                          "--subset", "ch01_naive=6", "--no-progress", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "transformers_cb@use_async=true failed" in run.stdout and "CUDA" in run.stdout
    results = {r["chapter"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"transformers_cb", "transformers_cb@deadline_s=0", "ch01_naive"}
    assert results["transformers_cb"]["output_tokens"] == results["ch01_naive"]["output_tokens"]  # EOS ignored
    assert "CUDA graphs" in results["transformers_cb"]["note"] and results["transformers_cb"]["extra"]["finished"]
    cut = results["transformers_cb@deadline_s=0"]  # a run cut at its deadline says so, with no throughput
    assert "cut at its 0 s deadline with 0 of 6 requests done" in cut["note"] and cut["tokens_per_s"] != cut["tokens_per_s"]


@pytest.mark.slow
def test_transformers_continuous_batching_gives_our_tokens():
    """The peer the bench measures against computes the same greedy tokens as chapter 1 (float32, CPU)."""
    import minigpt
    from chapters import ch01_naive
    from tools.bench import transformers_generate

    model = minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, 8)
    tokens = transformers_generate(model, requests)["tokens"]
    assert tokens == [c.tokens for c in ch01_naive.generate(model, requests)]


def test_compared_chapters_are_timed_in_rounds(monkeypatch):
    """On the CPU, `--compare` times one run of every chapter a round, so a slow spell of the host falls on
    all of them alike; each row keeps its runs and the tokens stay chapter 1's."""
    import minigpt
    from minigpt import cli

    calls, timed_run = [], cli.timed_run
    monkeypatch.setattr(cli, "timed_run", lambda name, *args: calls.append(name) or timed_run(name, *args))
    model = minigpt.from_config("tiny")
    requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, 3)
    tokens = {}
    rows = cli.measure_in_rounds([("ch01_naive", requests, {}), ("ch03_continuous", requests, {})], model,
                                 "W1-small", 3, False, tokens)
    assert calls == ["ch01_naive", "ch03_continuous"] * 3
    assert [len(r.extra["walls_s"]) for r in rows] == [3, 3]
    assert tokens["ch01_naive"] == tokens["ch03_continuous"]


@pytest.mark.slow  # the peer sizes its cache from free memory: 30 s on a CPU
def test_the_peer_runs_as_often_as_asked_and_reports_its_median_run():
    """`--repeat` reaches the peer too: a later run in the same process finds what the first built."""
    from minigpt import Request, from_config
    from tools.bench import transformers_cb

    model = from_config("tiny")
    requests = [Request([5, 6, 7], max_new_tokens=3, ignore_eos=True), Request([8, 9], max_new_tokens=2, ignore_eos=True)]
    row = transformers_cb(model, requests, "mine", "cpu", "transformers_cb", repeat=2)
    assert len(row.extra["walls_s"]) == 2 and row.wall_s in row.extra["walls_s"]
    assert "the faster of 2 runs" in row.note and row.output_tokens == 5


def test_the_peer_note_says_which_run_it_reports_and_what_its_warm_ups_did():
    from tools.bench import peer_run_note

    assert peer_run_note([10.0], 0, None) == ""
    assert peer_run_note([10.0], 1, None) == "; its warm-up failed, so its timed run includes its graph captures"
    two = peer_run_note([175.5, 176.6], 2, "expandable_segments:True")
    assert "failed in 2 of 2 runs" in two and "the faster of 2 runs (175.5, 176.6 s)" in two
    assert two.endswith("; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    assert "the median of 3 runs" in peer_run_note([3.0, 1.0, 2.0], 0, None)
