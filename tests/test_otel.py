"""OpenTelemetry tracing: the span trees of runs, their attributes, events and statuses.

Every test uses a real SDK: a ``TracerProvider`` whose ``SimpleSpanProcessor`` hands each ended
span to an ``InMemorySpanExporter``. A tree is compared as ``{span: parent}``, each span written
``"name key"`` for a call and ``"run name"`` for a run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

from orchestrator import CallInfo, Interceptor, Orchestrator, RetryPolicy, set_testing
from orchestrator.otel import (
    ATTEMPTS,
    CALL_KEY,
    ERROR_TYPE,
    FUNCTION,
    REPLAYED,
    RETRY_ATTEMPT,
    RETRY_DELAY,
    RUN_ID,
    TASK_ID,
    instrument,
    is_instrumented,
    uninstrument,
)


class Traced:
    """An instrumented orchestrator and what its spans were exported to."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.orch: Orchestrator[Any] = Orchestrator()
        instrument(self.orch, self.provider)

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def span(self, label: str) -> ReadableSpan:
        found = [s for s in self.spans() if _label(s) == label]
        assert len(found) == 1, (label, [_label(s) for s in self.spans()])
        return found[0]

    def tree(self) -> dict[str, str | None]:
        return tree(self.spans())


@pytest.fixture
def traced() -> Iterator[Traced]:
    result = Traced()
    yield result
    result.provider.shutdown()


