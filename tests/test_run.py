"""run() and run_sync(): bodies, results, errors, run ids, nesting, and the process events."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import Orchestrator, OutsideRunError, State
from orchestrator.testing import EventRecorder

# Bodies --------------------------------------------------------------------------------------


def test_run_with_async_function_passes_arguments_and_returns_result():
    orch = Orchestrator()

    async def body(a, b, *, scale):
        await asyncio.sleep(0)
        return (a + b) * scale

    assert asyncio.run(orch.run(body, 1, 2, scale=10)) == 30


def test_run_with_action_body_runs_it_as_task():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def check_inventory(item, *, quantity):
        return f"{quantity} x {item}"

    assert asyncio.run(orch.run(check_inventory, "widget", quantity=3)) == "3 x widget"
    (begin,) = recorder.events("task_begin")
    assert (begin.name, begin.args, begin.kwargs) == (
        "check_inventory",
        ("widget",),
        {"quantity": 3},
    )


def test_run_with_sync_function_calls_it_inline():
    orch = Orchestrator()

    def body(x):
        return threading.get_ident(), orch.get_state(), x * 2

    async def main():
        return threading.get_ident(), await orch.run(body, 4)

    loop_thread, (body_thread, ctx, value) = asyncio.run(main())
    assert body_thread == loop_thread
    assert type(ctx) is State
    assert value == 8


def test_run_with_lambda_returning_coroutine_awaits_it():
    orch = Orchestrator()

    async def fetch(user_id):
        await asyncio.sleep(0)
        return {"id": user_id, "ctx": orch.get_state()}

    result = asyncio.run(orch.run(lambda: fetch("user42")))
    assert result["id"] == "user42"
    assert type(result["ctx"]) is State


def test_run_raises_body_exception_itself_after_completion_hooks():
    orch = Orchestrator()
    error = ValueError("body failed")
    order = []
    orch.on_process_error(lambda e: order.append(("error", e.error)))
    orch.on_process_completion(lambda e: order.append(("completion", e.error)))

    async def body():
        raise error

    async def main():
        try:
            await orch.run(body)
        except ValueError as exc:
            # The hooks have already run when the exception reaches the caller.
            order.append(("caught", exc))
            raise

    with pytest.raises(ValueError, match="body failed") as info:
        asyncio.run(main())
    assert info.value is error
    assert order == [("error", error), ("completion", error), ("caught", error)]


# Run ids -------------------------------------------------------------------------------------


def test_run_id_argument_names_run_in_every_event():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def step():
        return 1

    async def body(run_id):
        await step()
        return run_id

    assert asyncio.run(orch.run(body, "not the id", run_id="order-17")) == "not the id"
    assert len(recorder.records) == 4
    assert {record.event.run_id for record in recorder.records} == {"order-17"}


def test_generated_run_ids_are_unique_strings():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    async def body():
        return None

    async def main():
        for _ in range(10):
            await orch.run(body)
        await asyncio.gather(*(orch.run(body) for _ in range(10)))

    asyncio.run(main())
    begin_ids = [e.run_id for e in recorder.events("process_begin")]
    completion_ids = [e.run_id for e in recorder.events("process_completion")]
    assert len(begin_ids) == 20
    assert all(isinstance(run_id, str) and run_id for run_id in begin_ids)
    assert len(set(begin_ids)) == 20
    assert sorted(completion_ids) == sorted(begin_ids)


# run_sync ------------------------------------------------------------------------------------


def test_run_sync_returns_result_from_sync_code():
    orch = Orchestrator()

    @orch.action
    def double(x):
        return x * 2

    async def body(x, *, plus):
        return await double(x) + plus

    assert orch.run_sync(body, 20, plus=2, run_id="script") == 42


def test_run_sync_inside_running_loop_raises_clear_runtime_error():
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    called = []

    async def body():
        called.append(1)

    async def main():
        with pytest.raises(RuntimeError, match=r"running event loop.*await orchestrator\.run"):
            orch.run_sync(body)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert called == []
    assert recorder.records == []


# Nesting -------------------------------------------------------------------------------------


def test_nested_run_of_same_orchestrator_has_own_context_and_run_id():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def where():
        return orch.get_state()

    async def inner():
        ctx = orch.get_state()
        ctx.level = "inner"
        return ctx, await where()

    async def outer():
        ctx = orch.get_state()
        ctx.level = "outer"
        inner_ctx, inner_action_ctx = await orch.run(inner, run_id="inner-run")
        return ctx, inner_ctx, inner_action_ctx, orch.get_state(), await where()

    outer_ctx, inner_ctx, inner_action_ctx, after_ctx, outer_action_ctx = orch.run_sync(
        outer, run_id="outer-run"
    )
    assert inner_ctx is not outer_ctx
    assert inner_action_ctx is inner_ctx
    assert after_ctx is outer_ctx
    assert outer_action_ctx is outer_ctx
    assert (outer_ctx.level, inner_ctx.level) == ("outer", "inner")
    assert recorder.points() == [
        "process_begin",
        "process_begin",
        "task_begin",
        "task_completion",
        "process_completion",
        "task_begin",
        "task_completion",
        "process_completion",
    ]
    assert [r.event.run_id for r in recorder.records] == [
        "outer-run",
        "inner-run",
        "inner-run",
        "inner-run",
        "inner-run",
        "outer-run",
        "outer-run",
        "outer-run",
    ]


def test_runs_of_two_orchestrators_nest_freely():
    first = Orchestrator()
    second = Orchestrator()
    first_events = EventRecorder(first)
    second_events = EventRecorder(second)

    @first.action
    async def first_step():
        return first.get_state()

    @second.action
    def second_step():
        return second.get_state()

    async def second_body():
        # Inside second's run, itself inside first's run: both orchestrators work.
        return second.get_state(), await first_step(), await second_step()

    async def first_body():
        first_ctx = first.get_state()
        second_ctx, from_first, from_second = await second.run(second_body, run_id="two")
        with pytest.raises(OutsideRunError):
            await second_step()
        return first_ctx, second_ctx, from_first, from_second

    first_ctx, second_ctx, from_first, from_second = first.run_sync(first_body, run_id="one")
    assert first_ctx is not second_ctx
    assert from_first is first_ctx
    assert from_second is second_ctx
    assert [(e.name, e.run_id) for e in first_events.events("task_begin")] == [
        ("first_step", "one")
    ]
    assert [(e.name, e.run_id) for e in second_events.events("task_begin")] == [
        ("second_step", "two")
    ]


# Process events ------------------------------------------------------------------------------


def test_process_event_times_are_aware_utc_and_close_to_now():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    async def ok():
        return None

    async def failing():
        raise KeyError("x")

    before = datetime.now(UTC)
    orch.run_sync(ok)
    with pytest.raises(KeyError):
        orch.run_sync(failing)
    after = datetime.now(UTC)

    events = [r.event for r in recorder.records if r.point.startswith("process")]
    assert [r.point for r in recorder.records] == [
        "process_begin",
        "process_completion",
        "process_begin",
        "process_error",
        "process_completion",
    ]
    slack = timedelta(milliseconds=50)
    for event in events:
        assert isinstance(event.time, datetime)
        assert event.time.utcoffset() == timedelta(0)
        assert before - slack <= event.time <= after + slack
    assert events[0].time <= events[1].time


def test_process_total_duration_is_float_milliseconds():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    async def body():
        await asyncio.sleep(0.05)
        raise ValueError("late")

    started = time.perf_counter()
    with pytest.raises(ValueError, match="late"):
        orch.run_sync(body)
    elapsed_ms = (time.perf_counter() - started) * 1000.0

    (error,) = recorder.events("process_error")
    (completion,) = recorder.events("process_completion")
    for event in (error, completion):
        assert isinstance(event.total_duration, float)
        assert 50.0 <= event.total_duration <= elapsed_ms


def test_process_completion_result_is_body_result():
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    result = {"status": "ok"}

    async def body():
        return result

    assert orch.run_sync(body) is result
    (completion,) = recorder.events("process_completion")
    assert completion.result is result
    assert completion.error is None
