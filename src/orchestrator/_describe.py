"""How the observability modules name runs, actions and outcomes in text."""

from __future__ import annotations

import asyncio
import functools
import reprlib
from collections.abc import Callable
from typing import Any

from ._action import action_name

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 200
_repr.maxlevel = 3

MESSAGE_LENGTH = 200
"""The most characters of an error message that log records carry, the ellipsis included."""


def status(error: BaseException | None) -> str:
    """``"succeeded"``, ``"cancelled"`` or ``"failed"``: how work that raised ``error`` ended."""
    if error is None:
        return "succeeded"
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "failed"


def error_type(error: BaseException) -> str:
    """The qualified name of the exception's class, such as ``"ConnectionError"``."""
    return type(error).__qualname__


def describe(error: BaseException, limit: int | None = MESSAGE_LENGTH) -> str:
    """``"TypeName: message"``, or the type's name alone when the message is empty.

    The message is cut to ``limit`` characters (None: never). Never raises: an exception whose
    message cannot be made is described by its type, since this runs in hooks and while a
    failure is recorded, where raising would replace the failure being described.
    """
    try:
        message = str(error)
    except Exception:
        return f"{error_type(error)} (its message could not be made)"
    if limit is not None and len(message) > limit:
        message = message[: limit - 1] + "…"
    return f"{error_type(error)}: {message}" if message else error_type(error)


def qualified_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function (seen through partials), or its name when it has none.

    An action carries its function's ``__module__`` and ``__qualname__``.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return action_name(fn)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def body_name(fn: Callable[..., Any]) -> str:
    """The name a run is shown under: the body's name, by the rule that names actions."""
    name = getattr(fn, "name", None)
    return name if isinstance(name, str) else action_name(fn)


def arguments(args: tuple[Any, ...], kwargs: dict[str, Any] | Any) -> str:
    """Display text of a call's arguments, each shortened: ``1, 'a', key=[1, 2]``."""
    parts = [_repr.repr(value) for value in args]
    parts.extend(f"{key}={_repr.repr(value)}" for key, value in kwargs.items())
    return ", ".join(parts)


def value(result: object) -> str:
    """Display text of a result, shortened."""
    return _repr.repr(result)
