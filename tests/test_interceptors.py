"""Interceptors: code around every run, action call and attempt of an orchestrator."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

from orchestrator import (
    CallInfo,
    Interceptor,
    Orchestrator,
    RetryPolicy,
    Run,
    set_testing,
)
from orchestrator.testing import EventRecorder

current_span: contextvars.ContextVar[str | None] = contextvars.ContextVar("span", default=None)


class Logger(Interceptor):
    """Logs entry and exit of every call and attempt, tagged with its own label."""

    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
        self.log.append(f"{self.label} enter {call.name} {call.call_key}")
        try:
            return await proceed()
        finally:
            self.log.append(f"{self.label} exit {call.name} {call.call_key}")


def test_interceptors_nest_in_registration_order_the_first_outermost() -> None:
    log: list[str] = []
    orch = (
        Orchestrator().add_interceptor(Logger("outer", log)).add_interceptor(Logger("inner", log))
    )

    @orch.action
    async def step() -> str:
        log.append("function")
        return "done"

    assert orch.run_sync(step) == "done"
    assert log == [
        "outer enter step 1",
        "inner enter step 1",
        "function",
        "inner exit step 1",
        "outer exit step 1",
    ]


def test_an_interceptor_sees_the_call() -> None:
    seen: list[tuple[Any, ...]] = []

    class Look(Interceptor):
        async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            result = await proceed()
            seen.append(
                (
                    call.action is add,
                    call.name,
                    call.call_key,
                    call.args,
                    dict(call.kwargs),
                    call.run.run_id,
                    call.attempts,
                    call.task_id,
                    call.parent_id,
                    result,
                )
            )
            return result

    orch = Orchestrator().add_interceptor(Look())

    @orch.action
    async def add(a: int, *, b: int) -> int:
        return a + b

    async def body() -> int:
        return await add(1, b=2)

    assert orch.run_sync(body, run_id="r1") == 3
    assert seen == [(True, "add", "1", (1,), {"b": 2}, "r1", 1, 1, None, 3)]


def test_an_interceptor_can_replace_the_result_without_calling_the_function() -> None:
    called: list[str] = []

    class Recorded(Interceptor):
        def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            async def replayed() -> str:
                call.replayed = True
                return f"recorded {call.call_key}"

            return replayed()

    orch = Orchestrator().add_interceptor(Recorded())
    recorder = EventRecorder(orch)

    @orch.action
    async def charge() -> str:
        called.append("charge")
        return "live"

    async def body() -> str:
        return await charge()

    assert orch.run_sync(body) == "recorded 1"
    assert called == []
    (done,) = recorder.events("task_completion")
    assert (done.result, done.attempts, done.replayed) == ("recorded 1", 0, True)


def test_what_an_interceptor_raises_is_the_call_failure_and_completion_still_fires() -> None:
    class Refuse(Interceptor):
        async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            raise PermissionError(f"no {call.name}")

    orch = Orchestrator().add_interceptor(Refuse())
    recorder = EventRecorder(orch)
    step = orch.action(lambda: "never", name="step")

    async def body() -> None:
        await step()

    with pytest.raises(PermissionError, match="no step"):
        orch.run_sync(body)
    (done,) = recorder.events("task_completion")
    assert isinstance(done.error, PermissionError)


def test_attempt_interceptors_see_each_attempt_with_its_number() -> None:
    attempts: list[tuple[str, int, str]] = []

    class PerAttempt(Interceptor):
        async def intercept_attempt(self, call: CallInfo[Any], proceed: Any) -> Any:
            try:
                result = await proceed()
            except Exception as exc:
                attempts.append((call.call_key, call.attempts, type(exc).__name__))
                raise
            attempts.append((call.call_key, call.attempts, "ok"))
            return result

    orch = Orchestrator().add_interceptor(PerAttempt())
    failures = [OSError("1"), OSError("2")]

    @orch.action(retry=RetryPolicy(retries=3))
    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    async def body() -> str:
        return await flaky()

    with set_testing(True):
        assert orch.run_sync(body) == "ok"
    assert attempts == [("1", 1, "OSError"), ("1", 2, "OSError"), ("1", 3, "ok")]


def test_what_an_interceptor_makes_current_is_seen_by_nested_calls_members_and_threads() -> None:
    parents: dict[str, str | None] = {}

    class Spans(Interceptor):
        async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            parents[call.call_key] = current_span.get()
            token = current_span.set(f"span {call.call_key}")
            try:
                return await proceed()
            finally:
                current_span.reset(token)

    orch = Orchestrator().add_interceptor(Spans())
    in_thread: list[tuple[str | None, bool]] = []

    def blocking() -> None:
        in_thread.append(
            (current_span.get(), threading.current_thread() is threading.main_thread())
        )

    sync_leaf = orch.action(blocking)

    @orch.action
    async def leaf(value: int) -> int:
        await sync_leaf()
        return value

    @orch.action
    async def top() -> list[int]:
        return await orch.map(leaf, [1, 2])

    async def body() -> list[int]:
        return await top()

    assert orch.run_sync(body) == [1, 2]
    assert parents == {
        "1": None,
        "1.1.1.1": "span 1",
        "1.1.2.1": "span 1",
        "1.1.1.1.1": "span 1.1.1.1",
        "1.1.2.1.1": "span 1.1.2.1",
    }
    assert sorted(in_thread, key=str) == [("span 1.1.1.1.1", False), ("span 1.1.2.1.1", False)]


def test_a_run_interceptor_wraps_the_body_and_can_replace_its_result() -> None:
    seen: list[tuple[str, Any, tuple[Any, ...]]] = []

    class Runs(Interceptor):
        async def intercept_run(self, run: Run[Any], proceed: Any) -> Any:
            result = await proceed()
            seen.append((run.run_id, run.body, run.args))
            return f"{result} (seen)"

    orch = Orchestrator().add_interceptor(Runs())
    points: list[str] = []
    orch.on_process_completion(lambda event: points.append(event.result))

    async def body(value: int) -> str:
        return f"value {value}"

    assert orch.run_sync(body, 5, run_id="r5") == "value 5 (seen)"
    assert seen == [("r5", body, (5,))]
    assert points == ["value 5 (seen)"]


def test_an_interceptor_added_after_an_action_was_made_wraps_its_calls() -> None:
    log: list[str] = []
    orch = Orchestrator()

    @orch.action
    async def step() -> None:
        return None

    async def body() -> None:
        await step()

    orch.run_sync(body)
    orch.add_interceptor(Logger("late", log))
    orch.run_sync(body)
    assert log == ["late enter step 1", "late exit step 1"]


def test_an_interceptor_that_overrides_nothing_changes_nothing() -> None:
    orch = Orchestrator().add_interceptor(Interceptor())

    @orch.action
    async def step(value: int) -> int:
        return value * 2

    async def body() -> int:
        return await step(4)

    assert orch.run_sync(body) == 8


def test_a_removed_interceptor_wraps_no_later_run_call_or_attempt() -> None:
    log: list[str] = []
    orch = Orchestrator()
    logger = Logger("gone", log)
    orch.add_interceptor(logger).add_interceptor(Logger("kept", log))

    @orch.action
    async def step() -> None:
        return None

    assert orch.remove_interceptor(logger) is orch
    orch.run_sync(step)
    assert log == ["kept enter step 1", "kept exit step 1"]


def test_removing_the_only_interceptor_makes_calls_unobserved_again() -> None:
    orch = Orchestrator()
    logger = Logger("gone", [])
    orch.add_interceptor(logger)

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

    assert orch.run_sync(body) == "when awaited"
    orch.remove_interceptor(logger)
    assert orch.run_sync(body) == "at the call"


def test_a_call_in_progress_stays_wrapped_by_an_interceptor_removed_meanwhile() -> None:
    log: list[str] = []
    orch = Orchestrator()
    logger = Logger("gone", log)
    orch.add_interceptor(logger)

    @orch.action
    async def step() -> None:
        orch.remove_interceptor(logger)

    orch.run_sync(step)
    assert log == ["gone enter step 1", "gone exit step 1"]


def test_removing_an_interceptor_that_is_not_registered_raises_value_error() -> None:
    orch = Orchestrator().add_interceptor(Interceptor())
    with pytest.raises(ValueError, match=r"^the interceptor <.*> is not registered on this"):
        orch.remove_interceptor(Interceptor())


def test_add_interceptor_refuses_what_is_not_an_interceptor() -> None:
    with pytest.raises(TypeError, match="interceptor must be an instance of an Interceptor"):
        Orchestrator().add_interceptor(lambda call, proceed: proceed())  # type: ignore[arg-type]


def test_interceptors_see_a_timeout_at_both_levels_and_a_cancellation_from_outside() -> None:
    outcomes: list[str] = []

    class Watch(Interceptor):
        async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            return await self.watch(f"call {call.call_key}", proceed)

        async def intercept_attempt(self, call: CallInfo[Any], proceed: Any) -> Any:
            return await self.watch(f"attempt {call.call_key}.{call.attempts}", proceed)

        async def watch(self, what: str, proceed: Any) -> Any:
            try:
                return await proceed()
            except BaseException as exc:
                outcomes.append(f"{what}: {type(exc).__name__}")
                raise

    orch = Orchestrator().add_interceptor(Watch())

    @orch.action(timeout=0.01)
    async def slow() -> None:
        await asyncio.sleep(10)

    @orch.action
    async def hang(started: asyncio.Event) -> None:
        started.set()
        await asyncio.sleep(10)

    async def body() -> None:
        with pytest.raises(TimeoutError):
            await slow()
        started = asyncio.Event()
        task = asyncio.create_task(hang(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    orch.run_sync(body)
    assert outcomes == [
        "attempt 1.1: ActionTimeout",
        "call 1: ActionTimeout",
        "attempt 2.1: CancelledError",
        "call 2: CancelledError",
    ]
