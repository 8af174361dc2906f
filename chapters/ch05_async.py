# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 5: asynchronous batching with CUDA streams and events
#
# ![CPU and GPU over twenty decode steps, sync above async](../figures/async_timeline_w1.png)
#
# **What you will learn:** where a synchronous serving loop leaves the GPU idle, and how to close
# those gaps: CUDA streams and events, double-buffered pinned inputs, feeding the tokens just sampled
# straight back on the GPU, and CUDA graphs for decode steps.
#
# Chapter 4's step is: schedule, prepare inputs, copy them over, run the model, sample, copy the tokens
# back, update. Only the middle runs on the GPU; the rest of the time it waits for the CPU (24% of the wall
# clock in the 8B run that inspired this chapter). Yet the tokens of step N are needed to *update* the
# requests, not to *schedule* step N+1. So the CPU can prepare step N+1 while the GPU computes step N, if
# we guard the six hazards that opens (each guard below says which it is):
#
# 1. inputs go into one of **two slots**: host buffers (pinned: page-locked, which the GPU copies from alone)
#    and device buffers; an event says when a slot's last copy and last use are done, and only then is it rewritten;
# 2. a token not yet known is a **placeholder** plus the row of the previous step's output holding it;
#    the GPU fills it in before the forward;
# 3. a request that finished at step N may already be in step N+1: its extra token is **dropped**, its
#    blocks freed once;
# 4. blocks freed on the CPU may be reused while an older step still uses them: every kernel that touches
#    the KV pool runs on **one compute stream**, so the reuse is ordered after the old use;
# 5. a pinned host buffer is rewritten only after the **event** of the copy that read it;
# 6. decode steps replay **CUDA graphs** (a step's kernel launches, recorded once, replayed by one call), which read
#    fixed addresses: each slot's device buffer is the graph's input, written in place, never rebound.
#
# On the CPU the model's work runs on a *worker thread*, in order as on a stream, while the main thread
# prepares the next step: every guard's logic runs there (`minigpt/streams.py` has the stand-ins).

# %%
from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from chapters import ch04_paged
from chapters.ch03_continuous import Batch, Chunk, Sequence
from chapters.ch04_paged import PagedEngine
from minigpt import Completions, Request, finish_reason
from minigpt.attention import paged_prompt_layout
from minigpt.metrics import decode_phase, gpu_busy, stage
from minigpt.options import check_bool, check_int, make_engine
from minigpt.streams import StepTimeline, WorkerEvent, new_event, on, wait  # CUDA's, or their CPU stand-ins

PENDING = -1  # a token whose value the GPU has not told us yet

# %% [markdown]
# ![Two slots and three streams over six steps of W1 on the H200](../figures/idea_two_slots.png)
#
# ## A slot: one step's inputs and outputs, on both sides
#
# Every integer a step needs (the `FIELDS`, then the block tables) is packed into one int64 buffer, so that
# one copy moves it all. Two slots alternate: step N uses slot N % 2. Three events guard a slot: `copied`
# (the pinned host buffer may be rewritten: hazard 5), `consumed` (the forward read the device inputs: the
# next copy may overwrite them, hazard 1) and `fetched` (the tokens reached the host: the device output is free).

# %%
class Slot:
    def __init__(self, capacity: int, max_rows: int, device, cuda: bool):
        pin = dict(pin_memory=True) if cuda else {}
        self.host = torch.zeros(capacity, dtype=torch.long, **pin)
        self.device = torch.zeros(capacity, dtype=torch.long, device=device)
        self.out_device = torch.zeros(max_rows, dtype=torch.long, device=device)  # sampled tokens
        self.out_host = torch.zeros(max_rows, dtype=torch.long, **pin)
        self.copied, self.consumed, self.fetched = (new_event(cuda) for _ in range(3))  # (the three guards above)


# A step's integers, in slot order. Per token: id, position, cache row, carry_from (hazard 2: the row of the
# last step's output holding its id, or -1); per sampled token: logits_at; per chunk: lens, num_tokens.
FIELDS = ("input_ids", "positions", "cache_rows", "carry_from", "logits_at", "lens", "num_tokens", "prompt_chunks")


