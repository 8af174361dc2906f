"""The pre-workshop check: `python -m tools.check`, after `pip install -r requirements.txt`.

One line per check, each `ok` or `FAIL` with what to do; then "all checks passed" (exit code 0) or the
number of failures (exit code 1). It checks the Python version, torch, that the book imports from any
folder, `jupyter lab`, the notebooks' kernel, the CPU thread setting the chapters time with, and a tiny run
of every chapter (minigpt.cli.CHAPTERS: chapter 7 runs alone, one rank) whose tokens must equal chapter 1's.
About ten seconds on a laptop.

    python -m tools.check                  # the participants' check, on the CPU
    python -m tools.check --device cuda    # the tiny run on a GPU too (a teacher's machine)
    python -m tools.check --compile        # also trace chapter 6's model (torch.compile), as its notebook does
"""
from __future__ import annotations  # this file must run (and say what is wrong) on an old Python too

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # this checkout
MIN_PYTHON = (3, 11)
REQUESTS = 4  # the first W1-small requests: 147 new tokens, every chapter's path (prefill, decode, finishing)
SLOW_S = 60.0  # the tiny run takes 1-2 s on a laptop; past this, something is wrong with the machine's CPU
INSTALL = "pip install -r requirements.txt"


class Report:
    """Prints each check's line as it is known and counts the failures."""

    def __init__(self, out=sys.stdout):
        self.out, self.failures = out, 0

    def ok(self, name: str, detail: str = ""):
        self._line("ok  ", name, detail)

    def fail(self, name: str, detail: str):
        self.failures += 1
        self._line("FAIL", name, detail)

    def _line(self, tag: str, name: str, detail: str):
        print(f"{tag}  {name}" + (f": {detail}" if detail else ""), file=self.out, flush=True)

    def done(self, seconds: float) -> int:
        if self.failures:
            n = self.failures
            which = "each FAIL line says" if n > 1 else "the FAIL line says"
            print(f"{n} check{'s' * (n > 1)} failed: do what {which}, then run `python -m tools.check` again",
                  file=self.out)
            return 1
        print(f"all checks passed ({seconds:.0f} s)", file=self.out)
        return 0


IMPORT_THE_BOOK = "import minigpt, chapters, tools; print(minigpt.__file__); print(chapters.__file__)"


