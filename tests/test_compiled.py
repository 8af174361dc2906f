"""Chapter 6: the model compiled around the attention op gives the same tokens, compiles once, falls back."""
import pytest
import torch

import minigpt
from chapters import ch01_naive, ch06_compiled
from tests.conftest import mixed_requests


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config("tiny")


def test_compiled_layers_give_the_same_tokens_and_never_recompile_mid_run(model):
    """All layers trace as one function around the opaque attention op, for every batch size (the
    tracing and the op's fake output are checked here; the H200 runs inductor's kernels, GPU tests)."""
    from torch._dynamo.utils import counters

    requests = mixed_requests(model.config.vocab_size)
    expected = [c.tokens for c in ch01_naive.generate(model, requests)]
    torch._dynamo.reset()
    counters.clear()
    for use_async in (False, True):
        engine = ch06_compiled.CompiledEngine(model, compile="aot_eager", use_async=use_async, num_blocks=30,
                                              max_batch_tokens=64)
        assert isinstance(engine.model, ch06_compiled.CompiledModel)
        assert [c.tokens for c in engine.generate(requests)] == expected
    assert counters["stats"]["unique_graphs"] == 2, "one code for 1 token, one for any number"
    arriving = minigpt.get_workload("W1-small").requests(model.config.vocab_size, 8, rate=200.0)  # under load:
    ch06_compiled.generate(model, arriving, compile="aot_eager")  # steps of shapes the runs above never met
    assert counters["stats"]["unique_graphs"] == 2, "requests arriving over time compile nothing new"


def test_a_cpp_wrapper_that_does_not_build_falls_back_to_the_python_wrapper(model, monkeypatch):
    """Without a C++ compiler or CUDA's headers inductor's C++ wrapper does not build: the engine says so and
    compiles with the Python wrapper. An error the Python wrapper meets too is raised, not swallowed."""
    calls = []

    def compile_layers(backend, cpp_wrapper=False):
        calls.append((backend, cpp_wrapper))
        if cpp_wrapper:
            raise RuntimeError("no C++ compiler")

    engine = ch06_compiled.CompiledEngine(model)  # on the CPU: nothing compiled
    assert engine.backend is None and engine.model is model
    monkeypatch.setattr(ch06_compiled, "compile_layers", lambda m, backend, cpp_wrapper=False: compile_layers(
        backend, cpp_wrapper))
    engine.backend, engine.cpp_wrapper = "inductor", True  # as on a GPU
    engine.compile_layers(model)
    assert calls == [("inductor", True), ("inductor", False)] and not engine.cpp_wrapper

    def broken(m, backend, cpp_wrapper=False):
        raise ValueError("a bug in the model")

    monkeypatch.setattr(ch06_compiled, "compile_layers", broken)
    engine.cpp_wrapper = True
    with pytest.raises(ValueError, match="a bug in the model"):
        engine.compile_layers(model)


def test_compile_options_are_checked(model):
    with pytest.raises(ValueError, match="ch06_compiled: option compile"):
        ch06_compiled.CompiledEngine(model, compile="fast")
    with pytest.raises(ValueError, match="cpp_wrapper is an option of the inductor backend"):
        ch06_compiled.compile_layers(model, "aot_eager", cpp_wrapper=True)


def test_compiled_model_writes_the_cache_calls_the_engines_attention_and_lets_its_errors_through():
    """The compiled layers write each layer's keys and values into the engine's cache, then reach its
    attention object through the opaque op, once a layer, after the write (attention reads what was
    written); an error raised there surfaces unchanged, leaving no attention object set for the next step."""
    model = minigpt.from_config("tiny")
    ids, positions = torch.tensor([1, 2, 3]), torch.arange(3)

    class Recording(ch01_naive.ContiguousKVCache):
        def __init__(self):
            super().__init__(model.config, 5, model.device, model.dtype)
            self.cache_rows, self.calls = positions, []

        def __call__(self, layer, q, k_cache, v_cache):
            self.calls.append(layer)
            return super().__call__(layer, q, k_cache, v_cache)

    class Broken(Recording):
        def __call__(self, layer, q, k_cache, v_cache):
            raise ValueError("the cache is full")

    with torch.inference_mode():
        eager_cache = Recording()
        eager = model(ids, positions, eager_cache)
    torch._dynamo.reset()
    compiled = ch06_compiled.CompiledModel(model, ch06_compiled.compile_layers(model, "aot_eager"))
    with torch.inference_mode():
        cache = Recording()
        torch.testing.assert_close(compiled(ids, positions, cache), eager)
        assert cache.calls == list(range(model.config.num_hidden_layers))
        for (k, v), (k_eager, v_eager) in zip(cache.kv_cache, eager_cache.kv_cache):
            torch.testing.assert_close(k, k_eager)
            torch.testing.assert_close(v, v_eager)
            assert k[:3].abs().sum() > 0 and k[3:].abs().sum() == 0  # rows 0-2 written, no others
        with pytest.raises(ValueError, match="the cache is full"):
            compiled(ids, positions, Broken())
    assert ch06_compiled._step_attention == []
