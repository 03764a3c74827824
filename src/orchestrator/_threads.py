"""The worker threads that run the sync actions of an orchestrator.

Each orchestrator owns a :class:`WorkerPool` of at most ``max_threads`` threads. A thread cannot
be killed, so when an attempt times out or is cancelled its thread runs the function to its
end. ``concurrent.futures.ThreadPoolExecutor`` would go on counting such a thread against its
limit, and a few abandoned calls would starve every later sync action. This pool stops counting
a thread as soon as its job is abandoned, lets another thread take the waiting work, and drops
the abandoned job's outcome when it finishes. Abandoned threads are bounded too: all threads of
a pool, abandoned ones included, never number more than twice ``max_threads``; past that, work
waits for one of them to return. A thread back from an abandoned job joins the pool again only
if the limit has room for it, and exits otherwise, so the limit holds again at once.

A thread keeps nothing of a job it ran: the function, its arguments, its outcome and the copy of
the contextvars (which holds the run and its context) are dropped before the outcome is handed
over. An idle thread exits after a few seconds, or at once when :meth:`WorkerPool.retire_idle`
is called. Threads are daemons, so a call that never returns does not keep the process alive at
exit. A forked child starts with empty pools: it has none of its parent's threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeAlias

DEFAULT_MAX_THREADS = 100
"""How many sync actions of one orchestrator run at once unless ``max_threads`` says otherwise.

Sync actions are mostly blocking I/O (an HTTP client, a database driver), whose threads wait
rather than compute: the bound is the connection limit that httpx and aiohttp apply by default,
not a multiple of the processor count.
"""

THREAD_NAME = "orchestrator-worker"

_IDLE_SECONDS = 10.0


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
        "queued",
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
        # The flags below change under the pool's lock only.
        self.started = False
        self.abandoned = False
        self.finished = False
        self.queued = False  # in the pool's backlog

    def forget(self) -> None:
        """Let go of everything the call holds: it will not run, or has run.

        Only the flags are read after this.
        """
        self.fn = self.args = self.kwargs = self.context = self.future = self.loop = None  # type: ignore[assignment]

    def run(self) -> None:
        """Call the function in this thread and hand its outcome to the loop."""
        setter: Callable[[asyncio.Future[Any], Any], None] = set_result
        try:
            outcome = self.context.run(self.fn, *self.args, **self.kwargs)
        except StopIteration as exc:
            # A future cannot hold StopIteration; turn it into what a coroutine would raise.
            outcome = RuntimeError(f"{self.fn!r} raised StopIteration")
            outcome.__cause__ = exc
            setter = set_exception
        except BaseException as exc:
            outcome, setter = exc, set_exception
        loop, future = self.loop, self.future
        # Before the hand-over, so that once the caller has the outcome nothing of the call
        # (its arguments, the run in the contextvars) is left in this thread.
        self.forget()
        try:
            if not self.abandoned:
                # RuntimeError: the loop closed while the call ran; nobody is left to receive it.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(setter, future, outcome)
        finally:
            # An exception's traceback keeps this frame alive: no local may lead back to it.
            del outcome, loop, future


_Inbox: TypeAlias = "queue.SimpleQueue[_Job | None]"
"""How a thread receives its next job; None tells an idle thread to exit."""


def set_result(future: asyncio.Future[Any], value: Any) -> None:
    """Give ``future`` its result, unless it is done already (cancelled by its waiter)."""
    if not future.done():
        future.set_result(value)


def set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Give ``future`` its exception, unless it is done already (cancelled by its waiter)."""
    if not future.done():
        future.set_exception(exc)


