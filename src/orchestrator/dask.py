"""DaskExecutor: the functions of actions run as tasks on a Dask cluster.

Install with ``pip install 'aio-orchestrator[dask]'``; this module is the only one that imports
``distributed``. Only the function and its arguments go to the cluster: hooks, retries, timeouts,
interceptors, call keys, the journal and the run's context stay in the process that runs the
run. Each call is one Dask task, submitted with ``pure=False`` so that two identical calls run
twice, as two calls of a function would.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from dask.utils import funcname
from distributed import Client, Future

from ._action import is_async
from ._remote import UnnamedError, call_remote, call_remote_async

WHERE = "a Dask worker"
"""Where ``get_state()`` says a function runs when it is called on a worker."""

_UNSERIALIZABLE = "Could not serialize object of type"


class DaskExecutor:
    """Runs the functions of actions as tasks on a Dask cluster, through a ``distributed.Client``.

    ``Orchestrator(executor=DaskExecutor(client))`` sends every sync action's function there;
    ``orchestrator.action(fn, executor=DaskExecutor(client))`` sends one action's, and may name
    an async function too, whose coroutine then runs on a worker's event loop (Dask runs
    coroutines; async actions of an orchestrator with this executor stay on the run's loop).

    A call is submitted with ``pure=False``; the calls made in one turn of the event loop (the
    items of a ``map()``, say) go to the scheduler together. A call that times out or is
    cancelled cancels its task before it ends, so a task still queued when the cancellation
    reaches the scheduler never starts; a task already running on a worker runs to its end
    (Dask cannot interrupt it) and its result is dropped. Each retry submits a new task. Dask's
    ``FutureCancelledError`` (the task was cancelled by someone else) is not retried;
    ``KilledWorker`` is retried like any failure, although Dask raises it only after
    rescheduling the task each time a worker died running it
    (``distributed.scheduler.allowed-failures`` times, 3 by default).

    Functions and their arguments travel by pickle (cloudpickle where pickle fails); a call
    whose function, arguments or result cannot travel raises a ``TypeError`` naming the action
    and the root cause. ``get_state()`` on a worker raises ``OutsideRunError``: the context
    stays with the run, so pass a function what it needs as arguments.

    Args:
        client: A ``distributed.Client``, synchronous or asynchronous, which the executor uses
            and never closes; or the address of a scheduler (``"tcp://scheduler:8786"``), to
            which the executor connects a synchronous client of its own at its first call (so
            that a module that makes one at import connects nowhere when merely imported, as
            by a worker), closed by :meth:`close` or at the end of a ``with`` block. A
            synchronous client serves runs on any event loop (``run_sync()`` included); an
            asynchronous one only the event loop it was made in.

    Raises:
        TypeError: ``client`` is neither a ``Client`` nor a str.
        ValueError: ``client`` is an empty str.
    """

    runs_coroutines = True
    """An async action may name this executor: its coroutine runs on a worker's event loop."""

    def __init__(self, client: Client | str) -> None:
        if isinstance(client, str):
            if not client:
                raise ValueError(
                    "client must be a distributed.Client or a non-empty scheduler address, got ''"
                )
            self.address: str | None = client
            """The scheduler address the executor connects its own client to, or None."""
            self._client: Client | None = None
        elif isinstance(client, Client):
            self.address = None
            self._client = client
        else:
            raise TypeError(
                "client must be a distributed.Client or a scheduler address such as "
                f"'tcp://scheduler:8786', got {client!r}"
            )
        self._connecting = threading.Lock()
        self._closed = False
        # The calls waiting to be submitted, made in this turn of the client's event loop.
        self._batch: list[_Call] | None = None
        # The calls made in this turn of another event loop, waiting to cross to the client's.
        self._outboxes: dict[asyncio.AbstractEventLoop, list[_Remote]] = {}

    def __repr__(self) -> str:
        return f"DaskExecutor({self.address or self._client!r})"

    @property
    def client(self) -> Client | None:
        """The client that submits the tasks: the one given, or the executor's own once made."""
        return self._client

    @property
    def owns_client(self) -> bool:
        """Whether the executor makes its client from an address, and closes it."""
        return self.address is not None

    def close(self) -> None:
        """Close the client the executor made from an address; a client given is left open.

        A closed executor that made its client refuses further calls (``RuntimeError``).
        """
        if self.address is None:
            return
        with self._connecting:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    def _connect(self) -> Client:
        """The executor's own client, made at the first call (in a worker thread: it blocks)."""
        with self._connecting:
            if self._closed:
                raise RuntimeError(f"{self!r} was closed; make another executor")
            if self._client is None:
                self._client = Client(self.address)  # type: ignore[no-untyped-call]
            return self._client

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """Run ``fn(*args, **kwargs)`` as a task on the cluster; an awaitable of its outcome."""
        return self._run(fn, args, kwargs)

    async def _run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        client = self._client
        if client is None:
            client = await asyncio.to_thread(self._connect)
        loop = asyncio.get_running_loop()
        home: asyncio.AbstractEventLoop = client.loop.asyncio_loop  # type: ignore[union-attr]
        if home is loop:
            return await self._call(client, fn, args, kwargs)
        return await self._bridge(client, loop, home, fn, args, kwargs)

    async def _bridge(
        self,
        client: Client,
        loop: asyncio.AbstractEventLoop,
        home: asyncio.AbstractEventLoop,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # The client lives on another event loop (a synchronous client's own thread): the call
        # runs there as a task, and its outcome comes back to this loop.
        if not home.is_running():
            raise RuntimeError(
                f"the event loop of {client!r} is not running: the client was closed, or "
                "it is an asynchronous Client, which serves only the event loop it was made in; "
                "make such a client (and this executor) in the run's loop, or pass a "
                "synchronous Client"
            )
        outcome: asyncio.Future[Any] = loop.create_future()
        remote = _Remote(self, client, loop, outcome, fn, args, kwargs)
        # The calls made in one turn of this loop cross over together, so that they reach the
        # scheduler together.
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = []
            loop.call_soon(self._cross, loop, home)
        outbox.append(remote)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            # The call crossed over before this cancellation could arrive: _cross() was
            # scheduled before this task's next step. Wait until the task there has cancelled
            # the Dask task, so that a queued task cannot start once this call has ended.
            if not outcome.done():
                home.call_soon_threadsafe(remote.cancel)
                await asyncio.wait((outcome,))
            raise
        finally:
            # The outcome holds the exception this frame raises: no cycle through it.
            del outcome, remote

    def _cross(self, loop: asyncio.AbstractEventLoop, home: asyncio.AbstractEventLoop) -> None:
        """Start the calls made in this turn of ``loop`` on the client's loop, ``home``."""
        # An empty context: the run's own stays on this side.
        home.call_soon_threadsafe(_start, self._outboxes.pop(loop), context=contextvars.Context())

    async def _call(
        self, client: Client, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # On the client's event loop, from submission to result.
        call = _Call(fn, args, kwargs, asyncio.get_running_loop().create_future())
        if self._batch is None:
            self._batch = []
            asyncio.get_running_loop().call_soon(self._flush, client)
        self._batch.append(call)
        try:
            await call.submitted
            return await call.future  # type: ignore[misc]
        except asyncio.CancelledError:
            # The call is abandoned (a timeout, a fail-fast sibling, its caller). A call still
            # in the batch is never submitted; a submitted task is cancelled, which Dask
            # does only once the coroutine of an asynchronous client's cancel() is awaited.
            if call.future is not None:
                await client.cancel([call.future])  # type: ignore[no-untyped-call]
            raise
        except TypeError as exc:
            # Dask puts the root cause of a pickling failure in __cause__ (of the call) or in
            # the message (of a result): name it.
            if not str(exc.args[0] if exc.args else "").startswith(_UNSERIALIZABLE):
                raise
            if call.future is None:
                raise _unsent_call(exc, fn) from exc
            if call.future.status == "finished":
                raise _unsent_result(exc, fn) from exc
            raise
        finally:
            if call.future is not None:
                call.future.release()  # type: ignore[no-untyped-call]
                call.future = None
            # Its submission may hold the exception this frame raises: no cycle through it.
            del call

    def _flush(self, client: Client) -> None:
        """Submit the calls of the batch, at once: one graph, where Dask has to schedule many."""
        batch, self._batch = self._batch or [], None
        calls = [call for call in batch if not call.submitted.cancelled()]
        for sent, group in _by_wrapper(calls).items():
            if len(group) > 1:
                try:
                    futures = client.map(
                        sent,
                        [WHERE] * len(group),
                        [call.fn for call in group],
                        [call.args for call in group],
                        [call.kwargs for call in group],
                        key=[_key(call.fn) for call in group],
                        pure=False,
                    )
                except Exception:
                    # Each call that cannot be sent (an argument that does not pickle) must
                    # fail alone: below, one by one, each gets its own outcome. Under fresh
                    # keys, as Dask keeps those of the refused graph until it collects them.
                    pass
                else:
                    for call, future in zip(group, futures, strict=True):
                        call.sent(future)
                    continue
            for call in group:
                try:
                    future = client.submit(
                        sent, WHERE, call.fn, call.args, call.kwargs, key=_key(call.fn), pure=False
                    )
                except Exception as exc:
                    call.submitted.set_exception(exc)
                else:
                    call.sent(future)


def _key(fn: Callable[..., Any]) -> str:
    # Dask's own form for a task that is not pure: the dashboard groups tasks by the name.
    return f"{funcname(fn)}-{uuid.uuid4()}"


class _Call:
    """One call on the client's event loop: what to submit, then its Dask future."""

    __slots__ = ("args", "fn", "future", "kwargs", "submitted")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        submitted: asyncio.Future[None],
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.submitted = submitted
        self.future: Future[Any] | None = None

    def sent(self, future: Future[Any]) -> None:
        self.future = future
        self.submitted.set_result(None)
        # Dask holds what it needs now; the call keeps nothing of its arguments.
        self.args = ()
        self.kwargs = {}


def _by_wrapper(calls: list[_Call]) -> dict[Callable[..., Any], list[_Call]]:
    # Dask runs a task on a worker's event loop when its function is a coroutine function.
    groups: dict[Callable[..., Any], list[_Call]] = {}
    for call in calls:
        sent = call_remote_async if is_async(call.fn) else call_remote
        groups.setdefault(sent, []).append(call)
    return groups


class _Remote:
    """A call made on another event loop than the client's: its task on the client's loop."""

    __slots__ = (
        "args",
        "client",
        "executor",
        "fn",
        "kwargs",
        "loop",
        "outcome",
        "task",
    )

    def __init__(
        self,
        executor: DaskExecutor,
        client: Client,
        loop: asyncio.AbstractEventLoop,
        outcome: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.executor = executor
        self.client = client
        self.loop = loop
        self.outcome = outcome
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        """On the client's loop: start the call."""
        self.task = asyncio.get_running_loop().create_task(
            self.executor._call(self.client, self.fn, self.args, self.kwargs)
        )
        self.args = ()
        self.kwargs = {}
        self.task.add_done_callback(self._done)

    def cancel(self) -> None:
        """On the client's loop: abandon the call, unless it has just ended."""
        if self.task is not None:
            self.task.cancel()

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.loop.call_soon_threadsafe(_settle, self.outcome, task)
        self.task = None


def _start(remotes: list[_Remote]) -> None:
    for remote in remotes:
        remote.start()


def _settle(outcome: asyncio.Future[Any], task: asyncio.Task[Any]) -> None:
    """On the calling loop: hand the outcome of the call's task over."""
    if task.cancelled():
        outcome.cancel()
        return
    error = task.exception()
    if error is None:
        outcome.set_result(task.result())
    else:
        outcome.set_exception(error)


def _root(exc: BaseException) -> str:
    # The last line of a formatted traceback is its exception, "TypeError: cannot pickle ...".
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if len(lines) > 1 else f"{type(exc).__name__}: {exc}"


def _unsent_call(exc: TypeError, fn: Callable[..., Any]) -> UnnamedError:
    cause = exc.__cause__ or exc
    return UnnamedError(
        TypeError,
        "the call of action ",
        f" could not be sent to {WHERE}: {type(cause).__name__}: {cause}; its function and "
        "arguments must pickle (make locks, connections and open files inside the function)",
        _name(fn),
    )


def _unsent_result(exc: TypeError, fn: Callable[..., Any]) -> UnnamedError:
    return UnnamedError(
        TypeError,
        "the result of action ",
        f" could not be sent back from {WHERE}: {_root(exc)}; the function must return a "
        "value that pickles",
        _name(fn),
    )


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", fn))


__all__ = ["DaskExecutor"]
