"""Where a decode step of chapter 4 goes on a GPU, step by step: schedule, prepare, the forward's launches
(and the attention calls inside it), the wait for the tokens, update; the forward's GPU time (CUDA events).
Medians over the decode steps of 200 rows or more, W1's 256 requests with outputs capped at 96 tokens. Then
the CPU cost of single calls (no synchronisation inside the loop).

    PYTHONPATH=. python tools/ch04_step_split.py    # figures/h200_ch04_step_split.log is its output
"""
import dataclasses
import statistics
import time

import torch
from chapters import ch04_paged
from minigpt import from_config, get_workload

workload = get_workload("W1")
model = from_config(workload.preset, device="cuda", dtype=torch.bfloat16)
requests = [dataclasses.replace(r, max_new_tokens=min(r.max_new_tokens, 96))
            for r in workload.requests(model.config.vocab_size, 256)]
t = time.perf_counter(); model.compile_layers("inductor"); print(f"compile {time.perf_counter()-t:.1f} s", flush=True)
rec = []

class Timed:
    def __init__(self, attn): self.attn, self.t, self.kv_cache, self.new_rows = attn, 0.0, attn.kv_cache, attn.new_rows
    def __call__(self, layer, q, k_cache, v_cache):
        t = time.perf_counter(); out = self.attn(layer, q, k_cache, v_cache); self.t += time.perf_counter() - t; return out

class Probe(ch04_paged.PagedEngine):
    def step(self):
        p = time.perf_counter
        t0 = p(); chunks = self.scheduler.schedule()
        t1 = p(); batch = self.prepare(chunks)
        t2 = p(); e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        real = self.attention; real.batch = batch; self.attention = timed = Timed(real)
        logits = self.forward(batch)
        self.attention = real
        e1.record()
        t3 = p(); tokens = self.sampler(logits, [s.index for s in batch.sampled]).tolist()
        t4 = p(); self.update(batch, tokens)
        t5 = p()
        rec.append((len(chunks), batch.num_decode, len(batch.ids), t1-t0, t2-t1, t3-t2, timed.t, t4-t3, t5-t4, e0, e1))

def run(tag, **opts):
    rec.clear()
    torch.cuda.synchronize(); t = time.perf_counter()
    Probe(model, max_batch_tokens=8192, **opts).generate(requests)
    torch.cuda.synchronize(); wall = time.perf_counter() - t
    dec = [r for r in rec if r[1] == r[2] and r[1] >= 200]
    med = lambda i: 1e3 * statistics.median(r[i] for r in dec)
    gpu = statistics.median(r[9].elapsed_time(r[10]) for r in dec)
    print(f"{tag}: {wall:.2f} s, {len(rec)} steps; decode steps with >=200 rows: {len(dec)}; median ms: schedule {med(3):.2f}"
          f" prepare {med(4):.2f} forward-launch {med(5):.2f} (attention {med(6):.2f}) wait {med(7):.2f} update {med(8):.2f};"
          f" forward GPU {gpu:.2f}", flush=True)

ch04_paged.PagedEngine(model)  # engine construction compiles (cached)
Probe(model, max_batch_tokens=8192).generate(requests[:8])
import collections, warnings  # noqa: E401
torch.cuda.set_sync_debug_mode("warn")  # where does the CPU wait for the GPU? (one step's worth is expected)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    Probe(model, max_batch_tokens=8192).generate(requests[:16])
torch.cuda.set_sync_debug_mode(0)
print("synchronising calls, 16 requests:", collections.Counter(f"{w.filename}:{w.lineno}" for w in caught).most_common(6))
run("ch04"); run("ch04 again")
model.compile_layers(None)
run("ch04 eager", compile=False)

# Micro-timings, CPU time per call (no sync inside the loop), B=256 decoding rows of ~1000 tokens
from minigpt.model import NoAttention, attention_for_this_step, attend_opaquely, opaque_attention
def cpu_us(fn, n=200):
    for _ in range(10): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    dt = (time.perf_counter() - t) / n * 1e6; torch.cuda.synchronize(); return dt
c = model.config; B = 256
q = torch.randn(B, c.num_attention_heads, c.head_dim, device="cuda", dtype=torch.bfloat16)
kv = torch.randn(B, c.num_key_value_heads, c.head_dim, device="cuda", dtype=torch.bfloat16)
pool = torch.zeros(4096 * 16, c.num_key_value_heads, c.head_dim, device="cuda", dtype=torch.bfloat16)
tables = torch.randint(0, 4096, (B, 64), device="cuda"); lens = torch.full((B,), 1000, device="cuda")
print(f"paged_decode_triton {cpu_us(lambda: ch04_paged.paged_decode_triton(q, pool, pool, tables, lens, 16)):.1f} us")
idx = torch.arange(B, device="cuda")
print(f"index_copy_ {cpu_us(lambda: pool.index_copy_(0, idx, kv)):.1f} us")
with torch.inference_mode(), attention_for_this_step(lambda layer, q, k_cache, v_cache: torch.empty_like(q)):
    print(f"opaque op, attention returning empty_like(q) {cpu_us(lambda: opaque_attention(q, pool, pool, 0)):.1f} us")
x = torch.randn(B, c.hidden_size, device="cuda", dtype=torch.bfloat16)
cos = torch.randn(B, 1, c.head_dim, device="cuda", dtype=torch.bfloat16)
model.compile_layers("inductor")
none = NoAttention(c, B, "cuda", torch.bfloat16, rows=4096 * 16)
with torch.inference_mode(), attention_for_this_step(none):
    x, cos = x.clone(), cos.clone()
    print(f"compiled layers (K/V write included), attention returning zeros_like(q) "
          f"{cpu_us(lambda: model.compiled_layers(x, cos, cos, none.kv_cache, none.new_rows, attend_opaquely), 50):.1f} us")
    print(f"lm_head+norm {cpu_us(lambda: model.lm_head(model.norm(x)).float(), 50):.1f} us")
