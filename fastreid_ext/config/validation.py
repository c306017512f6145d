"""One error type and small checks for config values, so every method reports bad values alike:
the full key, the value given and what is allowed."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["ConfigValueError", "check_choice", "check_choices", "check_range"]


class ConfigValueError(ValueError):
    """A config key holds a value that the code does not accept."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r} is not valid: allowed {allowed}")


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else :class:`ConfigValueError` naming ``key``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigValueError(key, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def check_choices(key: str, values: Iterable[Any], allowed: Iterable[Any]) -> list:
    """Every element of the list ``values`` is one of ``allowed`` (duplicates are an error)."""
    allowed = tuple(allowed)
    values = list(values)
    bad = [v for v in values if v not in allowed]
    if bad or len(set(values)) != len(values):
        raise ConfigValueError(
            key, values, "a list without duplicates of " + ", ".join(repr(a) for a in allowed)
        )
    return values


def check_range(
    key: str, value: float, low: float | None = None, high: float | None = None, *, open_low=False
) -> float:
    """``low <= value <= high`` (``low < value`` with ``open_low``); ``None`` bounds are open."""
    ok = (low is None or (value > low if open_low else value >= low)) and (
        high is None or value <= high
    )
    if not ok:
        lo = "" if low is None else f"{'>' if open_low else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ConfigValueError(key, value, " and ".join(p for p in (lo, hi) if p))
    return value
