"""No hang, no silent wrong answer: every request field checked (a bad request fails alone, naming itself and
the field), sampling that no finite logits can crash, checkpoints refused when minigpt cannot run them
exactly, broken files named, hub ids fetched or refused in one line."""
import copy
import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import minigpt
from chapters import ch01_naive
from minigpt import Request, Sampler
from minigpt.engine import FIELDS
from minigpt.loading import config_from_hf
from minigpt.reference import hf_greedy
from tests.conftest import tiny_hf_model

CHAPTERS = ["ch01_naive", "ch02_padded", "ch03_continuous", "ch04_paged", "ch05_async"]
NAN, INF = float("nan"), float("inf")

# (a request that cannot run, what its message must say)
BAD = [
    (Request(None, 3), "prompt_ids must be a list of token ids, got NoneType"),
    (Request("hello", 3), "prompt_ids must be a list of token ids, got str"),
    (Request(torch.tensor([[1, 2]]), 3), r"prompt_ids must be one sequence of token ids \(1-D\), got shape \(1, 2\)"),
    (Request([1, True], 3), r"prompt_ids\[1\] is True, not a token id"),
    (Request([1, 2.0], 3), r"prompt_ids\[1\] is 2.0, not a token id"),
    (Request(np.array([1.5, 2.0]), 3), r"prompt_ids\[0\] is 1.5, not a token id"),
    (Request([1, 1024], 3), r"prompt_ids\[1\] is 1024, outside the vocabulary 0..1023"),
    (Request([1], True), "max_new_tokens must be a positive integer, got True"),
    (Request([1], 2.0), "max_new_tokens must be a positive integer, got 2.0"),
    (Request([1], 0), "max_new_tokens must be a positive integer, got 0"),
    (Request([1], 3, top_k=True), "top_k must be an integer >= 0"),
    (Request([1], 3, top_k=4.0), "top_k must be an integer >= 0"),
    (Request([1], 3, top_k=-1), "top_k must be an integer >= 0"),
    (Request([1], 3, seed=None), "seed must be an integer"),
    (Request([1], 3, seed=1.0), "seed must be an integer"),
    (Request([1], 3, seed=False), "seed must be an integer"),
    (Request([1], 3, seed=2**64), "seed must be an integer from -2\\*\\*63 to 2\\*\\*64 - 1"),
    (Request([1], 3, temperature="0.7"), "temperature must be a finite number >= 0 \\(0 for greedy\\), got '0.7'"),
    (Request([1], 3, temperature=None), "temperature must be a finite number"),
    (Request([1], 3, temperature=True), "temperature must be a finite number"),
    (Request([1], 3, temperature=NAN), "temperature must be a finite number >= 0 \\(0 for greedy\\), got nan"),
    (Request([1], 3, temperature=INF), "temperature must be a finite number"),
    (Request([1], 3, temperature=10**400), "temperature must be a finite number"),
    (Request([1], 3, temperature=-0.5), "temperature must be a finite number >= 0"),
    (Request([1], 3, temperature=1.0, top_p=NAN), r"top_p must be a number in \(0, 1\]"),
    (Request([1], 3, temperature=1.0, top_p=0.0), r"top_p must be a number in \(0, 1\]"),
    (Request([1], 3, temperature=1.0, top_p=1.5), r"top_p must be a number in \(0, 1\]"),
    (Request([1], 3, arrival_time=NAN), "arrival_time must be a number of seconds after the run starts, 0 to 86400"),
    (Request([1], 3, arrival_time=INF), "arrival_time must be a number of seconds"),
    (Request([1], 3, arrival_time=-1.0), "arrival_time must be a number of seconds"),
    (Request([1], 3, arrival_time=1.7e9), "arrival_time must be a number of seconds"),  # a time.time()
    (Request([1], 3, arrival_time="1"), "arrival_time must be a number of seconds"),
    (Request([1], 3, ignore_eos=1), "ignore_eos must be True or False, got 1"),
    (Request([1], 3, ignore_eos="no"), "ignore_eos must be True or False"),
]


@pytest.fixture(scope="module")
def model():
    return minigpt.from_config("tiny")


def good_requests():
    return [Request([1, 2], 3), Request([5, 6, 7], 4, temperature=0.8, top_p=0.9, seed=3, arrival_time=0.01)]


@pytest.fixture(scope="module")
def reference(model):
    return [c.tokens for c in ch01_naive.generate(model, good_requests())]


