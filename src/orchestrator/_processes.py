"""ProcessExecutor: sync functions in worker processes, and what crosses between them and the run.

A call's function and arguments are pickled on the event loop's thread before anything is sent,
so that what cannot be pickled fails that call at once, naming the action and the part that
failed. A worker unpickles them, calls the function through ``call_remote`` (an empty context,
where ``get_state()`` says that the context stays with the run) and pickles the outcome itself:
a result or an exception that cannot cross fails its own call with a clear error, where the
standard pool would report a bare pickling error, or would break and fail every call in it.

At most ``max_workers`` calls are in the pool at once; later ones wait here, in order. The
pool's own queue hands calls to workers ahead of time, and a call handed over cannot be taken
back: waiting here, a call that nobody waits for any more (a timeout, a cancellation) is
dropped before any worker sees it.

The pool starts at the first call. A pool that broke (a worker died) is replaced at the next
call. At interpreter exit, a pool still running calls that nobody waits for is terminated, so
that such a call cannot keep the interpreter from exiting; otherwise the standard library stops
the workers once their calls end.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import os
import threading
import traceback
import types
import weakref
from typing import TYPE_CHECKING, Any

from . import _checks
from ._describe import describe
from ._lazy import lazy_module
from ._remote import WORKER_PROCESS, UnnamedError, call_remote

if TYPE_CHECKING:
    import pickle
    from collections.abc import Callable
    from concurrent.futures import ProcessPoolExecutor
else:
    pickle = lazy_module("pickle")

START_METHODS = ("spawn", "forkserver", "fork")

# How a worker's outcome comes back: a status and its data.
_RETURNED = 0  # the pickled result
_RAISED = 1  # (the pickled exception, its description, its traceback as text)
_RESULT_UNPICKLABLE = 2  # why the result could not be pickled
_ERROR_UNPICKLABLE = 3  # (why, the exception's description, its traceback as text)
_CALL_UNLOADABLE = 4  # why the function and arguments could not be unpickled


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text: its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__qualname__


def work(payload: bytes) -> tuple[int, Any]:
    """Run one call in a worker process: unpickle it, call it, pickle its outcome.

    Module-level, so that it pickles by reference. It never raises: every outcome comes back
    as a status and its data, read by the process running the run.
    """
    try:
        fn, args, kwargs = pickle.loads(payload)
    except Exception as exc:
        return _CALL_UNLOADABLE, _reason(exc)
    try:
        result = call_remote(WORKER_PROCESS, fn, args, kwargs)
    except BaseException as exc:  # KeyboardInterrupt and SystemExit go back as they are too
        text = "".join(traceback.format_exception(exc))
        try:
            return _RAISED, (pickle.dumps(exc), describe(exc, limit=None), text)
        except Exception as problem:
            return _ERROR_UNPICKLABLE, (_reason(problem), describe(exc, limit=None), text)
    try:
        return _RETURNED, pickle.dumps(result)
    except Exception as problem:
        return _RESULT_UNPICKLABLE, _reason(problem)


def pack(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call for a worker process.

    Raises:
        UnnamedError: (of ``TypeError``) The function or an argument cannot be pickled; the
            message says which, and why.
    """
    try:
        return pickle.dumps((fn, args, kwargs))
    except Exception as exc:
        raise _unpicklable(fn, args, kwargs, exc) from exc


