"""minigpt and chapter 1 against transformers: loading, logits, greedy tokens, bad input."""
import json
import re

import pytest
import torch

import minigpt
from chapters import ch01_naive
from minigpt import Request
from minigpt.reference import hf_greedy, to_hf
from tests.conftest import mixed_requests, tiny_hf_model


def full_logits(model, ids):
    cache = ch01_naive.ContiguousKVCache(model.config, len(ids), model.device, model.dtype)
    cache.cache_rows = torch.arange(len(ids))
    return model(ids, torch.arange(len(ids)), cache)


def test_loaded_logits_match_transformers(hf_checkpoint):
    path, hf = hf_checkpoint
    model = minigpt.load_pretrained(path)
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(ids[None]).logits[0]
    ours = full_logits(model, ids)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_ch01_greedy_equals_transformers_generate(hf_checkpoint):
    path, hf = hf_checkpoint
    model = minigpt.load_pretrained(path)
    requests = mixed_requests(256)
    for r, c in zip(requests, ch01_naive.generate(model, requests)):
        assert c.tokens == hf_greedy(hf, r)
        assert c.finish_reason == "length" and len(c.tokens) == r.max_new_tokens


def test_to_hf_round_trip_matches_our_random_model():
    model = minigpt.from_config("tiny")
    hf = to_hf(model)
    ids = torch.randint(0, 1024, (40,))
    with torch.no_grad():
        assert torch.allclose(full_logits(model, ids), hf(ids[None]).logits[0], atol=1e-4)


def test_sharded_checkpoint_loads(tmp_path):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = minigpt.load_pretrained(tmp_path)
    ids = torch.arange(20)
    with torch.no_grad():
        assert torch.allclose(full_logits(model, ids), hf(ids[None]).logits[0], atol=1e-4)


def test_llama31_rope_scaling_matches_transformers():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    config = minigpt.PRESETS["tiny"].with_(qk_norm=False, tie_word_embeddings=False, rope_scaling=scaling,
                                           rope_theta=500000.0)
    model = minigpt.from_config(config)
    hf = to_hf(model)
    ids = torch.randint(0, 1024, (200,))
    with torch.no_grad():
        assert torch.allclose(full_logits(model, ids), hf(ids[None]).logits[0], atol=1e-4)


def test_eos_stops_with_reason_stop():
    model = minigpt.from_config("tiny")
    first = ch01_naive.generate(model, [Request([5, 6, 7], max_new_tokens=30)])[0].tokens
    eos = first[3]
    model.config = model.config.with_(eos_token_id=[eos])
    c = ch01_naive.generate(model, [Request([5, 6, 7], max_new_tokens=30)])[0]
    assert c.finish_reason == "stop" and c.tokens == first[: first.index(eos) + 1]
    c = ch01_naive.generate(model, [Request([5, 6, 7], max_new_tokens=30, ignore_eos=True)])[0]
    assert c.tokens == first and c.finish_reason == "length"


def test_output_stops_at_the_models_context():
    model = minigpt.from_config(minigpt.PRESETS["tiny"].with_(max_position_embeddings=64))
    c = ch01_naive.generate(model, [Request(list(range(60)), max_new_tokens=50)])[0]
    assert len(c.tokens) == 4 and c.finish_reason == "length"


BAD = [
    (Request([], 5), "prompt_ids is empty"),
    (Request([1, 5000], 5), "outside the vocabulary"),
    (Request([1, -1], 5), "outside the vocabulary"),
    (Request([1], 0), "max_new_tokens must be a positive"),
    (Request([1], -3), "max_new_tokens must be a positive"),
    (Request([1] * 4096, 5), "context holds 4096"),
    (Request([1], 5, temperature=-1.0), "temperature"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_a_bad_request_fails_alone_naming_itself_and_the_field(bad, message):
    model = minigpt.from_config("tiny")
    good = [Request([1, 2], 3), Request([5, 6, 7], 4)]
    out = ch01_naive.generate(model, [good[0], bad, good[1]])
    assert out[1].finish_reason == "error" and out[1].tokens == []
    assert re.search(f"request 1: .*{message}", out[1].error), out[1].error
    assert [c.tokens for c in (out[0], out[2])] == [c.tokens for c in ch01_naive.generate(model, good)]


def test_what_is_not_a_list_of_requests_raises():
    model = minigpt.from_config("tiny")
    with pytest.raises(TypeError, match="request 1: expected a minigpt.Request"):
        ch01_naive.generate(model, [Request([1], 2), [1, 2]])


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        minigpt.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*not supported"):
        minigpt.load_pretrained(tmp_path)
    hf = tiny_hf_model("qwen3")
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        minigpt.load_pretrained(tmp_path)


def test_sampling_is_seeded_per_request():
    model = minigpt.from_config("tiny")
    r = Request([3, 4, 5], max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    alone = ch01_naive.generate(model, [r])[0].tokens
    again = ch01_naive.generate(model, [Request([9], 5, temperature=1.0, seed=1), r])[1].tokens
    other = ch01_naive.generate(model, [Request([3, 4, 5], 20, temperature=1.0, top_k=50, top_p=0.9, seed=8)])
    assert alone == again and alone != other[0].tokens


def test_workloads_are_seeded_and_in_range():
    w = minigpt.get_workload("W1")
    a, b = w.requests(1000), w.requests(1000)
    assert [r.prompt_ids for r in a] == [r.prompt_ids for r in b] and len(a) == 256
    assert all(100 <= len(r.prompt_ids) <= 1024 and 100 <= r.max_new_tokens <= 1024 for r in a)


@pytest.mark.parametrize("preset,billions", [("qwen3-0.6b", 0.596), ("llama3-8b", 8.03)])
def test_presets_have_the_real_models_size(preset, billions):
    with torch.device("meta"):
        model = minigpt.Transformer(minigpt.PRESETS[preset])
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - billions) < 0.005


def test_fused_projections_map_to_and_from_hugging_face_names():
    """q/k/v (with Qwen2's biases) and gate/up are one matrix each here, separate in checkpoints."""
    from minigpt.loading import config_from_hf
    from minigpt.model import fuse_hf_names, split_to_hf_names

    hf = tiny_hf_model("qwen2")
    config = config_from_hf({**hf.config.to_dict(), "architectures": ["Qwen2ForCausalLM"]})
    theirs = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    ours = fuse_hf_names(theirs, config)
    assert "layers.1.self_attn.qkv_proj.bias" in ours and "layers.0.mlp.gate_up_proj.weight" in ours
    assert not any(".q_proj." in k or ".up_proj." in k for k in ours)
    back = split_to_hf_names(ours, config)
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], theirs[k]) for k in theirs)