def test_fields_cover_every_field_of_a_request():
    assert set(FIELDS) == {f.name for f in dataclasses.fields(Request)} - {"prompt_ids"}


@pytest.mark.parametrize("bad,message", BAD, ids=[m[:40] for _, m in BAD])
def test_a_bad_request_fails_alone_naming_itself_the_field_and_the_fix(model, reference, bad, message):
    first, last = good_requests()
    out = ch01_naive.generate(model, [first, bad, last])
    assert out[1].finish_reason == "error" and out[1].tokens == [] and "\n" not in out[1].error
    assert re.search(f"^request 1: {message}", out[1].error), out[1].error
    assert [out[0].tokens, out[2].tokens] == reference
    assert all(c.finish_reason == "length" for c in (out[0], out[2]))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_engine_fails_each_bad_request_alone_and_runs_the_rest(model, reference, chapter):
    generate = importlib.import_module(f"chapters.{chapter}").generate
    first, last = good_requests()
    bad = [r for r, _ in BAD]
    out = generate(model, [first, *bad, last])
    assert [c.finish_reason for c in out[1:-1]] == ["error"] * len(bad)
    assert all(c.error.startswith(f"request {i}: ") for i, c in enumerate(out[1:-1], start=1))
    assert [out[0].tokens, out[-1].tokens] == reference


PLAIN = Request([3, 4, 5], 4, temperature=0.9, top_k=20, top_p=0.8, seed=2, ignore_eos=True)


@pytest.mark.parametrize("prompt_ids,numbers", [
    ((3, 4, 5), {}),
    ([np.int64(3), np.int32(4), np.uint8(5)], {}),
    (np.array([3, 4, 5]), {}),
    (torch.tensor([3, 4, 5]), {}),
    ([3, 4, 5], dict(max_new_tokens=np.int64(4), temperature=np.float32(0.9), top_k=np.int16(20),
                     top_p=np.float64(0.8), seed=np.uint64(2), ignore_eos=np.bool_(True))),
], ids=["tuple", "numpy ints", "numpy array", "tensor", "numpy fields"])
def test_numpy_and_tensor_values_run_as_the_plain_values_they_equal(model, prompt_ids, numbers):
    r = dataclasses.replace(PLAIN, prompt_ids=prompt_ids, **numbers)
    out = ch01_naive.generate(model, [r])[0]
    assert out.tokens == ch01_naive.generate(model, [dataclasses.replace(PLAIN)])[0].tokens
    assert type(r.prompt_ids) is list and all(type(t) is int for t in r.prompt_ids)  # made plain
    assert {name: type(getattr(r, name)) for name in FIELDS} == {name: plain for name, (_, _, plain) in
                                                                  FIELDS.items()}


def test_a_tiny_temperature_samples_the_greedy_tokens(model):
    greedy = ch01_naive.generate(model, [Request([3, 4, 5], 12)])[0].tokens
    for t in (1e-4, 1e-30, 1e-300):
        assert ch01_naive.generate(model, [Request([3, 4, 5], 12, temperature=t, seed=1)])[0].tokens == greedy


@pytest.mark.parametrize("temperature", [5e-324, 1e-50, 1e-30, 1.0, 1e300])
def test_no_finite_logits_crash_the_sampler(temperature):
    big = torch.finfo(torch.float32).max
    logits = torch.tensor([[1.0, big, -big, big * 0.99, -1.0]])
    for top_k, top_p in ((0, 1.0), (3, 0.5)):
        r = Request([1], 1, temperature=temperature, top_k=top_k, top_p=top_p)
        token = int(Sampler([r], "cpu")(logits, [0])[0])
        assert (token == 1) if temperature < 1 else (token in range(5))  # the largest, unless nearly uniform


# ----- checkpoints ------------------------------------------------------------------------------------------
def tiny_config(arch: str, **fields):
    import transformers

    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    cls, name = {"llama": (transformers.LlamaConfig, "LlamaForCausalLM"),
                 "qwen2": (transformers.Qwen2Config, "Qwen2ForCausalLM"),
                 "qwen3": (transformers.Qwen3Config, "Qwen3ForCausalLM")}[arch]
    return cls(**common, architectures=[name], **fields)


