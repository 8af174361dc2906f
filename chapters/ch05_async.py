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
# back, update. Only the middle runs on the GPU; during everything else it waits for the CPU, and the CPU
# waits for it at `.tolist()`. On the seed article's run that idle time was 24% of the wall clock; this
# chapter's engine, run synchronously on the H200, left the GPU idle 19% of W1's decode phase and 11% of
# W2's.
#
# The tokens of step N are needed to *update* the requests, but not to *schedule* step N+1: which
# requests run and how many tokens each brings is known before the tokens' values are. So the CPU can
# prepare step N+1 while the GPU computes step N, if we guard the hazards that opens (DESIGN.md lists six;
# each guard below says which it is):
#
# 1. inputs are written into one of **two slots** of pinned host and device buffers; an event says when
#    a slot's last copy and last use are done, and only then is it written again;
# 2. a token not yet known is a **placeholder** plus the row of the previous step's output that will hold
#    it; the GPU fills it in before the forward;
# 3. a request that finished at step N may already be in step N+1: its extra token is **dropped**, its
#    blocks freed once;
# 4. blocks freed on the CPU may be reused while an older step still uses them: every kernel that touches
#    the KV pool runs on **one compute stream**, so the reuse is ordered after the old use;
# 5. a pinned host buffer is rewritten only after the **event** of the copy that read it;
# 6. decode steps replay **CUDA graphs** that read fixed addresses: each slot's device buffer is the graph's
#    input, written in place, never rebound.
#
# On the CPU, streams and events do nothing and the same code runs in order: every line of the logic is
# exercised by the tests there; the GPU adds the overlap and the timing.

# %%
from __future__ import annotations

import contextlib
import gc
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chapters import ch04_paged
from chapters.ch03_continuous import Batch, Chunk, Sequence, prefill_mask
from chapters.ch04_paged import PagedEngine
from minigpt import Completions, Request, finish_reason
from minigpt.metrics import decode_phase, gpu_busy

PENDING = -1  # a token whose value the GPU has not told us yet

# %% [markdown]
# ## Streams and events that are no-ops on the CPU

# %%
class NoEvent:
    def record(self, stream=None): ...
    def synchronize(self): ...


def new_event(cuda: bool, timing: bool = False):
    return torch.cuda.Event(enable_timing=timing) if cuda else NoEvent()


