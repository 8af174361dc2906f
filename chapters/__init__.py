"""The book's chapters: each a runnable module (`python -m chapters.ch01_naive`) and a notebook."""
