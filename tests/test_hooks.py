"""Lifecycle hooks: registration, order, event objects, guarantees and hook errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from orchestrator import ActionTimeout, Orchestrator, RetryPolicy, set_testing
from orchestrator.testing import POINTS, EventRecorder


class WorkError(Exception):
    """What the work itself raises in these tests."""


class HookError(Exception):
    """What a failing hook raises in these tests."""


# The points of a run whose body calls one action, which fails and fails the run.
ONE_FAILED_TASK = [
    "process_begin",
    "task_begin",
    "task_error",
    "task_completion",
    "process_error",
    "process_completion",
]


def raiser(error: BaseException) -> Any:
    """A hook that raises ``error`` whenever it is called."""

    def raise_hook(event: Any) -> None:
        raise error

    return raise_hook


def context_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc.__context__``, its ``__context__``, and so on."""
    seen = exc.__context__
    while seen is not None:
        yield seen
        seen = seen.__context__


def assert_utc(moment: object) -> None:
    assert isinstance(moment, datetime)
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)


def assert_paired(recorder: EventRecorder[Any]) -> None:
    """Each task begin is followed by exactly one completion of the same task, and only one."""
    positions: dict[int, list[tuple[str, int]]] = {}
    for index, (point, event) in enumerate(recorder.records):
        if point in ("task_begin", "task_completion"):
            positions.setdefault(event.task_id, []).append((point, index))
    assert positions, "no task events were recorded"
    for task_id, seen in positions.items():
        assert [point for point, _ in seen] == ["task_begin", "task_completion"], task_id


def assert_error_just_before_completion(recorder: EventRecorder[Any], task_id: int) -> None:
    records = recorder.records
    (at,) = [
        i
        for i, (point, event) in enumerate(records)
        if point == "task_completion" and event.task_id == task_id
    ]
    before = records[at - 1]
    assert before.point == "task_error"
    assert before.event.task_id == task_id
    assert before.event.error is records[at].event.error


def all_points_scenario(orch: Orchestrator[Any]) -> Any:
    """A body that makes every lifecycle point fire: a retried action that keeps failing."""

    @orch.action(retry=1)
    async def flaky() -> None:
        raise WorkError("flaky")

    async def body() -> None:
        await flaky()

    return body


# Registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("point", POINTS)
def test_each_registration_method_returns_the_orchestrator(point: str) -> None:
    orch = Orchestrator()
    assert getattr(orch, f"on_{point}")(lambda event: None) is orch


def test_registration_calls_chain() -> None:
    orch = Orchestrator()
    seen: list[str] = []
    chained = (
        orch.on_process_begin(lambda e: seen.append("process_begin"))
        .on_process_error(lambda e: seen.append("process_error"))
        .on_process_completion(lambda e: seen.append("process_completion"))
        .on_task_begin(lambda e: seen.append("task_begin"))
        .on_task_retry(lambda e: seen.append("task_retry"))
        .on_task_error(lambda e: seen.append("task_error"))
        .on_task_completion(lambda e: seen.append("task_completion"))
    )
    assert chained is orch
    with set_testing(True), pytest.raises(WorkError):
        orch.run_sync(all_points_scenario(orch))
    assert seen == [
        "process_begin",
        "task_begin",
        "task_retry",
        "task_error",
        "task_completion",
        "process_error",
        "process_completion",
    ]


def test_a_removed_hook_is_not_called_at_any_point_it_was_registered_on() -> None:
    orch = Orchestrator()
    seen: list[str] = []

    def hook(event: Any) -> None:
        seen.append(type(event).__name__)

    orch.on_task_begin(hook).on_task_completion(hook).on_process_begin(hook)
    step = orch.action(lambda: None, name="step")
    orch.run_sync(step)
    assert seen == ["ProcessBeginEvent", "TaskBeginEvent", "TaskCompletionEvent"]
    seen.clear()
    assert orch.remove_hook(hook) is orch
    orch.run_sync(step)
    assert seen == []


