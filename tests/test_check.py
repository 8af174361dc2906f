"""`python -m tools.check`, the pre-workshop check: it passes here, one line per check, and says what to do
when a check fails."""
import io
import subprocess
import sys
from pathlib import Path

from minigpt.cli import CHAPTERS
from tools import check

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["python", "torch", "the book", "jupyter lab", "kernel python3", "threads", *CHAPTERS, "time"]


def test_the_check_passes_here_with_a_line_per_check():
    run = subprocess.run([sys.executable, "-m", "tools.check"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    assert lines[-1].startswith("all checks passed"), run.stdout
    assert [line[6:].split(":")[0] for line in lines[:-1]] == CHECKS, run.stdout
    assert all(line.startswith("ok  ") for line in lines[:-1]), run.stdout
    assert all(f"{c}: the same 147 tokens as chapter 1" in run.stdout for c in CHAPTERS[1:]), run.stdout


def test_a_failure_says_what_to_do_and_exits_1():
    out = io.StringIO()
    report = check.Report(out)
    report.ok("python", "3.11.7")
    report.fail("jupyter lab", "jupyterlab is not installed in this Python: run `pip install -r requirements.txt`")
    assert report.done(1.0) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == "ok    python: 3.11.7"
    assert lines[1].startswith("FAIL  jupyter lab: ") and "pip install" in lines[1]
    assert lines[2].startswith("1 check failed")


def test_an_old_python_fails_with_the_fix(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "version_info", (3, 10, 12, "final", 0))
    assert not check.check_python(report := check.Report(out))
    assert report.failures == 1 and "3.10.12 is too old" in out.getvalue() and "3.11" in out.getvalue()


def test_another_copy_of_the_book_on_the_path_fails():
    """Two clones, the other one installed: the notebooks would run the other one's code."""
    out = io.StringIO()
    elsewhere = check.start([sys.executable, "-c", "print('/elsewhere/minigpt/__init__.py')"])
    assert not check.check_book(check.Report(out), elsewhere)
    assert "another copy" in out.getvalue() and "pip install -e ." in out.getvalue()


def test_a_bare_python_in_a_kernel_spec_is_the_one_running_jupyter():
    assert check.kernel_python("python") == sys.executable
    assert check.kernel_python("/opt/env/bin/python") == "/opt/env/bin/python"
