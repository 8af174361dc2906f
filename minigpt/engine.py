"""The engine vocabulary every chapter shares: requests in, completions out, validation, sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ModelConfig


@dataclass
class Request:
    """One generation request. Greedy unless `temperature` > 0."""

    prompt_ids: list[int]
    max_new_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1.0: no nucleus cut
    seed: int = 0  # seeds this request's own sampler: its tokens do not depend on its batch-mates
    arrival_time: float = 0.0  # seconds after the run starts; the engine admits it no earlier
    ignore_eos: bool = False  # benchmarks generate exactly max_new_tokens


@dataclass
class Completion:
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""  # "stop" (an EOS token), "length" (max_new_tokens or the context), "error"
    error: str = ""  # why, when finish_reason == "error"
    arrival: float = 0.0  # seconds since the run started, when the request arrived
    token_times: list[float] = field(default_factory=list)  # seconds since the run started, per token

    @property
    def ttft(self) -> float:
        """Time to first token, from the request's arrival."""
        return self.token_times[0] - self.arrival if self.token_times else float("nan")

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first."""
        t = self.token_times
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else float("nan")


class Completions(list):
    """What `generate` returns: the completions in request order, plus the engine's own counters
    (padding waste, memory use, step times...) in `.stats` for the tables and figures."""

    def __init__(self, items=(), stats: dict | None = None):
        super().__init__(items)
        self.stats = stats or {}


def request_error(r: Request, config: ModelConfig) -> str:
    """Why this request cannot run, naming the field and what to change; '' when it can."""
    V, N = config.vocab_size, config.max_position_embeddings
    if len(r.prompt_ids) == 0:
        return "prompt_ids is empty; give at least one token (e.g. the BOS token)"
    bad = [t for t in r.prompt_ids if not (isinstance(t, int) and 0 <= t < V)]
    if bad:
        return f"prompt_ids holds {bad[0]!r}, outside the vocabulary 0..{V - 1}"
    if not isinstance(r.max_new_tokens, int) or r.max_new_tokens <= 0:
        return f"max_new_tokens must be a positive integer, got {r.max_new_tokens!r}"
    if len(r.prompt_ids) >= N:
        return (f"prompt_ids has {len(r.prompt_ids)} tokens but the model's context holds {N} "
                f"(max_position_embeddings) including at least one new token; shorten the prompt")
    if r.temperature < 0 or not (0 < r.top_p <= 1) or r.top_k < 0:
        return (f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {r.temperature}, {r.top_p}, "
                f"{r.top_k}")
    return ""


def fail(completion: Completion, message: str) -> None:
    completion.finish_reason, completion.error = "error", message


def start_requests(requests: list[Request], config: ModelConfig) -> tuple[list[Completion], list[int]]:
    """A completion per request, and the indices of the requests that can run, in order of arrival.

    A request that cannot run fails alone, before any work: its completion says 'error' and why (the
    request's index, the field, what to change); the others run. Only what is not a list of Request
    raises, as the programming error it is."""
    if not isinstance(requests, (list, tuple)):
        raise TypeError(f"requests must be a list of Request, got {type(requests).__name__}")
    completions = []
    for i, r in enumerate(requests):
        if not isinstance(r, Request):
            raise TypeError(f"request {i}: expected a minigpt.Request, got {type(r).__name__}")
        completions.append(Completion(arrival=r.arrival_time))
        if error := request_error(r, config):
            fail(completions[i], f"request {i}: {error}")
    runnable = [i for i, c in enumerate(completions) if not c.error]
    return completions, sorted(runnable, key=lambda i: requests[i].arrival_time)


def max_total_len(request: Request, config: ModelConfig) -> int:
    """Prompt plus output, capped by the model's context: a request that reaches it stops with 'length'."""
    return min(len(request.prompt_ids) + request.max_new_tokens, config.max_position_embeddings)


def finish_reason(request: Request, completion: Completion, config: ModelConfig) -> str | None:
    """'stop' or 'length' once the request is done, after its newest token was appended; else None."""
    tokens = completion.tokens
    if not request.ignore_eos and tokens and tokens[-1] in config.eos_token_id:
        return "stop"
    if len(request.prompt_ids) + len(tokens) >= max_total_len(request, config):
        return "length"
    return None


class Sampler:
    """Turns each row of logits into a token: argmax for greedy requests, else a seeded draw.

    A sampling request owns its generator, seeded once, which advances exactly one draw per token it
    generates, so what it samples never depends on which other requests share its batch.
    """

    def __init__(self, requests: list[Request], device: torch.device | str):
        self.requests, self.device = requests, torch.device(device)
        self.generators: dict[int, torch.Generator] = {}

    def __call__(self, logits: torch.Tensor, request_ids: list[int]) -> torch.Tensor:
        """logits: (B, vocab) float32, row b for request request_ids[b] -> tokens (B,) int64 on device."""
        tokens = logits.argmax(dim=-1)
        for row, i in enumerate(request_ids):
            r = self.requests[i]
            if r.temperature > 0:
                tokens[row] = self.draw(logits[row], r, i)
        return tokens

    def draw(self, logits: torch.Tensor, r: Request, i: int) -> torch.Tensor:
        if i not in self.generators:
            self.generators[i] = torch.Generator(self.device).manual_seed(r.seed)
        logits = logits / r.temperature
        if r.top_k > 0:
            kth = torch.topk(logits, min(r.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if r.top_p < 1.0:
            sorted_logits, order = logits.sort(descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= r.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generators[i])[0]