def test_removing_a_hook_leaves_the_other_hooks_of_its_point_in_order() -> None:
    orch = Orchestrator()
    seen: list[str] = []
    first, second, third = (
        (lambda e: seen.append("a")),
        (lambda e: seen.append("b")),
        (lambda e: seen.append("c")),
    )
    orch.on_process_begin(first).on_process_begin(second).on_process_begin(third)
    orch.remove_hook(second)
    orch.run_sync(lambda: None)
    assert seen == ["a", "c"]


def test_a_bound_method_registered_as_a_hook_can_be_removed_by_getting_it_again() -> None:
    class Counter:
        def __init__(self) -> None:
            self.calls = 0

        def hook(self, event: Any) -> None:
            self.calls += 1

    orch = Orchestrator()
    counter = Counter()
    orch.on_task_begin(counter.hook)
    orch.remove_hook(counter.hook)  # a new bound-method object, equal to the registered one
    orch.run_sync(orch.action(lambda: None))
    assert counter.calls == 0


def test_removing_the_last_task_hook_makes_calls_unobserved_again() -> None:
    # Observable through a documented rule: with no task hook, an async action without retry
    # or timeout calls its function at once, so wrong arguments raise at the call itself.
    orch = Orchestrator()
    hook = print
    orch.on_task_begin(hook)

    @orch.action
    async def step() -> None:
        return None

    async def body() -> str:
        try:
            coro = step(1)  # type: ignore[call-arg]
        except TypeError:
            return "at the call"
        try:
            await coro
        except TypeError:
            return "when awaited"
        return "never"

    orch.remove_hook(hook)
    assert orch.run_sync(body) == "at the call"


def test_removing_a_hook_that_is_not_registered_raises_value_error() -> None:
    orch = Orchestrator().on_task_begin(print)
    with pytest.raises(ValueError, match=r"^the hook <built-in function len> is not registered"):
        orch.remove_hook(len)


@pytest.mark.parametrize("point", POINTS)
def test_non_callable_hook_raises_type_error_naming_the_point(point: str) -> None:
    orch = Orchestrator()
    with pytest.raises(TypeError, match=f"on_{point}"):
        getattr(orch, f"on_{point}")(42)


@pytest.mark.parametrize("point", POINTS)
def test_sync_and_async_hooks_both_run(point: str) -> None:
    orch = Orchestrator()
    seen: list[tuple[str, str]] = []

    def sync_hook(event: Any) -> None:
        seen.append(("sync", type(event).__name__))

    async def async_hook(event: Any) -> None:
        await asyncio.sleep(0)
        seen.append(("async", type(event).__name__))

    getattr(orch, f"on_{point}")(sync_hook)
    getattr(orch, f"on_{point}")(async_hook)
    with set_testing(True), pytest.raises(WorkError):
        orch.run_sync(all_points_scenario(orch))
    assert [who for who, _ in seen] == ["sync", "async"]
    assert seen[0][1] == seen[1][1]
    assert seen[0][1].lower() == point.replace("_", "") + "event"


def test_hooks_on_one_point_run_in_registration_order() -> None:
    orch = Orchestrator()
    seen: list[int] = []
    for number in (3, 1, 2):
        orch.on_task_completion(lambda event, number=number: seen.append(number))

    @orch.action
    async def work() -> int:
        return 1

    orch.run_sync(work)
    assert seen == [3, 1, 2]


def test_async_hook_is_awaited_before_the_next_hook_runs() -> None:
    orch = Orchestrator()
    seen: list[str] = []

    async def slow_hook(event: Any) -> None:
        seen.append("async start")
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        seen.append("async end")

    def sync_hook(event: Any) -> None:
        seen.append("sync")

    orch.on_task_begin(slow_hook).on_task_begin(sync_hook)

    @orch.action
    async def work() -> None:
        seen.append("work")

    orch.run_sync(work)
    assert seen == ["async start", "async end", "sync", "work"]


# Event objects ---------------------------------------------------------------------------