def pad_rows(fields: dict[str, list[int]], size: int) -> dict[str, list[int]]:
    """A decode step padded to `size` rows: each padding row one token at position 0, written to row 0 of
    the scratch block (block 0, never handed out) and never read; logits for every row."""
    pad = size - len(fields["lens"])
    extend = {"input_ids": 0, "positions": 0, "cache_rows": 0, "carry_from": -1, "lens": 1, "num_tokens": 1}
    return {**{name: fields[name] + [value] * pad for name, value in extend.items()},
            "logits_at": list(range(size)), "prompt_chunks": []}


@dataclass
class AsyncBatch(Batch):  # NEW: chapter 3's batch, plus what an overlapped step needs
    slot: Slot = None
    carry_from: torch.Tensor = None  # (T,) the row of the previous step's output holding this token, or -1
    graph_size: int = 0  # > 0: a decode step padded to this many rows, replayed as a CUDA graph
    sampled_at: list[int] = field(default_factory=list)  # where each sampled token goes in its sequence
    prompt_sizes: list[tuple[int, int]] = field(default_factory=list)  # (tokens, context) of each prompt chunk
    tables: torch.Tensor = None  # (chunks, width) every chunk's block table; decode_layout is the first rows
    lens: torch.Tensor = None  # (chunks,) every chunk's context length
    num_tokens: torch.Tensor = None  # (chunks,) every chunk's number of tokens
    prompt_chunks: torch.Tensor = None  # (P,) which chunks are prompt chunks
    events: tuple = ()  # CUDA events (start, end) around its GPU work
    host_times: dict = field(default_factory=dict)  # when the CPU did what, for the timeline


# %% [markdown]
# ## The engine (with `use_async=False`, this very code waiting for each step's tokens right after its launch)

