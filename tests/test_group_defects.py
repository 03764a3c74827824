"""parallel() and map(): no failure lost at any depth, the caller's cancellation kept as it was."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from orchestrator import Orchestrator


class WorkError(Exception):
    """What a failing sibling raises in these tests."""


class Halt(BaseException):
    """A user's exception that is not an ``Exception``."""


def cancelled_run(orch: Orchestrator[Any], body: Any, ready: asyncio.Event) -> Any:
    """Run ``body(ready)``, cancel the run once ``ready`` is set, and return what it raised."""

    async def main() -> BaseException:
        task = asyncio.create_task(orch.run(body, ready))
        await asyncio.wait_for(ready.wait(), 1.0)
        task.cancel("shutdown requested")
        with pytest.raises(asyncio.CancelledError) as info:
            await asyncio.wait_for(task, 1.0)
        return info.value

    return asyncio.run(main())


# A nested group's failures reach the outermost caller -------------------------------------


def nested_group(orch: Orchestrator[Any], depth: int, ready: asyncio.Event) -> Callable[[], Any]:
    """A member for a group ``depth`` levels deep in all: a group of groups whose innermost
    group has two members that raise ZeroDivisionError while they are cancelled. ``ready`` is
    set once both wait."""
    waiting: list[int] = []

    async def breaks_when_cancelled() -> None:
        waiting.append(1)
        if len(waiting) == 2:
            ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            1 / 0  # noqa: B018

    def member() -> Awaitable[list[Any]]:
        return orch.parallel([breaks_when_cancelled, breaks_when_cancelled])()

    for _ in range(depth - 2):
        member = (lambda inner: lambda: orch.parallel([inner])())(member)
    return member


def inner_notes(depth: int) -> list[str]:
    path = "in parallel member 0: " * (depth - 1)
    return [
        f"{path}parallel member {i} also failed: ZeroDivisionError('division by zero')"
        for i in (0, 1)
    ]


@pytest.mark.parametrize("concurrency", [None, 2])
@pytest.mark.parametrize("depth", [2, 3])
def test_a_cancelled_run_names_the_failures_of_nested_groups_in_notes(
    depth: int, concurrency: int | None
) -> None:
    orch = Orchestrator()

    async def body(ready: asyncio.Event) -> None:
        async def waits() -> None:
            await asyncio.Event().wait()

        member = nested_group(orch, depth, ready)
        await orch.parallel([member, waits], concurrency=concurrency)()

    error = cancelled_run(orch, body, asyncio.Event())
    assert error.__notes__ == inner_notes(depth)


@pytest.mark.parametrize("concurrency", [None, 2])
@pytest.mark.parametrize("depth", [2, 3])
def test_fail_fast_names_the_failures_of_nested_groups_in_notes_on_the_first_failure(
    depth: int, concurrency: int | None
) -> None:
    orch = Orchestrator()
    ready = asyncio.Event()
    boom = WorkError("sibling")

    async def fails() -> None:
        await ready.wait()
        raise boom

    async def body() -> None:
        ready.clear()
        member = nested_group(orch, depth, ready)
        await orch.parallel([member, fails], fail_fast=True, concurrency=concurrency)()

    with pytest.raises(WorkError) as info:
        orch.run_sync(body)
    assert info.value is boom
    assert info.value.__notes__ == inner_notes(depth)


def test_an_exception_named_in_a_note_brings_its_own_notes() -> None:
    orch = Orchestrator()
    boom = WorkError("first")
    ready = asyncio.Event()

    async def fails_while_cancelled() -> None:
        try:
            ready.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleanup = KeyError("cleanup")
            cleanup.add_note("the connection was already closed")
            raise cleanup from None

    async def fails() -> None:
        await ready.wait()
        raise boom

    async def body() -> None:
        ready.clear()
        await orch.parallel([fails_while_cancelled, fails], fail_fast=True)()

    with pytest.raises(WorkError) as info:
        orch.run_sync(body)
    assert info.value.__notes__ == [
        "parallel member 0 also failed: KeyError('cleanup')",
        "in parallel member 0: the connection was already closed",
    ]


# A BaseException raised while being cancelled ----------------------------------------------


@pytest.mark.parametrize("concurrency", [None, 2])
@pytest.mark.parametrize("kind", [Halt, GeneratorExit])
def test_a_base_exception_raised_while_cancelled_is_named_in_a_note(
    kind: type[BaseException], concurrency: int | None
) -> None:
    orch = Orchestrator()
    boom = WorkError("first")
    ready = asyncio.Event()

    async def raises_while_cancelled() -> None:
        try:
            ready.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise kind("while cancelled") from None

    async def fails() -> None:
        await ready.wait()
        raise boom

    async def body() -> None:
        ready.clear()
        await orch.parallel(
            [raises_while_cancelled, fails], fail_fast=True, concurrency=concurrency
        )()

    with pytest.raises(WorkError) as info:
        orch.run_sync(body)
    assert info.value.__notes__ == [f"parallel member 0 also failed: {kind('while cancelled')!r}"]


