"""OpenTelemetry tracing of runs and action calls: ``instrument(orchestrator)``.

Needs the ``otel`` extra (``pip install 'aio-orchestrator[otel]'``, the OpenTelemetry API);
the application brings the SDK and its exporters, as with any instrumented library. Nothing
here is imported by ``import orchestrator``.

Each run is a span named after its body, and each action call a span named after the action,
a child of the span of the call or run it was made from: across ``parallel()`` and ``map()``
members and sync actions in worker threads too, since the span is made current in the work's
own context. A span the application made current around ``run()`` is the run span's parent.

Attributes: ``orchestrator.run.id`` and ``code.function.name`` on every span;
``orchestrator.call.key``, ``orchestrator.task.id``, ``orchestrator.call.attempts`` and
``orchestrator.call.replayed`` on call spans. A retry is an event named ``retry`` on the call's
span, with ``orchestrator.retry.attempt`` (the attempt that failed), ``error.type`` and
``orchestrator.retry.delay`` (seconds until the next attempt). A run or call that fails, by a
cancellation too, has the exception recorded, status ERROR and ``error.type``; one that
succeeds keeps status UNSET, as OpenTelemetry asks of instrumentation.
"""

from __future__ import annotations

import importlib.metadata
import weakref
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    Span,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
)

from ._describe import body_name, describe, error_type, qualified_name
from ._events import TaskRetryEvent
from ._interceptors import CallInfo, Interceptor, Proceed
from ._orchestrator import Orchestrator
from ._run import Run

RUN_ID = "orchestrator.run.id"
"""Attribute: the id of the run a span belongs to."""
CALL_KEY = "orchestrator.call.key"
"""Attribute: the call's key, its stable position in the run, such as ``"3.2.1"``."""
TASK_ID = "orchestrator.task.id"
"""Attribute: the call's task id, as in its events."""
ATTEMPTS = "orchestrator.call.attempts"
"""Attribute: how many attempts the call made."""
REPLAYED = "orchestrator.call.replayed"
"""Attribute: whether an interceptor handed back a recorded outcome instead of calling."""
FUNCTION = "code.function.name"
"""Attribute: the qualified name of the action's function or of the run's body."""
ERROR_TYPE = "error.type"
"""Attribute of a failed span and of a retry event: the exception's class name."""
RETRY_EVENT = "retry"
"""The name of the span event of each retry."""
RETRY_ATTEMPT = "orchestrator.retry.attempt"
"""Retry event attribute: the number of the attempt that failed, from 1."""
RETRY_DELAY = "orchestrator.retry.delay"
"""Retry event attribute: the seconds until the next attempt."""

_SCOPE = "orchestrator"
try:
    _VERSION: str | None = importlib.metadata.version("aio-orchestrator")
except importlib.metadata.PackageNotFoundError:  # run from a source tree
    _VERSION = None