# %%
class AsyncEngine(PagedEngine):
    name = "ch05_async"

    def __init__(self, model, use_async: bool = True, cuda_graphs: bool = True, max_graph_batch: int = 256, **options):
        super().__init__(model, **options)
        if self.reference:
            raise ValueError(f"{self.name}: runs the batched attention only; use chapter 4 for attention='reference'")
        self.use_async = check_bool(self.name, "use_async", use_async)
        self.cuda = self.device.type == "cuda"
        self.use_graphs = check_bool(self.name, "cuda_graphs", cuda_graphs) and self.cuda
        largest = check_int(self.name, "max_graph_batch", max_graph_batch)
        self.graph_sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= largest]

    def generate(self, requests: list[Request]) -> Completions:
        try:
            return super().generate(requests)
        finally:  # also after an error: nothing is left in flight, running or frozen for the next run
            self.in_flight = []
            if getattr(self, "worker", None):
                self.worker.shutdown(wait=True)
            gc.unfreeze()

    def pool_blocks(self, requests) -> int:
        return super().pool_blocks(requests) + 1  # one more block, 0: scratch space, padded graph rows write there

    def make_cache(self, runnable):
        cache = super().make_cache(runnable)
        cache.free_blocks.remove(0)
        cache.num_blocks -= 1  # the blocks requests can have
        self.width = cache.host_tables.shape[1]  # the longest block table any request can have
        return cache

    def make_attention(self):
        """Chapter 4's attention object; and the streams, the two slots and the decode graphs it runs in."""
        attention = super().make_attention()
        self.compute, self.copy_in, self.copy_out = ((torch.cuda.Stream(self.device) if self.cuda else None)
                                                     for _ in range(3))
        self.worker = ThreadPoolExecutor(1) if self.use_async and not self.cuda else None  # the CPU's compute stream
        rows = max(self.max_batch_tokens, self.max_seqs, max(self.graph_sizes))
        self.capacity = (rows + 1) * (len(FIELDS) + self.width)  # the fields, at most `rows` each, then the tables
        self.slots = [Slot(self.capacity, rows, self.device, self.cuda) for _ in range(2)]
        self.in_flight: list[AsyncBatch] = []
        self.carry_row: dict[int, int] = {}  # request index -> the output row of its newest, PENDING token
        self.retired: set[int] = set()  # request indices no longer scheduled
        self.timeline = StepTimeline(self.cuda)  # each step's times, for the figures
        self.steps = 0
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        if self.use_graphs:
            self.attention = attention  # capture runs the model, which calls it
            with stage(f"capturing {2 * len(self.graph_sizes)} CUDA graphs", self.progress):
                self.capture_graphs()
        # A full collection walks every live object, hundreds of thousands after capturing: freeze them out of sight.
        gc.collect()
        gc.freeze()
        return attention

    def prepare(self, chunks: list[Chunk]) -> AsyncBatch:
        slot = self.slots[self.steps % 2]  # step N uses slot N % 2
        self.steps += 1
        f = {name: [] for name in FIELDS}
        f["prompt_chunks"] = [j for j, ch in enumerate(chunks) if not ch.seq.decoding]  # (they come last)
        # Greedy decode steps replay a graph (sampling with a seeded generator per request runs eagerly).
        decode_only = not f["prompt_chunks"] and all(ch.seq.request.temperature == 0 for ch in chunks)
        size = next((b for b in self.graph_sizes if b >= len(chunks)), 0) if decode_only else 0
        sampled, sampled_at = [], []
        for ch in chunks:
            seq, tokens = ch.seq, ch.seq.tokens[ch.start:ch.start + ch.n]  # hazard 2: the GPU fills in a PENDING one
            f["input_ids"] += [0 if t == PENDING else t for t in tokens]
            f["carry_from"] += [self.carry_row[seq.index] if t == PENDING else -1 for t in tokens]
            f["positions"] += range(ch.start, ch.start + ch.n)
            f["cache_rows"] += self.cache.cache_rows(seq, range(ch.start, ch.start + ch.n))
            f["lens"].append(ch.start + ch.n)
            f["num_tokens"].append(ch.n)
            if ch.samples:
                f["logits_at"].append(len(f["input_ids"]) - 1)
                sampled.append(seq)
                sampled_at.append(len(seq.tokens))
        f = pad_rows(f, size) if size else f  # to the graph's size: rows written to the scratch block, never read
        slot.copied.synchronize()  # hazard 5: the previous copy out of this pinned buffer is done
        offsets = self.pack(slot, f, [ch.seq.index for ch in chunks], size or len(chunks))
        # Hazard 1: the step that last read this slot's device buffer must be done before we overwrite it.
        wait(self.copy_in, slot.consumed)
        with on(self.copy_in):
            n = sum(offsets["tables"])  # the tables come last
            slot.device[:n].copy_(slot.host[:n], non_blocking=True)
            slot.copied.record()
        return self.batch_views(slot, offsets, chunks=chunks, sampled=sampled, sampled_at=sampled_at, graph_size=size,
                                prompt_sizes=[(chunks[j].n, chunks[j].start + chunks[j].n) for j in f["prompt_chunks"]])

    def pack(self, slot: Slot, fields: dict[str, list[int]], rows: list[int], num_rows: int) -> dict:
        """Write the fields, then the block tables of requests `rows` (padded to num_rows), into the slot's
        pinned buffer; return each one's (offset, length)."""
        offsets, flat = {}, []
        for name in FIELDS:
            offsets[name] = (len(flat), len(fields[name]))
            flat += fields[name] + [0] * (len(fields[name]) % 2)  # 16-byte aligned: Triton compiles one variant
        at = len(flat)
        slot.host[:at] = torch.tensor(flat, dtype=torch.long)
        tables = slot.host[at:at + num_rows * self.width].view(num_rows, self.width)
        tables[:len(rows)] = self.cache.host_tables[rows]  # one gather (chapter 4's host tables), no Python loop
        tables[len(rows):] = 0
        offsets["tables"] = (at, num_rows * self.width)
        assert at + num_rows * self.width <= self.capacity
        return offsets

    def batch_views(self, slot: Slot, offsets: dict, chunks: list[Chunk], graph_size: int,
                    prompt_sizes: list[tuple[int, int]], **rest) -> AsyncBatch:
        """The step's Batch as views into the slot's device buffer: fixed addresses a graph can read."""
        view = {k: slot.device[o:o + n] for k, (o, n) in offsets.items()}
        tables = view.pop("tables").view(-1, self.width)
        num_decode = graph_size or len(chunks) - len(prompt_sizes)
        return AsyncBatch(chunks=chunks, **view, num_decode=num_decode, decode_lens=view["lens"][:num_decode],
                          decode_layout=tables[:num_decode], max_decode_len=0, tables=tables, slot=slot,
                          graph_size=graph_size, prompt_sizes=prompt_sizes, **rest)

    @torch.inference_mode()
    def launch(self, batch: AsyncBatch):
        slot = batch.slot
        previous = self.slots[1 - self.slots.index(slot)]  # step N-1's slot: its outputs feed the placeholders
        batch.events = self.timeline.events(self.compute, self.clock)  # (start, end) around its device work
        if self.worker:  # the CPU: queue the step on the worker; its end guards the slot (hazards 1 and 5)
            slot.consumed = slot.fetched = WorkerEvent(self.worker.submit(self.compute_step, batch, slot, previous))
            return
        with on(self.compute):
            wait(self.compute, slot.copied)  # the inputs are on the device
            wait(self.compute, slot.fetched)  # this slot's previous tokens are copied out: its output is free
            self.compute_step(batch, slot, previous)
            slot.consumed.record()
        wait(self.copy_out, batch.events[1])
        with on(self.copy_out):
            n = len(batch.sampled)
            slot.out_host[:n].copy_(slot.out_device[:n], non_blocking=True)
            slot.fetched.record()

    @torch.inference_mode()  # (a thread's own setting: on the CPU the worker thread runs this)
    def compute_step(self, batch: AsyncBatch, slot: Slot, previous: Slot):
        """The step's model work, between its start and end events; on the CPU's worker, the copy out too."""
        batch.events[0].record()
        if batch.graph_size and self.use_graphs:
            self.graphs[(batch.graph_size, self.slots.index(slot))].replay()  # hazard 6: inputs in place
        else:  # eager; on the CPU, padded decode steps too, so the tests run the graphs' padded layout
            self.prefill_layout(batch)
            self.forward_and_sample(batch, slot, previous, greedy=batch.graph_size > 0)
        batch.events[1].record()
        if self.worker:
            slot.out_host[: len(batch.sampled)] = slot.out_device[: len(batch.sampled)]

    def prefill_layout(self, batch: AsyncBatch):
        """Chapter 3's packed prompt context, built on the GPU from the tables and lengths already copied over:
        no list crosses to the device outside the slot's one copy."""
        if batch.prompt_sizes:
            which = batch.prompt_chunks
            batch.context_rows, batch.prefill_mask, batch.prefill_varlen = paged_prompt_layout(
                batch.tables[which], batch.lens[which], batch.num_tokens[which], batch.positions[batch.num_decode:],
                batch.prompt_sizes, self.block_size, self.varlen)

    def forward_and_sample(self, batch: AsyncBatch, slot: Slot, previous: Slot, greedy: bool):
        # Hazard 2: placeholders take the token the previous step sampled into its output row.
        ids = torch.where(batch.carry_from >= 0, previous.out_device[batch.carry_from.clamp(min=0)], batch.input_ids)
        self.attention.batch = batch
        logits = self.model(ids, batch.positions, self.attention, logits_at=batch.logits_at)
        tokens = logits.argmax(-1) if greedy else self.sampler(logits, [s.index for s in batch.sampled])
        slot.out_device[: len(tokens)] = tokens

    def capture_graphs(self):
        """One graph per (padded batch size, slot), in one memory pool; largest first, the smaller fit in it."""
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.graph_sizes):
            for i, slot in enumerate(self.slots):
                offsets = self.pack(slot, pad_rows({name: [] for name in FIELDS}, size), [], size)  # all padding
                slot.device[: sum(offsets["tables"])].copy_(slot.host[: sum(offsets["tables"])])
                batch = self.batch_views(slot, offsets, chunks=[], sampled=[], graph_size=size, prompt_sizes=[])
                with torch.inference_mode():
                    with on(self.compute):  # one eager run first: Triton compiles, the allocator warms
                        self.forward_and_sample(batch, slot, self.slots[1 - i], greedy=True)
                    self.compute.synchronize()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=self.compute):
                        self.forward_and_sample(batch, slot, self.slots[1 - i], greedy=True)
                    with on(self.compute):  # the first replay uploads the graph: now, not mid-run
                        graph.replay()
                self.graphs[(size, i)] = graph
        torch.cuda.synchronize()

    def commit(self, batch: AsyncBatch):
        """Everything that needs no token value: run now, while the GPU computes."""
        for ch in batch.chunks:
            ch.seq.num_cached += ch.n
        for row, seq in enumerate(batch.sampled):
            seq.tokens.append(PENDING)  # hazard 2: its value is in this step's output row `row`
            self.carry_row[seq.index] = row
            if len(seq.tokens) >= seq.max_len:  # the length limit needs no value: stop scheduling it now
                self.retire(seq)
        reserved, used = self.cache.memory(self.scheduler.running)
        self.trace.append({"t": self.clock.now(), "tokens": sum(ch.n for ch in batch.chunks), "kv_used": used,
                           "decode": len(batch.chunks) - len(batch.prompt_sizes), "graph": batch.graph_size,
                           "running": len(self.scheduler.running), "kv_reserved": reserved})

    def resolve(self, batch: AsyncBatch):
        """Wait for a step's tokens (the only place the CPU waits for the GPU) and hand them out."""
        batch.slot.fetched.synchronize()
        tokens = batch.slot.out_host[: len(batch.sampled)].tolist()
        now = self.clock.now()
        for seq, at, token in zip(batch.sampled, batch.sampled_at, tokens):
            c = seq.completion
            if c.finish_reason:  # hazard 3: it finished at an earlier step; this token is one too many
                continue
            seq.tokens[at] = token
            c.tokens.append(token)
            c.token_times.append(now)
            self.emit(seq.index, token)
            c.finish_reason = finish_reason(seq.request, c, self.config) or ""
            if c.finish_reason:
                self.retire(seq)
        batch.host_times["resolved"] = self.clock.now()
        # Keep what the timeline needs, not the batch: its objects would pile up for the garbage collector.
        self.timeline.add({**batch.host_times, "graph": batch.graph_size, "decode": not batch.prompt_sizes,
                           "tokens": sum(ch.n for ch in batch.chunks)}, batch.events)

    def retire(self, seq: Sequence):
        """Stop scheduling `seq` and free its blocks, exactly once (hazard 3). Reuse of the blocks is safe
        while a step still in flight writes them: every kernel on the pool runs on one stream (hazard 4)."""
        if seq.index in self.retired:
            return
        self.retired.add(seq.index)
        if seq in self.scheduler.running:
            self.scheduler.finish(seq)
        elif seq in self.scheduler.waiting:  # preempted, its blocks already freed
            self.scheduler.waiting.remove(seq)

    def has_work(self) -> bool:  # (in flight: launched, its tokens not yet handed out)
        return self.scheduler.has_work() or bool(self.in_flight)

    def step(self):
        t0 = self.clock.now()
        chunks = self.scheduler.schedule()
        if not chunks and not self.in_flight:  # work waits, yet nothing can run: it would loop here for ever
            raise RuntimeError(f"{self.name}: no request could be scheduled ({len(self.scheduler.waiting)} waiting)")
        if chunks:
            batch = self.prepare(chunks)
            t1 = self.clock.now()
            self.launch(batch)
            self.commit(batch)
            batch.host_times = {"start": t0, "prepared": t1, "launched": self.clock.now()}
            self.in_flight.append(batch)
        # Synchronous: wait for this step's tokens now; asynchronous: for the previous step's, while this runs.
        while len(self.in_flight) > (1 if self.use_async and chunks else 0):
            self.resolve(self.in_flight.pop(0))

    def summary(self) -> dict:
        stats = {**super().summary(), "use_async": self.use_async, "cuda_graphs": self.use_graphs}
        if self.timeline.steps:
            timeline = self.timeline.seconds()
            stats.update(gpu_busy=gpu_busy(timeline), decode_gpu_busy=decode_phase(timeline)[1], timeline=timeline)
        return stats


