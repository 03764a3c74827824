"""Argument checks shared by the public entry points.

Each check raises at the point of definition, naming the parameter, the value received and
what is expected, so that a mistake surfaces where it was made rather than deep in a run.
"""

from __future__ import annotations

import inspect
import math
from typing import Any


def seconds(
    name: str, value: object, *, allow_zero: bool, allow_none: bool = False
) -> float | None:
    """Return ``value`` as a float number of seconds, or raise.

    Raises:
        TypeError: ``value`` is not a real number (``bool`` is refused too).
        ValueError: ``value`` is negative, NaN, infinite, or zero where zero is not allowed.

    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a number of seconds" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    number = as_float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"{name} must be a finite number of seconds, got {shown(value)}")
    if number < 0 or (number == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise ValueError(f"{name} must be {bound} seconds, got {shown(value)}")
    return number


def as_float(value: float) -> float:
    """``value`` as a float, an int too large for one becoming an infinity of its sign.

    ``float()`` raises ``OverflowError`` for such an int; the checks turn an infinity into the
    documented ``ValueError`` instead.
    """
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def shown(value: object) -> str:
    """``repr(value)``, except that a huge int is described by its size.

    The repr of an int of 10,000 digits would drown the message, and past 4,300 digits Python
    refuses to make it at all.
    """
    if isinstance(value, int) and value.bit_length() > 128:
        bits = value.bit_length()
        return f"an int of {bits} bits" + (", too large for a float" if bits > 1024 else "")
    return repr(value)


def count(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int of at least ``minimum``, or raise.

    Raises:
        TypeError: ``value`` is not an int (``bool`` is refused too).
        ValueError: ``value`` is below ``minimum``.

    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {minimum} or more, got {shown(value)}")
    return value


def flag(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, or raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def callable_(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is callable.

    A coroutine object (``main()`` passed for ``main``) is closed first, so that the mistake
    is reported once, here, and not again as "coroutine was never awaited".
    """
    if callable(value):
        return
    if inspect.iscoroutine(value):
        value.close()
        raise TypeError(
            f"{name} must be callable, got the coroutine {value!r}; "
            "pass the function itself, not the result of calling it"
        )
    raise TypeError(f"{name} must be callable, got {value!r} of type {type(value).__name__}")


def key_part(value: object) -> str:
    """Return ``value`` if it can be part of a call key, or raise.

    Raises:
        TypeError: ``value`` is not a str.
        ValueError: ``value`` is empty, holds a dot, or is all digits.

    """
    if not isinstance(value, str):
        raise TypeError(f"a call key part must be a str, got {value!r}")
    if not value or "." in value or value.isdigit():
        raise ValueError(
            "a call key part must be a non-empty str without dots that is not all digits "
            f"(digits are positions), got {value!r}"
        )
    return value