class _Tracing(Interceptor):
    """Makes a span of each run and call and makes it current around the work."""

    def __init__(self, provider: TracerProvider | None) -> None:
        # Without a provider of its own, the tracing follows the global one, which the
        # application may set after instrumenting; until then every span is a no-op. While
        # that may be so, a span is started without attributes first, and the work runs as if
        # untraced when it is one: tracing that is off then costs next to nothing.
        self._waiting = provider is None
        self._tracer = _tracer_of(provider)
        # The call's own span for its retry hook, which runs inside every call interceptor:
        # an interceptor registered later may have made a span of its own current there.
        self._call_span: ContextVar[Span | None] = ContextVar(
            "orchestrator-otel-call", default=None
        )

    def _probe(self, name: str) -> Span | None:
        """A new span without attributes, or None if it would only repeat the current one."""
        span = self._tracer.start_span(name)
        if span is INVALID_SPAN:  # the no-op tracer's answer when no span is current
            return None
        if not span.is_recording():
            current = trace.get_current_span()
            if span is current or span.get_span_context() == current.get_span_context():
                return None
        # A provider is set now: from here on, spans get their attributes when they start.
        self._waiting = False
        return span

    async def intercept_run(self, run: Run[Any], proceed: Proceed) -> Any:
        name = body_name(run.body)
        attributes = {RUN_ID: run.run_id, FUNCTION: qualified_name(run.body)}
        if self._waiting:
            span = self._probe(name)
            if span is None:
                return await proceed()
            span.set_attributes(attributes)
        else:
            span = self._tracer.start_span(name, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await proceed()
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    async def intercept_call(self, call: CallInfo[Any], proceed: Proceed) -> Any:
        if self._waiting:
            span = self._probe(call.action.name)
            if span is None:
                return await proceed()
            span.set_attributes(_call_attributes(call))
        else:
            span = self._tracer.start_span(call.action.name, attributes=_call_attributes(call))
        token = otel_context.attach(trace.set_span_in_context(span))
        mine = self._call_span.set(span)
        try:
            return await proceed()
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            self._call_span.reset(mine)
            otel_context.detach(token)
            if span.is_recording():
                span.set_attributes({ATTEMPTS: call.attempts, REPLAYED: call.replayed})
            span.end()

    def on_retry(self, event: TaskRetryEvent[Any]) -> None:
        """The retry hook: an event on the call's span."""
        span = self._call_span.get()
        if span is not None and span.is_recording():
            span.add_event(
                RETRY_EVENT,
                {
                    RETRY_ATTEMPT: event.attempt,
                    ERROR_TYPE: error_type(event.error),
                    RETRY_DELAY: event.delay,
                },
            )


def _call_attributes(call: CallInfo[Any]) -> dict[str, Any]:
    return {
        RUN_ID: call.run.run_id,
        CALL_KEY: call.call_key,
        TASK_ID: call.task_id,
        FUNCTION: qualified_name(call.action),
    }


def _tracer_of(provider: TracerProvider | None) -> Tracer:
    return trace.get_tracer(_SCOPE, _VERSION, provider)


def _failed(span: Span, error: BaseException) -> None:
    if span.is_recording():
        try:
            span.record_exception(error)
        except Exception:
            # The SDK reads the message, and this exception cannot make one; raising here
            # would replace the work's failure.
            span.add_event(
                "exception",
                {"exception.type": error_type(error), "exception.message": describe(error)},
            )
        span.set_attribute(ERROR_TYPE, error_type(error))
        span.set_status(Status(StatusCode.ERROR, describe(error)))


_instrumented: weakref.WeakKeyDictionary[Orchestrator[Any], _Tracing] = weakref.WeakKeyDictionary()


def instrument(
    orchestrator: Orchestrator[Any], tracer_provider: TracerProvider | None = None
) -> None:
    """Trace every later run and action call of ``orchestrator`` with OpenTelemetry.

    Spans are made by a tracer named ``"orchestrator"`` of ``tracer_provider``, or of the
    global provider when None (looked up at each span, so a provider set later is used). The
    tracing is an interceptor registered now: interceptors registered earlier wrap it, later
    ones are wrapped by it. Call ``instrument`` before registering an interceptor that hands
    back recorded outcomes, so that replayed calls get spans too. A run or call whose begin
    hook raised has no span: its work never started. Undo with :func:`uninstrument`.

    Raises:
        TypeError: ``orchestrator`` is not an ``Orchestrator``, or ``tracer_provider`` not an
            OpenTelemetry ``TracerProvider``.
        ValueError: ``orchestrator`` is already instrumented.

    """
    if not isinstance(orchestrator, Orchestrator):
        raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
    if tracer_provider is not None and not isinstance(tracer_provider, TracerProvider):
        raise TypeError(
            f"tracer_provider must be an OpenTelemetry TracerProvider or None, "
            f"got {tracer_provider!r}"
        )
    if orchestrator in _instrumented:
        raise ValueError(
            f"{orchestrator!r} is already instrumented; call uninstrument() on it first "
            "to instrument it again"
        )
    tracing = _Tracing(tracer_provider)
    orchestrator.add_interceptor(tracing).on_task_retry(tracing.on_retry)
    _instrumented[orchestrator] = tracing


def uninstrument(orchestrator: Orchestrator[Any]) -> None:
    """Stop tracing ``orchestrator``: later runs and calls make no spans.

    Runs and calls in progress keep their spans, which end as they end.

    Raises:
        TypeError: ``orchestrator`` is not an ``Orchestrator``.
        ValueError: ``orchestrator`` is not instrumented.

    """
    if not isinstance(orchestrator, Orchestrator):
        raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
    tracing = _instrumented.pop(orchestrator, None)
    if tracing is None:
        raise ValueError(f"{orchestrator!r} is not instrumented")
    orchestrator.remove_interceptor(tracing).remove_hook(tracing.on_retry)


def is_instrumented(orchestrator: Orchestrator[Any]) -> bool:
    """Whether :func:`instrument` was called on ``orchestrator`` and not undone since.

    Raises:
        TypeError: ``orchestrator`` is not an ``Orchestrator``.

    """
    if not isinstance(orchestrator, Orchestrator):
        raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
    return orchestrator in _instrumented


__all__ = [
    "ATTEMPTS",
    "CALL_KEY",
    "ERROR_TYPE",
    "FUNCTION",
    "REPLAYED",
    "RETRY_ATTEMPT",
    "RETRY_DELAY",
    "RETRY_EVENT",
    "RUN_ID",
    "TASK_ID",
    "instrument",
    "is_instrumented",
    "uninstrument",
]