def generate(model, requests: list[Request], **options) -> Completions:
    """Chapter 5's engine. Options: use_async, cuda_graphs, max_graph_batch, and chapter 4's."""
    return make_engine(AsyncEngine, model, options).generate(requests)


# %% [markdown]
# ## The check: overlap changes when tokens are computed, never which: sync and async equal chapter 1

# %%
if __name__ == "__main__" and "get_ipython" in globals():  # (a notebook; imported, this chapter runs nothing)
    from chapters import ch01_naive
    from minigpt import from_config, get_workload
    from minigpt.reference import assert_same_tokens

    demo_model = from_config("tiny")
    demo = get_workload("W1-small").requests(demo_model.config.vocab_size, 8)
    print([assert_same_tokens(generate, ch01_naive.generate, demo_model, demo, use_async=flag, num_blocks=12)
           for flag in (False, True)], "tokens equal chapter 1's, sync and async")

# %% [markdown]
# ## The measurement
#
# `python -m tools.bench --device cuda --workload W2 --chapters ch05_async@use_async=false,ch05_async` runs
# the engine both ways, CUDA events around each step. The cell below prints the H200's committed runs: the
# gaps close, most where steps are short (W1's 7 ms against W2's 11), and each request waits less between
# tokens (W1's TPOT p50: 10.5 ms sync, 8.3 async). Under load, a step that carries a new prompt's chunk runs
# eagerly, 20 ms against 6 for a graph step: at 32 requests a second, 16% of the steps take about 39% of the time
# (the README's latency section). On this CPU the worker computes step N while the main thread prepares
# N+1, yet the wall time barely moves: kernels release Python's lock, launches do not.

