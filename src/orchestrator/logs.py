"""Log records of runs and action calls through the standard library's ``logging``.

``log_to_logging(orchestrator)`` registers hooks that write records to the ``orchestrator``
logger: a run's begin and successful end at INFO, each call's successful end at DEBUG, and
every retry and failure (a cancellation included) at WARNING. Like any library, orchestrator
adds a ``NullHandler`` to its logger, so nothing is printed until the application configures
logging (``logging.basicConfig(level=logging.INFO)``, say).

Every record carries ``extra`` fields for structured handlers: ``orchestrator_run_id`` always;
``orchestrator_call_key``, ``orchestrator_action`` and ``orchestrator_task_id`` on records of a
call; ``orchestrator_duration_ms`` on ends; ``orchestrator_attempts`` and
``orchestrator_replayed`` on a call's end; ``orchestrator_attempt`` and ``orchestrator_delay``
(seconds) on a retry; ``orchestrator_error_type`` on retries and failures. The exception
itself is not attached (no ``exc_info``): it propagates to the caller, which decides whether to
log its traceback, so that it is not printed twice.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from ._describe import describe, error_type, status
from ._events import (
    ProcessBeginEvent,
    ProcessCompletionEvent,
    TaskCompletionEvent,
    TaskRetryEvent,
)
from ._orchestrator import Orchestrator

LOGGER_NAME = "orchestrator"
"""The name of the logger that records go to."""

logger = logging.getLogger(LOGGER_NAME)
"""The logger that records go to."""
logger.addHandler(logging.NullHandler())

_DEBUG = logging.DEBUG
_INFO = logging.INFO
_WARNING = logging.WARNING


def _run_begin(event: ProcessBeginEvent[Any]) -> None:
    if logger.isEnabledFor(_INFO):
        logger.info("run %s began", event.run_id, extra={"orchestrator_run_id": event.run_id})


def _run_end(event: ProcessCompletionEvent[Any]) -> None:
    error = event.error
    level = _INFO if error is None else _WARNING
    if not logger.isEnabledFor(level):
        return
    extra: dict[str, Any] = {
        "orchestrator_run_id": event.run_id,
        "orchestrator_duration_ms": event.total_duration,
    }
    if error is None:
        logger.info("run %s succeeded in %.1f ms", event.run_id, event.total_duration, extra=extra)
        return
    extra["orchestrator_error_type"] = error_type(error)
    logger.warning(
        "run %s %s after %.1f ms: %s",
        event.run_id,
        _failed(error),
        event.total_duration,
        describe(error),
        extra=extra,
    )


def _call_end(event: TaskCompletionEvent[Any]) -> None:
    error = event.error
    level = _DEBUG if error is None else _WARNING
    if not logger.isEnabledFor(level):
        return
    extra: dict[str, Any] = {
        "orchestrator_run_id": event.run_id,
        "orchestrator_call_key": event.call_key,
        "orchestrator_action": event.name,
        "orchestrator_task_id": event.task_id,
        "orchestrator_duration_ms": event.duration,
        "orchestrator_attempts": event.attempts,
        "orchestrator_replayed": event.replayed,
    }
    replayed = " (replayed)" if event.replayed else ""
    tries = "attempt" if event.attempts == 1 else "attempts"
    if error is None:
        logger.debug(
            "call %s %s succeeded%s in %.1f ms, %d %s",
            event.call_key,
            event.name,
            replayed,
            event.duration,
            event.attempts,
            tries,
            extra=extra,
        )
        return
    extra["orchestrator_error_type"] = error_type(error)
    logger.warning(
        "call %s %s %s%s after %.1f ms, %d %s: %s",
        event.call_key,
        event.name,
        _failed(error),
        replayed,
        event.duration,
        event.attempts,
        tries,
        describe(error),
        extra=extra,
    )


def _retry(event: TaskRetryEvent[Any]) -> None:
    if not logger.isEnabledFor(_WARNING):
        return
    logger.warning(
        "call %s %s: attempt %d failed, retrying in %.2f s: %s",
        event.call_key,
        event.name,
        event.attempt,
        event.delay,
        describe(event.error),
        extra={
            "orchestrator_run_id": event.run_id,
            "orchestrator_call_key": event.call_key,
            "orchestrator_action": event.name,
            "orchestrator_task_id": event.task_id,
            "orchestrator_attempt": event.attempt,
            "orchestrator_delay": event.delay,
            "orchestrator_error_type": error_type(event.error),
        },
    )


def _failed(error: BaseException) -> str:
    return "was cancelled" if status(error) == "cancelled" else "failed"


_HOOKS = (
    ("on_process_begin", _run_begin),
    ("on_process_completion", _run_end),
    ("on_task_retry", _retry),
    ("on_task_completion", _call_end),
)

_logging: weakref.WeakSet[Orchestrator[Any]] = weakref.WeakSet()


def log_to_logging(orchestrator: Orchestrator[Any]) -> None:
    """Write a log record of every later run, call end and retry of ``orchestrator``.

    The hooks are registered now, after any registered before. Undo with
    :func:`stop_logging`.

    Raises:
        TypeError: ``orchestrator`` is not an ``Orchestrator``.
        ValueError: ``orchestrator`` already logs.

    """
    if not isinstance(orchestrator, Orchestrator):
        raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
    if orchestrator in _logging:
        raise ValueError(
            f"{orchestrator!r} already logs; call stop_logging() on it first to start again"
        )
    for method, hook in _HOOKS:
        getattr(orchestrator, method)(hook)
    _logging.add(orchestrator)


def stop_logging(orchestrator: Orchestrator[Any]) -> None:
    """Stop writing log records of ``orchestrator``'s runs and calls.

    Raises:
        TypeError: ``orchestrator`` is not an ``Orchestrator``.
        ValueError: ``orchestrator`` does not log.

    """
    if not isinstance(orchestrator, Orchestrator):
        raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
    if orchestrator not in _logging:
        raise ValueError(f"{orchestrator!r} does not log; log_to_logging() was not called on it")
    _logging.discard(orchestrator)
    for _, hook in _HOOKS:
        orchestrator.remove_hook(hook)


__all__ = ["LOGGER_NAME", "log_to_logging", "logger", "stop_logging"]