SPEC_FIELDS = {
    "process_begin": ("run_id", "time", "context"),
    "process_error": ("run_id", "time", "total_duration", "result", "error", "context"),
    "process_completion": ("run_id", "time", "total_duration", "result", "error", "context"),
    "task_begin": (
        "run_id",
        "task_id",
        "parent_id",
        "name",
        "start_time",
        "args",
        "kwargs",
        "context",
    ),
    "task_retry": ("name", "task_id", "attempt", "error", "delay", "context"),
    "task_error": ("name", "task_id", "error", "attempts", "context"),
    "task_completion": (
        "name",
        "task_id",
        "start_time",
        "end_time",
        "duration",
        "result",
        "error",
        "attempts",
        "context",
    ),
}


@pytest.mark.parametrize("point", POINTS)
def test_events_are_immutable(point: str) -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    with set_testing(True), pytest.raises(WorkError):
        orch.run_sync(all_points_scenario(orch))
    (event,) = recorder.events(point)
    for field in SPEC_FIELDS[point]:
        before = getattr(event, field)
        with pytest.raises(AttributeError):
            setattr(event, field, "changed")
        assert getattr(event, field) == before
    with pytest.raises(AttributeError):
        event.extra = 1


def test_task_begin_event_fields() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def inner(a: int, b: int, *, k: int) -> int:
        return a + b + k

    @orch.action
    async def outer() -> int:
        return await inner(1, 2, k=3)

    contexts: list[Any] = []

    async def body() -> int:
        contexts.append(orch.get_state())
        return await outer()

    before = time.time()
    assert orch.run_sync(body, run_id="run-7") == 6
    after = time.time()
    outer_event, inner_event = recorder.events("task_begin")
    assert outer_event.run_id == inner_event.run_id == "run-7"
    assert outer_event.name == "outer"
    assert inner_event.name == "inner"
    assert isinstance(outer_event.task_id, int)
    assert isinstance(inner_event.task_id, int)
    assert outer_event.task_id != inner_event.task_id
    assert outer_event.parent_id is None
    assert inner_event.parent_id == outer_event.task_id
    for event in (outer_event, inner_event):
        assert_utc(event.start_time)
        assert before - 0.001 <= event.start_time.timestamp() <= after + 0.001
        assert event.context is contexts[0]
    assert outer_event.args == ()
    assert outer_event.kwargs == {}
    assert inner_event.args == (1, 2)
    assert inner_event.kwargs == {"k": 3}


def test_task_retry_event_fields() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    raised: list[Exception] = []

    @orch.action(retry=RetryPolicy(retries=2, delay=0.01, backoff=2, jitter=0))
    async def flaky() -> str:
        if len(raised) < 2:
            raised.append(WorkError(f"attempt {len(raised) + 1}"))
            raise raised[-1]
        return "ok"

    contexts: list[Any] = []

    async def body() -> str:
        contexts.append(orch.get_state())
        return await flaky()

    with set_testing(False):
        assert orch.run_sync(body) == "ok"
    (begin,) = recorder.events("task_begin")
    retries = recorder.events("task_retry")
    assert [e.attempt for e in retries] == [1, 2]
    assert [e.error for e in retries] == raised
    assert retries[0].error is raised[0]
    assert retries[1].error is raised[1]
    assert [e.delay for e in retries] == pytest.approx([0.01, 0.02])
    for event in retries:
        assert event.name == "flaky"
        assert event.task_id == begin.task_id
        assert event.context is contexts[0]


def test_task_error_event_fields() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    raised: list[Exception] = []

    @orch.action(retry=2)
    async def always_fails() -> None:
        raised.append(WorkError(f"attempt {len(raised) + 1}"))
        raise raised[-1]

    contexts: list[Any] = []

    async def body() -> None:
        contexts.append(orch.get_state())
        await always_fails()

    with set_testing(True), pytest.raises(WorkError) as caught:
        orch.run_sync(body)
    assert caught.value is raised[-1]
    (begin,) = recorder.events("task_begin")
    (event,) = recorder.events("task_error")
    assert event.name == "always_fails"
    assert event.task_id == begin.task_id
    assert event.error is raised[-1]
    assert event.attempts == 3
    assert event.context is contexts[0]


