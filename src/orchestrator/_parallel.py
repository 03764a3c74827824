"""parallel() and map(): many calls at once, results in order, and exact failure rules."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
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

    __slots__ = ("errors", "first", "next", "results", "stopping", "workers")

    def __init__(self, size: int) -> None:
        self.results: list[Any] = [None] * size
        self.errors: dict[int, Exception] = {}
        self.first: BaseException | None = None
        self.next = 0
        self.stopping = False
        self.workers: list[asyncio.Task[None]] = []

    def stop(self, failure: BaseException) -> None:
        # Cancels the siblings synchronously, so none of them starts another step.
        self.first = failure
        self.stopping = True
        me = asyncio.current_task()
        for worker in self.workers:
            if worker is not me:
                worker.cancel()


async def gather(
    size: int,
    start: Callable[[int], Any],
    fail_fast: bool,
    concurrency: int | None,
    label: str,
) -> list[Any]:
    """Call ``start(i)`` for each ``i`` below ``size``, at most ``concurrency`` at once.

    Workers take the next index in turn, so calls start in index order and an index that was
    not reached when a fail-fast failure stopped the group is never called.
    """
    if size == 0:
        return []
    group = _Group(size)

    async def worker() -> None:
        while not group.stopping and group.next < size:
            index = group.next
            group.next += 1
            try:
                outcome = start(index)
                group.results[index] = await outcome if inspect.isawaitable(outcome) else outcome
            except Exception as exc:
                group.errors[index] = exc
                if fail_fast and not group.stopping:
                    group.stop(exc)
                    return
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                # KeyboardInterrupt, SystemExit: stop everything and let it out.
                if not group.stopping:
                    group.stop(exc)
                raise

    loop = asyncio.get_running_loop()
    group.workers = [loop.create_task(worker()) for _ in range(min(concurrency or size, size))]
    await _join(group)
    if group.first is not None:
        for task in group.workers:
            if not task.cancelled():
                task.exception()  # marks a re-raised BaseException as retrieved
        raise group.first
    if any(task.cancelled() for task in group.workers):
        # Cancelled from outside the group: nothing to return, as with asyncio.gather.
        raise asyncio.CancelledError()
    if group.errors:
        indices = sorted(group.errors)
        raise ParallelError(
            f"{len(indices)} of {size} {label} failed",
            [group.errors[i] for i in indices],
            indices,
        )
    return group.results


async def _join(group: _Group) -> None:
    # Like asyncio.TaskGroup: if the caller is cancelled, cancel the workers, wait until each
    # has ended (its completion hooks fired), and only then let the cancellation out.
    try:
        await asyncio.wait(group.workers)
    except asyncio.CancelledError:
        group.stopping = True
        for worker in group.workers:
            worker.cancel()
        while True:
            try:
                await asyncio.wait(group.workers)
                break
            except asyncio.CancelledError:
                continue
        raise
