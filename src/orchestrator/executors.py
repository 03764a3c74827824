"""Executors: where the function of a sync action runs.

An executor takes a function and its arguments, runs it somewhere, and hands back its result or
its exception. Hooks, retries, timeouts, the context and the call's bookkeeping all stay on the
event loop that runs the run: only the function itself goes to the executor. When the awaiting
call is cancelled (a timeout, a fail-fast sibling, the caller), the executor drops the work if it
has not started and stops waiting for it if it has; what "stop" means depends on where it runs,
and no executor can interrupt a sync function that is already running.

``Orchestrator(executor=...)`` sets the executor of an orchestrator's sync actions;
``orchestrator.action(fn, executor=...)`` sets one action's. Async actions run on the event loop,
unless an action's own ``executor=`` runs coroutines (``orchestrator.dask.DaskExecutor`` does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from . import _checks, _threads
from ._remote import WORKER_PROCESS, call_remote

if TYPE_CHECKING:
    from ._processes import ProcessExecutor


@runtime_checkable
class Executor(Protocol):
    """What runs the function of a sync action.

    ``run`` returns an awaitable of ``fn(*args, **kwargs)``'s result, or raises what it raised.
    It is called on the event loop's thread, inside the call's context (so ``get_state()`` and
    anything an interceptor keeps current can travel with the work). Cancelling the awaitable
    means the caller no longer waits: drop the work if it has not started.

    An executor that can also run an async function (awaiting its coroutine where it runs) says
    so with a true class attribute ``runs_coroutines``; only such an executor may be given to an
    async action's ``executor=``, and its ``run`` then receives the async function.
    """

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """Run ``fn(*args, **kwargs)`` and return an awaitable of its outcome."""
        ...


class ThreadExecutor:
    """Runs functions in worker threads, at most ``max_threads`` at once.

    The default executor of sync actions. A call that times out or is cancelled stops counting
    against the limit at once, while its thread runs the function to its end (a thread cannot be
    stopped); a queued call that nobody waits for any more never starts. The context variables of
    the call go with the function, so ``get_state()`` works in the thread.

    Raises:
        TypeError: ``max_threads`` is not an int.
        ValueError: ``max_threads`` is below 1.
    """

    def __init__(self, max_threads: int = _threads.DEFAULT_MAX_THREADS) -> None:
        self.max_threads: int = _checks.count("max_threads", max_threads, minimum=1)
        """How many calls run at once."""
        self._pool = _threads.WorkerPool(self.max_threads)

    def __repr__(self) -> str:
        return f"ThreadExecutor(max_threads={self.max_threads})"

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker thread."""
        return self._pool.run(fn, args, kwargs)

    def retire_idle(self) -> None:
        """Let the threads that wait for work exit now; busy ones go on.

        ``run_sync()`` calls it on its orchestrator's executor when the run ends, as
        ``asyncio.run`` shuts its own executor down.
        """
        self._pool.retire_idle()


class InlineExecutor:
    """Runs functions on the event loop's thread, at once.

    The cheapest executor, for functions that return in microseconds: while one runs, nothing
    else on the loop does, so a timeout or a retry deadline could not stop it, and an action with
    either is refused.
    """

    def __repr__(self) -> str:
        return "InlineExecutor()"

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call ``fn(*args, **kwargs)`` on the loop's thread."""
        return fn(*args, **kwargs)


class FuturesExecutor:
    """Runs functions on a ``concurrent.futures.Executor`` the application already has.

    ``Orchestrator(executor=pool)`` wraps a ``ThreadPoolExecutor`` or ``ProcessPoolExecutor``
    in one of these. For a thread pool, the call's context variables go with the function; in
    a process pool the function runs in an empty context, where ``get_state()`` says that the
    context stays with the run (a copy inherited by a forked worker is never read). A queued
    call that nobody waits for any more is withdrawn from the pool's queue.
    """

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        if not isinstance(executor, concurrent.futures.Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {executor!r}")
        self.executor = executor
        """The wrapped executor."""
        self._threads = isinstance(executor, concurrent.futures.ThreadPoolExecutor)
        # A process pool's module is loaded by now if the executor is one: no import needed.
        processes = sys.modules.get("concurrent.futures.process")
        self._processes = processes is not None and isinstance(
            executor, processes.ProcessPoolExecutor
        )

    def __repr__(self) -> str:
        return f"FuturesExecutor({self.executor!r})"

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """Submit ``fn(*args, **kwargs)`` to the wrapped executor."""
        if self._processes:
            return asyncio.get_running_loop().run_in_executor(
                self.executor, call_remote, WORKER_PROCESS, fn, args, kwargs
            )
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        if self._threads:
            # A process cannot receive a Context; a thread should, like asyncio.to_thread.
            return asyncio.get_running_loop().run_in_executor(
                self.executor, contextvars.copy_context().run, fn, *args
            )
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def as_executor(name: str, value: object) -> Executor:
    """Accept an :class:`Executor` or a ``concurrent.futures.Executor`` for parameter ``name``.

    Raises:
        TypeError: ``value`` is neither.
    """
    if isinstance(value, concurrent.futures.Executor):
        return FuturesExecutor(value)
    if _is_dask_client(value):
        # Its repr (address, memory) is left out: the type says what was passed.
        raise TypeError(
            f"{name} must be an Executor, got a distributed.Client, whose own run() runs a "
            "function on every worker; pass DaskExecutor(client), from orchestrator.dask"
        )
    if isinstance(value, Executor):
        return value
    raise TypeError(
        f"{name} must be an Executor (an object with a run(fn, args, kwargs) method, such as "
        f"ThreadExecutor) or a concurrent.futures.Executor, got {value!r}"
    )


def _is_dask_client(value: object) -> bool:
    # Recognised without importing distributed, which only orchestrator.dask may import.
    return any(
        kind.__name__ == "Client" and kind.__module__ == "distributed.client"
        for kind in type(value).__mro__
    )


def __getattr__(name: str) -> Any:
    # ProcessExecutor's module loads at its first use, so that `import orchestrator` does not
    # pay for it.
    if name == "ProcessExecutor":
        from ._processes import ProcessExecutor

        return ProcessExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Executor", "FuturesExecutor", "InlineExecutor", "ProcessExecutor", "ThreadExecutor"]