def on(stream):
    """`with on(stream):` queues the work that follows on `stream` (nothing to do on the CPU)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def wait(stream, event):
    if stream is not None:
        stream.wait_event(event)


# %% [markdown]
# ## A slot: one step's inputs and outputs, on both sides
#
# Every integer a step needs (token ids, positions, cache indices, carry-over rows, logits rows, context
# lengths, block tables) is packed into one int64 buffer, so that one copy moves it all. Two slots
# alternate: step N uses slot N % 2. Three events guard a slot:
#
# * `copied`: the host-to-device copy is done, so the pinned host buffer may be rewritten (hazard 5);
# * `consumed`: the forward that read the device inputs is done, so the next copy may overwrite them (1);
# * `fetched`: the sampled tokens reached the host, so the device output may be overwritten (1, for
#   outputs) and the pinned output read.

# %%
class Slot:
    def __init__(self, capacity: int, max_rows: int, device, cuda: bool):
        pin = dict(pin_memory=True) if cuda else {}
        self.host = torch.zeros(capacity, dtype=torch.long, **pin)
        self.device = torch.zeros(capacity, dtype=torch.long, device=device)
        self.out_device = torch.zeros(max_rows, dtype=torch.long, device=device)  # sampled tokens
        self.out_host = torch.zeros(max_rows, dtype=torch.long, **pin)
        self.copied, self.consumed, self.fetched = (new_event(cuda) for _ in range(3))


@dataclass
class AsyncBatch(Batch):  # NEW: chapter 3's batch, plus what an overlapped step needs
    carry_src: torch.Tensor = None  # (T,) row of the previous step's output holding this token, or -1
    slot: Slot = None
    graph_size: int = 0  # > 0: a decode step padded to this many rows, replayed as a CUDA graph
    sampled_at: list[int] = field(default_factory=list)  # where each sampled token goes in its sequence
    prefill: list[tuple[int, int]] = field(default_factory=list)  # (tokens, context) of each prompt chunk
    tables: torch.Tensor = None  # (chunks, width) every chunk's block table; decode_rows is the first rows
    lens: torch.Tensor = None  # (chunks,) every chunk's context length
    n: torch.Tensor = None  # (chunks,) every chunk's number of tokens
    prefill_which: torch.Tensor = None  # (P,) which chunks are prompt chunks
    events: tuple = ()  # CUDA events (start, end) around its GPU work
    host_times: dict = field(default_factory=dict)  # when the CPU did what, for the timeline


# %% [markdown]
# ## The engine
#
# `generate(..., use_async=False)` runs this very code with one difference: it waits for each step's
# tokens right after launching it. That is chapter 4's loop with streams, slots and graphs too, so that
# sync against async measures the overlap and nothing else.

# %%
class AsyncEngine(PagedEngine):
    name = "ch05 async"

    def __init__(self, model, use_async: bool = True, cuda_graphs: bool = True, max_graph_batch: int = 256,
                 jitter: float = 0.0, **options):
        super().__init__(model, **options)
        if self.reference:
            raise ValueError("chapter 5 runs the batched attention only; use chapter 4 for attention='reference'")
        self.use_async, self.jitter = use_async, jitter  # jitter: random delays that shake races out (tests)
        self.cuda = self.device.type == "cuda"
        self.use_graphs = cuda_graphs and self.cuda
        self.graph_sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= max_graph_batch]
        self.rng = random.Random(0)

    # ----- one-time setup: scratch block, tables, streams, slots, graphs ---------------------------------
    def pool_blocks(self, requests) -> int:
        return super().pool_blocks(requests) + 1  # one more block: scratch space, below

    def make_cache(self, requests):
        cache = super().make_cache(requests)
        cache.free_blocks.remove(0)  # block 0 is scratch: padded graph rows write there
        cache.num_blocks -= 1  # the blocks requests can have
        self.width = cache.host_tables.shape[1]  # the longest block table any request can have
        return cache

    def make_attention(self):
        """Chapter 4's attention object; and the streams, the two slots and the decode graphs it runs in."""
        attention = super().make_attention()
        self.compute, self.copy_in, self.copy_out = ((torch.cuda.Stream(self.device) if self.cuda else None)
                                                     for _ in range(3))
        rows = max(self.max_batch_tokens, self.max_seqs, max(self.graph_sizes))
        self.capacity = (rows + 1) * (8 + self.width)  # eight fields of at most `rows` each, then the tables
        self.slots = [Slot(self.capacity, rows, self.device, self.cuda) for _ in range(2)]
        self.in_flight: list[AsyncBatch] = []  # launched, tokens not yet handed out
        self.done: list[tuple[dict, tuple]] = []  # resolved steps' (host times, CUDA events), for the timeline
        self.ref = None  # the GPU clock's zero, recorded at the first step
        self.steps = 0
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        t = time.perf_counter()
        if self.use_graphs:
            self.attention = attention  # capture runs the model, which calls it
            self.capture_graphs()
        self.setup_s = time.perf_counter() - t
        # Python's garbage collector, when it runs a full collection, walks every live object: after compiling
        # and capturing, hundreds of thousands. On the H200 two pauses of 0.3 s each stalled W1's GPU (decode phase 91%
        # busy, figures/h200_w1_before_gc_freeze.json); with everything alive now frozen out of the collector's
        # sight (it lives until the run ends anyway), none did (99%).
        gc.collect()
        gc.freeze()
        return attention

    # ----- prepare: lists -> one slot's pinned buffer -> device (copy stream) ----------------------------
    def prepare(self, chunks: list[Chunk]) -> AsyncBatch:
        slot = self.slots[self.steps % 2]  # step N uses slot N % 2
        self.steps += 1
        which = [j for j, ch in enumerate(chunks) if not ch.seq.decoding]  # prompt chunks (they come last)
        # Greedy decode steps replay a graph (sampling with a seeded generator per request runs eagerly).
        decode_only = not which and all(ch.seq.request.temperature == 0 for ch in chunks)
        size = next((b for b in self.graph_sizes if b >= len(chunks)), 0) if decode_only else 0
        ids, positions, index, carry, logits_at, lens, ns, sampled, sampled_at = [], [], [], [], [], [], [], [], []
        for ch in chunks:
            seq = ch.seq
            tokens = seq.tokens[ch.start:ch.start + ch.n]  # hazard 2: a PENDING one the GPU fills in from the last step
            ids += [0 if t == PENDING else t for t in tokens]
            carry += [seq.carry_row if t == PENDING else -1 for t in tokens]
            positions += range(ch.start, ch.start + ch.n)
            index += self.cache.cache_index(seq, range(ch.start, ch.start + ch.n))
            lens.append(ch.start + ch.n)
            ns.append(ch.n)
            if ch.samples:
                logits_at.append(len(ids) - 1)
                sampled.append(seq)
                sampled_at.append(len(seq.tokens))
        rows = [ch.seq.index for ch in chunks]
        if size:  # pad to the graph's size with rows that write to the scratch block and are never read
            pad = size - len(chunks)
            ids, positions, index, carry = ids + [0] * pad, positions + [0] * pad, index + [0] * pad, carry + [-1] * pad
            logits_at, lens, ns = list(range(size)), lens + [1] * pad, ns + [1] * pad
        fields = [ids, positions, index, carry, logits_at, lens, ns, which]
        slot.copied.synchronize()  # hazard 5: the previous copy out of this pinned buffer is done
        offsets = self.pack(slot, fields, rows, size or len(chunks))
        # Hazard 1: the step that last read this slot's device buffer must be done before we overwrite it.
        wait(self.copy_in, slot.consumed)
        with on(self.copy_in):
            n = sum(offsets["tables"])  # the tables come last
            slot.device[:n].copy_(slot.host[:n], non_blocking=True)
            slot.copied.record()
        return self.batch_views(slot, chunks, offsets, sampled, sampled_at, size, which)

    def pack(self, slot: Slot, fields, rows: list[int], num_rows: int) -> dict:
        """Write the fields, then the block tables of `rows` (requests), into the slot's pinned buffer;
        return each field's (offset, length)."""
        offsets, flat = {}, []
        for name, values in zip(("ids", "positions", "index", "carry", "logits_at", "lens", "n", "which"), fields):
            offsets[name] = (len(flat), len(values))
            flat += values + [0] * (len(values) % 2)  # 16-byte aligned fields: Triton compiles one variant, not two
        at = len(flat)
        slot.host[:at] = torch.tensor(flat, dtype=torch.long)
        tables = slot.host[at:at + num_rows * self.width].view(num_rows, self.width)
        tables[:len(rows)] = self.cache.host_tables[rows]  # one gather (chapter 4's host tables), no Python loop
        tables[len(rows):] = 0
        offsets["tables"] = (at, num_rows * self.width)
        assert at + num_rows * self.width <= self.capacity
        return offsets

    def batch_views(self, slot, chunks, offsets, sampled, sampled_at, size, which) -> AsyncBatch:
        """The step's Batch as views into the slot's device buffer: fixed addresses a graph can read."""
        view = {k: slot.device[o:o + n] for k, (o, n) in offsets.items()}
        tables = view["tables"].view(-1, self.width)
        num_decode = size or len(chunks) - len(which)
        prompt = [chunks[j] for j in which]
        return AsyncBatch(chunks, view["ids"], view["positions"], view["index"], view["logits_at"], num_decode,
                          view["lens"][:num_decode], tables[:num_decode], 0, None, None, sampled,
                          carry_src=view["carry"], slot=slot, graph_size=size, sampled_at=sampled_at,
                          prefill=[(ch.n, ch.start + ch.n) for ch in prompt], tables=tables, lens=view["lens"],
                          n=view["n"], prefill_which=view["which"])

    # ----- launch: the GPU's part of a step, queued without waiting --------------------------------------
    @torch.inference_mode()
    def launch(self, batch: AsyncBatch):
        slot = batch.slot
        previous = self.slots[1 - self.slots.index(slot)]  # step N-1's slot: its outputs feed the placeholders
        start, end = new_event(self.cuda, timing=True), new_event(self.cuda, timing=True)
        with on(self.compute):
            wait(self.compute, slot.copied)  # the inputs are on the device
            wait(self.compute, slot.fetched)  # this slot's previous tokens are copied out: its output is free
            if self.jitter and self.cuda:  # tests: a random GPU-side delay
                torch.cuda._sleep(int(self.rng.random() * self.jitter * 1e9))
            start.record()
            if batch.graph_size and self.use_graphs:
                self.graphs[(batch.graph_size, self.slots.index(slot))].replay()  # hazard 6: inputs in place
            else:  # eager; on the CPU, padded decode steps too, so the tests run the graphs' padded layout
                batch.prefill_rows, batch.prefill_mask, batch.prefill_varlen = self.prefill_layout(batch)
                self.forward_and_sample(batch, slot, previous, greedy=batch.graph_size > 0)
            end.record()
            slot.consumed.record()
        wait(self.copy_out, end)
        with on(self.copy_out):
            n = len(batch.sampled)
            slot.out_host[:n].copy_(slot.out_device[:n], non_blocking=True)
            slot.fetched.record()
        batch.events = (start, end)

    def prefill_layout(self, batch: AsyncBatch):
        """Chapter 3's packed prompt context (cache rows; mask or varlen offsets), built on the GPU from the
        tables and lengths already copied over: no list crosses to the device outside the slot's one copy."""
        if not batch.prefill:
            return None, None, None
        num_chunks, tokens, context = len(batch.prefill), sum(n for n, _ in batch.prefill), sum(c for _, c in batch.prefill)
        which, bs = batch.prefill_which, self.block_size
        chunk = torch.arange(num_chunks, device=self.device)
        ctx_len = batch.lens[which]
        ctx_chunk = torch.repeat_interleave(chunk, ctx_len, output_size=context)  # (S,) sizes known: no sync
        ctx_pos = torch.arange(context, device=self.device) - (ctx_len.cumsum(0) - ctx_len)[ctx_chunk]
        rows = batch.tables[which][ctx_chunk, ctx_pos // bs] * bs + ctx_pos % bs
        if self.varlen:
            cu = lambda lens: F.pad(lens.cumsum(0), (1, 0)).int()  # noqa: E731
            return rows, None, (cu(batch.n[which]), cu(ctx_len), max(n for n, _ in batch.prefill),
                                max(c for _, c in batch.prefill))
        q_chunk = torch.repeat_interleave(chunk, batch.n[which], output_size=tokens)
        return rows, prefill_mask(q_chunk, batch.positions[batch.num_decode:], ctx_chunk, ctx_pos), None

    def forward_and_sample(self, batch: AsyncBatch, slot: Slot, previous: Slot, greedy: bool):
        # Hazard 2: placeholders take the token the previous step sampled into its output row.
        ids = torch.where(batch.carry_src >= 0, previous.out_device[batch.carry_src.clamp(min=0)], batch.ids)
        self.attention.batch = batch
        logits = self.model(ids, batch.positions, self.attention, logits_at=batch.logits_at)
        if greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = self.sampler(logits, [s.index for s in batch.sampled])
        slot.out_device[: len(tokens)] = tokens

    def capture_graphs(self):
        """One graph per (padded batch size, slot), all in one memory pool; largest first, so the
        smaller ones fit in the memory it already holds."""
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.graph_sizes):
            for i, slot in enumerate(self.slots):
                fields = [[0] * size, [0] * size, [0] * size, [-1] * size, list(range(size)), [1] * size, [1] * size, []]
                offsets = self.pack(slot, fields, [], size)  # every row: the scratch block
                slot.device[: sum(offsets["tables"])].copy_(slot.host[: sum(offsets["tables"])])
                batch = self.batch_views(slot, [], offsets, [], [], size, [])
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

    # ----- commit and resolve: the CPU's bookkeeping, before and after the tokens are known --------------
    def commit(self, batch: AsyncBatch):
        """Everything that needs no token value: run now, while the GPU computes."""
        for ch in batch.chunks:
            ch.seq.num_cached += ch.n
        for row, seq in enumerate(batch.sampled):
            seq.tokens.append(PENDING)  # hazard 2: its value is in this step's output row `row`
            seq.carry_row = row
            if len(seq.tokens) >= seq.max_len:  # the length limit needs no value: stop scheduling it now
                self.retire(seq)
        reserved, used = self.cache.memory(self.scheduler.running)
        self.trace.append({"t": self.clock.now(), "tokens": sum(ch.n for ch in batch.chunks),  # not padding
                           "decode": len(batch.chunks) - len(batch.prefill),
                           "running": len(self.scheduler.running), "kv_reserved": reserved, "kv_used": used,
                           "graph": batch.graph_size})

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
        # Keep what the timeline needs, not the batch: its ~200 objects a step (a chunk per request...) would
        # pile up for Python's garbage collector to walk, 200,000 by the end of W1.
        self.done.append(({**batch.host_times, "graph": batch.graph_size, "decode": not batch.prefill,
                           "tokens": sum(ch.n for ch in batch.chunks)}, batch.events))

    def retire(self, seq: Sequence):
        """Stop scheduling `seq` and free its blocks, exactly once (hazard 3). Reuse of the blocks is safe
        while a step still in flight writes them: every kernel on the pool runs on one stream (hazard 4)."""
        if getattr(seq, "retired", False):
            return
        seq.retired = True
        if seq in self.scheduler.running:
            self.scheduler.finish(seq)
        elif seq in self.scheduler.waiting:  # preempted, its blocks already freed
            self.scheduler.waiting.remove(seq)

    # ----- the step -------------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.in_flight)

    def step(self):
        if self.ref is None:  # the GPU clock's zero, matched to the host clock's
            self.ref, self.ref_host = new_event(self.cuda, timing=True), self.clock.now()
            with on(self.compute):
                self.ref.record()
        t0 = self.clock.now()
        if self.jitter:  # tests: a random CPU-side delay
            time.sleep(self.rng.random() * self.jitter)
        chunks = self.scheduler.schedule()
        if chunks:
            batch = self.prepare(chunks)
            t1 = self.clock.now()
            self.launch(batch)
            self.commit(batch)
            batch.host_times = {"start": t0, "prepared": t1, "launched": self.clock.now()}
            self.in_flight.append(batch)
        # Synchronous: wait for this step's tokens now. Asynchronous: for the previous step's, while the
        # GPU works on this one.
        while len(self.in_flight) > (1 if self.use_async and chunks else 0):
            self.resolve(self.in_flight.pop(0))

    def finish_run(self):
        while self.in_flight:
            self.resolve(self.in_flight.pop(0))
        gc.unfreeze()

    def summary(self) -> dict:
        stats = {**super().summary(), "use_async": self.use_async, "cuda_graphs": self.use_graphs,
                 "setup_s": self.setup_s}
        if not (self.cuda and self.done):
            return stats
        torch.cuda.synchronize()
        timeline = [{**times, "gpu_start": self.ref.elapsed_time(start) / 1e3 + self.ref_host,
                     "gpu_end": self.ref.elapsed_time(end) / 1e3 + self.ref_host} for times, (start, end) in self.done]
        stats.update(gpu_busy=gpu_busy(timeline), decode_gpu_busy=decode_phase(timeline)[1], timeline=timeline)
        return stats


