import pytest
import torch

from minigpt import Request

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ARCHS = ["llama", "qwen2", "qwen3"]


def tiny_hf_model(arch: str, **overrides):
    """A tiny random transformers model of this family (biases random too, so they are exercised)."""
    import transformers

    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                  rope_theta=10000.0, rms_norm_eps=1e-6)
    common.update(overrides)
    torch.manual_seed(0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, tie_word_embeddings=False))
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=False))
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.normal_(p, std=0.5)
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, tie_word_embeddings=True))
    return model.eval()


@pytest.fixture(params=ARCHS)
def hf_checkpoint(request, tmp_path_factory):
    """(folder, transformers model) for each architecture: the model saved with save_pretrained."""
    path = tmp_path_factory.mktemp(request.param)
    model = tiny_hf_model(request.param)
    model.save_pretrained(path)
    return path, model


def mixed_requests(vocab: int, seed: int = 0) -> list[Request]:
    """Prompts of one token and long ones, outputs of one token and long ones, a duplicate prompt."""
    g = torch.Generator().manual_seed(seed)

    def prompt(n):
        return torch.randint(0, vocab, (n,), generator=g).tolist()

    long_prompt = prompt(150)
    return [
        Request(prompt(1), max_new_tokens=40),
        Request(long_prompt, max_new_tokens=1),
        Request(prompt(7), max_new_tokens=60),
        Request(long_prompt, max_new_tokens=12),
        Request(prompt(1), max_new_tokens=1),
        Request(prompt(33), max_new_tokens=25),
    ]