def test_task_completion_event_fields_on_success() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def work() -> int:
        await asyncio.sleep(0.02)
        return 42

    contexts: list[Any] = []

    async def body() -> int:
        contexts.append(orch.get_state())
        return await work()

    assert orch.run_sync(body) == 42
    (begin,) = recorder.events("task_begin")
    (event,) = recorder.events("task_completion")
    assert event.name == "work"
    assert event.task_id == begin.task_id
    assert_utc(event.start_time)
    assert_utc(event.end_time)
    assert event.start_time == begin.start_time
    assert event.end_time >= event.start_time
    assert isinstance(event.duration, float)
    assert 15.0 <= event.duration < 300.0
    wall_ms = (event.end_time - event.start_time).total_seconds() * 1000.0
    assert event.duration == pytest.approx(wall_ms, abs=20.0)
    assert event.result == 42
    assert event.error is None
    assert event.attempts == 1
    assert event.context is contexts[0]
    assert recorder.events("task_error") == []


def test_task_completion_event_fields_on_failure() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    error = WorkError("boom")

    @orch.action
    async def work() -> int:
        raise error

    with pytest.raises(WorkError):
        orch.run_sync(work)
    (event,) = recorder.events("task_completion")
    assert event.name == "work"
    assert event.result is None
    assert event.error is error
    assert event.attempts == 1
    assert isinstance(event.duration, float)


def test_process_begin_event_fields() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    contexts: list[Any] = []

    def body() -> None:
        contexts.append(orch.get_state())

    before = time.time()
    orch.run_sync(body, run_id="run-1")
    after = time.time()
    (event,) = recorder.events("process_begin")
    assert event.run_id == "run-1"
    assert_utc(event.time)
    assert before - 0.001 <= event.time.timestamp() <= after + 0.001
    assert event.context is contexts[0]


def test_process_completion_event_fields_on_success() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    contexts: list[Any] = []

    async def body() -> str:
        contexts.append(orch.get_state())
        await asyncio.sleep(0.02)
        return "done"

    assert orch.run_sync(body, run_id="run-2") == "done"
    (begin,) = recorder.events("process_begin")
    (event,) = recorder.events("process_completion")
    assert event.run_id == "run-2"
    assert_utc(event.time)
    assert event.time >= begin.time
    assert isinstance(event.total_duration, float)
    assert 15.0 <= event.total_duration < 300.0
    assert event.result == "done"
    assert event.error is None
    assert event.context is contexts[0]


def test_process_error_and_completion_event_fields_on_failure() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    error = WorkError("body failed")
    contexts: list[Any] = []

    def body() -> None:
        contexts.append(orch.get_state())
        raise error

    with pytest.raises(WorkError):
        orch.run_sync(body, run_id="run-3")
    (failed,) = recorder.events("process_error")
    (completed,) = recorder.events("process_completion")
    for event in (failed, completed):
        assert event.run_id == "run-3"
        assert_utc(event.time)
        assert isinstance(event.total_duration, float)
        assert event.total_duration >= 0.0
        assert event.result is None
        assert event.error is error
        assert event.context is contexts[0]


# Guarantees: one completion per begin ------------------------------------------------------


def test_successful_task_gets_one_completion() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def work() -> int:
        return 1

    assert orch.run_sync(work) == 1
    assert recorder.points() == [
        "process_begin",
        "task_begin",
        "task_completion",
        "process_completion",
    ]
    assert_paired(recorder)


def test_failing_task_gets_error_then_one_completion() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    def work() -> None:
        raise WorkError("sync failure")

    with pytest.raises(WorkError):
        orch.run_sync(work)
    assert recorder.points() == ONE_FAILED_TASK
    assert_paired(recorder)
    (completion,) = recorder.events("task_completion")
    assert_error_just_before_completion(recorder, completion.task_id)