def generate(model, requests: list[Request], **options) -> Completions:
    """Chapter 5's engine. Options: use_async (bool), cuda_graphs (bool), max_graph_batch, jitter, and
    chapter 4's (block_size, num_blocks, max_batch_tokens, max_seqs, ...)."""
    return AsyncEngine(model, **options).generate(requests)


# %% [markdown]
# ## The check: async equals sync equals chapter 1
#
# Overlap must change when tokens are computed, never which. On the CPU the loop runs in order but
# every guard's bookkeeping (placeholders, dropped extra tokens, retiring once, padded graph rows) runs.

# %%
def check_against_chapter1(model, requests: list[Request], **options) -> int:
    from chapters import ch01_naive
    from minigpt.reference import assert_same_tokens

    for use_async in (False, True):
        n = assert_same_tokens(generate, ch01_naive.generate, model, requests, use_async=use_async, **options)
    return n


if __name__ == "__main__" and "get_ipython" in globals():
    from minigpt import from_config, get_workload

    demo_model = from_config("tiny")
    demo = get_workload("W1-small").requests(demo_model.config.vocab_size, 8)
    print(f"{check_against_chapter1(demo_model, demo, num_blocks=12, max_batch_tokens=64)} tokens equal chapter 1's")

# %% [markdown]
# ## The measurement
#
# `python -m chapters.bench --device cuda --workload W2 --chapters ch05_async@use_async=false,ch05_async`
# runs the same engine synchronously and asynchronously on the same requests, with the fraction of the
# wall time the GPU was busy (CUDA events recorded around each step's GPU work). On the H200 (W2: the 8B
# shape, 32 requests of 8192 new tokens) the synchronous loop left the GPU idle 1.1 ms between 10.5-ms
# decode steps (89% busy); asynchronously the median gap was 1 us (99.5% busy) and the run took 10.5% less
# time, 86.1 s against 96.3 s. On W1, whose decode steps are shorter (about 5.5 ms), 6.12 s against 8.06 s,
# the decode phase 99.7% busy against 74.6% (the synchronous time moves with the host's CPU: 7.34 s in the
# run before, with the same decode kernels). `figures/async_timeline_w1.png` shows twenty steps of
# W1, sync above async; NOTES.md has what still limits both.
#
# ## Exercises
#
# 1. Run with `--no-cuda-graphs`. How much of the decode step was kernel-launch time?
# 2. Remove the `slot.copied.synchronize()` in `prepare` and run the GPU stress test in
#    `tests/test_async.py`. What breaks, and how often?
# 3. With one slot instead of two, where would the CPU have to wait? Predict the busy fraction, then measure.

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