# The caller's own CancelledError ---------------------------------------------------------


@pytest.mark.parametrize("concurrency", [None, 1])
@pytest.mark.parametrize("kind", ["parallel", "map"])
def test_a_cancelled_group_raises_the_callers_own_cancellation_with_its_message_and_context(
    kind: str, concurrency: int | None
) -> None:
    orch = Orchestrator()
    handled = KeyError("being handled")

    async def body(ready: asyncio.Event) -> None:
        async def waits() -> None:
            ready.set()
            await asyncio.Event().wait()

        try:
            raise handled
        except KeyError:
            if kind == "parallel":
                await orch.parallel([waits, waits], concurrency=concurrency)()
            else:
                await orch.map(lambda member: member(), [waits, waits], concurrency=concurrency)

    error = cancelled_run(orch, body, asyncio.Event())
    assert error.args == ("shutdown requested",)
    assert error.__context__ is handled


# A second cancellation of the caller ----------------------------------------------------


@pytest.mark.parametrize("concurrency", [None, 1])
def test_a_second_cancellation_of_the_caller_does_not_cut_the_members_cleanup_short(
    concurrency: int | None,
) -> None:
    orch = Orchestrator()
    started: list[int] = []
    closed: list[int] = []
    seen: dict[str, int] = {}

    async def main() -> None:
        waiting = asyncio.Event()
        closing = asyncio.Event()
        release = asyncio.Event()  # lets the members' cleanup finish

        async def member(index: int) -> None:
            started.append(index)
            if len(started) == (concurrency or 2):
                waiting.set()
            try:
                await asyncio.Event().wait()
            finally:
                if len(started) - len(closed) == 1 or index == 1:
                    closing.set()
                await release.wait()  # the conn.close() of a real member
                closed.append(index)

        async def body() -> None:
            try:
                await orch.map(member, [0, 1], concurrency=concurrency)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                assert current is not None
                seen["cancelling"] = current.cancelling()
                raise

        task = asyncio.create_task(orch.run(body))
        await asyncio.wait_for(waiting.wait(), 1.0)
        task.cancel()
        await asyncio.wait_for(closing.wait(), 1.0)
        task.cancel()  # while the members are still unwinding the first
        for _ in range(5):
            await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    assert sorted(closed) == sorted(started)
    assert seen == {"cancelling": 2}


# No reference cycle through what a group raises ---------------------------------------------


@contextmanager
def no_garbage_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


def remember_current_task(tasks: list[Any]) -> None:
    # A frame of a member must not hold its own task: that would be a cycle of this test's own.
    tasks.append(weakref.ref(current_task()))


def failed_group(kind: str, concurrency: int | None, tasks: list[Any]) -> BaseException:
    """Run a group that raises as ``kind`` says; return what it raised, caught in the body.

    ``tasks`` receives a weak reference to the task of each member.
    """
    orch = Orchestrator()
    caller: list[asyncio.Task[Any]] = []  # emptied before the body returns

    async def member(role: str) -> int:
        remember_current_task(tasks)
        await asyncio.sleep(0)
        if role == "fails":
            raise WorkError("first")
        if role == "halts":
            raise Halt("stop")
        if role == "cancels":
            caller[0].cancel()
        await asyncio.Event().wait()
        return 1

    async def body() -> BaseException:
        caller.append(current_task())
        roles = {"first failure": "fails", "base exception": "halts", "cancellation": "cancels"}
        try:
            await orch.map(
                member, ["waits", roles[kind], "waits"], fail_fast=True, concurrency=concurrency
            )
        except (WorkError, Halt, asyncio.CancelledError) as exc:
            return exc
        finally:
            caller.clear()
        raise AssertionError("the group did not raise")

    return orch.run_sync(body)


KINDS = ["first failure", "base exception", "cancellation"]


@pytest.mark.parametrize("concurrency", [None, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_what_a_group_raised_is_referred_to_by_nothing_of_the_group(
    kind: str, concurrency: int | None
) -> None:
    exc = failed_group(kind, concurrency, [])
    assert gc.get_referrers(exc) == []


@pytest.mark.parametrize("concurrency", [None, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_what_a_group_raised_and_its_tasks_are_freed_without_the_garbage_collector(
    kind: str, concurrency: int | None
) -> None:
    tasks: list[Any] = []
    with no_garbage_collector():
        exc = failed_group(kind, concurrency, tasks)
        raised = weakref.ref(exc)
        del exc  # no frame of its traceback may keep it, nor the group's tasks
        assert raised() is None
        assert tasks
        assert [task() for task in tasks] == [None] * len(tasks)