def test_timed_out_task_gets_error_then_one_completion() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action(timeout=0.05)
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(ActionTimeout):
        orch.run_sync(hangs)
    assert recorder.points() == ONE_FAILED_TASK
    assert_paired(recorder)
    (completion,) = recorder.events("task_completion")
    assert isinstance(completion.error, ActionTimeout)
    assert_error_just_before_completion(recorder, completion.task_id)


def test_task_with_retries_exhausted_gets_error_then_one_completion() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action(retry=2)
    async def always_fails() -> None:
        raise WorkError("again")

    with set_testing(True), pytest.raises(WorkError):
        orch.run_sync(always_fails)
    assert recorder.points() == [
        "process_begin",
        "task_begin",
        "task_retry",
        "task_retry",
        "task_error",
        "task_completion",
        "process_error",
        "process_completion",
    ]
    assert_paired(recorder)
    (completion,) = recorder.events("task_completion")
    assert completion.attempts == 3
    assert_error_just_before_completion(recorder, completion.task_id)


def test_task_cancelled_from_outside_gets_error_then_one_completion() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def waits(started: asyncio.Event, release: asyncio.Event) -> None:
        started.set()
        await release.wait()

    async def main() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(orch.run(waits, started, release))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    assert recorder.points() == ONE_FAILED_TASK
    assert_paired(recorder)
    (completion,) = recorder.events("task_completion")
    assert isinstance(completion.error, asyncio.CancelledError)
    assert_error_just_before_completion(recorder, completion.task_id)


def test_sibling_cancelled_by_failing_fail_fast_sibling_gets_one_completion() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    started = asyncio.Event()
    error = WorkError("first failure")

    @orch.action
    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    @orch.action
    async def failing() -> None:
        await started.wait()
        raise error

    async def body() -> None:
        await asyncio.wait_for(orch.parallel([slow, failing], fail_fast=True)(), 1.0)

    with pytest.raises(WorkError) as caught:
        orch.run_sync(body)
    assert caught.value is error
    assert_paired(recorder)
    points = recorder.points()
    assert points[0] == "process_begin"
    assert points[-2:] == ["process_error", "process_completion"]
    completions = {e.name: e for e in recorder.events("task_completion")}
    assert set(completions) == {"slow", "failing"}
    assert isinstance(completions["slow"].error, asyncio.CancelledError)
    assert completions["failing"].error is error
    for event in completions.values():
        assert_error_just_before_completion(recorder, event.task_id)


# Guarantees: process begin first, completion last --------------------------------------


def test_process_error_does_not_fire_on_success() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    assert orch.run_sync(lambda: 5) == 5
    assert recorder.points() == ["process_begin", "process_completion"]


def test_process_error_fires_just_before_completion_when_body_raises() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def work() -> int:
        return 1

    async def body() -> None:
        await work()
        raise WorkError("after the action")

    with pytest.raises(WorkError):
        orch.run_sync(body)
    assert recorder.points() == [
        "process_begin",
        "task_begin",
        "task_completion",
        "process_error",
        "process_completion",
    ]


