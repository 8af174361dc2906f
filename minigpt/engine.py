"""The engine vocabulary every chapter shares: requests in, completions out, validation, sampling."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch

from .config import ModelConfig


@dataclass
class Request:
    """One generation request. Greedy unless `temperature` > 0. `start_requests` checks every field, and
    makes a valid request's values plain Python ones (a 1-D tensor or numpy array of ids becomes a list,
    a numpy integer an int)."""

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

    @property
    def latency(self) -> float:
        """End to end: from the request's arrival to its last token."""
        return self.token_times[-1] - self.arrival if self.token_times else float("nan")


class Completions(list):
    """What `generate` returns: the completions in request order, plus the engine's own counters
    (padding waste, memory use, step times...) in `.stats` for the tables and figures."""

    def __init__(self, items=(), stats: dict | None = None):
        super().__init__(items)
        self.stats = stats or {}


def is_int(x, low: float = -math.inf, high: float = math.inf) -> bool:
    """An integer in [low, high]: an int or a numpy integer (`Integral`), never a bool. True is an int to
    Python, but `max_new_tokens=True` or a token id of False is a mistake, not a 1 or a 0."""
    return isinstance(x, Integral) and not isinstance(x, bool) and low <= x <= high


def is_number(x, low: float, high: float = math.inf) -> bool:
    """A number in [low, high], finite as a float: NaN compares false with everything (a NaN temperature
    would run greedy, a NaN arrival never arrive), inf overflows time.sleep. Never a bool."""
    try:
        return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x)) and low <= x <= high
    except OverflowError:  # an int too large for a float, such as 10**400
        return False


# An arrival later than this is a mistake of units (milliseconds, or a time.time()), which would idle the
# engine for as long.
MAX_ARRIVAL = 24 * 3600.0

# Each field of a Request but its prompt: a test of its value, what it must be (for the message), and its
# plain Python type (`normalise`).
FIELDS = {
    "max_new_tokens": (lambda x: is_int(x, 1), "a positive integer", int),
    "temperature": (lambda x: is_number(x, 0), "a finite number >= 0 (0 for greedy)", float),
    "top_k": (lambda x: is_int(x, 0), "an integer >= 0 (0: no top-k cut)", int),
    "top_p": (lambda x: is_number(x, 0, 1) and x > 0, "a number in (0, 1] (1: no nucleus cut)", float),
    "seed": (lambda x: is_int(x, -2**63, 2**64 - 1), "an integer from -2**63 to 2**64 - 1", int),
    "arrival_time": (lambda x: is_number(x, 0, MAX_ARRIVAL),
                     f"a number of seconds after the run starts, 0 to {MAX_ARRIVAL:.0f} (a day)", float),
    "ignore_eos": (lambda x: isinstance(x, (bool, np.bool_)), "True or False", bool),
}


def token_list(prompt_ids) -> list | str:
    """prompt_ids as a list, or why it cannot be one. A 1-D tensor or numpy array of ids is a prompt too."""
    if isinstance(prompt_ids, (torch.Tensor, np.ndarray)):
        if prompt_ids.ndim != 1:
            return f"prompt_ids must be one sequence of token ids (1-D), got shape {tuple(prompt_ids.shape)}"
        return prompt_ids.tolist()
    if not isinstance(prompt_ids, (list, tuple)):
        return f"prompt_ids must be a list of token ids, got {type(prompt_ids).__name__}"
    return list(prompt_ids)


def prompt_error(prompt_ids, config: ModelConfig) -> str:
    """Why prompt_ids is not a prompt this model can take; '' when it is."""
    ids, V, N = token_list(prompt_ids), config.vocab_size, config.max_position_embeddings
    if isinstance(ids, str):
        return ids
    if not ids:
        return "prompt_ids is empty; give at least one token (e.g. the BOS token)"
    for j, t in enumerate(ids):
        if type(t) is not int and not is_int(t):  # (a plain int skips the slower test: prompts are long)
            return f"prompt_ids[{j}] is {t!r}, not a token id; give integers 0..{V - 1}"
        if not 0 <= t < V:
            return f"prompt_ids[{j}] is {t}, outside the vocabulary 0..{V - 1}"
    if len(ids) >= N:
        return (f"prompt_ids has {len(ids)} tokens but the model's context holds {N} "
                f"(max_position_embeddings) including at least one new token; shorten the prompt")
    return ""


def request_error(r: Request, config: ModelConfig) -> str:
    """Why this request cannot run, naming the field and what it must be; '' when it can.

    Every field is checked here, before any work: a value the engines cannot use fails this request alone,
    rather than hanging the run, crashing the batch, or running something else than was asked."""
    if error := prompt_error(r.prompt_ids, config):
        return error
    for name, (valid, what, _) in FIELDS.items():
        if not valid(value := getattr(r, name)):
            return f"{name} must be {what}, got {value!r}"
    return ""


def normalise(r: Request) -> None:
    """Write a valid request's values back as plain Python ones (the same values): a list of ints for
    prompt_ids, int, float or bool for the rest. The engines then meet no tensors, no numpy scalars."""
    r.prompt_ids = list(map(int, token_list(r.prompt_ids)))
    for name, (_, _, plain) in FIELDS.items():
        setattr(r, name, plain(getattr(r, name)))


def fail(completion: Completion, message: str) -> None:
    completion.finish_reason, completion.error = "error", message


def start_requests(requests: list[Request], config: ModelConfig) -> tuple[list[Completion], list[int]]:
    """A completion per request, and the indices of the requests that can run, in order of arrival.

    A request that cannot run (`request_error`) fails alone, before any work: its completion says 'error'
    and why (the request's index, the field, what to change); the others run, their values made plain
    (`normalise`). Only what is not a list of Request raises, as the programming error it is."""
    if not isinstance(requests, (list, tuple)):
        raise TypeError(f"requests must be a list of Request, got {type(requests).__name__}")
    completions = []
    for i, r in enumerate(requests):
        if not isinstance(r, Request):
            raise TypeError(f"request {i}: expected a minigpt.Request, got {type(r).__name__}")
        completions.append(c := Completion())
        if error := request_error(r, config):
            fail(c, f"request {i}: {error}")
        else:
            normalise(r)
            c.arrival = r.arrival_time
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
        # In float64, shifted so the largest is 0, then divided: however small the temperature, the rest
        # fall towards -inf and the largest stays 0, never inf - inf or 0 / 0 = NaN (which softmax would
        # spread and multinomial refuse). In float32 a temperature of 1e-30 makes inf, one of 1e-50 is 0.
        logits = (logits.double() - logits.max()) / r.temperature
        if r.top_k > 0:
            kth = torch.topk(logits, min(r.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if r.top_p < 1.0:
            sorted_logits, order = logits.sort(descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= r.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generators[i])[0]
