"""The worker threads that run sync actions.

A thread cannot be killed, so when an attempt times out or is cancelled its thread keeps
running the function to its end. ``concurrent.futures.ThreadPoolExecutor`` would go on
counting such a thread against its limit, and a few abandoned calls would starve every later
sync action. This pool stops counting a job's thread as soon as the job is abandoned, starting
another worker if work is waiting, and drops the abandoned job's outcome when it finishes.

Workers are daemon threads, so an abandoned call that never returns does not keep the process
alive at exit. A worker that has been idle for a while exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

_IDLE_SECONDS = 60.0
DEFAULT_MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)


class _Job:
    __slots__ = (
        "abandoned",
        "args",
        "context",
        "finished",
        "fn",
        "future",
        "kwargs",
        "loop",
        "started",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.loop = loop
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        # The contextvars go along so that get_state() works inside the thread.
        self.context = contextvars.copy_context()
        # The three flags below change under the pool's lock only.
        self.started = False
        self.abandoned = False
        self.finished = False

    def run(self) -> None:
        try:
            result = self.context.run(self.fn, *self.args, **self.kwargs)
        except StopIteration as exc:
            # A future cannot hold StopIteration; turn it into what a coroutine would raise.
            error = RuntimeError(f"{self.fn!r} raised StopIteration")
            error.__cause__ = exc
            self._deliver(_set_exception, error)
        except BaseException as exc:
            self._deliver(_set_exception, exc)
        else:
            self._deliver(_set_result, result)

    def _deliver(self, setter: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        if self.abandoned:
            return
        # RuntimeError: the loop closed while the call ran, so nobody is left to receive it.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(setter, self.future, value)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class WorkerPool:
    """A thread pool whose limit counts only threads working for a caller still waiting.

    A job abandoned before a worker took it is skipped without running; one abandoned while
    running stops counting against the limit at once.
    """

    def __init__(self, max_workers: int) -> None:
        self._max = max_workers
        self._start_afresh()
        _pools.add(self)

    def _start_afresh(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # live worker threads
        self._abandoned = 0  # of those, threads still running an abandoned job
        self._idle = 0  # idle threads not yet promised to a queued job
        self._backlog = 0  # queued jobs that no idle thread was promised to

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a worker thread and return or raise its outcome.

        If the awaiting task is cancelled (a timeout, a fail-fast sibling), the job is
        abandoned: it is skipped if it has not started, and its outcome dropped if it has.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(loop, future, fn, args, kwargs)
        self._submit(job)
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def busy(self) -> int:
        """How many jobs are queued or running for a caller still waiting (a snapshot)."""
        with self._lock:
            return self._threads - self._abandoned - self._idle + self._backlog

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._idle:
                self._idle -= 1
                return
            self._backlog += 1
            self._grow()

    def _abandon(self, job: _Job) -> None:
        with self._lock:
            job.abandoned = True
            if job.started and not job.finished:
                self._abandoned += 1
                self._grow()

    def _grow(self) -> None:
        # Called with the lock held: start a worker for waiting work if the limit allows.
        if self._backlog and self._threads - self._abandoned < self._max:
            self._backlog -= 1
            self._threads += 1
            threading.Thread(target=self._work, name="orchestrator-worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle and self._jobs.empty():
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            with self._lock:
                # Task.cancel() cancels the future at once, before the task runs its handler
                # that abandons the job: checking both skips every job nobody waits for.
                job.started = not (job.abandoned or job.future.cancelled())
            if job.started:
                job.run()
            with self._lock:
                job.finished = True
                if job.abandoned and job.started:
                    # Counted as abandoned since the job was; it works for the pool again now.
                    self._abandoned -= 1
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def pool() -> WorkerPool:
    """The process-wide pool, made on first use with ThreadPoolExecutor's default size."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = WorkerPool(min(32, (os.cpu_count() or 1) + 4))
    return _pool


_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
"""Every pool of the process (each ThreadExecutor has its own), for the reset after a fork."""


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's threads, only its counters: start afresh. The
    # parent's queued jobs belong to the parent's event loop, so they are dropped too.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()
    for each in list(_pools):
        each._start_afresh()


os.register_at_fork(after_in_child=_forget_pool_after_fork)