def test_process_hooks_frame_a_cancelled_run() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    async def body(started: asyncio.Event) -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(orch.run(body, started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    assert recorder.points() == ["process_begin", "process_error", "process_completion"]
    (failed,) = recorder.events("process_error")
    (completed,) = recorder.events("process_completion")
    assert isinstance(failed.error, asyncio.CancelledError)
    assert completed.error is failed.error


@pytest.mark.parametrize("outcome", ["success", "raise", "cancel"])
def test_cleanup_in_process_completion_always_runs(outcome: str) -> None:
    orch = Orchestrator()
    orch.set_state("api_key", "secret")
    cleared: list[bool] = []

    def clear_api_key(event: Any) -> None:
        del event.context["api_key"]
        cleared.append(True)

    orch.on_process_completion(clear_api_key)
    contexts: list[Any] = []

    async def body(started: asyncio.Event) -> str:
        context = orch.get_state()
        contexts.append(context)
        assert context.api_key == "secret"
        started.set()
        if outcome == "raise":
            raise WorkError("body failed")
        if outcome == "cancel":
            await asyncio.Event().wait()
        return "ok"

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(orch.run(body, started))
        await started.wait()
        if outcome == "cancel":
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 1.0)
        elif outcome == "raise":
            with pytest.raises(WorkError):
                await asyncio.wait_for(task, 1.0)
        else:
            assert await task == "ok"

    asyncio.run(main())
    assert cleared == [True]
    assert "api_key" not in contexts[0]


# Hook errors -----------------------------------------------------------------------------


def test_raising_task_begin_hook_stops_the_action_before_it_starts() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    hook_error = HookError("begin refused")
    called: list[bool] = []

    def refuse(event: Any) -> None:
        raise hook_error

    orch.on_task_begin(refuse)

    @orch.action
    async def work() -> None:
        called.append(True)

    @orch.action
    def sync_work() -> None:
        called.append(True)

    for action in (work, sync_work):
        recorder.clear()
        with pytest.raises(HookError) as caught:
            orch.run_sync(action)
        assert caught.value is hook_error
        assert called == []
        assert recorder.points() == ONE_FAILED_TASK
        (failed,) = recorder.events("task_error")
        (completion,) = recorder.events("task_completion")
        assert failed.error is hook_error
        assert completion.error is hook_error
        assert completion.attempts == 0
        assert_error_just_before_completion(recorder, completion.task_id)


def test_raising_process_begin_hook_stops_the_body() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    hook_error = HookError("no run today")
    called: list[bool] = []

    def refuse(event: Any) -> None:
        raise hook_error

    orch.on_process_begin(refuse)
    with pytest.raises(HookError) as caught:
        orch.run_sync(lambda: called.append(True))
    assert caught.value is hook_error
    assert called == []
    assert recorder.points() == ["process_begin", "process_error", "process_completion"]
    (failed,) = recorder.events("process_error")
    (completed,) = recorder.events("process_completion")
    assert failed.error is hook_error
    assert completed.error is hook_error


@pytest.mark.parametrize("point", ["task_completion", "task_error", "process_completion"])
def test_raising_end_hook_reaches_caller_with_work_error_as_context(point: str) -> None:
    orch = Orchestrator()
    hook_error = HookError(point)
    work_error = WorkError("work failed")

    raise_hook = raiser(hook_error)

    getattr(orch, f"on_{point}")(raise_hook)

    @orch.action
    async def work() -> None:
        raise work_error

    with pytest.raises(HookError) as caught:
        orch.run_sync(work)
    assert caught.value is hook_error
    assert work_error in list(context_chain(caught.value))


def test_raising_process_error_hook_reaches_caller_with_body_error_as_context() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    hook_error = HookError("process error hook")
    body_error = WorkError("body failed")

    raise_hook = raiser(hook_error)

    orch.on_process_error(raise_hook)

    def body() -> None:
        raise body_error

    with pytest.raises(HookError) as caught:
        orch.run_sync(body)
    assert caught.value is hook_error
    assert caught.value.__context__ is body_error
    (completed,) = recorder.events("process_completion")
    assert completed.error is hook_error


def test_raising_task_error_hook_still_gets_one_completion() -> None:
    orch = Orchestrator()
    hook_error = HookError("error hook")
    work_error = WorkError("work failed")

    raise_hook = raiser(hook_error)

    orch.on_task_error(raise_hook)
    recorder = EventRecorder(orch)

    @orch.action
    async def work() -> None:
        raise work_error

    with pytest.raises(HookError) as caught:
        orch.run_sync(work)
    assert caught.value is hook_error
    assert caught.value.__context__ is work_error
    assert_paired(recorder)
    (completion,) = recorder.events("task_completion")
    assert completion.error is hook_error


def test_raising_task_completion_hook_on_success_reaches_caller() -> None:
    orch = Orchestrator()
    hook_error = HookError("completion hook")

    raise_hook = raiser(hook_error)

    orch.on_task_completion(raise_hook)

    @orch.action
    async def work() -> int:
        return 1

    with pytest.raises(HookError) as caught:
        orch.run_sync(work)
    assert caught.value is hook_error


def test_raising_process_completion_hook_on_success_reaches_caller() -> None:
    orch = Orchestrator()
    hook_error = HookError("process completion hook")

    raise_hook = raiser(hook_error)

    orch.on_process_completion(raise_hook)
    with pytest.raises(HookError) as caught:
        orch.run_sync(lambda: 1)
    assert caught.value is hook_error


def test_raising_retry_hook_reaches_caller_with_attempt_error_as_context() -> None:
    orch = Orchestrator()
    hook_error = HookError("retry hook")
    attempt_errors: list[Exception] = []

    raise_hook = raiser(hook_error)

    orch.on_task_retry(raise_hook)
    recorder = EventRecorder(orch)

    @orch.action(retry=3)
    async def flaky() -> str:
        attempt_errors.append(WorkError(f"attempt {len(attempt_errors) + 1}"))
        raise attempt_errors[-1]

    with set_testing(True), pytest.raises(HookError) as caught:
        orch.run_sync(flaky)
    assert caught.value is hook_error
    assert len(attempt_errors) == 1
    assert attempt_errors[0] in list(context_chain(caught.value))
    assert_paired(recorder)
    (completion,) = recorder.events("task_completion")
    assert completion.error is hook_error


COMPLETION_POINTS = ("task_completion", "process_completion")


@pytest.mark.parametrize("point", [p for p in POINTS if p not in COMPLETION_POINTS])
def test_first_raising_hook_stops_the_later_hooks_on_that_point(point: str) -> None:
    orch = Orchestrator()
    hook_error = HookError(point)
    later: list[Any] = []

    raise_hook = raiser(hook_error)

    getattr(orch, f"on_{point}")(raise_hook)
    getattr(orch, f"on_{point}")(later.append)
    with set_testing(True), pytest.raises(HookError) as caught:
        orch.run_sync(all_points_scenario(orch))
    assert caught.value is hook_error
    assert later == []


@pytest.mark.parametrize("point", COMPLETION_POINTS)
def test_a_raising_completion_hook_does_not_stop_the_later_ones(point: str) -> None:
    orch = Orchestrator()
    first, second = HookError("first"), HookError("second")
    later: list[Any] = []

    def raise_first(event: Any) -> None:
        raise first

    def raise_second(event: Any) -> None:
        raise second

    register = getattr(orch, f"on_{point}")
    register(raise_first)
    register(later.append)
    register(raise_second)
    register(later.append)
    with pytest.raises(HookError) as caught:
        orch.run_sync(all_points_scenario(orch))
    # The last failure is raised, with the earlier one chained to it: nothing is lost.
    assert caught.value is second
    assert first in list(context_chain(second))
    assert len(later) == 2
    assert later[0] is later[1]


def test_completion_cleanup_runs_when_cancellation_lands_in_an_earlier_async_hook() -> None:
    orch = Orchestrator()
    in_hook = asyncio.Event()
    cleaned: list[str] = []

    async def slow_report(event: Any) -> None:
        in_hook.set()
        await asyncio.sleep(10)  # cancelled here

    def clear_key(event: Any) -> None:
        event.context.api_key = None
        cleaned.append("cleared")

    orch.on_process_completion(slow_report).on_process_completion(clear_key)

    async def body() -> None:
        orch.get_state().api_key = "secret"

    async def main() -> None:
        run = asyncio.ensure_future(orch.run(body))
        await asyncio.wait_for(in_hook.wait(), 1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(main())
    assert cleaned == ["cleared"]


def test_timestamps_of_a_run_come_from_one_clock_and_agree_with_durations() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def step() -> None:
        await asyncio.sleep(0.01)

    async def body() -> None:
        await step()
        await step()

    before = time.time()
    orch.run_sync(body)
    after = time.time()
    (begin,) = recorder.events("process_begin")
    (end,) = recorder.events("process_completion")
    first, second = recorder.events("task_completion")
    assert before - 0.01 <= begin.timestamp <= first.start_timestamp
    assert first.end_timestamp <= second.start_timestamp <= second.end_timestamp
    assert second.end_timestamp <= end.timestamp <= after + 0.01
    for done in (first, second):
        elapsed = done.end_timestamp - done.start_timestamp
        assert elapsed == pytest.approx(done.duration / 1000, abs=1e-6)
        assert done.duration >= 10
    assert end.timestamp - begin.timestamp == pytest.approx(end.total_duration / 1000, abs=1e-6)


# Read-only arguments, parents after a late registration, events built on demand -------------


def test_begin_event_kwargs_are_read_only_and_the_function_gets_the_original() -> None:
    orch = Orchestrator()
    refused: list[BaseException] = []
    seen: list[dict[str, Any]] = []

    def tamper(event: Any) -> None:
        seen.append(dict(event.kwargs))
        try:
            event.kwargs["amount"] = 10**6
        except TypeError as exc:
            refused.append(exc)

    orch.on_task_begin(tamper)

    @orch.action
    async def pay(*, amount: int) -> int:
        return amount

    assert orch.run_sync(lambda: pay(amount=5)) == 5
    assert seen == [{"amount": 5}]
    assert len(refused) == 1
    assert isinstance(refused[0], TypeError)


def test_hook_registered_mid_run_sees_nearest_observed_ancestor_as_parent() -> None:
    orch = Orchestrator()
    recorders: list[EventRecorder[Any]] = []

    @orch.action
    async def inner(tag: str) -> str:
        return tag

    @orch.action
    async def outer(tag: str) -> str:
        if tag == "before":
            # This call started while no task hook was registered, so it is not observed.
            recorders.append(EventRecorder(orch))
        return await inner(tag)

    async def body() -> list[str]:
        return [await outer("before"), await outer("after")]

    assert orch.run_sync(body) == ["before", "after"]
    (recorder,) = recorders
    begins = [(e.name, e.args, e.task_id, e.parent_id) for e in recorder.events("task_begin")]
    assert [(name, args) for name, args, _, _ in begins] == [
        ("inner", ("before",)),
        ("outer", ("after",)),
        ("inner", ("after",)),
    ]
    (_, _, _, first_parent), (_, _, outer_id, outer_parent), (_, _, _, inner_parent) = begins
    assert first_parent is None  # its outer call was never observed
    assert outer_parent is None
    assert inner_parent == outer_id
    completions = {(e.name, e.result): e.parent_id for e in recorder.events("task_completion")}
    assert completions == {
        ("inner", "before"): None,
        ("inner", "after"): outer_id,
        ("outer", "after"): None,
    }


def test_only_events_that_a_hook_listens_for_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import TaskCompletionEvent, _action, _run

    built: list[type] = []
    real_new = _action._new

    def counting_new(cls: type, values: tuple[Any, ...]) -> Any:
        built.append(cls)
        return real_new(cls, values)

    monkeypatch.setattr(_action, "_new", counting_new)

    def counting(real: Any) -> Any:
        def build(*args: Any) -> Any:
            built.append(real)
            return real(*args)

        return build

    monkeypatch.setattr(_action, "TaskRetryEvent", counting(_action.TaskRetryEvent))
    for name in ("ProcessBeginEvent", "ProcessErrorEvent", "ProcessCompletionEvent"):
        monkeypatch.setattr(_run, name, counting(getattr(_run, name)))

    orch = Orchestrator()
    completions: list[Any] = []
    orch.on_task_completion(completions.append)
    attempts: list[int] = []

    @orch.action
    async def ok() -> str:
        return "ok"

    @orch.action(retry=1)
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise WorkError("once")
        return "again"

    @orch.action
    async def broken() -> None:
        raise WorkError("broken")

    async def body() -> None:
        await ok()
        await flaky()
        with pytest.raises(WorkError):
            await broken()
        raise WorkError("the run fails too")

    with set_testing(True), pytest.raises(WorkError, match="the run fails too"):
        orch.run_sync(body)
    # Begin, retry, error and process events had no listener, so none was built.
    assert built == [TaskCompletionEvent] * 3
    assert [(e.name, e.attempts) for e in completions] == [("ok", 1), ("flaky", 2), ("broken", 1)]
