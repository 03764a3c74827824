"""parallel() and map(): many calls at once, results in order, and exact failure rules."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextvars import ContextVar
from types import CoroutineType
from typing import Any, cast

from . import _checks
from ._action import Action
from ._errors import ParallelError
from ._run import Frame, outside_run


def check_options(fail_fast: object, concurrency: object) -> int | None:
    """Validate the options shared by ``parallel()`` and ``map()``; return the limit."""
    _checks.flag("fail_fast", fail_fast)
    if concurrency is None:
        return None
    return _checks.count("concurrency", concurrency, minimum=1)


def require_run(frames: ContextVar[Frame], what: str) -> None:
    """Raise ``OutsideRunError`` unless a run of the orchestrator is in progress here."""
    if frames.get(None) is None:
        raise outside_run(what)


class Parallel:
    """A group of actions that run at the same time when the group is awaited.

    Made by ``Orchestrator.parallel``. Call it with no arguments to call every member without
    arguments, or with one argument per member to give member ``i`` argument ``i``.
    """

    def __init__(
        self,
        frames: ContextVar[Frame],
        members: Sequence[Callable[..., Any]],
        *,
        fail_fast: bool,
        concurrency: int | None,
    ) -> None:
        self._frames = frames
        self.members: tuple[Callable[..., Any], ...] = tuple(members)
        """The members, in the order their results come back."""
        self.fail_fast = fail_fast
        """Whether the first failure cancels the other members."""
        self.concurrency = concurrency
        """How many members may run at once, or None for all."""

    def __repr__(self) -> str:
        names = ", ".join(getattr(m, "name", None) or repr(m) for m in self.members)
        return f"<Parallel [{names}] fail_fast={self.fail_fast} concurrency={self.concurrency}>"

    def __call__(self, *args: Any) -> Coroutine[Any, Any, list[Any]]:
        """Return a coroutine that runs every member and returns their results in order.

        The arguments and the run are checked here, at the call.

        Raises:
            ValueError: The number of arguments is neither 0 nor the number of members.
            OutsideRunError: No run of the orchestrator is in progress here.
            Exception: (when awaited) With ``fail_fast``, the first failure itself.
            ParallelError: (when awaited) Without ``fail_fast``, every failure, if any.
        """
        members = self.members
        if args and len(args) != len(members):
            raise ValueError(
                f"a parallel group of {len(members)} members was called with {len(args)} "
                f"arguments; pass no arguments, or exactly {len(members)} (one per member)"
            )
        require_run(self._frames, "a parallel group")
        if args:
            calls: list[Any] = list(zip(members, args, strict=True))
            return gather(_call_with, calls, self.fail_fast, self.concurrency, "parallel members")
        return gather(_call, list(members), self.fail_fast, self.concurrency, "parallel members")


def _call(member: Callable[[], Any]) -> Any:
    return member()


def _call_with(pair: tuple[Callable[[Any], Any], Any]) -> Any:
    return pair[0](pair[1])


class _Group:
    """The shared bookkeeping of one gather() call."""

    __slots__ = (
        "carried",
        "caught",
        "direct",
        "errors",
        "fail_fast",
        "first",
        "items",
        "own",
        "pending",
        "results",
        "stopping",
        "stray",
        "tasks",
        "waiter",
    )

    def __init__(self, items: list[Any], fail_fast: bool) -> None:
        self.fail_fast = fail_fast
        self.items = items  # emptied by stop(), which ends every loop over it
        self.direct = True  # one task per call; False when workers share the calls
        self.results: list[Any] = [None] * len(items)
        self.errors: dict[int, BaseException] = {}  # every failure but a cancellation, by call
        # Cancellations of calls that carry notes (a nested group's), by call: the notes move up.
        self.carried: dict[int, BaseException] = {}
        self.own: dict[asyncio.Task[Any], BaseException] = {}  # a task's own cancellation
        self.first: BaseException | None = None  # what a stopped group raises
        self.caught: BaseException | None = None  # the caller's own (first) cancellation
        self.stray = False  # a call ended cancelled although nobody here cancelled it
        self.pending = 0  # tasks not yet done
        self.stopping = False
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.waiter: asyncio.Future[None] | None = None

    def react(self, failure: BaseException) -> None:
        """Apply the stop rule to a failed call, which nobody in the group cancelled.

        Under fail-fast any failure stops the group and becomes what it raises; so does, always,
        an exception that is not an ``Exception``. A call's own cancellation is remembered.
        """
        cancelled = isinstance(failure, asyncio.CancelledError)
        self.stray = self.stray or cancelled
        if self.stopping or not (
            self.fail_fast or not (cancelled or isinstance(failure, Exception))
        ):
            return
        self.first = failure
        self.stop()

    def failed(self, index: int, failure: BaseException) -> None:
        """Keep the failure of call ``index`` for the outcome, then apply the stop rule."""
        if isinstance(failure, asyncio.CancelledError):
            if getattr(failure, "__notes__", None):
                self.carried[index] = failure
        else:
            self.errors[index] = failure
        self.react(failure)

    def stop(self) -> None:
        """Cancel every task of the group at once, so that no call starts another step.

        The calls not started yet never start. The task running this, if it is one of the
        group's, is spared: it is on its way out.
        """
        self.stopping = True
        self.items.clear()
        me = asyncio.current_task()
        for task in self.tasks:
            if task is not None and task is not me:
                task.cancel()

    def task_done(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of every task of the group."""
        self.pending -= 1
        if task.cancelled():
            if not self.stopping:
                failure = _cancellation(task)
                if self.direct:
                    self.own[task] = failure  # a cancellation can be read from its task once
                self.react(failure)
        else:
            raised = task.exception()
            if raised is not None:
                self.react(raised)
        if not self.pending and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def release(self) -> None:
        """Drop every reference to the calls' outcomes once the group has failed.

        The exception the group raises keeps the frames of this module alive through its
        traceback, and with them this group: were the group to hold that exception (or a task
        holding it), they would form a reference cycle that keeps every task, result and frame
        of the group alive until the next full garbage collection.
        """
        self.first = self.caught = self.waiter = None
        self.errors.clear()
        self.carried.clear()
        self.own.clear()
        self.tasks.clear()
        self.results.clear()
        self.items.clear()


