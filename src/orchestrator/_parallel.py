"""parallel() and map(): many calls at once, results in order, and exact failure rules."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextvars import ContextVar
from typing import Any

from . import _checks
from ._errors import ParallelError
from ._hooks import Hooks
from ._run import RUN, TASK_ID, Scope, new_scope, next_key, outside_run

Scopes = tuple[ContextVar[Scope], Callable[[int], Scope]]
"""Where a group's members make their calls: the variable to set, and member i's scope."""


def check_options(fail_fast: object, concurrency: object) -> int | None:
    """Validate the options shared by ``parallel()`` and ``map()``; return the limit."""
    _checks.flag("fail_fast", fail_fast)
    if concurrency is None:
        return None
    return _checks.count("concurrency", concurrency, minimum=1)


def require_run(frames: ContextVar[Scope], what: str) -> None:
    """Raise ``OutsideRunError`` unless a run of the orchestrator is in progress here."""
    if frames.get(None) is None:
        raise outside_run(what)


def member_scopes(frames: ContextVar[Scope], hooks: Hooks) -> Scopes | None:
    """The scopes of a group's members, made where the group is called; None if unobserved.

    The group takes one position among the calls of its caller's scope, and member ``i`` (from
    1) makes its calls under ``"<position>.<i>"``, so that a member's keys do not depend on when
    the other members run.
    """
    if not hooks.observes_calls:
        return None
    scope = frames.get()
    key = next_key(scope)
    run, task_id = scope[RUN], scope[TASK_ID]
    return frames, lambda i: new_scope(run, task_id, f"{key}.{i + 1}")


class Parallel:
    """A group of actions that run at the same time when the group is awaited.

    Made by ``Orchestrator.parallel``. Call it with no arguments to call every member without
    arguments, or with one argument per member to give member ``i`` argument ``i``.
    """

    def __init__(
        self,
        frames: ContextVar[Scope],
        hooks: Hooks,
        members: Sequence[Callable[..., Any]],
        *,
        fail_fast: bool,
        concurrency: int | None,
    ) -> None:
        self._frames = frames
        self._hooks = hooks
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
        start = (lambda i: members[i](args[i])) if args else (lambda i: members[i]())
        scopes = member_scopes(self._frames, self._hooks)
        return gather(
            len(members), start, self.fail_fast, self.concurrency, "parallel members", scopes
        )


class _Group:
    """The shared bookkeeping of one gather() call."""

    __slots__ = (
        "direct",
        "errors",
        "fail_fast",
        "first",
        "next",
        "pending",
        "results",
        "stopping",
        "stray",
        "tasks",
        "waiter",
    )

    def __init__(self, size: int, fail_fast: bool) -> None:
        self.fail_fast = fail_fast
        self.direct = True  # one task per call; False when workers share the calls
        self.results: list[Any] = [None] * size
        self.errors: dict[int, Exception] = {}
        self.first: BaseException | None = None  # what a stopped group raises
        self.stray = False  # a call ended cancelled although nobody here cancelled it
        self.next = 0  # the next index a worker takes
        self.pending = 0  # tasks not yet done
        self.stopping = False
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.waiter: asyncio.Future[None] | None = None

    def react(self, failure: BaseException) -> None:
        """Apply the stop rule to a failed call, which nobody in the group cancelled.

        Under fail-fast any failure stops the group and becomes what it raises; so does, always,
        a KeyboardInterrupt or SystemExit. A call's own cancellation is remembered.
        """
        cancelled = isinstance(failure, asyncio.CancelledError)
        self.stray = self.stray or cancelled
        if self.stopping or not (
            self.fail_fast or not (cancelled or isinstance(failure, Exception))
        ):
            return
        self.first = failure
        self.stop()

    def stop(self) -> None:
        """Cancel every task of the group at once, so that no call starts another step.

        The task running this, if it is one of the group's, is spared: it is on its way out.
        """
        self.stopping = True
        me = asyncio.current_task()
        for task in self.tasks:
            if task is not None and task is not me:
                task.cancel()

    def task_done(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of every task of the group."""
        self.pending -= 1
        if task.cancelled():
            if not self.stopping:
                self.react(asyncio.CancelledError())
        else:
            failure = task.exception()
            if failure is not None:
                self.react(failure)
        if not self.pending and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def gather(
    size: int,
    start: Callable[[int], Any],
    fail_fast: bool,
    concurrency: int | None,
    label: str,
    scopes: Scopes | None = None,
) -> list[Any]:
    """Call ``start(i)`` for each ``i`` below ``size``, at most ``concurrency`` at once.

    Calls start in index order. Without a limit, each awaitable gets its own task at once, as
    under ``asyncio.TaskGroup``. With one, that many workers take the next index in turn, so
    an index not reached when a fail-fast failure stopped the group is never called. With
    ``scopes``, each call starts in its member's scope.
    """
    if size == 0:
        return []
    group = _Group(size, fail_fast)
    if concurrency is None or concurrency >= size:
        _spawn_all(group, size, start, scopes)
    else:
        _spawn_workers(group, size, start, concurrency, scopes)
    cancelled = await _join(group)
    return _outcome(group, size, label, cancelled)


