"""What runs on the other side of an executor that sends work to another process or machine.

The run, its hooks and its context stay in the process that runs the run; only the function and
its arguments travel. ``call_remote`` is what such an executor sends in place of the function:
it calls the function in a copy of the worker's context in which no run can be found, so that a
copy of the run's context inherited by a forked worker can never be read there, and marks that
context so that ``get_state()`` says why it has no run to read from. The worker's own variables
stay (Dask's ``get_worker()`` and ``get_client()`` read one). ``call_remote_async`` does the
same for an async function, on the worker's event loop, for executors whose workers run
coroutines.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

_where: contextvars.ContextVar[str] = contextvars.ContextVar("orchestrator-remote")

WORKER_PROCESS = "a worker process"
"""Where a function sent to a process pool runs, as ``get_state()`` says."""

# The prefix of the name of each orchestrator's variable (see Orchestrator.__init__), which
# holds the scope of the run in progress.
_RUN_VARIABLES = "orchestrator-"


def _detached(where: str) -> contextvars.Context:
    """A copy of the current context where no run can be found, marked as work sent to ``where``."""
    context = contextvars.copy_context()
    runs = [var for var in context if var.name.startswith(_RUN_VARIABLES)]
    for var in runs:
        context.run(var.set, None)
    context.run(_where.set, where)
    return context


def call_remote(
    where: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call ``fn(*args, **kwargs)`` as work sent to ``where`` (say, "a worker process").

    Module-level, so that it pickles by reference along with the function.
    """
    return _detached(where).run(fn, *args, **kwargs)


async def call_remote_async(
    where: str, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Await ``fn(*args, **kwargs)`` as work sent to ``where``: ``call_remote`` for coroutines.

    The coroutine runs as a task of its own, in a context made as ``call_remote`` makes one.
    """
    context = _detached(where)
    work = context.run(fn, *args, **kwargs)
    if not inspect.iscoroutine(work):
        work = _awaited(work)
    return await asyncio.get_running_loop().create_task(work, context=context)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def remote_place() -> str | None:
    """Where the current code runs if it is work sent away by an executor, else None."""
    return _where.get(None)


class UnnamedError(Exception):
    """An executor's failure whose message must name the action: the action raises ``named()``.

    An executor receives a function and its arguments, not the action they belong to. When its
    error has to say which action failed (a function that cannot be pickled, a worker process
    that died), it raises this instead, ``from`` the root cause, and the action raises in its
    place ``kind(f"{head}{name!r}{tail}")`` from the same cause.
    """

    def __init__(self, kind: type[Exception], head: str, tail: str, fallback: str) -> None:
        # Seen only when an executor is used without an action: the function's name stands in.
        super().__init__(f"{head}{fallback!r}{tail}")
        self.kind = kind
        self.head = head
        self.tail = tail

    def named(self, action: str) -> Exception:
        """The error to raise for the action named ``action``."""
        return self.kind(f"{self.head}{action!r}{self.tail}")