def _label(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    key = attributes.get(CALL_KEY)
    if key is not None:
        return f"{span.name} {key}"
    if RUN_ID in attributes:
        return f"run {span.name}"
    return span.name


def tree(spans: Sequence[ReadableSpan]) -> dict[str, str | None]:
    """Each span's label and its parent's (None for a root); a parent must be exported too."""
    by_id = {span.context.span_id: span for span in spans if span.context is not None}
    shape: dict[str, str | None] = {}
    for span in spans:
        label = _label(span)
        assert label not in shape, f"two spans labelled {label!r}"
        shape[label] = None if span.parent is None else _label(by_id[span.parent.span_id])
    return shape


def status_of(span: ReadableSpan) -> tuple[StatusCode, Any]:
    return span.status.status_code, (span.attributes or {}).get(ERROR_TYPE)


# --- span trees -----------------------------------------------------------------------------


def test_sequential_calls_are_children_of_the_run(traced: Traced) -> None:
    orch = traced.orch
    fetch = orch.action(lambda: 1, name="fetch", inline=True)
    store = orch.action(lambda: 2, name="store", inline=True)

    async def main() -> None:
        await fetch()
        await store()

    orch.run_sync(main)
    assert traced.tree() == {"run main": None, "fetch 1": "run main", "store 2": "run main"}


def test_nested_calls_are_children_of_the_call_they_were_made_from(traced: Traced) -> None:
    orch = traced.orch

    @orch.action
    async def leaf() -> None:
        return None

    @orch.action
    async def middle() -> None:
        await leaf()
        await leaf()

    @orch.action
    async def top() -> None:
        await middle()

    orch.run_sync(top)
    assert traced.tree() == {
        "run top": None,
        "top 1": "run top",
        "middle 1.1": "top 1",
        "leaf 1.1.1": "middle 1.1",
        "leaf 1.1.2": "middle 1.1",
    }


def test_parallel_members_are_children_of_the_call_that_made_the_group(traced: Traced) -> None:
    orch = traced.orch

    @orch.action
    async def profile() -> None:
        await asyncio.sleep(0)

    @orch.action
    async def shipping() -> None:
        await asyncio.sleep(0)

    both = orch.parallel([profile, shipping])

    @orch.action
    async def checkout() -> None:
        await both()

    async def main() -> None:
        await both()
        await checkout()

    orch.run_sync(main)
    assert traced.tree() == {
        "run main": None,
        "profile 1.1.1": "run main",
        "shipping 1.2.1": "run main",
        "checkout 2": "run main",
        "profile 2.1.1.1": "checkout 2",
        "shipping 2.1.2.1": "checkout 2",
    }


@pytest.mark.parametrize("concurrency", [None, 2])
def test_map_items_are_children_of_the_call_that_called_map(
    traced: Traced, concurrency: int | None
) -> None:
    orch = traced.orch

    @orch.action
    async def fetch(item: int) -> int:
        await asyncio.sleep(0)
        return item

    @orch.action
    async def fetch_all() -> list[int]:
        return await orch.map(fetch, [1, 2, 3], concurrency=concurrency)

    assert orch.run_sync(fetch_all) == [1, 2, 3]
    assert traced.tree() == {
        "run fetch_all": None,
        "fetch_all 1": "run fetch_all",
        "fetch 1.1.1.1": "fetch_all 1",
        "fetch 1.1.2.1": "fetch_all 1",
        "fetch 1.1.3.1": "fetch_all 1",
    }


def test_a_sync_action_in_a_worker_thread_runs_inside_its_call_span(traced: Traced) -> None:
    orch = traced.orch
    tracer = traced.provider.get_tracer("app")

    @orch.action
    def resize() -> str:
        with tracer.start_as_current_span("inside the thread"):
            pass
        return trace.get_current_span().get_span_context().trace_id.to_bytes(16, "big").hex()

    async def main() -> str:
        return await resize()

    trace_id = orch.run_sync(main)
    assert traced.tree() == {
        "run main": None,
        "resize 1": "run main",
        "inside the thread": "resize 1",
    }
    assert f"{traced.span('resize 1').context.trace_id:032x}" == trace_id


def test_the_run_span_is_a_child_of_the_span_current_where_the_run_started(
    traced: Traced,
) -> None:
    orch = traced.orch
    step = orch.action(lambda: None, name="step", inline=True)
    with traced.provider.get_tracer("app").start_as_current_span("request"):
        orch.run_sync(step)
    assert traced.tree() == {"request": None, "run step": "request", "step 1": "run step"}


def test_a_retried_call_is_one_span_with_an_event_per_retry(traced: Traced) -> None:
    orch = traced.orch
    failures = iter([ConnectionError("reset"), TimeoutError("slow")])

    @orch.action(retry=RetryPolicy(retries=3, delay=0.5))
    async def fetch() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    with set_testing(True):
        orch.run_sync(fetch)
    assert traced.tree() == {"run fetch": None, "fetch 1": "run fetch"}
    span = traced.span("fetch 1")
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert events == [
        ("retry", {RETRY_ATTEMPT: 1, ERROR_TYPE: "ConnectionError", RETRY_DELAY: 0.0}),
        ("retry", {RETRY_ATTEMPT: 2, ERROR_TYPE: "TimeoutError", RETRY_DELAY: 0.0}),
    ]
    assert (span.attributes or {})[ATTEMPTS] == 3
    assert span.status.status_code is StatusCode.UNSET


def test_a_retry_event_carries_the_scheduled_delay(traced: Traced) -> None:
    orch = traced.orch
    failed = False

    @orch.action(retry=RetryPolicy(retries=1, delay=0.01, jitter=0))
    async def fetch() -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise ConnectionError("reset")

    with set_testing(False):
        orch.run_sync(fetch)
    (event,) = traced.span("fetch 1").events
    assert (event.attributes or {})[RETRY_DELAY] == pytest.approx(0.01)


def test_a_timed_out_call_span_has_status_error_and_the_timeout_recorded(traced: Traced) -> None:
    orch = traced.orch

    @orch.action(timeout=0.01)
    async def hang() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        orch.run_sync(hang)
    assert traced.tree() == {"run hang": None, "hang 1": "run hang"}
    span = traced.span("hang 1")
    assert status_of(span) == (StatusCode.ERROR, "ActionTimeout")
    assert span.status.description == (
        "ActionTimeout: action 'hang' did not finish within its timeout of 0.01 s"
    )
    assert [e.name for e in span.events] == ["exception"]
    assert (span.events[0].attributes or {})["exception.type"].endswith("ActionTimeout")
    assert status_of(traced.span("run hang")) == (StatusCode.ERROR, "ActionTimeout")


def test_fail_fast_ends_every_member_span_the_failing_one_and_the_cancelled_one(
    traced: Traced,
) -> None:
    orch = traced.orch

    @orch.action
    async def slow() -> None:
        await asyncio.Event().wait()

    @orch.action
    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad input")

    group = orch.parallel([slow, broken], fail_fast=True)

    with pytest.raises(ValueError, match="bad input"):
        orch.run_sync(group)
    assert traced.tree() == {
        "run Parallel": None,
        "slow 1.1.1": "run Parallel",
        "broken 1.2.1": "run Parallel",
    }
    assert status_of(traced.span("slow 1.1.1")) == (StatusCode.ERROR, "CancelledError")
    assert status_of(traced.span("broken 1.2.1")) == (StatusCode.ERROR, "ValueError")
    assert status_of(traced.span("run Parallel")) == (StatusCode.ERROR, "ValueError")


def test_a_run_cancelled_from_outside_ends_its_spans_with_status_error(traced: Traced) -> None:
    orch = traced.orch
    started = asyncio.Event()

    @orch.action
    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    @orch.action
    async def outer() -> None:
        await wait_forever()

    async def main() -> None:
        task = asyncio.ensure_future(orch.run(outer))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert traced.tree() == {
        "run outer": None,
        "outer 1": "run outer",
        "wait_forever 1.1": "outer 1",
    }
    for label in ("run outer", "outer 1", "wait_forever 1.1"):
        assert status_of(traced.span(label)) == (StatusCode.ERROR, "CancelledError"), label


# --- attributes -----------------------------------------------------------------------------


def test_a_call_span_has_the_call_attributes(traced: Traced) -> None:
    orch = traced.orch

    @orch.action
    async def fetch_user(user_id: str) -> str:
        return user_id

    async def main() -> None:
        await fetch_user("u1")
        await fetch_user("u2")

    orch.run_sync(main, run_id="run-7")
    assert dict(traced.span("fetch_user 2").attributes or {}) == {
        RUN_ID: "run-7",
        CALL_KEY: "2",
        TASK_ID: 2,
        FUNCTION: f"{__name__}.test_a_call_span_has_the_call_attributes.<locals>.fetch_user",
        ATTEMPTS: 1,
        REPLAYED: False,
    }


def test_a_run_span_has_the_run_id_and_the_body_function(traced: Traced) -> None:
    async def main() -> None:
        return None

    traced.orch.run_sync(main, run_id="run-8")
    span = traced.span("run main")
    assert dict(span.attributes or {}) == {
        RUN_ID: "run-8",
        FUNCTION: f"{__name__}.test_a_run_span_has_the_run_id_and_the_body_function.<locals>.main",
    }
    assert span.status.status_code is StatusCode.UNSET


def test_a_replayed_call_span_says_so_when_instrumented_before_the_replaying_interceptor(
    traced: Traced,
) -> None:
    class Replay(Interceptor):
        async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            call.replayed = True
            return "recorded"

    orch = traced.orch.add_interceptor(Replay())
    fetch = orch.action(lambda: "live", name="fetch")
    assert orch.run_sync(fetch) == "recorded"
    attributes = traced.span("fetch 1").attributes or {}
    assert (attributes[REPLAYED], attributes[ATTEMPTS]) == (True, 0)


def test_a_retry_event_goes_to_the_call_span_even_under_a_later_interceptors_span(
    traced: Traced,
) -> None:
    tracer = traced.provider.get_tracer("app")

    class Inner(Interceptor):
        async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            with tracer.start_as_current_span("inner"):
                return await proceed()

    orch = traced.orch.add_interceptor(Inner())
    failed = False

    @orch.action(retry=1)
    async def fetch() -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise ConnectionError("reset")

    with set_testing(True):
        orch.run_sync(fetch)
    assert [e.name for e in traced.span("fetch 1").events] == ["retry"]
    assert traced.span("inner").events == ()


def test_a_retry_hook_sees_the_call_span_as_the_current_span(traced: Traced) -> None:
    seen: list[int] = []
    orch = traced.orch.on_task_retry(
        lambda event: seen.append(trace.get_current_span().get_span_context().span_id)
    )
    failed = False

    @orch.action(retry=1)
    async def fetch() -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise ConnectionError("reset")

    with set_testing(True):
        orch.run_sync(fetch)
    assert seen == [traced.span("fetch 1").context.span_id]


def test_spans_sampled_out_are_not_exported_and_the_run_still_works() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    orch = Orchestrator()
    instrument(orch, provider)
    step = orch.action(lambda: "done", name="step", inline=True)
    assert orch.run_sync(step) == "done"
    assert exporter.get_finished_spans() == ()


# --- instrument() and uninstrument() --------------------------------------------------------


def test_uninstrument_stops_making_spans(traced: Traced) -> None:
    orch = traced.orch
    step = orch.action(lambda: None, name="step", inline=True)
    orch.run_sync(step)
    uninstrument(orch)
    orch.run_sync(step)
    assert len(traced.spans()) == 2
    assert not is_instrumented(orch)


def test_instrument_after_uninstrument_traces_again(traced: Traced) -> None:
    orch = traced.orch
    uninstrument(orch)
    instrument(orch, traced.provider)
    orch.run_sync(orch.action(lambda: None, name="step", inline=True))
    assert traced.tree() == {"run step": None, "step 1": "run step"}


def test_instrumenting_twice_is_refused(traced: Traced) -> None:
    with pytest.raises(ValueError, match=r"^<Orchestrator context=State> is already instrumented"):
        instrument(traced.orch, traced.provider)


def test_uninstrumenting_what_is_not_instrumented_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^<Orchestrator context=State> is not instrumented$"):
        uninstrument(Orchestrator())


@pytest.mark.parametrize("function", [instrument, uninstrument, is_instrumented])
def test_something_else_than_an_orchestrator_is_refused(function: Any) -> None:
    with pytest.raises(TypeError, match=r"^orchestrator must be an Orchestrator, got 5$"):
        function(5)


def test_a_tracer_provider_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^tracer_provider must be an OpenTelemetry"):
        instrument(Orchestrator(), "provider")  # type: ignore[arg-type]


GLOBAL_PROVIDER_LATER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from orchestrator import Orchestrator
from orchestrator.otel import instrument

orch = Orchestrator()
instrument(orch)  # no provider yet: the global one, still the API's no-op placeholder
step = orch.action(lambda: trace.get_current_span().is_recording(), name="step")
print(orch.run_sync(step))
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
print(orch.run_sync(step))
print([(s.name, dict(s.attributes).get("orchestrator.call.key")) for s in
       exporter.get_finished_spans()])
"""


def test_without_a_provider_the_global_one_is_followed_once_it_is_set() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(GLOBAL_PROVIDER_LATER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False", "True", "[('step', '1'), ('step', None)]"]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def test_an_error_whose_message_cannot_be_made_still_fails_the_call_with_itself(
    traced: Traced,
) -> None:
    @traced.orch.action
    async def fetch() -> None:
        raise Unprintable

    with pytest.raises(Unprintable):
        traced.orch.run_sync(fetch)
    span = traced.span("fetch 1")
    assert status_of(span) == (StatusCode.ERROR, "Unprintable")
    assert span.status.description == "Unprintable (its message could not be made)"
