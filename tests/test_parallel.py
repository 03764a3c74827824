"""parallel() and map(): arguments, order, concurrency, fail-fast and failure groups."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from orchestrator import ActionTimeout, Orchestrator, OutsideRunError, ParallelError
from orchestrator.testing import EventRecorder


class WorkError(Exception):
    """What a failing member raises in these tests."""


def reverse_finishers(orch: Orchestrator[Any], count: int, finished: list[int]) -> list[Any]:
    """``count`` actions where member i returns ``f"r{i}"`` only after member i + 1 finished."""
    gates = [asyncio.Event() for _ in range(count)]

    def make(index: int) -> Any:
        async def member() -> str:
            if index + 1 < count:
                await gates[index].wait()
            finished.append(index)
            if index > 0:
                gates[index - 1].set()
            return f"r{index}"

        return orch.action(member, name=f"member{index}")

    return [make(i) for i in range(count)]


# Shape and arguments ---------------------------------------------------------------------


def cancel_once_started(orch: Orchestrator[Any], body: Any) -> set[asyncio.Task[Any]]:
    """Run ``body(event)``, cancel the run once the body sets the event, and return the tasks
    still alive after the cancellation came out."""

    async def main() -> set[asyncio.Task[Any]]:
        started = asyncio.Event()
        task = asyncio.create_task(orch.run(body, started))
        await asyncio.wait_for(started.wait(), 1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1.0)
        return asyncio.all_tasks() - {asyncio.current_task()}

    return asyncio.run(main())


def test_parallel_returns_an_awaitable_callable() -> None:
    orch = Orchestrator()

    @orch.action
    async def one() -> int:
        return 1

    group = orch.parallel([one, one])
    assert callable(group)

    async def body() -> list[Any]:
        pending = group()
        assert isinstance(pending, Awaitable)
        return await pending

    assert orch.run_sync(body) == [1, 1]


def test_called_without_arguments_each_member_is_called_without_arguments() -> None:
    orch = Orchestrator()
    seen: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    @orch.action
    async def first(*args: Any, **kwargs: Any) -> str:
        seen.append(("first", args, kwargs))
        return "a"

    @orch.action
    def second(*args: Any, **kwargs: Any) -> str:
        seen.append(("second", args, kwargs))
        return "b"

    async def body() -> list[Any]:
        return await orch.parallel([first, second])()

    assert orch.run_sync(body) == ["a", "b"]
    assert sorted(seen) == [("first", (), {}), ("second", (), {})]


def test_called_with_one_argument_per_member_member_i_gets_argument_i() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def get_user_profile(user_id: str) -> dict[str, str]:
        return {"id": user_id, "name": "Ada"}

    @orch.action
    async def get_shipping_options(country: str) -> list[str]:
        return [f"{country}-standard", f"{country}-express"]

    async def body() -> list[Any]:
        return await orch.parallel([get_user_profile, get_shipping_options])("user42", "USA")

    assert orch.run_sync(body) == [
        {"id": "user42", "name": "Ada"},
        ["USA-standard", "USA-express"],
    ]
    begun = {e.name: e.args for e in recorder.events("task_begin")}
    assert begun == {"get_user_profile": ("user42",), "get_shipping_options": ("USA",)}


@pytest.mark.parametrize(("members", "arguments"), [(3, 2), (2, 1), (2, 3)])
def test_wrong_argument_count_raises_value_error_giving_both_counts(
    members: int, arguments: int
) -> None:
    orch = Orchestrator()
    called: list[Any] = []

    @orch.action
    async def member(*args: Any) -> None:
        called.append(args)

    async def body() -> None:
        await orch.parallel([member] * members)(*range(arguments))

    with pytest.raises(ValueError, match="argument") as caught:
        orch.run_sync(body)
    message = str(caught.value)
    assert re.search(rf"\b{members}\b", message)
    assert re.search(rf"\b{arguments}\b", message)
    assert called == []


def test_results_come_in_member_order_when_members_finish_in_reverse() -> None:
    orch = Orchestrator()
    finished: list[int] = []
    members = reverse_finishers(orch, 4, finished)

    async def body() -> list[Any]:
        return await asyncio.wait_for(orch.parallel(members)(), 1.0)

    assert orch.run_sync(body) == ["r0", "r1", "r2", "r3"]
    assert finished == [3, 2, 1, 0]


def test_empty_group_gives_an_empty_list() -> None:
    orch = Orchestrator()

    async def body() -> list[Any]:
        return await orch.parallel([])()

    assert orch.run_sync(body) == []


def test_plain_async_functions_and_sync_callables_work_as_members() -> None:
    orch = Orchestrator()

    async def plain_async() -> str:
        await asyncio.sleep(0)
        return "async"

    def plain_sync() -> str:
        return "sync"

    class Callable_:
        def __call__(self) -> str:
            return "object"

    def add(a: int, b: int) -> int:
        return a + b

    async def body() -> list[Any]:
        return await orch.parallel(
            [plain_async, plain_sync, lambda: "lambda", Callable_(), functools.partial(add, 1, 2)]
        )()

    assert orch.run_sync(body) == ["async", "sync", "lambda", "object", 3]


def test_plain_members_get_their_arguments() -> None:
    orch = Orchestrator()

    async def double(x: int) -> int:
        return 2 * x

    def negate(x: int) -> int:
        return -x

    async def body() -> list[Any]:
        return await orch.parallel([double, negate])(5, 7)

    assert orch.run_sync(body) == [10, -7]


def test_members_really_run_concurrently() -> None:
    orch = Orchestrator()
    signal = asyncio.Event()

    @orch.action
    async def waits_for_b() -> str:
        await signal.wait()
        return "a"

    @orch.action
    async def sets_signal() -> str:
        signal.set()
        return "b"

    async def body() -> list[Any]:
        signal.clear()
        return await asyncio.wait_for(orch.parallel([waits_for_b, sets_signal])(), 1.0)

    assert orch.run_sync(body) == ["a", "b"]


# fail_fast=True --------------------------------------------------------------------------


def test_fail_fast_cancels_siblings_waits_for_them_and_raises_the_first_error_itself() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    error = WorkError("first failure")
    started = asyncio.Event()
    cleanup_done: list[str] = []

    @orch.action
    async def slow() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)
            cleanup_done.append("slow")
        return "never"

    fast_done = asyncio.Event()

    @orch.action
    async def failing() -> None:
        await started.wait()
        await fast_done.wait()
        raise error

    @orch.action
    async def fast() -> str:
        fast_done.set()
        return "fast"

    state_at_catch: dict[str, Any] = {}

    async def body() -> None:
        started.clear()
        try:
            await asyncio.wait_for(orch.parallel([slow, failing, fast], fail_fast=True)(), 1.0)
        except WorkError as exc:
            state_at_catch["error"] = exc
            state_at_catch["cleanup"] = list(cleanup_done)
            state_at_catch["completions"] = {
                e.name: e.error for e in recorder.events("task_completion")
            }
            raise

    with pytest.raises(WorkError) as caught:
        orch.run_sync(body)
    assert caught.value is error
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert state_at_catch["error"] is error
    assert state_at_catch["cleanup"] == ["slow"]
    completions = state_at_catch["completions"]
    assert set(completions) == {"slow", "failing", "fast"}
    assert isinstance(completions["slow"], asyncio.CancelledError)
    assert completions["failing"] is error
    assert completions["fast"] is None
    begun = sorted(e.name for e in recorder.events("task_begin"))
    assert begun == ["failing", "fast", "slow"]


def test_fail_fast_keeps_a_different_error_raised_by_a_cancelled_sibling() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    error = WorkError("first failure")
    cleanup_error = RuntimeError("cleanup failed")
    started = asyncio.Event()

    @orch.action
    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise cleanup_error from None

    @orch.action
    async def failing() -> None:
        await started.wait()
        raise error

    async def body() -> None:
        started.clear()
        await asyncio.wait_for(orch.parallel([slow, failing], fail_fast=True)(), 1.0)

    with pytest.raises(WorkError) as caught:
        orch.run_sync(body)
    assert caught.value is error
    completions = {e.name: e for e in recorder.events("task_completion")}
    assert completions["slow"].error is cleanup_error
    assert completions["failing"].error is error


# fail_fast=False -------------------------------------------------------------------------


def test_without_fail_fast_everything_runs_and_all_failures_are_grouped_in_member_order() -> None:
    orch = Orchestrator()
    first_error = WorkError("member 1")
    second_error = KeyError("member 3")
    member3_failed = asyncio.Event()
    slow_finished: list[bool] = []

    @orch.action
    async def ok() -> str:
        return "ok"

    @orch.action
    async def fails_second_in_time() -> None:
        await member3_failed.wait()
        raise first_error

    @orch.action
    async def slow() -> str:
        await member3_failed.wait()
        await asyncio.sleep(0.01)
        slow_finished.append(True)
        return "slow"

    @orch.action
    async def fails_first_in_time() -> None:
        member3_failed.set()
        raise second_error

    async def body() -> None:
        member3_failed.clear()
        await orch.parallel([ok, fails_second_in_time, slow, fails_first_in_time])()

    with pytest.raises(ParallelError) as caught:
        orch.run_sync(body)
    group = caught.value
    assert isinstance(group, ExceptionGroup)
    assert slow_finished == [True]
    assert len(group.exceptions) == 2
    assert group.exceptions[0] is first_error
    assert group.exceptions[1] is second_error
    assert group.indices == (1, 3)


def test_without_fail_fast_a_single_failure_is_still_a_group() -> None:
    orch = Orchestrator()
    error = WorkError("only one")

    @orch.action
    async def ok() -> str:
        return "ok"

    @orch.action
    async def fails() -> None:
        raise error

    async def body() -> None:
        await orch.parallel([ok, fails])()

    with pytest.raises(ParallelError) as caught:
        orch.run_sync(body)
    assert isinstance(caught.value, ExceptionGroup)
    assert caught.value.exceptions == (error,)
    assert caught.value.indices == (1,)


def test_without_fail_fast_except_star_works() -> None:
    orch = Orchestrator()
    value_error = ValueError("bad value")
    key_error = KeyError("missing")

    def raises(exc: Exception) -> Callable[[], None]:
        def member() -> None:
            raise exc

        return member

    caught: dict[str, Any] = {}

    async def body() -> None:
        try:
            await orch.parallel([raises(value_error), lambda: 1, raises(key_error)])()
        except* ValueError as group:
            caught["value"] = group
        except* KeyError as group:
            caught["key"] = group

    orch.run_sync(body)
    assert caught["value"].exceptions == (value_error,)
    assert caught["key"].exceptions == (key_error,)
    assert isinstance(caught["value"], ParallelError)
    assert caught["value"].indices == (0,)
    assert caught["key"].indices == (2,)


# concurrency -----------------------------------------------------------------------------


def _counting_member(orch: Orchestrator[Any]) -> tuple[Any, dict[str, int]]:
    # An action that records how many of its calls run at once, at the most.
    seen = {"active": 0, "most": 0}

    @orch.action
    async def member(index: int) -> int:
        seen["active"] += 1
        seen["most"] = max(seen["most"], seen["active"])
        for _ in range(3):
            await asyncio.sleep(0)
        seen["active"] -= 1
        return index * 10

    return member, seen


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_concurrency_limits_how_many_members_run_at_once(limit: int) -> None:
    orch = Orchestrator()
    member, seen = _counting_member(orch)

    async def body() -> list[Any]:
        return await orch.parallel([member] * 7, concurrency=limit)(*range(7))

    assert orch.run_sync(body) == [0, 10, 20, 30, 40, 50, 60]
    assert seen["most"] == limit


def test_map_concurrency_limits_how_many_items_run_at_once() -> None:
    orch = Orchestrator()
    member, seen = _counting_member(orch)

    async def body() -> list[Any]:
        return await orch.map(member, range(6), concurrency=2)

    assert orch.run_sync(body) == [0, 10, 20, 30, 40, 50]
    assert seen["most"] == 2


# map -------------------------------------------------------------------------------------


def test_map_returns_results_in_input_order() -> None:
    orch = Orchestrator()
    finished: list[int] = []
    gates: dict[int, asyncio.Event] = {}

    @orch.action
    async def work(item: int) -> str:
        # Item i waits until item i + 1 finished, so items finish in reverse order.
        if item + 1 < 4:
            await gates[item].wait()
        finished.append(item)
        if item > 0:
            gates[item - 1].set()
        return f"item{item}"

    async def body() -> list[Any]:
        gates.update({i: asyncio.Event() for i in range(4)})
        return await asyncio.wait_for(orch.map(work, [0, 1, 2, 3]), 1.0)

    assert orch.run_sync(body) == ["item0", "item1", "item2", "item3"]
    assert finished == [3, 2, 1, 0]


def test_map_over_a_generator() -> None:
    orch = Orchestrator()

    @orch.action
    async def square(x: int) -> int:
        return x * x

    async def body() -> list[Any]:
        return await orch.map(square, (n for n in range(5)))

    assert orch.run_sync(body) == [0, 1, 4, 9, 16]


def test_map_over_an_empty_list_gives_an_empty_list() -> None:
    orch = Orchestrator()

    @orch.action
    async def square(x: int) -> int:
        return x * x

    async def body() -> list[Any]:
        return await orch.map(square, [])

    assert orch.run_sync(body) == []


def test_map_without_fail_fast_groups_all_failures_in_input_order() -> None:
    orch = Orchestrator()
    errors = {1: WorkError("item 1"), 3: WorkError("item 3")}
    done: list[int] = []

    @orch.action
    async def work(item: int) -> int:
        if item in errors:
            raise errors[item]
        done.append(item)
        return item

    async def body() -> list[Any]:
        return await orch.map(work, [0, 1, 2, 3, 4])

    with pytest.raises(ParallelError) as caught:
        orch.run_sync(body)
    assert isinstance(caught.value, ExceptionGroup)
    assert caught.value.exceptions == (errors[1], errors[3])
    assert caught.value.indices == (1, 3)
    assert sorted(done) == [0, 2, 4]


def test_map_with_fail_fast_raises_the_first_error_itself() -> None:
    orch = Orchestrator()
    error = WorkError("item 2")

    @orch.action
    async def work(item: int) -> int:
        if item == 2:
            raise error
        await asyncio.Event().wait()
        return item

    async def body() -> list[Any]:
        return await asyncio.wait_for(orch.map(work, [0, 1, 2, 3], fail_fast=True), 1.0)

    with pytest.raises(WorkError) as caught:
        orch.run_sync(body)
    assert caught.value is error


def test_map_with_fail_fast_and_concurrency_one_never_begins_later_items() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    error = WorkError("item 2")
    called: list[int] = []

    @orch.action
    async def work(item: int) -> int:
        called.append(item)
        if item == 2:
            raise error
        return item

    async def body() -> list[Any]:
        return await orch.map(work, [0, 1, 2, 3, 4], concurrency=1, fail_fast=True)

    with pytest.raises(WorkError) as caught:
        orch.run_sync(body)
    assert caught.value is error
    assert called == [0, 1, 2]
    assert [e.args for e in recorder.events("task_begin")] == [(0,), (1,), (2,)]
    assert len(recorder.events("task_completion")) == 3


def test_map_fail_fast_sibling_raising_while_cancelled_starts_no_later_items() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    error = WorkError("item 1")
    cleanup_error = RuntimeError("item 0 cleanup failed")
    started = asyncio.Event()
    called: list[int] = []

    @orch.action
    async def work(item: int) -> int:
        called.append(item)
        if item == 0:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise cleanup_error from None
        if item == 1:
            await started.wait()
            raise error
        await asyncio.Event().wait()
        return item

    async def body() -> list[Any]:
        started.clear()
        return await asyncio.wait_for(
            orch.map(work, [0, 1, 2, 3], concurrency=2, fail_fast=True), 1.0
        )

    with pytest.raises(WorkError) as caught:
        orch.run_sync(body)
    assert caught.value is error
    assert called == [0, 1]
    assert [e.args for e in recorder.events("task_begin")] == [(0,), (1,)]
    completions = {e.task_id: e.error for e in recorder.events("task_completion")}
    begins = {e.args[0]: e.task_id for e in recorder.events("task_begin")}
    assert completions[begins[0]] is cleanup_error
    assert completions[begins[1]] is error


# Outside a run, cancellation -------------------------------------------------------------


def test_parallel_outside_a_run_raises_outside_run_error() -> None:
    orch = Orchestrator()
    called: list[bool] = []

    @orch.action
    async def member() -> None:
        called.append(True)

    group = orch.parallel([member])
    with pytest.raises(OutsideRunError, match="outside a run"):
        asyncio.run(group())
    assert called == []


def test_map_outside_a_run_raises_outside_run_error() -> None:
    orch = Orchestrator()
    called: list[int] = []

    @orch.action
    async def member(item: int) -> None:
        called.append(item)

    with pytest.raises(OutsideRunError, match="outside a run"):
        asyncio.run(orch.map(member, [1, 2]))
    assert called == []


def test_parallel_of_another_orchestrator_run_is_outside_its_run() -> None:
    orch = Orchestrator()
    other = Orchestrator()

    async def body() -> list[Any]:
        return await orch.parallel([lambda: 1])()

    with pytest.raises(OutsideRunError):
        other.run_sync(body)


def test_cancelling_the_run_cancels_every_parallel_member_and_leaves_no_task() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    cleaned: list[int] = []

    @orch.action
    async def member(index: int, started: list[int], all_started: asyncio.Event) -> None:
        started.append(index)
        if len(started) == 3:
            all_started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(index)

    async def body(all_started: asyncio.Event) -> None:
        started: list[int] = []
        await orch.map(lambda i: member(i, started, all_started), [0, 1, 2])

    assert cancel_once_started(orch, body) == set()
    assert sorted(cleaned) == [0, 1, 2]
    completions = recorder.events("task_completion")
    assert len(completions) == 3
    assert all(isinstance(e.error, asyncio.CancelledError) for e in completions)
    begins = sorted(e.task_id for e in recorder.events("task_begin"))
    assert sorted(e.task_id for e in completions) == begins
    assert recorder.points()[-2:] == ["process_error", "process_completion"]


def test_cancelling_the_run_cancels_every_member_of_a_parallel_group() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    started: list[str] = []

    def make(name: str) -> Any:
        async def member(all_started: asyncio.Event) -> None:
            started.append(name)
            if len(started) == 3:
                all_started.set()
            await asyncio.Event().wait()

        return orch.action(member, name=name)

    members = [make(n) for n in ("a", "b", "c")]

    async def body(all_started: asyncio.Event) -> None:
        await orch.parallel(members)(all_started, all_started, all_started)

    assert cancel_once_started(orch, body) == set()
    completions = {e.name: e.error for e in recorder.events("task_completion")}
    assert set(completions) == {"a", "b", "c"}
    assert all(isinstance(error, asyncio.CancelledError) for error in completions.values())


# Bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_fast", [1, 0, "yes", None])
def test_parallel_rejects_a_non_bool_fail_fast(fail_fast: Any) -> None:
    orch = Orchestrator()
    with pytest.raises(TypeError, match="fail_fast"):
        orch.parallel([lambda: 1], fail_fast=fail_fast)


@pytest.mark.parametrize(
    ("concurrency", "error"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError), ("2", TypeError)],
)
def test_parallel_rejects_a_bad_concurrency(concurrency: Any, error: type[Exception]) -> None:
    orch = Orchestrator()
    with pytest.raises(error, match="concurrency"):
        orch.parallel([lambda: 1], concurrency=concurrency)


@pytest.mark.parametrize("fail_fast", [1, "yes", None])
def test_map_rejects_a_non_bool_fail_fast(fail_fast: Any) -> None:
    orch = Orchestrator()
    called: list[int] = []

    async def body() -> list[Any]:
        return await orch.map(called.append, [1], fail_fast=fail_fast)

    with pytest.raises(TypeError, match="fail_fast"):
        orch.run_sync(body)
    assert called == []


@pytest.mark.parametrize(
    ("concurrency", "error"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError)],
)
def test_map_rejects_a_bad_concurrency(concurrency: Any, error: type[Exception]) -> None:
    orch = Orchestrator()
    called: list[int] = []

    async def body() -> list[Any]:
        return await orch.map(called.append, [1], concurrency=concurrency)

    with pytest.raises(error, match="concurrency"):
        orch.run_sync(body)
    assert called == []


def test_parallel_rejects_a_non_callable_member_naming_its_index() -> None:
    orch = Orchestrator()

    @orch.action
    async def ok() -> None:
        return None

    with pytest.raises(TypeError, match=r"\[2\]") as caught:
        orch.parallel([ok, ok, "not callable", ok])
    assert "callable" in str(caught.value)


def test_map_rejects_a_non_callable_action() -> None:
    orch = Orchestrator()

    async def body() -> list[Any]:
        return await orch.map(42, [1])  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="action"):
        orch.run_sync(body)


# Failures raised by the call itself, before any awaiting ------------------------------------


def test_a_sync_member_that_raises_is_grouped_with_the_other_failures() -> None:
    orch = Orchestrator()
    boom = KeyError("sync member")

    def sync_member() -> None:
        raise boom

    async def async_member() -> str:
        await asyncio.sleep(0)
        return "ran"

    async def body() -> None:
        await orch.parallel([async_member, sync_member, async_member])()

    with pytest.raises(ParallelError) as info:
        orch.run_sync(body)
    assert info.value.exceptions == (boom,)
    assert info.value.indices == (1,)


def test_fail_fast_sync_failure_at_the_call_stops_later_members_from_starting() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    boom = ValueError("refused at the call")

    @orch.action
    async def early() -> None:
        await asyncio.Event().wait()  # its task is cancelled before it ever runs

    @orch.action
    async def late() -> None:
        return None

    def refuse() -> None:
        raise boom

    async def body() -> None:
        await orch.parallel([early, refuse, late], fail_fast=True)()

    with pytest.raises(ValueError, match="refused at the call") as info:
        orch.run_sync(body)
    assert info.value is boom
    # Members are started in order within one step of the loop, so the failure at the call of
    # the second one cancels the first before it began and never calls the third.
    assert recorder.events("task_begin") == []
    assert recorder.events("task_completion") == []
    assert recorder.points() == ["process_begin", "process_error", "process_completion"]


def test_an_action_of_another_orchestrator_as_member_fails_with_outside_run_error() -> None:
    orch = Orchestrator()
    other = Orchestrator()

    @other.action
    async def foreign() -> None:
        return None

    async def body() -> None:
        await orch.parallel([foreign])()

    with pytest.raises(ParallelError) as info:
        orch.run_sync(body)
    (error,) = info.value.exceptions
    assert isinstance(error, OutsideRunError)


# A member's own cancellation, BaseException at a call, hand-built groups ----------------------


def completions_by_member(recorder: EventRecorder[Any]) -> list[tuple[str, Any, Any]]:
    """(name, result, error type or None) of each task completion, sorted by task id."""
    events = sorted(recorder.events("task_completion"), key=lambda e: e.task_id)
    return [(e.name, e.result, type(e.error) if e.error else None) for e in events]


@pytest.mark.parametrize("concurrency", [None, 1])
def test_without_fail_fast_a_members_own_cancellation_lets_the_others_finish_then_raises(
    concurrency: int | None,
) -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def waits(fut: asyncio.Future[str]) -> str:
        return await fut  # cancelled by someone else, not by the group or its caller

    @orch.action
    async def other(tag: str) -> str:
        await asyncio.sleep(0.03)  # still running when the future is cancelled
        return tag

    @orch.action
    async def fails(tag: str) -> None:
        await asyncio.sleep(0.03)
        raise WorkError(tag)

    async def body() -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.01, fut.cancel)
        group = orch.parallel([waits, other, fails, other], concurrency=concurrency)
        with pytest.raises(asyncio.CancelledError):
            await group(fut, "b", "c", "d")
        current = asyncio.current_task()
        assert current is not None
        return current.cancelling()  # nobody cancelled the caller

    assert orch.run_sync(body) == 0
    assert completions_by_member(recorder) == [
        ("waits", None, asyncio.CancelledError),
        ("other", "b", None),
        ("fails", None, WorkError),
        ("other", "d", None),
    ]
    assert recorder.points()[-1] == "process_completion"
    assert "process_error" not in recorder.points()


def test_map_with_concurrency_one_goes_on_after_an_items_own_cancellation() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    ran: list[int] = []
    futures: list[asyncio.Future[int]] = []

    @orch.action
    async def step(item: int) -> int:
        ran.append(item)
        if item == 0:
            return await futures[0]
        return item * 10

    async def body() -> None:
        loop = asyncio.get_running_loop()
        futures.append(loop.create_future())
        loop.call_later(0.01, futures[0].cancel)
        with pytest.raises(asyncio.CancelledError):
            await orch.map(step, [0, 1, 2, 3], concurrency=1)

    orch.run_sync(body)
    assert ran == [0, 1, 2, 3]
    assert completions_by_member(recorder) == [
        ("step", None, asyncio.CancelledError),
        ("step", 10, None),
        ("step", 20, None),
        ("step", 30, None),
    ]


def test_with_fail_fast_a_members_own_cancellation_stops_the_group() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def waits(fut: asyncio.Future[str]) -> str:
        return await fut

    @orch.action
    async def forever(_: object) -> None:
        await asyncio.Event().wait()

    async def body() -> float:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.01, fut.cancel)
        start = loop.time()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(1):  # a guard: a group that is not stopped times out
                await orch.parallel([waits, forever], fail_fast=True)(fut, None)
        return loop.time() - start

    assert orch.run_sync(body) < 0.3
    assert completions_by_member(recorder) == [
        ("waits", None, asyncio.CancelledError),
        ("forever", None, asyncio.CancelledError),
    ]


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_a_sync_member_raising_a_base_exception_at_its_call_leaves_no_member_running(
    kind: type[BaseException],
) -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "late"

    def interrupt() -> None:
        raise kind("stop")

    async def body() -> None:
        await orch.parallel([slow, slow, interrupt, slow])()

    async def main() -> set[asyncio.Task[Any]]:
        with pytest.raises(kind):
            await orch.run(body)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.sleep(0.1)  # a member left running would now begin and complete
        return left

    assert asyncio.run(main()) == set()
    points = recorder.points()
    # Whatever began also completed, all before process completion, which came last.
    assert points[-1] == "process_completion"
    assert points.count("task_begin") == points.count("task_completion")
    (error,) = [e.error for e in recorder.events("process_completion")]
    assert isinstance(error, kind)


def test_parallel_error_built_by_hand_works_with_except_star_and_split() -> None:
    first, second, third = ValueError("a"), TypeError("b"), ValueError("c")
    group = ParallelError("by hand", [first, second, third])
    assert group.indices == (0, 1, 2)

    values, rest = group.split(ValueError)
    assert isinstance(values, ParallelError)
    assert isinstance(rest, ParallelError)
    assert list(values.exceptions) == [first, third]
    assert values.indices == (0, 2)
    assert list(rest.exceptions) == [second]
    assert rest.indices == (1,)

    caught: dict[str, BaseExceptionGroup[Any]] = {}
    try:
        raise group
    except* ValueError as found:
        caught["values"] = found
    except* TypeError as found:
        caught["types"] = found
    assert list(caught["values"].exceptions) == [first, third]
    assert list(caught["types"].exceptions) == [second]


def test_cancelling_a_concurrency_limited_map_cancels_every_started_item() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    started: list[int] = []
    cleaned: list[int] = []

    async def body(two_started: asyncio.Event) -> None:
        @orch.action
        async def item(index: int) -> None:
            started.append(index)
            if len(started) == 2:
                two_started.set()
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append(index)

        await orch.map(item, range(6), concurrency=2)

    assert cancel_once_started(orch, body) == set()
    assert started == [0, 1]  # later items never start
    assert sorted(cleaned) == [0, 1]
    assert completions_by_member(recorder) == [
        ("item", None, asyncio.CancelledError),
        ("item", None, asyncio.CancelledError),
    ]
    assert recorder.points()[-2:] == ["process_error", "process_completion"]


# Failures that the raised exception cannot hold are named in notes -------------------------


def _member_with_raising_completion(orch: Orchestrator[Any]) -> Any:
    @orch.action
    async def slow_member() -> None:
        await asyncio.Event().wait()  # cancelled

    def complain(event: Any) -> None:
        if event.name == "slow_member":
            raise KeyError("cleanup failed while cancelled")

    orch.on_task_completion(complain)
    return slow_member


def test_fail_fast_names_a_siblings_completion_hook_failure_in_a_note() -> None:
    orch = Orchestrator()
    slow_member = _member_with_raising_completion(orch)
    boom = ValueError("first failure")

    @orch.action
    async def failing() -> None:
        await asyncio.sleep(0)
        raise boom

    async def body() -> None:
        await orch.parallel([slow_member, failing], fail_fast=True)()

    with pytest.raises(ValueError, match="first failure") as info:
        orch.run_sync(body)
    assert info.value is boom
    assert info.value.__notes__ == [
        "parallel member 0 also failed: KeyError('cleanup failed while cancelled')"
    ]


def test_a_cancelled_group_names_a_members_completion_hook_failure_in_a_note() -> None:
    orch = Orchestrator()
    slow_member = _member_with_raising_completion(orch)
    started = asyncio.Event()

    @orch.action
    async def signal() -> None:
        started.set()
        await asyncio.Event().wait()

    async def body() -> None:
        await orch.map(lambda member: member(), [slow_member, signal])

    async def main() -> None:
        run = asyncio.ensure_future(orch.run(body))
        await asyncio.wait_for(started.wait(), 1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await run
        assert info.value.__notes__ == [
            "map item 0 also failed: KeyError('cleanup failed while cancelled')"
        ]

    asyncio.run(main())


def test_a_group_cut_short_by_a_timeout_names_its_members_failures_on_the_action_timeout() -> None:
    orch = Orchestrator()

    @orch.action
    async def quick() -> None:
        await asyncio.sleep(0)

    @orch.action
    async def slow() -> None:
        await asyncio.Event().wait()  # still running when the timeout cuts the group short

    def complain(event: Any) -> None:
        if event.name == "quick":
            raise KeyError("report failed")

    orch.on_task_completion(complain)

    @orch.action(timeout=0.05)
    async def both() -> None:
        await orch.parallel([quick, slow])()

    with pytest.raises(ActionTimeout) as info:
        orch.run_sync(both)
    assert info.value.__notes__ == ["parallel member 0 also failed: KeyError('report failed')"]