def _unpicklable(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], failure: Exception
) -> UnnamedError:
    """Which part of a call cannot be pickled, and why: asked only once pickling failed."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        pickle.dumps(fn)
    except Exception as exc:
        if isinstance(fn, types.FunctionType) and "<" in fn.__qualname__:
            kind = "a lambda" if fn.__name__ == "<lambda>" else "a local function"
            reason = (
                f"it is {kind} ({fn.__qualname__!r}), which a worker process cannot import by name"
            )
        else:
            reason = _reason(exc)
        advice = (
            "define it at module level"
            if isinstance(fn, types.FunctionType)
            else "use a function defined at module level, or an object that pickles"
        )
        error = UnnamedError(
            TypeError, "cannot pickle the function of action ", f": {reason}; {advice}", name
        )
        error.__cause__ = exc
        return error
    parts = [(f"argument {index}", value) for index, value in enumerate(args)]
    parts += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for part, value in parts:
        try:
            pickle.dumps(value)
        except Exception as exc:
            return _argument_error(part, exc, name)
    # Each part pickles alone, not all together: the failure is the call's as a whole.
    return _argument_error("the arguments", failure, name)


def _argument_error(part: str, exc: Exception, name: str) -> UnnamedError:
    error = UnnamedError(
        TypeError,
        f"cannot pickle {part} of action ",
        f": {_reason(exc)}; a worker process receives its arguments pickled, so pass values "
        "that pickle",
        name,
    )
    error.__cause__ = exc
    return error


def unpack(status: int, data: Any, fn: Callable[..., Any]) -> Any:
    """The result of a call from what its worker sent back, or raise its error.

    Raises:
        BaseException: What the function raised, its remote traceback as ``__cause__``.
        UnnamedError: The outcome could not cross (of ``TypeError`` if it could not be
            pickled, of ``RuntimeError`` if it could not be unpickled), or the call could
            not be unpickled in the worker (``RuntimeError``).
    """
    name = getattr(fn, "__name__", repr(fn))
    if status == _RETURNED:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise UnnamedError(
                RuntimeError,
                "cannot unpickle the result of action ",
                f", sent back by its worker process: {_reason(exc)}",
                name,
            ) from exc
    if status == _RAISED:
        blob, described, text = data
        try:
            error = pickle.loads(blob)
        except Exception as exc:
            unloaded = UnnamedError(
                RuntimeError,
                "cannot unpickle the exception raised by action ",
                f" in its worker process: {_reason(exc)}; it raised {described} (its "
                "traceback follows)",
                name,
            )
            raise unloaded from RemoteTraceback(text)
        error.__cause__ = RemoteTraceback(text)
        if isinstance(error, StopIteration):
            # As a thread does: a coroutine cannot raise StopIteration.
            stopped = RuntimeError(f"{fn!r} raised StopIteration")
            stopped.__cause__ = error
            error = stopped
        try:
            raise error
        finally:
            del error  # its traceback holds this frame
    if status == _RESULT_UNPICKLABLE:
        raise UnnamedError(
            TypeError,
            "cannot pickle the result of action ",
            f" in its worker process: {data}; the result goes back pickled, so return values "
            "that pickle",
            name,
        )
    if status == _ERROR_UNPICKLABLE:
        reason, described, text = data
        unsent = UnnamedError(
            TypeError,
            "cannot pickle the exception raised by action ",
            f" in its worker process: {reason}; it raised {described} (its traceback follows)",
            name,
        )
        raise unsent from RemoteTraceback(text)
    raise UnnamedError(
        RuntimeError,
        "cannot unpickle the function or arguments of action ",
        f" in a worker process: {data}; a worker imports each function and class it receives "
        "by module and name, so they must be importable there",
        name,
    )


class _Job:
    """One call, from the moment it is made until its outcome is handed over or dropped."""

    __slots__ = ("abandoned", "future", "loop", "name", "payload", "pool", "waiter")

    def __init__(
        self,
        payload: bytes,
        name: str,
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[Any],
    ) -> None:
        self.payload: bytes | None = payload
        self.name = name  # the function's, for an error raised without an action
        self.loop = loop
        self.waiter: asyncio.Future[Any] | None = waiter
        self.abandoned = False  # nobody waits for it; set under the executor's lock
        self.future: concurrent.futures.Future[Any] | None = None  # once in the pool
        self.pool: ProcessPoolExecutor | None = None  # the pool it went to

    def forget(self) -> None:
        # Only the flags are read after this: nothing of the call is kept.
        self.payload = self.waiter = self.future = self.pool = None


def _settle(waiter: asyncio.Future[Any], future: concurrent.futures.Future[Any]) -> None:
    # On the caller's loop: the waiter gets the pool's future, whose outcome the caller reads.
    if not waiter.done():
        waiter.set_result(future)


def _reject(waiter: asyncio.Future[Any], error: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class ProcessExecutor:
    """Runs functions in worker processes, at most ``max_workers`` at once.

    For CPU-bound sync actions, which worker threads would hold to one core. The function and
    its arguments are pickled and sent; the result or the exception comes back pickled. A
    function must be importable by name in a worker (defined at module level; an action made
    with ``@orch.action`` at module level is); a lambda, a local function or an argument that
    cannot be pickled fails the call at once with a ``TypeError`` naming the action. The
    context does not travel: ``get_state()`` in a worker raises ``OutsideRunError``; pass the
    function what it needs as arguments.

    The workers start together at the first call (in a thread: the event loop goes on), and
    serve every later call, across runs. A call that
    waits for a free worker and times out or is cancelled never starts; one that a worker has
    taken runs to its end, and holds that worker until then. If a worker process dies (killed,
    out of memory, ``os._exit()``), every call then in the pool fails with
    ``BrokenProcessPool`` naming its action, and the next call starts new workers.

    :meth:`close` (or leaving a ``with`` block) stops the workers; at interpreter exit they
    stop by themselves, and a call still running that nobody waits for any more is terminated.
    Async functions are not sent: they stay on the event loop.

    Args:
        max_workers: How many worker processes, and so calls, at once; by default the number
            of CPUs.
        start_method: How a worker process starts: ``"spawn"`` (the default, on every
            platform) runs a fresh interpreter, which imports what the calls need;
            ``"forkserver"`` forks it from a server process started afresh; ``"fork"``
            (POSIX) copies the process running the run, which starts faster but copies its
            threads' state too. A copy of the run's context made by a fork is never read.

    Raises:
        TypeError: ``max_workers`` is not an int or None; ``start_method`` is not a str.
        ValueError: ``max_workers`` is below 1; ``start_method`` is not one of the three, or
            not one this platform has.
    """

    def __init__(self, max_workers: int | None = None, *, start_method: str = "spawn") -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
        elif max_workers < 1:
            raise ValueError(f"max_workers must be 1 or more, got {_checks.shown(max_workers)}")
        self.max_workers: int = max_workers
        """How many worker processes, and so calls, at once."""
        self.start_method: str = _start_method(start_method)
        """How a worker process starts: ``"spawn"``, ``"forkserver"`` or ``"fork"``."""
        self._reset()
        self._closed = False
        _executors.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._starter: threading.Thread | None = None  # starting a pool, if one is
        self._starting: list[_Job] = []  # calls that wait for the pool to start
        self._busy = 0  # places taken: calls in the pool, or on their way to it
        self._waiting: collections.deque[_Job] = collections.deque()  # calls without a place
        self._sent: set[_Job] = set()  # calls in the pool

    def __repr__(self) -> str:
        return (
            f"ProcessExecutor(max_workers={self.max_workers}, start_method={self.start_method!r})"
        )

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a worker process and return or raise its outcome.

        Raises:
            UnnamedError: The call cannot be sent or its outcome cannot come back, the workers
                died or could not start, or the executor is closed; an action raises it as
                the error it names.
            BaseException: Whatever ``fn`` raised, its remote traceback as ``__cause__``.
        """
        payload = pack(fn, args, kwargs)
        name = getattr(fn, "__name__", repr(fn))
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        job = _Job(payload, name, loop, waiter)
        del payload
        self._enter(job)
        try:
            future: concurrent.futures.Future[Any] = await waiter
            if future.cancelled():  # withdrawn from the pool by close()
                raise self._closed_error(name)
            status, data = future.result()
        except asyncio.CancelledError:
            self._abandon(job)
            raise
        except concurrent.futures.BrokenExecutor as exc:
            raise self._broken(name, exc) from exc
        finally:
            del waiter, job
        return unpack(status, data, fn)

    def close(self) -> None:
        """Stop the worker processes once the calls they run end; later calls are refused.

        A call still waiting for a worker fails with ``RuntimeError``. Waits for the workers
        to exit; call it from synchronous code, not from the event loop while calls run.
        Closing again does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
            starter = self._starter
            waiting, self._waiting = self._waiting, collections.deque()
        for job in waiting:
            self._fail(job, self._closed_error(job.name))  # they had no place to give on
        if starter is not None:
            starter.join()  # it stops the pool it started, seeing the executor closed
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _enter(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise self._closed_error(job.name)
            if self._busy >= self.max_workers:
                self._waiting.append(job)
                return
            self._busy += 1
        self._send(job)

    def _send(self, job: _Job) -> None:
        """Put ``job``, which has a place, in the pool; on its loop's thread."""
        with self._lock:
            pool, payload, closed = self._pool, job.payload, self._closed
            dropped = job.abandoned or payload is None
            waits = pool is None and not (dropped or closed)
            starter = None
            if waits:
                self._starting.append(job)
                if self._starter is None:
                    # Starting workers takes long enough to stall the loop: a thread does it.
                    starter = self._starter = threading.Thread(
                        target=self._start, name="orchestrator-process-starter", daemon=True
                    )
        if waits:
            if starter is not None:
                self._launch(starter)
            return
        if dropped or payload is None:
            job.forget()
            self._pass_on()
            return
        if closed or pool is None:  # no pool here only when closed
            self._refuse(job, self._closed_error(job.name))
            return
        try:
            future = pool.submit(work, payload)
        except concurrent.futures.BrokenExecutor:
            # It broke since its last call: this call goes to a new pool.
            self._discard(pool)
            self._send(job)
            return
        except Exception as exc:
            self._refuse(job, exc)
            return
        with self._lock:
            job.payload = None
            job.future, job.pool = future, pool
            self._sent.add(job)
        future.add_done_callback(functools.partial(self._finished, job))

    def _launch(self, starter: threading.Thread) -> None:
        try:
            starter.start()
        except Exception as exc:  # no thread to be had: the calls that wait for it fail
            with self._lock:
                self._starter = None
                jobs, self._starting = self._starting, []
            for job in jobs:
                self._refuse(job, exc)

    def _start(self) -> None:
        """Start a pool and all its workers, then send the calls that wait for it."""
        pool: ProcessPoolExecutor | None = None
        error: BaseException | None = None
        try:
            pool = _new_pool(self.max_workers, self.start_method)
            # One call per worker starts them all now, away from the loop's thread; waiting
            # for them keeps every later call out of the pool's queue until a worker is free.
            warming = [pool.submit(ready) for _ in range(self.max_workers)]
            concurrent.futures.wait(warming)
            failed = next((f.exception() for f in warming if f.exception() is not None), None)
            if failed is not None:
                error = _StartFailed(str(failed))
                error.__cause__ = failed
        except Exception as exc:
            error = exc
        with self._lock:
            self._starter = None
            jobs, self._starting = self._starting, []
            closed = self._closed
            if error is None and not closed:
                self._pool = pool
        if pool is not None and (closed or error is not None):
            pool.shutdown(wait=True, cancel_futures=True)
        for job in jobs:
            if closed:
                self._refuse(job, self._closed_error(job.name))
            elif error is not None:
                self._refuse(job, error)
            else:
                self._hand_over(job)
        del error  # its traceback holds this frame

    def _refuse(self, job: _Job, error: BaseException) -> None:
        """Fail a call that was never sent, and give its place on."""
        self._fail(job, error)
        self._pass_on()

    def _fail(self, job: _Job, error: BaseException) -> None:
        waiter = None if job.abandoned else job.waiter
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits
                job.loop.call_soon_threadsafe(_reject, waiter, error)
        job.forget()

    def _hand_over(self, job: _Job) -> None:
        """Send ``job``, which has a place, from its loop's thread."""
        try:
            job.loop.call_soon_threadsafe(self._send, job)
        except RuntimeError:  # its loop closed: nobody waits for it
            job.forget()
            self._pass_on()

    def _discard(self, pool: ProcessPoolExecutor | None) -> None:
        with self._lock:
            if pool is None or self._pool is not pool:
                return
            self._pool = None
        pool.shutdown(wait=False)

    def _finished(self, job: _Job, future: concurrent.futures.Future[Any]) -> None:
        """The pool is done with ``job``: hand its outcome over, and its place on."""
        # In the pool's thread, or in the one that cancelled the future.
        if not future.cancelled() and isinstance(
            future.exception(), concurrent.futures.BrokenExecutor
        ):
            self._discard(job.pool)
        with self._lock:
            self._sent.discard(job)
            waiter = None if job.abandoned else job.waiter
        loop = job.loop
        job.forget()
        # The place first: once the caller has the outcome, its next call finds it free.
        self._pass_on()
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits
                loop.call_soon_threadsafe(_settle, waiter, future)

    def _pass_on(self) -> None:
        """Give the place of a call that left to the next waiting one, or free it."""
        with self._lock:
            job = None
            while self._waiting:
                candidate = self._waiting.popleft()
                if not candidate.abandoned:
                    job = candidate
                    break
                candidate.forget()
            if job is None:
                self._busy -= 1
                return
        self._hand_over(job)

    def _abandon(self, job: _Job) -> None:
        with self._lock:
            job.abandoned = True
            future = job.future
            if future is None:
                job.payload = None  # never sent: hold nothing of it while it waits its turn
        if future is not None:
            # Withdrawn if no worker has it yet; a worker's call runs to its end.
            future.cancel()

    def _broken(self, name: str, error: BaseException) -> UnnamedError:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(error, _StartFailed):
            return UnnamedError(
                BrokenProcessPool,
                f"the worker processes of {self!r} could not start for action ",
                f": {str(error).rstrip('.')}; their error output says why (a script's own "
                "code must sit under `if __name__ == '__main__':`, which workers skip)",
                name,
            )
        return UnnamedError(
            BrokenProcessPool,
            f"a worker process of {self!r} ended abruptly (killed, out of memory, or "
            "os._exit() in a function) while action ",
            " was in its pool, and every call then in the pool failed; the next call starts "
            "new worker processes",
            name,
        )

    def _closed_error(self, name: str) -> UnnamedError:
        return UnnamedError(
            RuntimeError,
            "cannot run action ",
            f": {self!r} was closed; give the action an executor that is open",
            name,
        )

    def _stop_at_exit(self) -> None:
        """Terminate the workers if a call nobody waits for any more still runs in one."""
        with self._lock:
            pool = self._pool
            adrift = any(job.abandoned for job in self._sent)
        if pool is None or not adrift:
            return  # the standard library stops the workers once their calls end
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()


