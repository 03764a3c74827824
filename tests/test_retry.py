"""Retries: RetryPolicy, its schedule, what is retried, per-call state, the testing switch."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest

from orchestrator import (
    ActionTimeout,
    Orchestrator,
    RetryPolicy,
    TaskCompletionEvent,
    TaskRetryEvent,
    set_testing,
)
from orchestrator.testing import EventRecorder

ALMOST_ONE = 1 - 1e-12


class Boom(Exception):
    """The error the flaky actions below raise."""


def always_failing(orch: Orchestrator, calls: list[int], **options: object):
    async def flaky() -> None:
        calls.append(len(calls) + 1)
        raise Boom(f"attempt {len(calls)}")

    return orch.action(flaky, **options)


# --- retry=N -------------------------------------------------------------------------------


def test_retry_3_makes_four_attempts_when_always_failing() -> None:
    orch = Orchestrator()
    calls: list[int] = []
    flaky = always_failing(orch, calls, retry=3)
    with set_testing(True), pytest.raises(Boom, match="attempt 4"):
        orch.run_sync(flaky)
    assert calls == [1, 2, 3, 4]


def test_retry_3_stops_retrying_at_first_success() -> None:
    orch = Orchestrator()
    calls: list[int] = []

    @orch.action(retry=3)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Boom
        return "ok"

    with set_testing(True):
        assert orch.run_sync(flaky) == "ok"
    assert len(calls) == 3


def test_retry_int_gives_the_default_policy_with_that_many_retries() -> None:
    orch = Orchestrator()
    flaky = orch.action(lambda: None, retry=3)
    assert flaky.retry == RetryPolicy(retries=3)
    assert orch.action(lambda: None, retry=0).retry is None
    assert orch.action(lambda: None).retry is None


# --- RetryPolicy fields and schedule -------------------------------------------------------


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert policy.retries == 3
    assert policy.delay == 0.1
    assert policy.backoff == 2.0
    assert policy.max_delay == 10.0
    assert policy.jitter == 0.25
    assert policy.retry_on is Exception
    assert policy.deadline is None
    assert [f.name for f in dataclasses.fields(RetryPolicy)] == [
        "retries",
        "delay",
        "backoff",
        "max_delay",
        "jitter",
        "retry_on",
        "deadline",
    ]


def test_retry_policy_is_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retries = 5  # type: ignore[misc]


def test_wait_without_jitter_is_delay_times_backoff_power_capped_at_max_delay() -> None:
    policy = RetryPolicy(delay=0.5, backoff=3.0, max_delay=10.0, jitter=0)
    waits = [policy.wait(n) for n in range(1, 6)]
    assert waits == pytest.approx([0.5, 1.5, 4.5, 10.0, 10.0])


def test_wait_with_zero_jitter_ignores_rand() -> None:
    policy = RetryPolicy(delay=0.2, backoff=2.0, jitter=0)
    assert policy.wait(2, rand=0.0) == pytest.approx(0.4)
    assert policy.wait(2, rand=ALMOST_ONE) == pytest.approx(0.4)
    assert policy.wait(2) == pytest.approx(0.4)


def test_jitter_removes_at_most_its_fraction_at_rand_zero() -> None:
    policy = RetryPolicy(delay=1.0, backoff=2.0, jitter=0.25)
    assert policy.wait(1, rand=0.0) == pytest.approx(0.75)
    assert policy.wait(3, rand=0.0) == pytest.approx(3.0)


def test_jitter_adds_at_most_its_fraction_at_rand_almost_one() -> None:
    policy = RetryPolicy(delay=1.0, backoff=2.0, jitter=0.25)
    assert policy.wait(1, rand=ALMOST_ONE) == pytest.approx(1.25)
    assert policy.wait(3, rand=ALMOST_ONE) == pytest.approx(5.0)
    assert policy.wait(1, rand=ALMOST_ONE) <= 1.25


def test_jitter_never_pushes_a_wait_above_max_delay() -> None:
    policy = RetryPolicy(delay=8.0, backoff=2.0, max_delay=10.0, jitter=0.5)
    assert policy.wait(1, rand=ALMOST_ONE) == pytest.approx(10.0)
    assert policy.wait(5, rand=ALMOST_ONE) == pytest.approx(10.0)
    assert policy.wait(1, rand=1) == policy.wait(5, rand=1) == 10.0
    assert policy.wait(5, rand=0.0) == pytest.approx(5.0)
    assert all(policy.wait(n) <= 10.0 for n in range(1, 8) for _ in range(50))


def test_random_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(delay=1.0, backoff=1.0, jitter=0.25, max_delay=100.0)
    waits = [policy.wait(1) for _ in range(500)]
    assert all(0.75 <= w <= 1.25 for w in waits)
    # It is random: not every draw lands on the same wait.
    assert len(set(waits)) > 1


def test_default_schedule_grows_exponentially_and_never_hammers() -> None:
    policy = RetryPolicy()
    centred = [policy.wait(n, rand=0.5) for n in range(1, 5)]
    assert centred == pytest.approx([0.1, 0.2, 0.4, 0.8])
    for n in range(1, 5):
        base = 0.1 * 2 ** (n - 1)
        for _ in range(50):
            assert 0.75 * base <= policy.wait(n) <= 1.25 * base
    assert policy.wait(1, rand=0.0) > 0


# --- retry_on ------------------------------------------------------------------------------


def run_counting(orch: Orchestrator, policy: RetryPolicy, error: Exception) -> int:
    """Run an action that always raises ``error``; return how many attempts were made."""
    calls: list[int] = []

    @orch.action(retry=policy)
    async def failing() -> None:
        calls.append(1)
        raise error

    with set_testing(True), pytest.raises(type(error)):
        orch.run_sync(failing)
    return len(calls)


def test_retry_on_type_retries_matching_errors() -> None:
    policy = RetryPolicy(retries=2, retry_on=KeyError)
    assert run_counting(Orchestrator(), policy, KeyError("k")) == 3


def test_retry_on_type_does_not_retry_other_errors() -> None:
    policy = RetryPolicy(retries=2, retry_on=KeyError)
    assert run_counting(Orchestrator(), policy, ValueError("v")) == 1


def test_retry_on_tuple_retries_each_listed_type_only() -> None:
    policy = RetryPolicy(retries=2, retry_on=(KeyError, ConnectionError))
    orch = Orchestrator()
    assert run_counting(orch, policy, KeyError("k")) == 3
    assert run_counting(orch, policy, ConnectionResetError("c")) == 3
    assert run_counting(orch, policy, ValueError("v")) == 1


def test_retry_on_predicate_returning_bool_decides_per_error() -> None:
    seen: list[Exception] = []

    def transient(exc: Exception) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    policy = RetryPolicy(retries=2, retry_on=transient)
    orch = Orchestrator()
    assert run_counting(orch, policy, Boom("transient glitch")) == 3
    assert run_counting(orch, policy, Boom("permanent")) == 1
    assert [str(e) for e in seen] == ["transient glitch", "transient glitch", "permanent"]


def test_retry_on_predicate_returning_seconds_sets_the_wait() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    calls: list[float] = []

    @orch.action(retry=RetryPolicy(retries=1, delay=5.0, jitter=0, retry_on=lambda e: 0.01))
    async def flaky() -> str:
        calls.append(time.perf_counter())
        if len(calls) == 1:
            raise Boom
        return "ok"

    with set_testing(False):
        assert orch.run_sync(flaky) == "ok"
    (retry,) = recorder.events("task_retry")
    assert retry.delay == 0.01
    assert 0.01 - 0.002 <= calls[1] - calls[0] < 1.0


def test_retry_on_predicate_returning_garbage_raises_type_error() -> None:
    orch = Orchestrator()
    calls: list[int] = []

    def predicate(exc: Exception) -> bool:
        return "yes"  # type: ignore[return-value]

    @orch.action(retry=RetryPolicy(retries=3, retry_on=predicate))
    async def flaky() -> None:
        calls.append(1)
        raise Boom

    with set_testing(True), pytest.raises(TypeError, match="retry_on predicate") as info:
        orch.run_sync(flaky)
    assert "'yes'" in str(info.value)
    assert calls == [1]


# --- what is never retried -----------------------------------------------------------------


def test_cancellation_from_outside_is_not_retried() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    calls: list[int] = []
    started = asyncio.Event()

    @orch.action(retry=3)
    async def hanging() -> None:
        calls.append(1)
        started.set()
        await asyncio.Event().wait()

    async def body() -> None:
        task = asyncio.ensure_future(hanging())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with set_testing(True):
        orch.run_sync(body)
    assert calls == [1]
    assert recorder.events("task_retry") == []
    (completion,) = recorder.events("task_completion")
    assert isinstance(completion.error, asyncio.CancelledError)
    assert completion.attempts == 1


def test_cancelled_error_raised_by_the_function_is_not_retried() -> None:
    orch = Orchestrator()
    calls: list[int] = []

    @orch.action(retry=3)
    async def cancelling() -> None:
        calls.append(1)
        raise asyncio.CancelledError

    async def body() -> None:
        with pytest.raises(asyncio.CancelledError):
            await cancelling()

    with set_testing(True):
        orch.run_sync(body)
    assert calls == [1]


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_are_not_retried(kind: type[BaseException]) -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    calls: list[int] = []

    @orch.action(retry=3)
    async def stopping() -> None:
        calls.append(1)
        raise kind("stop")

    with set_testing(True):
        try:
            asyncio.run(orch.run(stopping))
        except kind as exc:
            caught: BaseException | None = exc
        else:
            caught = None
    assert type(caught) is kind
    assert calls == [1]
    assert recorder.events("task_retry") == []


def test_timed_out_attempt_is_retried() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    calls: list[int] = []

    @orch.action(retry=2, timeout=0.02)
    async def slow_then_fast() -> str:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.Event().wait()
        return "ok"

    with set_testing(True):
        assert orch.run_sync(slow_then_fast) == "ok"
    assert len(calls) == 2
    (retry,) = recorder.events("task_retry")
    assert isinstance(retry.error, ActionTimeout)
    assert retry.attempt == 1
    (completion,) = recorder.events("task_completion")
    assert completion.attempts == 2
    assert completion.error is None


def test_always_timing_out_raises_action_timeout_after_all_attempts() -> None:
    orch = Orchestrator()
    calls: list[int] = []

    @orch.action(retry=2, timeout=0.02)
    async def slow() -> None:
        calls.append(1)
        await asyncio.Event().wait()

    with set_testing(True), pytest.raises(ActionTimeout):
        orch.run_sync(slow)
    assert len(calls) == 3


# --- the error raised at the end -----------------------------------------------------------


def test_last_attempt_raises_the_original_exception_object() -> None:
    orch = Orchestrator()
    raised: list[Boom] = []

    @orch.action(retry=3)
    async def flaky() -> None:
        raised.append(Boom(f"attempt {len(raised) + 1}"))
        raise raised[-1]

    with set_testing(True), pytest.raises(Boom) as info:
        orch.run_sync(flaky)
    assert len(raised) == 4
    assert info.value is raised[-1]
    assert type(info.value) is Boom


def test_last_attempt_of_a_sync_action_raises_the_original_exception_object() -> None:
    orch = Orchestrator()
    raised: list[Boom] = []

    @orch.action(retry=2)
    def flaky() -> None:
        raised.append(Boom(f"attempt {len(raised) + 1}"))
        raise raised[-1]

    with set_testing(True), pytest.raises(Boom) as info:
        orch.run_sync(flaky)
    assert len(raised) == 3
    assert info.value is raised[-1]


# --- retry state is per call ---------------------------------------------------------------


def test_concurrent_calls_do_not_share_attempt_counts() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    attempts: dict[str, int] = {"a": 0, "b": 0}
    order: list[str] = []

    @orch.action(retry=3)
    async def flaky(key: str) -> str:
        attempts[key] += 1
        order.append(key)
        await asyncio.sleep(0)
        if attempts[key] <= 2:
            raise Boom(key)
        return key

    async def body() -> list[str]:
        return list(await asyncio.gather(flaky("a"), flaky("b")))

    with set_testing(True):
        assert orch.run_sync(body) == ["a", "b"]
    assert attempts == {"a": 3, "b": 3}
    # The two calls really ran interleaved.
    assert order[:2] == ["a", "b"]
    completions: list[TaskCompletionEvent] = recorder.events("task_completion")
    assert sorted(c.result for c in completions) == ["a", "b"]
    assert [c.attempts for c in completions] == [3, 3]
    assert all(c.error is None for c in completions)
    retries: list[TaskRetryEvent] = recorder.events("task_retry")
    by_task: dict[int, list[int]] = {}
    for event in retries:
        by_task.setdefault(event.task_id, []).append(event.attempt)
    assert sorted(by_task.values()) == [[1, 2], [1, 2]]


# --- the testing switch --------------------------------------------------------------------


def test_set_testing_removes_waits() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    calls: list[int] = []
    flaky = always_failing(orch, calls, retry=RetryPolicy(retries=3, delay=5.0))
    start = time.perf_counter()
    with set_testing(True), pytest.raises(Boom):
        orch.run_sync(flaky)
    assert time.perf_counter() - start < 0.5
    assert len(calls) == 4
    assert [e.delay for e in recorder.events("task_retry")] == [0, 0, 0]


def test_set_testing_context_manager_restores_previous_state() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    calls: list[int] = []
    policy = RetryPolicy(retries=1, delay=0.03, jitter=0)
    flaky = always_failing(orch, calls, retry=policy)
    with set_testing(False):
        with set_testing(True), pytest.raises(Boom):
            orch.run_sync(flaky)
        with pytest.raises(Boom):
            orch.run_sync(flaky)
    assert [e.delay for e in recorder.events("task_retry")] == [0, 0.03]


def test_set_testing_context_manager_restores_max_attempts() -> None:
    orch = Orchestrator()
    calls: list[int] = []
    flaky = always_failing(orch, calls, retry=5)
    with set_testing(True, max_attempts=2):
        with set_testing(True, max_attempts=1), pytest.raises(Boom):
            orch.run_sync(flaky)
        assert len(calls) == 1
        with pytest.raises(Boom):
            orch.run_sync(flaky)
        assert len(calls) == 3
    with set_testing(True), pytest.raises(Boom):
        orch.run_sync(flaky)
    assert len(calls) == 3 + 6


def test_set_testing_applies_without_a_with_block() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    calls: list[int] = []
    flaky = always_failing(orch, calls, retry=RetryPolicy(retries=1, delay=5.0))
    with set_testing(False):
        set_testing(True)
        with pytest.raises(Boom):
            orch.run_sync(flaky)
    assert [e.delay for e in recorder.events("task_retry")] == [0]


def test_max_attempts_caps_attempts() -> None:
    orch = Orchestrator()
    calls: list[int] = []
    flaky = always_failing(orch, calls, retry=5)
    with set_testing(True, max_attempts=2), pytest.raises(Boom, match="attempt 2"):
        orch.run_sync(flaky)
    assert calls == [1, 2]


def test_max_attempts_does_not_add_attempts() -> None:
    orch = Orchestrator()
    calls: list[int] = []
    flaky = always_failing(orch, calls, retry=1)
    with set_testing(True, max_attempts=10), pytest.raises(Boom):
        orch.run_sync(flaky)
    assert calls == [1, 2]


# --- retry events --------------------------------------------------------------------------


def test_retry_events_number_attempts_and_report_the_real_wait() -> None:
    orch = Orchestrator()
    retried_at: list[float] = []
    started_at: list[float] = []
    events: list[TaskRetryEvent] = []

    def on_retry(event: TaskRetryEvent) -> None:
        events.append(event)
        retried_at.append(time.perf_counter())

    orch.on_task_retry(on_retry)

    @orch.action(retry=RetryPolicy(retries=3, delay=0.02, backoff=2.0, jitter=0))
    async def flaky() -> None:
        started_at.append(time.perf_counter())
        raise Boom(f"attempt {len(started_at)}")

    with set_testing(False), pytest.raises(Boom, match="attempt 4"):
        orch.run_sync(flaky)
    assert [e.attempt for e in events] == [1, 2, 3]
    assert [e.delay for e in events] == pytest.approx([0.02, 0.04, 0.08])
    assert [str(e.error) for e in events] == ["attempt 1", "attempt 2", "attempt 3"]
    assert all(e.name == "flaky" for e in events)
    for event, hook_time, next_start in zip(events, retried_at, started_at[1:], strict=True):
        real_wait = next_start - hook_time
        assert event.delay - 0.002 <= real_wait < event.delay + 0.05


def test_retry_event_with_jitter_reports_the_wait_actually_taken() -> None:
    orch = Orchestrator()
    retried_at: list[float] = []
    started_at: list[float] = []
    events: list[TaskRetryEvent] = []

    def on_retry(event: TaskRetryEvent) -> None:
        events.append(event)
        retried_at.append(time.perf_counter())

    orch.on_task_retry(on_retry)

    @orch.action(retry=RetryPolicy(retries=2, delay=0.04, backoff=1.0, jitter=1.0))
    async def flaky() -> None:
        started_at.append(time.perf_counter())
        raise Boom

    with set_testing(False), pytest.raises(Boom):
        orch.run_sync(flaky)
    assert len(events) == 2
    for event, hook_time, next_start in zip(events, retried_at, started_at[1:], strict=True):
        assert 0 <= event.delay <= 0.08
        assert event.delay - 0.002 <= next_start - hook_time < event.delay + 0.05


def test_retry_event_fires_before_the_wait() -> None:
    orch = Orchestrator()
    failed_at: list[float] = []
    retried_at: list[float] = []
    started_at: list[float] = []
    orch.on_task_retry(lambda event: retried_at.append(time.perf_counter()))

    @orch.action(retry=RetryPolicy(retries=1, delay=0.1, jitter=0))
    async def flaky() -> str:
        started_at.append(time.perf_counter())
        if len(started_at) == 1:
            failed_at.append(time.perf_counter())
            raise Boom
        return "ok"

    with set_testing(False):
        assert orch.run_sync(flaky) == "ok"
    (failed,) = failed_at
    (retried,) = retried_at
    assert retried - failed < 0.05
    assert started_at[1] - retried >= 0.1 - 0.002


# --- deadline ------------------------------------------------------------------------------


def test_deadline_stops_scheduling_retries_that_would_end_past_it() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    started_at: list[float] = []
    policy = RetryPolicy(retries=100, delay=0.05, backoff=1.0, jitter=0, deadline=0.2)

    @orch.action(retry=policy)
    async def flaky() -> None:
        started_at.append(time.perf_counter())
        raise Boom(f"attempt {len(started_at)}")

    start = time.perf_counter()
    with set_testing(False), pytest.raises(Boom) as info:
        orch.run_sync(flaky)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.2 + 0.05
    assert 2 <= len(started_at) <= 5
    assert str(info.value) == f"attempt {len(started_at)}"
    # Every attempt started before the deadline, and no retry was scheduled past it.
    assert all(t - start < 0.2 for t in started_at)
    retries = recorder.events("task_retry")
    assert len(retries) == len(started_at) - 1
    (completion,) = recorder.events("task_completion")
    assert completion.attempts == len(started_at)


def test_deadline_shrinks_a_later_attempts_timeout() -> None:
    orch = Orchestrator()
    calls: list[int] = []
    policy = RetryPolicy(retries=5, delay=0.05, backoff=1.0, jitter=0, deadline=0.2)

    @orch.action(retry=policy, timeout=1.0)
    async def fails_then_hangs() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Boom
        await asyncio.Event().wait()

    start = time.perf_counter()
    with set_testing(False), pytest.raises(ActionTimeout) as info:
        orch.run_sync(fails_then_hangs)
    elapsed = time.perf_counter() - start
    assert info.value.deadline is True
    assert info.value.action == "fails_then_hangs"
    assert info.value.seconds < 0.2
    assert "deadline" in str(info.value)
    assert len(calls) == 2
    assert 0.2 - 0.01 <= elapsed < 0.2 + 0.05


def test_deadline_bounds_a_hanging_sync_attempt_too() -> None:
    orch = Orchestrator()
    release = threading.Event()
    calls: list[int] = []

    @orch.action(retry=RetryPolicy(retries=3, delay=0.01, jitter=0, deadline=0.1))
    def fails_then_blocks() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Boom
        release.wait(0.5)

    start = time.perf_counter()
    try:
        with set_testing(False), pytest.raises(ActionTimeout) as info:
            orch.run_sync(fails_then_blocks)
    finally:
        release.set()
    assert time.perf_counter() - start < 0.1 + 0.05
    assert info.value.deadline is True


def test_timeout_shorter_than_the_deadline_is_kept() -> None:
    orch = Orchestrator()

    @orch.action(retry=RetryPolicy(retries=0, deadline=5.0), timeout=0.03)
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(ActionTimeout) as info:
        orch.run_sync(hangs)
    assert info.value.deadline is False
    assert info.value.seconds == 0.03


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_slow_retry_hook_past_the_deadline_starts_no_attempt_and_raises_the_last_error(
    kind: str,
) -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    raised: list[Boom] = []
    policy = RetryPolicy(retries=5, delay=0.01, backoff=1.0, jitter=0, deadline=0.1)

    async def slow_retry_hook(event: TaskRetryEvent) -> None:
        await asyncio.sleep(0.15)  # outlasts what is left of the deadline

    orch.on_task_retry(slow_retry_hook)

    def fail() -> None:
        raised.append(Boom(f"attempt {len(raised) + 1}"))
        raise raised[-1]

    async def flaky_async() -> None:
        fail()

    def flaky_sync() -> None:
        fail()

    flaky = orch.action(flaky_async if kind == "async" else flaky_sync, retry=policy)
    start = time.perf_counter()
    with set_testing(False), pytest.raises(Boom) as info:
        orch.run_sync(flaky)
    elapsed = time.perf_counter() - start
    # The deadline passed during the hook: no second attempt, and the first attempt's own
    # exception is raised, not an ActionTimeout with a negative limit.
    assert len(raised) == 1
    assert info.value is raised[0]
    assert not isinstance(info.value, ActionTimeout)
    assert elapsed < 0.15 + 0.1
    assert [e.attempt for e in recorder.events("task_retry")] == [1]
    (completion,) = recorder.events("task_completion")
    assert completion.error is raised[0]
    assert completion.attempts == 1


def test_the_deadline_is_measured_on_the_event_loops_clock() -> None:
    # A loop whose clock runs ahead of the system's: ten seconds pass on it during one retry
    # hook. On the loop's clock the 5-second deadline has then passed and no attempt follows;
    # on time.monotonic() barely any time has passed and a second attempt would start.
    class SkippingLoop(asyncio.SelectorEventLoop):
        skipped = 0.0

        def time(self) -> float:
            return super().time() + self.skipped

    loop = SkippingLoop()
    loop.slow_callback_duration = 60.0  # debug mode times steps on this clock, too
    orch = Orchestrator()
    calls: list[int] = []

    def skip_ahead(event: object) -> None:
        loop.skipped += 10.0

    orch.on_task_retry(skip_ahead)

    @orch.action(retry=RetryPolicy(retries=3, delay=0.0, deadline=5.0))
    async def flaky() -> None:
        calls.append(len(calls) + 1)
        raise ConnectionError(f"attempt {len(calls)}")

    try:
        with pytest.raises(ConnectionError, match="attempt 1"):
            loop.run_until_complete(orch.run(flaky))
    finally:
        loop.close()
    assert calls == [1]


def test_a_cancelled_attempt_whose_cleanup_raises_is_not_retried() -> None:
    orch = Orchestrator()
    attempts: list[int] = []
    started = asyncio.Event()

    @orch.action(retry=RetryPolicy(retries=3, delay=0.0))
    async def fetch() -> str:
        attempts.append(len(attempts) + 1)
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("connection reset while closing") from None
        return "fetched"

    async def main() -> None:
        run = asyncio.ensure_future(orch.run(fetch))
        await asyncio.wait_for(started.wait(), 1)
        run.cancel()
        with pytest.raises(ConnectionError, match="while closing"):
            await run

    asyncio.run(main())
    assert attempts == [1]


def test_a_fail_fast_sibling_whose_cleanup_raises_is_not_retried() -> None:
    orch = Orchestrator()
    attempts: list[int] = []

    @orch.action(retry=RetryPolicy(retries=5, delay=0.0))
    async def sibling() -> None:
        attempts.append(len(attempts) + 1)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("cleanup failed") from None

    @orch.action
    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("first failure")

    async def body() -> None:
        await orch.parallel([sibling, failing], fail_fast=True)()

    with pytest.raises(ValueError, match="first failure") as info:
        orch.run_sync(body)
    assert attempts == [1]
    assert info.value.__notes__ == [
        "parallel member 0 also failed: ConnectionError('cleanup failed')"
    ]


def test_the_wait_of_a_very_late_retry_is_the_cap_not_an_overflow() -> None:
    policy = RetryPolicy(retries=5000, delay=0.5, max_delay=3.0, jitter=0.0)
    assert policy.wait(2000) == 3.0
    assert RetryPolicy(retries=5000, delay=0.0, jitter=0.0).wait(2000) == 0.0