REFUSED = [
    ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_parameters has rope_type 'linear'"),
    ("llama", dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_parameters has rope_type 'dynamic'"),
    ("llama", dict(rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}),
     "rope_parameters has rope_type 'yarn'"),
    ("llama", dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                                 "original_max_position_embeddings": 64}), "rope_parameters has rope_type 'longrope'"),
    ("qwen3", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
     "rope_parameters has rope_type 'yarn'"),
    ("llama", dict(partial_rotary_factor=0.5), "partial_rotary_factor is 0.5"),
    ("llama", dict(mlp_bias=True), "mlp_bias is true"),
    ("llama", dict(hidden_act="gelu"), "hidden_act is 'gelu'"),
    ("llama", dict(attention_bias=True), "attention_bias is true"),
    ("qwen3", dict(attention_bias=True), "attention_bias is true"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1),
     r"layers \[1\] attend within a window \(use_sliding_window=True, sliding_window=16"),
    ("qwen3", dict(use_sliding_window=True, sliding_window=16, max_window_layers=0), r"layers \[0, 1\] attend"),
    ("qwen2", dict(layer_types=["full_attention", "sliding_attention"]), r"layers \[1\] .*layer_types"),
]


@pytest.mark.parametrize("arch,fields,message", REFUSED, ids=[m[:30] for *_, m in REFUSED])
def test_a_checkpoint_minigpt_cannot_run_exactly_is_refused_naming_the_field(tmp_path, arch, fields, message):
    tiny_config(arch, **fields).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'config.json'))}: {message}"):
        minigpt.load_pretrained(tmp_path)


def write_config(path, arch: str, **changes):
    hf = {**tiny_config(arch).to_dict(), **changes}
    (path / "config.json").write_text(json.dumps(hf))


@pytest.mark.parametrize("changes,message", [
    (dict(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=1e4), "rope_scaling has rope_type 'linear'"),
    (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}), "no low_freq_factor, high_freq_factor"),
    (dict(rope_parameters={"full_attention": {"rope_type": "default"}}), "is not one dict of RoPE settings"),
    (dict(quantization_config={"quant_method": "gptq", "bits": 4}), "quant_method 'gptq'"),
    (dict(num_key_value_heads=3), "num_attention_heads \\(4\\) must be a multiple of num_key_value_heads \\(3\\)"),
    (dict(vocab_size=None, hidden_size="64"), "no integer vocab_size, hidden_size"),
    (dict(num_key_value_heads=0), "num_key_value_heads=0: every size of the model must be a positive integer"),
])
def test_a_config_json_minigpt_cannot_run_is_refused_naming_the_field(tmp_path, changes, message):
    write_config(tmp_path, "llama", **changes)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'config.json'))}: .*{message}"):
        minigpt.load_pretrained(tmp_path)


@pytest.mark.parametrize("arch,hf", [
    ("qwen3", {}),  # no head_dim: Qwen3's is 128, not hidden_size // num_attention_heads
    ("qwen2", {"num_attention_heads": 64, "num_key_value_heads": None}),  # Qwen's kv heads default to 32
    ("llama", {"num_key_value_heads": None}),  # Llama's to num_attention_heads
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0}, "rope_theta": 5e5}),  # Llama 3.1's older layout
    ("llama", {"rope_scaling": {"type": "default"}, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0},
               "rope_theta": 9.0}),  # both: rope_scaling wins, and rope_theta beside it fills it in
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}),  # no layer slides
])
def test_config_json_is_read_as_transformers_reads_it(arch, hf):
    """Where config.json leaves a field out, minigpt takes transformers' default for the family."""
    import transformers

    classes = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}
    hf = {k: v for k, v in {**dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
                            **hf}.items() if v is not None}
    theirs = classes[arch].from_dict(copy.deepcopy(hf))  # (it writes into the dicts it is given)
    ours = config_from_hf({**hf, "architectures": [type(theirs).__name__.removesuffix("Config") + "ForCausalLM"]})
    head_dim = getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads
    assert (ours.head_dim, ours.num_key_value_heads) == (head_dim, theirs.num_key_value_heads)
    rope = theirs.rope_parameters
    assert ours.rope_theta == rope["rope_theta"]
    if rope["rope_type"] == "llama3":
        keys = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        assert {k: ours.rope_scaling[k] for k in keys} == {k: rope[k] for k in keys}
    else:
        assert ours.rope_scaling is None


