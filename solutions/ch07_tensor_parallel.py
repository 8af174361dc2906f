# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 7: answers to the exercises
#
# Each answer is prose and a function, `exercise_N`, that computes its evidence on the CPU from the model's
# shape and the committed two-H200 run (`figures/h200_tp.json`); `tests/test_exercises.py` asserts what the
# prose claims.

# %%
from __future__ import annotations

import json

from minigpt import get_config
from minigpt.metrics import FIGURES

# %% [markdown]
# ## Exercise 1: two CPU ranks
#
# *Run the chapter on two CPU processes with `torchrun`, then as one process. What do two ranks cost?*
#
# Two ranks on one CPU share the same cores, so the split buys no compute, and every layer adds two
# all-reduces over gloo (after attention and after the MLP): a step of the tiny model makes 8, each a
# round trip between processes of tens of microseconds, for layers that take a few each. The two-rank run
# is several times slower than one process; on GPUs the same all-reduces are 12 us each at small sizes
# (the committed sweep), against layers that halve.

# %%
def exercise_1(preset: str = "tiny") -> dict:
    """All-reduces a step (two a layer) and, from the committed H200 sweep, one all-reduce's floor (us)."""
    sweep = json.loads((FIGURES / "h200_tp.json").read_text())["results"][1]["extra"]["all_reduce"]
    return {"all_reduces_a_step": 2 * get_config(preset).num_hidden_layers, "floor_us": min(x["us"] for x in sweep)}


# %% [markdown]
# ## Exercise 2: arrivals and rank 0's clock
#
# *Give requests arrival times 5 ms apart: how many clock broadcasts does a step make?*
#
# One a step while requests are still to arrive, none after the last admission: every rank must admit the
# same requests at the same step, so each reads rank 0's clock, broadcast over gloo (84-87 us each on the
# H200 host). The committed W2-short run (32 requests, all at t = 0) made 32 broadcasts, W1 256.

# %%
def exercise_2() -> dict:
    """Clock broadcasts in the committed two-GPU runs, and their cost in microseconds."""
    runs = [r for r in json.loads((FIGURES / "h200_tp.json").read_text())["results"] if "2 GPUs" in r["chapter"]]
    return {r["chapter"]: (r["extra"]["clock_broadcasts"], r["extra"]["clock_broadcast_us"]) for r in runs}


# %% [markdown]
# ## Exercise 3: split the LM head?
#
# *Half the vocabulary a rank, then an all-gather of the logits: at 32 and at 256 requests, does it pay?*
#
# Split, each rank reads half the LM head (vocab x hidden x 2 bytes) and then gathers the other half of
# every request's logits (requests x vocab x 4 bytes in float32, half of them from the other rank). At the 8B shape the head is 1.05 GB: half
# of it saves about 0.12 ms a step at the copy bandwidth, while each rank receives the other half of every
# request's logits, 8 MB at 32 requests and 66 MB at 256: 0.03 and 0.23 ms at the all-reduce's measured
# bandwidth. It pays a little at 32 requests and loses at 256: the chapter replicates the head.

# %%
def exercise_3(preset: str = "llama3-8b", copy_tb_s: float = 4.27, link_gb_s: float = 287.0) -> dict:
    """Per step, ms: what half the LM head's read saves, and what gathering the logits costs, by batch size."""
    c = get_config(preset)
    saved = c.vocab_size * c.hidden_size * 2 / 2 / (copy_tb_s * 1e12) * 1e3
    gather = {n: n * c.vocab_size * 4 / 2 / (link_gb_s * 1e9) * 1e3 for n in (32, 256)}
    return {"saved_ms": saved, "gather_ms": gather}
