"""parallel() and map(): many calls at once, results in order, and exact failure rules."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

from . import _checks
from ._errors import OutsideRunError, ParallelError
from ._run import Frame


def check_options(fail_fast: object, concurrency: object) -> int | None:
    """Validate the options shared by ``parallel()`` and ``map()``; return the limit."""
    _checks.flag("fail_fast", fail_fast)
    if concurrency is None:
        return None
    return _checks.count("concurrency", concurrency, minimum=1)


def require_run(frames: ContextVar[Frame], what: str) -> None:
    """Raise ``OutsideRunError`` unless a run of the orchestrator is in progress here."""
    if frames.get(None) is None:
        raise OutsideRunError(
            f"{what} was called outside a run of its orchestrator; "
            "call it from inside `await orchestrator.run(...)`"
        )


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

    async def __call__(self, *args: Any) -> list[Any]:
        """Run every member and return their results, in the members' order.

        Raises:
            ValueError: The number of arguments is neither 0 nor the number of members.
            OutsideRunError: No run of the orchestrator is in progress here.
            Exception: With ``fail_fast``, the first failure itself.
            ParallelError: Without ``fail_fast``, every failure, when there was any.

        """
        members = self.members
        if args and len(args) != len(members):
            raise ValueError(
                f"a parallel group of {len(members)} members was called with {len(args)} "
                f"arguments; pass no arguments, or exactly {len(members)} (one per member)"
            )
        require_run(self._frames, "a parallel group")
        if args:
            return await gather(
                len(members),
                lambda i: members[i](args[i]),
                self.fail_fast,
                self.concurrency,
                "parallel members",
            )
        return await gather(
            len(members),
            lambda i: members[i](),
            self.fail_fast,
            self.concurrency,
            "parallel members",
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
        "tasks",
        "waiter",
    )

    def __init__(self, size: int, fail_fast: bool) -> None:
        self.fail_fast = fail_fast
        self.direct = True  # one task per call; False when workers share the calls
        self.results: list[Any] = [None] * size
        self.errors: dict[int, Exception] = {}
        self.first: BaseException | None = None  # what a stopped group raises
        self.next = 0  # the next index a worker takes
        self.pending = 0  # tasks not yet done
        self.stopping = False
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.waiter: asyncio.Future[None] | None = None

    def stop(self, failure: BaseException | None) -> None:
        """Stop the group: cancel its tasks at once, so none of them starts another step."""
        if failure is not None and self.first is None:
            self.first = failure
        self.stopping = True
        me = asyncio.current_task()
        for task in self.tasks:
            if task is not None and task is not me:
                task.cancel()

    def fail(self, index: int, exc: BaseException) -> None:
        """Record the failure of call ``index``; stop the group if the failure requires it."""
        if isinstance(exc, Exception):
            self.errors[index] = exc
            if self.fail_fast and not self.stopping:
                self.stop(exc)
        elif not self.stopping:
            self.stop(exc)  # KeyboardInterrupt, SystemExit: stop everything and let it out

    def task_done(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of the tasks of an unlimited group: react to a failure at once."""
        self.pending -= 1
        if not task.cancelled():
            exc = task.exception()
            if (
                exc is not None
                and not self.stopping
                and (self.fail_fast or not isinstance(exc, Exception))
            ):
                self.stop(exc)
        if not self.pending and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def gather(
    size: int,
    start: Callable[[int], Any],
    fail_fast: bool,
    concurrency: int | None,
    label: str,
) -> list[Any]:
    """Call ``start(i)`` for each ``i`` below ``size``, at most ``concurrency`` at once.

    Calls start in index order. Without a limit, each awaitable gets its own task at once, as
    under ``asyncio.TaskGroup``. With one, that many workers take the next index in turn, so
    an index not reached when a fail-fast failure stopped the group is never called.
    """
    if size == 0:
        return []
    group = _Group(size, fail_fast)
    if concurrency is None or concurrency >= size:
        _spawn_all(group, size, start)
    else:
        _spawn_workers(group, size, start, concurrency)
    await _join(group)
    return _outcome(group, size, label)


def _spawn_all(group: _Group, size: int, start: Callable[[int], Any]) -> None:
    loop = asyncio.get_running_loop()
    tasks = group.tasks
    for index in range(size):
        if group.stopping:
            break
        try:
            outcome = start(index)
        except Exception as exc:  # raised at the call itself, e.g. OutsideRunError
            tasks.append(None)
            group.fail(index, exc)
            continue
        if not inspect.isawaitable(outcome):
            tasks.append(None)
            group.results[index] = outcome
            continue
        task = loop.create_task(outcome if inspect.iscoroutine(outcome) else _wait(outcome))
        task.add_done_callback(group.task_done)
        group.pending += 1
        tasks.append(task)


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _spawn_workers(group: _Group, size: int, start: Callable[[int], Any], concurrency: int) -> None:
    async def worker() -> None:
        while not group.stopping and group.next < size:
            index = group.next
            group.next += 1
            try:
                outcome = start(index)
                group.results[index] = await outcome if inspect.isawaitable(outcome) else outcome
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                group.fail(index, exc)
                if not isinstance(exc, Exception):
                    raise

    group.direct = False
    loop = asyncio.get_running_loop()
    for _ in range(concurrency):
        task = loop.create_task(worker())
        task.add_done_callback(group.task_done)
        group.pending += 1
        group.tasks.append(task)


async def _join(group: _Group) -> None:
    # Like asyncio.TaskGroup: if the caller is cancelled, cancel the tasks, wait until each has
    # ended (its completion hooks fired), and only then let the cancellation out.
    loop = asyncio.get_running_loop()
    cancelled = False
    while group.pending:
        group.waiter = loop.create_future()
        try:
            await group.waiter
        except asyncio.CancelledError:
            cancelled = True
            group.stop(None)
    if cancelled:
        raise asyncio.CancelledError()


def _outcome(group: _Group, size: int, label: str) -> list[Any]:
    cancelled_from_outside = False
    for index, task in enumerate(group.tasks):
        if task is None:
            continue
        if task.cancelled():
            cancelled_from_outside = cancelled_from_outside or not group.stopping
            continue
        exc = task.exception()  # also marks the exception retrieved
        if group.direct:  # a worker filled in its results and errors itself
            if exc is None:
                group.results[index] = task.result()
            elif isinstance(exc, Exception):
                group.errors[index] = exc
    if group.first is not None:
        raise group.first
    if cancelled_from_outside:
        # Cancelled by someone other than the group: nothing to return, as with asyncio.gather.
        raise asyncio.CancelledError()
    if group.errors:
        indices = sorted(group.errors)
        raise ParallelError(
            f"{len(indices)} of {size} {label} failed",
            [group.errors[i] for i in indices],
            indices,
        )
    return group.results
