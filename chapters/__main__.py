"""`python -m chapters`: the book's main job. Runs the latest chapter on the CPU workload, compared with
all the chapters before it, on a seeded random model: nothing is downloaded."""
import sys

from minigpt.cli import CHAPTERS, chapter_module

if __name__ == "__main__":
    latest = [c for c in CHAPTERS if __import__("importlib.util").util.find_spec(f"chapters.{c}")][-1]
    argv = sys.argv[1:]
    if "--compare" not in argv and not any(a in argv for a in ("--prompt", "-h", "--help")):
        argv = ["--compare", *argv]  # the book's main job is the comparison, whatever else is asked
    chapter_module(latest).main(argv)