@pytest.mark.parametrize("arch,overrides", [
    ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                   rope_theta=500000.0)),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=2)),  # a window on no layer
])
def test_a_checkpoint_with_supported_settings_loads_and_matches_transformers(tmp_path, arch, overrides):
    hf = tiny_hf_model(arch, **overrides)
    hf.save_pretrained(tmp_path)
    model = minigpt.load_pretrained(tmp_path)
    r = Request(list(range(40, 90)), 8)
    assert ch01_naive.generate(model, [r])[0].tokens == hf_greedy(hf, r)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_hf_model("llama").save_pretrained(path)
    return path


@pytest.fixture
def folder(saved, tmp_path):
    """A copy of the saved checkpoint, to break."""
    return shutil.copytree(saved, tmp_path / "model")


def test_a_broken_config_json_is_named(folder):
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    with pytest.raises(ValueError, match=f"^{re.escape(str(folder))}/config.json: not valid JSON"):
        minigpt.load_pretrained(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json: expected a JSON object, got list"):
        minigpt.load_pretrained(folder)


def test_a_truncated_safetensors_file_is_named(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], data[:5], b""):
        weights.write_bytes(broken)
        with pytest.raises(ValueError, match=f"^{re.escape(str(weights))}: not a readable safetensors file .*again"):
            minigpt.load_pretrained(folder)


def test_a_broken_shard_index_is_named(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path, max_shard_size="100KB")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(index.read_text()[:-10])
    with pytest.raises(ValueError, match=f"^{re.escape(str(index))}: not valid JSON"):
        minigpt.load_pretrained(tmp_path)
    index.write_text("{}")
    with pytest.raises(ValueError, match=f"^{re.escape(str(index))}: no weight_map"):
        minigpt.load_pretrained(tmp_path)


def test_weights_of_other_shapes_than_config_json_are_named(folder):
    write_config(folder, "llama", intermediate_size=96)
    shapes = "the weights do not have config.json's shapes: size mismatch"
    with pytest.raises(ValueError, match=f"^{re.escape(str(folder))}: {shapes}"):
        minigpt.load_pretrained(folder)


# ----- hub ids ----------------------------------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch, saved):
    """huggingface_hub.snapshot_download replaced: it records its calls and returns `saved`'s folder, or
    raises `hub.error` when that is set."""
    import huggingface_hub

    hub = SimpleNamespace(calls=[], error=None)

    def snapshot_download(repo_id, **kwargs):
        hub.calls.append((repo_id, kwargs))
        if hub.error:
            raise hub.error
        return str(saved)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return hub


def test_a_hub_id_is_fetched_with_huggingface_hub(hub, saved):
    model = minigpt.load_pretrained("org/tiny-llama")
    assert hub.calls == [("org/tiny-llama", {"allow_patterns": ["*.json", "*.safetensors", "tokenizer*", "*.model",
                                                                 "*.txt"]})]
    local = minigpt.load_pretrained(saved)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local.state_dict().values()))
    assert minigpt.load_tokenizer("org/tiny-llama") is None and len(hub.calls) == 2  # the folder has none


def test_a_local_folder_comes_before_a_hub_id_and_a_missing_path_is_no_hub_id(hub, saved, tmp_path, monkeypatch):
    shutil.copytree(saved, tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert minigpt.load_pretrained("org/tiny").config.vocab_size == 256
    with pytest.raises(FileNotFoundError, match="^/no/such/folder: no such folder"):
        minigpt.load_pretrained("/no/such/folder")
    assert hub.calls == []


def test_a_hub_id_that_cannot_be_fetched_says_so_in_one_line(hub):
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub.error = LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder.\nSecond line.")
    for load in (minigpt.load_pretrained, minigpt.load_tokenizer):
        with pytest.raises(FileNotFoundError) as e:
            load("Qwen/Qwen3-0.6B")
        assert str(e.value) == (
            "Qwen/Qwen3-0.6B: not a local folder, and it could not be fetched from the Hugging Face hub "
            "(LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder. Second line.); download it "
            "elsewhere and pass its folder with --model DIR")


def test_offline_with_an_empty_cache_a_hub_id_fails_at_once_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    code = "import minigpt.loading as l; l.load_pretrained('Qwen/Qwen3-0.6B')"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 1
    assert last.startswith("FileNotFoundError: Qwen/Qwen3-0.6B: not a local folder, and it could not be fetched "
                           "from the Hugging Face hub (LocalEntryNotFoundError: "), last
    assert "outgoing traffic has been disabled" in last and last.endswith("pass its folder with --model DIR")