class WorkerPool:
    """The threads that run one orchestrator's sync actions, at most ``max_threads`` at once.

    The limit counts the threads that work for a caller still waiting, and the idle ones. A
    job abandoned before a thread took it never runs; a thread whose job is abandoned while
    running stops counting at once. All threads together, abandoned ones included, number at
    most twice the limit; past that, a new job waits until one of them returns.

    Args:
        max_threads: The limit, 1 or more (checked by the caller).

    """

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        """How many jobs run at once at most."""
        self._reset()
        _pools.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._live = 0  # threads counted against the limit: working for a caller, or idle
        self._adrift = 0  # threads still running an abandoned job
        self._idle: list[_Inbox] = []  # the inboxes of idle threads, the latest idle last
        self._backlog: collections.deque[_Job] = collections.deque()
        self._waiting = 0  # jobs in the backlog that a caller still waits for
        self._retiring = False  # threads exit rather than idle, until the next job comes

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a worker thread and return or raise its outcome.

        If the awaiting task is cancelled (a timeout, a fail-fast sibling), the job is
        abandoned: it never runs if it has not started, and its outcome is dropped if it has.

        Raises:
            RuntimeError: No thread could be started.
            BaseException: Whatever ``fn`` raised.

        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(loop, future, fn, args, kwargs)
        self._submit(job)
        try:
            return await future
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                self._abandon(job)
            # The future holds the exception, whose traceback holds this frame: without this,
            # a reference cycle that only the garbage collector would free.
            del future, job
            raise

    def busy(self) -> int:
        """How many jobs are queued or running for a caller still waiting (a snapshot)."""
        with self._lock:
            return self._live - len(self._idle) + self._waiting

    def retire_idle(self) -> None:
        """Let every idle thread exit now, and every busy one once done, until work comes.

        Threads that would otherwise wait idle for their timeout end at once; the next job
        starts a thread afresh.
        """
        with self._lock:
            self._retiring = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for inbox in idle:
            inbox.put(None)

    def _room(self) -> bool:
        # With the lock held: whether one more thread may start.
        live = self._live
        return live < self.max_threads and live + self._adrift < 2 * self.max_threads

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._retiring = False
            if self._idle:
                # The thread idle the shortest time: the others may then reach their timeout.
                self._idle.pop().put(job)
                return
            if not self._room():
                job.queued = True
                self._backlog.append(job)
                self._waiting += 1
                return
            self._live += 1
        try:
            self._spawn(job)
        except BaseException:
            # Jobs queued meanwhile counted on this thread: they must not wait for nothing.
            self._start_queued()
            raise

    def _spawn(self, job: _Job) -> None:
        # Without the lock: starting a thread waits for it to run.
        inbox: _Inbox = queue.SimpleQueue()
        inbox.put(job)
        try:
            threading.Thread(
                target=self._work, args=(inbox,), name=THREAD_NAME, daemon=True
            ).start()
        except BaseException:
            with self._lock:
                self._live -= 1
            raise

    def _start_queued(self) -> None:
        # Without the lock: start threads for queued jobs while the limits have room.
        while True:
            with self._lock:
                starting: list[tuple[_Job, asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
                while self._room():
                    job = self._next_queued()
                    if job is None:
                        break
                    self._live += 1
                    starting.append((job, job.loop, job.future))
            if not starting:
                return
            for job, loop, future in starting:
                try:
                    self._spawn(job)
                except Exception as exc:
                    # Its caller waits for it, not the one here: the failure is theirs to see.
                    with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                        loop.call_soon_threadsafe(set_exception, future, exc)

    def _next_queued(self) -> _Job | None:
        # With the lock held: the oldest queued job that a caller still waits for.
        while self._backlog:
            job = self._backlog.popleft()
            job.queued = False
            if not job.abandoned:
                self._waiting -= 1
                return job
        return None

    def _abandon(self, job: _Job) -> None:
        with self._lock:
            job.abandoned = True
            if not job.started:
                if job.queued:
                    self._waiting -= 1
                job.forget()  # it will never run: hold none of it while it waits its turn
                return
            if job.finished:
                return
            self._live -= 1
            self._adrift += 1
        # The limit has room for one more thread now, if a job waits for it.
        self._start_queued()

    def _work(self, inbox: _Inbox) -> None:
        job: _Job | None = inbox.get()
        while job is not None:
            with self._lock:
                # Task.cancel() cancels the future at once, before the task runs its handler
                # that abandons the job: checking both skips every job nobody waits for.
                job.started = not (job.abandoned or job.future.cancelled())
            if job.started:
                job.run()
            with self._lock:
                job.finished = True
                if job.started and job.abandoned:
                    self._adrift -= 1
                    if self._live >= self.max_threads:
                        # Another thread took this one's place meanwhile.
                        return
                    self._live += 1
                job = self._next_queued()
                if job is None:
                    if self._retiring:
                        self._live -= 1
                        return
                    self._idle.append(inbox)
            if job is None:
                job = self._idle_wait(inbox)

    def _idle_wait(self, inbox: _Inbox) -> _Job | None:
        try:
            return inbox.get(timeout=_IDLE_SECONDS)
        except queue.Empty:
            with self._lock:
                if inbox in self._idle:
                    self._idle.remove(inbox)
                    self._live -= 1
                    return None
            # A job was handed over as the wait ended: it is in the inbox already.
            return inbox.get()


_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def _empty_pools_after_fork() -> None:
    # A forked child has none of the parent's threads, only its counters: start afresh.
    for pool in list(_pools):
        pool._reset()


os.register_at_fork(after_in_child=_empty_pools_after_fork)