def _cancellation(task: asyncio.Task[Any]) -> BaseException:
    # The CancelledError a cancelled task ended with, the same object, with its notes.
    try:
        task.result()
    except asyncio.CancelledError as exc:
        # Reading it added this frame to its traceback (and, through it, the frames of the
        # group): take that entry off again.
        if exc.__traceback__ is not None:
            exc.__traceback__ = exc.__traceback__.tb_next
        return exc
    raise AssertionError(f"{task!r} was not cancelled")


async def gather(
    call: Callable[[Any], Any],
    items: list[Any],
    fail_fast: bool,
    concurrency: int | None,
    label: str,
) -> list[Any]:
    """Call ``call(item)`` for each item (a list the group owns), at most ``concurrency`` at once.

    Calls start in the items' order. Without a limit, each awaitable gets its own task at once,
    as under ``asyncio.TaskGroup``. With one, that many workers take the next item in turn, so
    an item not reached when a fail-fast failure stopped the group is never called.
    """
    size = len(items)
    if not size:
        return []
    group = _Group(items, fail_fast)
    if concurrency is None or concurrency >= size:
        _spawn_all(group, call, items)
    else:
        _spawn_workers(group, call, items, concurrency)
    if group.pending:
        await _join(group)
    error = _finish(group, size, label)
    if error is None:
        return group.results
    try:
        raise error
    finally:
        # This frame stays alive in the traceback: it must not hold what it raised.
        del error, group, call, items


