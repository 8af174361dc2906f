"""Model shapes: one dataclass and the named presets the book uses."""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama / Qwen2 / Qwen3 decoder. Field names follow Hugging Face's config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3.1's "llama3" frequency scaling, or None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm on each head of q and k
    attention_bias: bool = False  # Qwen2: bias on the q, k, v projections
    eos_token_id: list[int] = field(default_factory=list)
    initializer_range: float = 0.02  # std of random weights (from_config)
    name: str = "custom"

    def __post_init__(self):
        shapes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings")
        if bad := [f"{n}={getattr(self, n)!r}" for n in shapes if not (isinstance(getattr(self, n), int)
                                                                         and getattr(self, n) > 0)]:
            raise ValueError(f"{', '.join(bad)}: every size of the model must be a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    def with_(self, **changes) -> "ModelConfig":
        """A copy with some fields changed, e.g. `PRESETS['tiny'].with_(num_hidden_layers=1)`."""
        return replace(self, **changes)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token occupies in the cache, all layers, at 2 bytes an element."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * 2



PRESETS: dict[str, ModelConfig] = {
    # ~1M parameters: the CPU default, runs every chapter in seconds. Untied embeddings and larger random
    # weights: otherwise a random model mostly repeats its last token, and tests on such output catch little.
    "tiny": ModelConfig(
        name="tiny", vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
        rope_theta=10000.0, tie_word_embeddings=False, qk_norm=True, initializer_range=0.1,
    ),
    # The shape of Qwen/Qwen3-0.6B.
    "qwen3-0.6b": ModelConfig(
        name="qwen3-0.6b", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rope_theta=1_000_000.0, tie_word_embeddings=True, qk_norm=True,
        eos_token_id=[151645],
    ),
    # The shape of meta-llama/Llama-3.1-8B.
    "llama3-8b": ModelConfig(
        name="llama3-8b", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=131072, rope_theta=500_000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        eos_token_id=[128001],
    ),
}


def get_config(preset_or_config: str | ModelConfig) -> ModelConfig:
    if isinstance(preset_or_config, ModelConfig):
        return preset_or_config
    try:
        return PRESETS[preset_or_config]
    except KeyError:
        raise ValueError(f"unknown preset {preset_or_config!r}; choose one of {sorted(PRESETS)}") from None

