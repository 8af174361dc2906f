"""The chapters' notebooks, built from their scripts and executed as a reader runs them.

    python -m tools.notebooks                  # every chapter: script -> notebook, run from chapters/, outputs kept
    python -m tools.notebooks ch03_continuous  # one chapter

Each notebook is the jupytext pairing of its chapter script, executed with the kernel started in
`chapters/` (as `jupyter lab` from that folder starts it) on the CPU, with one thread, and committed with
its outputs so that a reader on the web sees the tables and figures without running anything.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

CHAPTERS_DIR = Path(__file__).resolve().parent.parent / "chapters"


def chapter_names() -> list[str]:
    return sorted(p.stem for p in CHAPTERS_DIR.glob("ch0*.py"))


def notebook_from_script(chapter: str):
    """The chapter script as a notebook, without outputs."""
    import jupytext

    return jupytext.read(CHAPTERS_DIR / f"{chapter}.py")


def execute(notebook, timeout: int = 600):
    """Run every cell with the kernel started in chapters/, nothing added to its path, one CPU thread."""
    from nbclient import NotebookClient

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(CHAPTERS_DIR)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return notebook


def same_cells(notebook, script) -> bool:
    """The notebook holds the script's cells, in order (outputs aside)."""
    return [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in script.cells]


def main(argv=None):
    import nbformat

    p = argparse.ArgumentParser(prog="python -m tools.notebooks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chapters", nargs="*", help="chapter names (default: all)")
    args = p.parse_args(argv)
    names = chapter_names()
    for chapter in args.chapters or names:
        if chapter not in names:
            p.error(f"unknown chapter {chapter!r}; choose from {', '.join(names)}")
        notebook = execute(notebook_from_script(chapter))
        nbformat.write(notebook, CHAPTERS_DIR / f"{chapter}.ipynb")
        print(f"chapters/{chapter}.ipynb: executed, {len(notebook.cells)} cells")


if __name__ == "__main__":
    main()
