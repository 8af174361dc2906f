"""An engine's options, checked when the engine is built: a wrong one fails at once, in one line naming the
chapter, the option and what it takes, not deep inside a run."""
from __future__ import annotations

import math
from numbers import Integral, Real


def check_int(chapter: str, name: str, value, minimum: int = 1, maximum: int | None = None,
              optional: bool = False) -> int | None:
    """An integer (not a bool) in [minimum, maximum]; None too when `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum or (
            maximum is not None and value > maximum):
        top = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{chapter}: option {name} takes an integer of at least {minimum}{top}, got {value!r}")
    return int(value)


def check_number(chapter: str, name: str, value, low: float, high: float) -> float:
    """A finite number above `low` and at most `high`."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not low < value <= high:
        raise ValueError(f"{chapter}: option {name} takes a number above {low} and at most {high}, got {value!r}")
    return float(value)


def check_bool(chapter: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{chapter}: option {name} takes True or False, got {value!r}")
    return value


def check_choice(chapter: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{chapter}: option {name} takes one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def make_engine(engine_cls, model, options: dict):
    """`engine_cls(model, **options)`, after checking that every option is one the engine takes."""
    import inspect

    known = set()
    for cls in engine_cls.__mro__:  # a chapter's engine takes its own options and those of the engine it extends
        if "__init__" in cls.__dict__:
            known |= set(inspect.signature(cls.__init__).parameters) - {"self", "model", "options"}
    if unknown := sorted(set(options) - known):
        sampling = " (sampling settings belong to each Request)" if set(unknown) & {
            "temperature", "top_p", "top_k", "seed"} else ""
        raise TypeError(f"{engine_cls.name}: unknown option {', '.join(unknown)}{sampling}; it takes "
                        f"{', '.join(sorted(known))}")
    return engine_cls(model, **options)