def _spawn_all(
    group: _Group, size: int, start: Callable[[int], Any], scopes: Scopes | None
) -> None:
    loop = asyncio.get_running_loop()
    tasks = group.tasks
    for index in range(size):
        if group.stopping:
            break
        # The call is made, and its task created, in the member's scope: the task keeps a copy.
        token = None if scopes is None else scopes[0].set(scopes[1](index))
        try:
            outcome = start(index)
        except BaseException as exc:  # raised by the call itself, e.g. OutsideRunError
            tasks.append(None)
            if isinstance(exc, Exception):
                group.errors[index] = exc
            group.react(exc)
            continue
        else:
            if not inspect.isawaitable(outcome):
                tasks.append(None)
                group.results[index] = outcome
                continue
            task = loop.create_task(outcome if inspect.iscoroutine(outcome) else _wait(outcome))
        finally:
            if token is not None:
                scopes[0].reset(token)  # type: ignore[index]
        task.add_done_callback(group.task_done)
        group.pending += 1
        tasks.append(task)


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _spawn_workers(
    group: _Group,
    size: int,
    start: Callable[[int], Any],
    concurrency: int,
    scopes: Scopes | None,
) -> None:
    if scopes is not None:
        # A worker is a task of its own, so its variable can hold each member's scope in turn.
        frames, scope = scopes
        plain = start

        def start(index: int) -> Any:
            frames.set(scope(index))
            return plain(index)

    async def worker() -> None:
        me = asyncio.current_task()
        while not group.stopping and group.next < size:
            index = group.next
            group.next += 1
            try:
                outcome = start(index)
                group.results[index] = await outcome if inspect.isawaitable(outcome) else outcome
            except asyncio.CancelledError as exc:
                if me is not None and me.cancelling():
                    raise  # the worker itself is being cancelled: by the group or its caller
                group.react(exc)  # the call's own cancellation: the worker goes on
            except Exception as exc:
                group.errors[index] = exc
                group.react(exc)
            except BaseException as exc:
                group.react(exc)
                raise

    group.direct = False
    loop = asyncio.get_running_loop()
    for _ in range(concurrency):
        task = loop.create_task(worker())
        task.add_done_callback(group.task_done)
        group.pending += 1
        group.tasks.append(task)


async def _join(group: _Group) -> bool:
    # Like asyncio.TaskGroup: if the caller is cancelled, cancel the tasks and wait until each
    # has ended (its completion hooks fired). Returns whether the caller was cancelled.
    loop = asyncio.get_running_loop()
    cancelled = False
    while group.pending:
        group.waiter = loop.create_future()
        try:
            await group.waiter
        except asyncio.CancelledError:
            cancelled = True
            group.stop()
    return cancelled


def _outcome(group: _Group, size: int, label: str, cancelled: bool) -> list[Any]:
    for index, task in enumerate(group.tasks):
        if task is None or task.cancelled():
            continue
        exc = task.exception()  # also marks the exception retrieved
        if group.direct:  # a worker filled in its results and errors itself
            if exc is None:
                group.results[index] = task.result()
            elif isinstance(exc, Exception):
                group.errors[index] = exc
    if cancelled or group.first is not None or group.stray:
        # The group raises one exception, the caller's cancellation or the first failure; any
        # other failure is named in a note on it, since Python has no slot for it there.
        # (A stray cancellation: as asyncio.gather does, there is no result to return.)
        error = group.first
        if cancelled or error is None:
            error = asyncio.CancelledError()
        others = [(i, e) for i, e in sorted(group.errors.items()) if e is not error]
        for index, other in others[:_NOTED]:
            error.add_note(f"{label[:-1]} {index} also failed: {other!r}")
        if len(others) > _NOTED:
            error.add_note(f"... and {len(others) - _NOTED} more {label}")
        raise error
    if group.errors:
        indices = sorted(group.errors)
        raise ParallelError(
            f"{len(indices)} of {size} {label} failed",
            [group.errors[i] for i in indices],
            indices,
        )
    return group.results


_NOTED = 10  # failures named in notes at most