# %%
if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt import plots
    from minigpt.metrics import show_committed

    show_committed("h200_w2.json", "W2 on one H200 (committed data)")
    show_committed("h200_w1.json", "W1 on one H200 (committed data)", ["ch05_async@use_async=false", "ch05_async"])
    runs = {name: generate(demo_model, demo, use_async=flag).stats["timeline"] for name, flag in
            (("sync", False), ("async", True))}
    plots.async_timeline(runs, None, "chapter 5 on this CPU, steps 10-29", first=10, device="model")

# %% [markdown]
# ## Exercises
#
# 1. Run with `--no-cuda-graphs` on a GPU: how much of a decode step was launching? (On the CPU: count
#    the operators one decode step dispatches, each a kernel launch on a GPU.)
# 2. Remove `slot.copied.synchronize()` in `prepare` and run the GPU stress test in `tests/test_async.py`.
#    What breaks? (First: which step last used the slot, and what has the CPU already waited for?)
# 3. With one slot instead of two, where must the CPU wait? (On the CPU: make both entries of `self.slots`
#    the same slot and compare the tokens with chapter 1's.)
# 4. Remove hazard 3's check in `resolve` (`if c.finish_reason: continue`) and run `pytest
#    tests/test_async.py`: which test fails, and why only with `use_async=True`?
# 5. Hand out block 0 like any other (remove `cache.free_blocks.remove(0)`): why do tokens change on the CPU?
# 6. Count from `engine.trace` the padding rows the graph sizes add on W1-small. And with sizes in steps of 8?
#
# Answers: `solutions/ch05_async.py`.
#
# ## What is left on the table
#
# The GPU is busy all the time now; what it is busy with is the next question. Besides the matmuls and
# attention, a decode step is dozens of small kernels a layer. Chapter 6 profiles a step and fuses them.

# %%
OPTIONS = {**{k: v for k, v in ch04_paged.OPTIONS.items() if k != "attention"},  # NEW: sync or async, graphs
           "use_async": (bool, True, "overlap CPU scheduling with GPU compute"),
           "cuda_graphs": (bool, True, "replay decode steps as CUDA graphs")}


def main(argv=None):
    from minigpt.cli import run_chapter

    run_chapter("ch05_async", argv, OPTIONS)


if __name__ == "__main__" and "get_ipython" not in globals():  # python -m chapters.<this chapter>
    main()
elif __name__ == "__main__":  # in a notebook: a small run beside the chapters before this one
    main(["--requests", "8", "--compare", "--no-progress"])
