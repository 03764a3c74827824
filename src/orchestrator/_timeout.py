"""The time limit of one attempt.

The rule is asyncio.timeout's: when the limit expires the task is cancelled, and if that
cancellation is the only one pending when the work ends with ``CancelledError``, it becomes a
timeout; a cancellation from anyone else passes through. It is written out here rather than
used through ``async with asyncio.timeout()`` because the context manager's two extra
coroutines cost more than the rest of an attempt, and every timed call pays for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ._errors import ActionTimeout


class _Expiry:
    """Whether the limit of one attempt fired, and the task it cancels."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False


def _expire(expiry: _Expiry) -> None:
    expiry.fired = True
    expiry.task.cancel()


async def limited(work: Awaitable[Any], seconds: float, name: str, deadline: bool) -> Any:
    """Await ``work``, cancelling it after ``seconds``; then raise ``ActionTimeout``.

    ``name`` and ``deadline`` describe the limit in the error. A group cut short names its
    members' failures in notes on the cancellation; those move to the ``ActionTimeout``, since
    the cancellation is hidden from the caller.
    """
    task = asyncio.current_task()
    assert task is not None, "actions run in tasks"
    cancelling = task.cancelling()
    expiry = _Expiry(task)
    handle = asyncio.get_running_loop().call_later(seconds, _expire, expiry)
    try:
        result = await work
    except asyncio.CancelledError as exc:
        if expiry.fired and task.uncancel() <= cancelling:
            raise _timeout(exc, name, seconds, deadline) from None
        raise
    except BaseException:
        if expiry.fired:
            task.uncancel()
        raise
    finally:
        handle.cancel()
    if expiry.fired:
        # The work swallowed the cancellation and returned: withdraw it, as asyncio does.
        task.uncancel()
    return result


def _timeout(cause: BaseException, name: str, seconds: float, deadline: bool) -> ActionTimeout:
    # Built here, not in limited(), so that no frame of a traceback holds the error it raises.
    timeout = ActionTimeout(name, seconds, deadline=deadline)
    for note in getattr(cause, "__notes__", ()):
        timeout.add_note(note)
    return timeout
