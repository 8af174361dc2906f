"""Writing K/V rows into each layer's cache inside a torch.compile'd function.

    python tools/kv_write_probe.py           # on CUDA (bf16): which way of writing stays in place? Four layers of
                                             # 0.5-GB caches, 256 rows a call, CUDA-event time a call
                                             # (figures/h200_kv_write_probe.log)
    python tools/kv_write_probe.py aliasing  # CPU time a call, 28 layers: 56 views of one tensor, 56 tensors of their
                                             # own, the write inside the opaque op (the code before); inductor on the
                                             # 2-core CPU: views 748 us, separate 206 us, write in op 304 us
"""
import sys
import time

import torch

# A stand-in for the model's attention op: reads nothing, allocates its output
torch.library.define("t::attn", "(Tensor q, Tensor kc, Tensor vc, int layer) -> Tensor")
@torch.library.impl("t::attn", "CompositeExplicitAutograd")
def _attn(q, kc, vc, layer):
    return torch.empty_like(q)
@torch.library.register_fake("t::attn")
def _(q, kc, vc, layer):
    return torch.empty_like(q)


def write_ways():
    L, N, B, H, D = 4, 16384, 16, 8, 128  # 0.5 GB a tensor in bf16
    dev, dt = "cuda", torch.bfloat16
    def a_flatten_index_copy(x, kv, rows):
        for kc, vc in kv:
            k, v = torch.sin(x), torch.cos(x)
            kc.flatten(0, -3).index_copy_(0, rows, k); vc.flatten(0, -3).index_copy_(0, rows, v)
            x = x + torch.ops.t.attn(x, kc, vc, 0)
        return x
    def b_view_index_copy(x, kv, rows):
        for kc, vc in kv:
            k, v = torch.sin(x), torch.cos(x)
            kc.view(-1, H, D).index_copy_(0, rows, k); vc.view(-1, H, D).index_copy_(0, rows, v)
            x = x + torch.ops.t.attn(x, kc, vc, 0)
        return x
    def c_setitem(x, kv, rows):
        for kc, vc in kv:
            k, v = torch.sin(x), torch.cos(x)
            kc.flatten(0, -3)[rows] = k; vc.flatten(0, -3)[rows] = v
            x = x + torch.ops.t.attn(x, kc, vc, 0)
        return x
    def d_flat_input(x, kv, rows):
        for kc, vc in kv:
            k, v = torch.sin(x), torch.cos(x)
            kc.index_copy_(0, rows, k); vc.index_copy_(0, rows, v)
            x = x + torch.ops.t.attn(x, kc, vc, 0)
        return x
    for fn in (a_flatten_index_copy, b_view_index_copy, c_setitem, d_flat_input):
        torch._dynamo.reset()
        flat = fn is d_flat_input
        shape = (N * B, H, D) if flat else (N, B, H, D)
        kv = [(torch.zeros(shape, device=dev, dtype=dt), torch.zeros(shape, device=dev, dtype=dt)) for _ in range(L)]
        c = torch.compile(fn, dynamic=True)
        with torch.inference_mode():
            for T in (1, 2):  # like compile_layers
                c(torch.randn(T, H, D, device=dev, dtype=dt), kv, torch.arange(T, device=dev))
            x = torch.randn(256, H, D, device=dev, dtype=dt); rows = torch.randperm(N * B, device=dev)[:256]
            c(x, kv, rows)
            ok = torch.equal(kv[0][0].view(-1, H, D)[rows], torch.sin(x))
            for _ in range(3): c(x, kv, rows)
            torch.cuda.synchronize(); e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
            e0.record()
            for _ in range(20): c(x, kv, rows)
            e1.record(); torch.cuda.synchronize()
        print(f"{fn.__name__}: {e0.elapsed_time(e1) / 20:.3f} ms a call ({L} layers, 2 x {kv[0][0].numel() * 2 / 1e9:.2f} GB caches), first layer written right: {ok}", flush=True)


def aliasing():
    L, N, B, H, D = 28, 64, 16, 2, 8
    def run(x, kv, index):
        for l in range(L):
            k = torch.sin(x); v = torch.cos(x)
            kc, vc = kv[l]
            kc.flatten(0, -3).index_copy_(0, index, k)
            vc.flatten(0, -3).index_copy_(0, index, v)
            x = x + torch.ops.t.attn(x, kc, vc, l)
        return x
    def bench(kv, tag):
        torch._dynamo.reset()
        c = torch.compile(run, dynamic=True, backend="inductor")
        x = torch.randn(3, H, D); idx = torch.tensor([5, 9, 11])
        with torch.inference_mode():
            for _ in range(3): c(x, kv, idx)
            t = time.perf_counter()
            for _ in range(200): c(x, kv, idx)
            print(tag, (time.perf_counter() - t) / 200 * 1e6, "us")
    kb, vb = torch.zeros(L, N, B, H, D), torch.zeros(L, N, B, H, D)
    bench(list(zip(kb, vb)), "views of one base")
    bench([(torch.zeros(N, B, H, D), torch.zeros(N, B, H, D)) for _ in range(L)], "separate")
    torch.library.define("t::attn2", "(Tensor q, Tensor k, Tensor v, int layer) -> Tensor")
    KV = [(torch.zeros(N, B, H, D), torch.zeros(N, B, H, D)) for _ in range(L)]
    IDX = torch.tensor([5, 9, 11])
    @torch.library.impl("t::attn2", "CompositeExplicitAutograd")
    def _attn2(q, k, v, layer):
        kc, vc = KV[layer]
        kc.flatten(0, -3).index_copy_(0, IDX, k)
        vc.flatten(0, -3).index_copy_(0, IDX, v)
        return torch.empty_like(q)
    @torch.library.register_fake("t::attn2")
    def _(q, k, v, layer):
        return torch.empty_like(q)
    def run2(x):
        for l in range(L):
            k = torch.sin(x); v = torch.cos(x)
            x = x + torch.ops.t.attn2(x, k, v, l)
        return x
    torch._dynamo.reset()
    c = torch.compile(run2, dynamic=True, backend="inductor")
    x = torch.randn(3, H, D)
    with torch.inference_mode():
        for _ in range(3): c(x)
        t = time.perf_counter()
        for _ in range(200): c(x)
        print("write inside the op (the code before)", (time.perf_counter() - t) / 200 * 1e6, "us")


if __name__ == "__main__":
    aliasing() if sys.argv[1:] == ["aliasing"] else write_ways()