def start(argv: list[str]) -> subprocess.Popen | None:
    """Start a command now, read it later: the slow ones (each imports torch or Jupyter) run side by side.
    It runs away from the book, in a temporary folder with PYTHONPATH unset, as a notebook started from
    another folder or a desktop icon does: what it imports, it imports from the installed packages."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tempfile.gettempdir(), env=env)
    except OSError:
        return None


def finish(process: subprocess.Popen | None, timeout: float = 120) -> tuple[int, str, str]:
    if process is None:
        return -1, "", "could not start"
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return -1, out, f"no answer after {timeout:.0f} s"
    return process.returncode, out, err


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_python(report: Report) -> bool:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        report.ok("python", f"{version} ({sys.executable})")
        return True
    report.fail("python", f"{version} is too old: the pinned numpy, matplotlib and ipykernel need 3.11 or newer; "
                          f"install Python 3.11+, make a fresh virtual environment with it, then `{INSTALL}`")
    return False


def check_torch(report: Report):
    """torch, its version and build; returns the module or None."""
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any import failure is the participant's to fix, said in one line
        report.fail("torch", f"does not import ({type(error).__name__}: {error}); run `{INSTALL}`")
        return None
    if torch.version.cuda is None:
        build = "CPU build"
        if getattr(torch.version, "hip", None):
            build = f"ROCm {torch.version.hip} build"
    else:
        build = f"CUDA {torch.version.cuda} build"
    if torch.cuda.is_available():
        gpu = f", GPU: {torch.cuda.get_device_name(0)}"
    elif torch.version.cuda is not None:
        gpu = ", no GPU visible (the workshop runs on the CPU: fine)"
    else:
        gpu = ""
    report.ok("torch", f"{torch.__version__}, {build}{gpu}")
    return torch


def check_book(report: Report, process) -> bool:
    """The book (minigpt, chapters, tools) imports from a folder outside this checkout, and it is this checkout."""
    rc, out, err = finish(process)
    if rc != 0 or not out.strip():
        why = last_line(err) or "no output"
        report.fail("the book", f"`import minigpt, chapters` fails outside this folder ({why}): "
                                f"run `pip install -e .` in {ROOT} (requirements.txt does it with its `-e .` line)")
        return False
    found = Path(out.strip().splitlines()[0]).resolve().parent.parent
    if found != ROOT:
        report.fail("the book", f"imports from {found}, another copy, not this checkout ({ROOT}): "
                                f"run `pip install -e .` here, so that the notebooks run this copy's code")
        return False
    report.ok("the book", f"minigpt and chapters import from any folder (installed from {ROOT})")
    return True


def check_jupyter_lab(report: Report, process) -> None:
    """jupyterlab installed in this Python, and a `jupyter` command on PATH that runs it, in the same version."""
    from importlib import metadata

    try:
        ours = metadata.version("jupyterlab")
    except metadata.PackageNotFoundError:
        report.fail("jupyter lab", f"jupyterlab is not installed in this Python: run `{INSTALL}`")
        return
    rc, out, err = finish(process)
    if rc != 0:
        why = "no `jupyter` command on PATH" if process is None else (last_line(err) or "it fails")
        report.fail("jupyter lab", f"jupyterlab {ours} is installed but `jupyter lab --version` does not run ({why}): "
                                   "activate this environment, or use `python -m jupyter lab`")
        return
    theirs = last_line(out)
    if theirs != ours:
        report.fail("jupyter lab", f"the `jupyter` on PATH ({shutil.which('jupyter')}) is another environment's "
                                   f"(lab {theirs}; this Python's is {ours}): activate this environment, or use "
                                   "`python -m jupyter lab`")
        return
    report.ok("jupyter lab", f"{ours} (`jupyter lab --version`)")


def kernel_python(argv0: str) -> str:
    """The Python a kernel spec starts: Jupyter replaces a bare `python` with the one that runs Jupyter."""
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return sys.executable if argv0 in bare else argv0


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_kernel(report: Report, book_ok: bool) -> None:
    """A kernel named python3 (the notebooks' kernelspec), whose Python imports the book."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except Exception as error:  # noqa: BLE001
        report.fail("kernel python3", f"jupyter_client does not import ({error}): run `{INSTALL}`")
        return
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        report.fail("kernel python3", "no kernel named python3: run `python -m ipykernel install --user`")
        return
    python = kernel_python(spec.argv[0])
    if same_file(python, sys.executable):  # the book's import was checked above, with this Python
        report.ok("kernel python3", "runs this Python" + (", which imports the book" if book_ok else ""))
        return
    rc, _, err = finish(start([python, "-c", "import ipykernel; " + IMPORT_THE_BOOK]), timeout=120)
    if rc != 0:
        report.fail("kernel python3", f"runs {python}, which cannot import ipykernel and the book "
                                      f"({last_line(err) or 'it does not start'}): run "
                                      "`python -m ipykernel install --user` with this environment's Python")
        return
    report.ok("kernel python3", f"runs {python}, which imports the book")


def check_threads(report: Report, torch, device: str) -> int:
    """The thread count the chapters time with (minigpt.cli.set_threads): 1 on the CPU unless --threads."""
    try:
        from minigpt.cli import set_threads
    except Exception as error:  # noqa: BLE001
        report.fail("threads", f"minigpt does not import ({type(error).__name__}: {error}); run `{INSTALL}`")
        return 0
    default = torch.get_num_threads()
    threads = set_threads(device, None)
    cores = os.cpu_count() or 0
    told = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    where = (f"PyTorch's own default here is {default}" + (f" ({', '.join(told)})" if told else "")
             + f" for {cores} core{'s' * (cores != 1)}")
    if hasattr(os, "getloadavg"):
        where += f", load average now {os.getloadavg()[0]:.1f}"
    if torch.get_num_threads() != threads:
        report.fail("threads", f"torch.set_num_threads({threads}) did not take ({torch.get_num_threads()} threads): "
                               "unset OMP_NUM_THREADS and MKL_NUM_THREADS, then try again")
        return threads
    if device == "cpu":
        report.ok("threads", f"the chapters compute with {threads} thread on the CPU (`--threads N` for more); {where}")
    else:
        report.ok("threads", f"{threads} CPU threads beside the GPU; {where}")
    return threads


def check_chapters(report: Report, torch, device: str, compile_: bool) -> None:
    """Each chapter's generate() on the first W1-small requests (the tiny model); tokens equal chapter 1's."""
    try:
        import minigpt
        from minigpt.cli import CHAPTERS

        model = minigpt.from_config("tiny", device=device, dtype=torch.float32)
        requests = minigpt.get_workload("W1-small").requests(model.config.vocab_size, REQUESTS)
    except Exception as error:  # noqa: BLE001
        report.fail("tiny model", f"{type(error).__name__}: {error}")
        return
    reference, total, ran = None, 0.0, 0
    compiles = CHAPTERS[CHAPTERS.index("ch06_compiled"):] if "ch06_compiled" in CHAPTERS else []  # and those after
    # On a GPU chapter 6 compiles with inductor by default: a minute or more, so only with --compile.
    runs = [(name, {"compile": "none"} if device != "cpu" and not compile_ and name in compiles else {})
            for name in CHAPTERS]
    if device == "cpu" and compile_:  # on the CPU chapter 6 does not compile; its notebook traces (aot_eager)
        runs.append(("ch06_compiled", {"compile": "aot_eager"}))
    for name, options in runs:
        label = name + "".join(f" (compile={v})" for v in options.values())
        again = f"`python -m chapters.{name} --requests {REQUESTS} --device {device}` shows the whole error"
        try:
            module = importlib.import_module(f"chapters.{name}")
            begin = time.perf_counter()
            completions = module.generate(model, requests, **options)
            seconds = time.perf_counter() - begin
        except Exception as error:  # noqa: BLE001
            report.fail(label, f"{type(error).__name__}: {str(error)[:200]}; {again}")
            continue
        total, ran = total + seconds, ran + 1
        tokens = [c.tokens for c in completions]
        errors = [c.error for c in completions if c.error]
        count = sum(map(len, tokens))
        if errors:
            report.fail(label, f"{len(errors)} request(s) failed, the first: {errors[0][:200]}; {again}")
        elif reference is None:
            if name != "ch01_naive":
                report.fail(label, "chapter 1 did not run, so there is nothing to compare with")
            else:
                reference = tokens
                report.ok(label, f"{count} tokens for {len(requests)} requests, {seconds:.2f} s (the reference)")
        elif tokens != reference:
            first = next(i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b)
            report.fail(label, f"tokens differ from chapter 1's at request {first}: a bug, not a setting; "
                               "run `pytest` and report what fails")
        else:
            report.ok(label, f"the same {count} tokens as chapter 1, {seconds:.2f} s")
    if not ran:
        return
    what = f"{ran} runs of {len(requests)} requests (the tiny model, float32, {device})"
    if total > SLOW_S:
        report.fail("time", f"{total:.1f} s for {what}: a laptop takes a few seconds; close what else is busy, "
                            "check the threads line, run again")
    else:
        report.ok("time", f"{total:.1f} s for {what}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the tiny run goes: cpu (the workshop's) or cuda")
    p.add_argument("--compile", action="store_true",
                   help="also run chapter 6 with its model compiled: traced (aot_eager) on the CPU, about 10 s more; "
                        "with --device cuda, inductor (chapter 6's default there), a minute or more the first time")
    args = p.parse_args(argv)
    begin = time.perf_counter()
    report = Report()
    # The slow probes start now and run beside the checks below: each imports torch or Jupyter, seconds each.
    book = start([sys.executable, "-c", IMPORT_THE_BOOK])
    jupyter = shutil.which("jupyter")
    lab = start([jupyter, "lab", "--version"]) if jupyter else None
    check_python(report)
    torch = check_torch(report)
    book_ok = check_book(report, book)
    check_jupyter_lab(report, lab)
    check_kernel(report, book_ok)
    if torch is None:
        report.fail("threads", "needs torch (above)")
        report.fail("chapters", "need torch (above)")
    elif args.device != "cpu" and not torch.cuda.is_available():
        report.fail("chapters", f"--device {args.device}, but torch sees no GPU: install a CUDA build of torch "
                                "that matches the machine's driver, or leave out --device")
    else:
        check_threads(report, torch, args.device)
        check_chapters(report, torch, args.device, args.compile)
    return report.done(time.perf_counter() - begin)


if __name__ == "__main__":
    sys.exit(main())