class _StartFailed(concurrent.futures.BrokenExecutor):
    """The workers of a new pool could not start."""


def ready() -> None:
    """What starts each worker of a new pool; module-level, so that it pickles by reference."""


def _start_method(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"start_method must be a str, got {value!r}")
    if value not in START_METHODS:
        raise ValueError(f"start_method must be 'spawn', 'forkserver' or 'fork', got {value!r}")
    import multiprocessing

    available = multiprocessing.get_all_start_methods()
    if value not in available:
        raise ValueError(
            f"start_method {value!r} is not available on this platform, which has "
            f"{', '.join(repr(method) for method in available)}"
        )
    return value


_executors: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()
_exit_hook = False


def _new_pool(max_workers: int, start_method: str) -> ProcessPoolExecutor:
    """A new pool; imports multiprocessing at the first one."""
    global _exit_hook
    import multiprocessing
    from concurrent.futures.process import ProcessPoolExecutor

    if not _exit_hook:
        _exit_hook = True
        # Registered after the standard library's own hook, which joins every pool's workers
        # (waiting for their calls to end) and runs first among these: before it.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            with contextlib.suppress(RuntimeError):  # the interpreter is exiting already
                register(_at_exit)
    return ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context(start_method))


def _at_exit() -> None:
    for executor in list(_executors):
        executor._stop_at_exit()


def _empty_after_fork() -> None:
    # A forked child has none of its parent's pools, only references to them: start afresh.
    for executor in list(_executors):
        executor._reset()


os.register_at_fork(after_in_child=_empty_after_fork)