def _spawn_all(group: _Group, call: Callable[[Any], Any], items: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    tasks = group.tasks
    for index, item in enumerate(items):  # stop() empties items, which ends this loop
        try:
            outcome = call(item)
        except BaseException as exc:  # raised by the call itself, e.g. OutsideRunError
            tasks.append(None)
            group.failed(index, exc)
            continue
        if type(outcome) is CoroutineType:
            task = loop.create_task(outcome)
        elif inspect.isawaitable(outcome):
            task = loop.create_task(_wait(outcome))
        else:
            tasks.append(None)
            group.results[index] = outcome
            continue
        task.add_done_callback(group.task_done)
        group.pending += 1
        tasks.append(task)


async def _wait(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    finally:
        del awaitable  # a failed future in this frame would hold its exception's traceback


def _spawn_workers(
    group: _Group, call: Callable[[Any], Any], items: list[Any], concurrency: int
) -> None:
    # The workers share one iterator, and stop() ends it by emptying the list: the loop below
    # is as lean as a hand-written pool's, with no check of the group per call.
    pending = enumerate(items)
    results = group.results
    isawaitable = inspect.isawaitable
    # An action or an async function always gives an awaitable: no check per call then.
    asynchronous = isinstance(call, Action) or inspect.iscoroutinefunction(call)

    async def worker() -> None:
        outcome: Any = None
        for index, item in pending:
            try:
                if asynchronous:
                    results[index] = await call(item)
                    continue
                outcome = call(item)
                results[index] = (
                    await outcome
                    if type(outcome) is CoroutineType or isawaitable(outcome)
                    else outcome
                )
            except asyncio.CancelledError as exc:
                outcome = None
                if _being_cancelled():
                    if getattr(exc, "__notes__", None):
                        group.carried[index] = exc
                    raise  # the worker itself is being cancelled: by the group or its caller
                group.failed(index, exc)  # the call's own cancellation: the worker goes on
            except BaseException as exc:
                outcome = None
                group.failed(index, exc)
                if not isinstance(exc, Exception):
                    raise

    group.direct = False
    loop = asyncio.get_running_loop()
    for _ in range(concurrency):
        task = loop.create_task(worker())
        task.add_done_callback(group.task_done)
        group.pending += 1
        group.tasks.append(task)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _join(group: _Group) -> None:
    # Like asyncio.TaskGroup: if the caller is cancelled, cancel the tasks, once however often
    # the caller is cancelled, and wait until each has ended (its completion hooks fired). The
    # caller's first cancellation is kept, to be raised itself.
    loop = asyncio.get_running_loop()
    while group.pending:
        group.waiter = loop.create_future()
        try:
            await group.waiter
        except asyncio.CancelledError as exc:
            if group.caught is None:
                group.caught = exc
                if not group.stopping:
                    group.stop()


def _finish(group: _Group, size: int, label: str) -> BaseException | None:
    # What the group raises, or None when it returns its results.
    if group.direct:
        _collect(group)
    error = group.caught if group.caught is not None else group.first
    if error is None and group.stray:
        # As asyncio.gather does: there is no result to return for the cancelled call.
        error = asyncio.CancelledError()
    if error is not None:
        # The group raises one exception, the caller's cancellation or the first failure; any
        # other failure is named in a note on it, since Python has no slot for it there.
        _annotate(error, group, label)
    elif group.errors:
        # Without a first failure or a cancellation every failure is an Exception.
        errors = cast(dict[int, Exception], group.errors)
        indices = sorted(errors)
        error = ParallelError(
            f"{len(indices)} of {size} {label} failed", [errors[i] for i in indices], indices
        )
    else:
        return None
    group.release()
    return error


def _collect(group: _Group) -> None:
    results = group.results
    errors = group.errors
    own = group.own
    for index, task in enumerate(group.tasks):
        if task is None:
            continue
        if task.cancelled():
            cancelled = own.pop(task, None) if own else None
            if cancelled is None:
                cancelled = _cancellation(task)
            if getattr(cancelled, "__notes__", None):
                group.carried[index] = cancelled
            continue
        failure = task.exception()  # also marks the exception retrieved
        if failure is None:
            results[index] = task.result()
        else:
            errors[index] = failure


def _annotate(error: BaseException, group: _Group, label: str) -> None:
    # Names each failure other than ``error`` in a note on it, each followed by the notes it
    # carries (a nested group's, at any depth), and the notes of calls that ended cancelled.
    call = label[:-1]
    errors = group.errors
    carried = group.carried
    named = left = 0
    for index in sorted(errors.keys() | carried.keys()):
        failure = errors.get(index)
        if failure is error:
            failure = None
        cancelled = carried.get(index)
        if cancelled is error:
            cancelled = None
        if failure is None and cancelled is None:
            continue
        if named == _NOTED:
            left += 1
            continue
        named += 1
        if failure is not None:
            error.add_note(f"{call} {index} also failed: {failure!r}")
            for note in _notes_within(failure):
                error.add_note(f"in {call} {index}: {note}")
        if cancelled is not None:
            for note in _notes_within(cancelled):
                error.add_note(f"in {call} {index}: {note}")
    if left:
        error.add_note(f"... and {left} more {label}")


def _notes_within(exc: BaseException) -> list[str]:
    # The notes of ``exc`` and, for an exception group, of every exception in it.
    notes = getattr(exc, "__notes__", None)
    found = [str(note) for note in notes] if isinstance(notes, list | tuple) else []
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found += _notes_within(inner)
    return found


_NOTED = 10  # calls named in notes at most
