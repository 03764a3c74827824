"""The order of each event's fields, which the call path relies on when it builds events fast."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import (
    Orchestrator,
    ProcessBeginEvent,
    ProcessCompletionEvent,
    ProcessErrorEvent,
    RetryPolicy,
    TaskBeginEvent,
    TaskCompletionEvent,
    TaskErrorEvent,
    TaskRetryEvent,
    set_testing,
)
from orchestrator.testing import EventRecorder

# The action call path builds task events from positional tuples (tuple.__new__) to skip the
# NamedTuple constructor: these are the orders it writes. A field added, removed or moved in
# _events.py without the same change in _action.py fails here instead of silently misplacing
# a value.
LAYOUTS: dict[type[Any], tuple[str, ...]] = {
    ProcessBeginEvent: ("run_id", "timestamp", "context"),
    ProcessErrorEvent: ("run_id", "timestamp", "total_duration", "result", "error", "context"),
    ProcessCompletionEvent: ("run_id", "timestamp", "total_duration", "result", "error", "context"),
    TaskBeginEvent: (
        "run_id",
        "task_id",
        "parent_id",
        "call_key",
        "name",
        "start_timestamp",
        "args",
        "kwargs",
        "context",
    ),
    TaskRetryEvent: (
        "run_id",
        "task_id",
        "call_key",
        "name",
        "attempt",
        "error",
        "delay",
        "context",
    ),
    TaskErrorEvent: ("run_id", "task_id", "call_key", "name", "error", "attempts", "context"),
    TaskCompletionEvent: (
        "run_id",
        "task_id",
        "parent_id",
        "call_key",
        "name",
        "start_timestamp",
        "end_timestamp",
        "duration",
        "result",
        "error",
        "attempts",
        "replayed",
        "context",
    ),
}


@pytest.mark.parametrize("event", list(LAYOUTS), ids=lambda e: e.__name__)
def test_event_fields_are_in_the_order_the_call_path_builds_them(event: type[Any]) -> None:
    assert event._fields == LAYOUTS[event]


def test_every_field_of_every_task_event_holds_what_its_name_says() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    failures = [OSError("first")]

    @orch.action(retry=RetryPolicy(retries=1))
    async def step(value: int, *, scale: int) -> int:
        if failures:
            raise failures.pop()
        return value * scale

    @orch.action
    async def outer() -> int:
        return await step(2, scale=3)

    async def body() -> int:
        return await outer()

    with set_testing(True):
        assert orch.run_sync(body, run_id="run-1") == 6
    context = recorder.events("process_begin")[0].context
    begin = recorder.events("task_begin")[1]
    assert (begin.run_id, begin.task_id, begin.parent_id, begin.call_key, begin.name) == (
        "run-1",
        2,
        1,
        "1.1",
        "step",
    )
    assert (begin.args, dict(begin.kwargs), begin.context) == ((2,), {"scale": 3}, context)
    assert isinstance(begin.start_timestamp, float)
    (retry,) = recorder.events("task_retry")
    assert (retry.run_id, retry.task_id, retry.call_key, retry.name, retry.attempt) == (
        "run-1",
        2,
        "1.1",
        "step",
        1,
    )
    assert (str(retry.error), retry.delay, retry.context) == ("first", 0.0, context)
    done = recorder.events("task_completion")[0]
    assert (done.run_id, done.task_id, done.parent_id, done.call_key, done.name) == (
        "run-1",
        2,
        1,
        "1.1",
        "step",
    )
    assert (done.result, done.error, done.attempts, done.replayed) == (6, None, 2, False)
    assert done.context is context
    assert done.start_timestamp <= done.end_timestamp
    # Timestamps are large floats: their difference is the duration up to float rounding.
    assert done.duration == pytest.approx(
        (done.end_timestamp - done.start_timestamp) * 1000, abs=1e-3
    )


def test_every_field_of_a_task_error_event_holds_what_its_name_says() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def broken() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        orch.run_sync(broken, run_id="run-2")
    (failed,) = recorder.events("task_error")
    assert (failed.run_id, failed.task_id, failed.call_key, failed.name, failed.attempts) == (
        "run-2",
        1,
        "1",
        "broken",
        1,
    )
    assert isinstance(failed.error, KeyError)
    assert failed.context is recorder.events("process_begin")[0].context
