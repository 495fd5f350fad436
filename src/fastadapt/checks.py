"""Checks of user input, one message per rule, used by tasks, config, algorithms, evaluate and the CLI."""
from __future__ import annotations

import math


def _is_int(value) -> bool:
    """An int that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value) -> None:
    """Refuse anything but an integer >= 1."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def non_negative_int(name: str, value) -> None:
    """Refuse anything but an integer >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be 0 or more, got {value!r}.")


def positive_rate(name: str, value) -> None:
    """Refuse anything but a finite number > 0."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def one_of(name: str, value, choices) -> None:
    """Refuse a value outside choices, naming them."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(choices)}.")
