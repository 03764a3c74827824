"""Record live runs and draw them: ``Timeline(orchestrator)``, then ``.to_html(path)``.

A ``Timeline`` registers hooks and an interceptor on an orchestrator and records every run that
begins while it is attached: each action call with its parent, arguments, outcome and attempts
(their start, end, error and the wait scheduled after them). ``to_html`` writes a run as one
self-contained HTML page, a Gantt chart of its calls; ``to_chrome_trace`` writes it in the
Trace Event Format that Perfetto and ``chrome://tracing`` open. Values from outside (arguments,
results, error messages) are shortened and escaped in both. Standard library only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ._describe import arguments, describe, status, value
from ._events import (
    ProcessBeginEvent,
    ProcessCompletionEvent,
    TaskBeginEvent,
    TaskCompletionEvent,
    TaskRetryEvent,
)
from ._interceptors import CallInfo, Interceptor, Proceed
from ._orchestrator import Orchestrator
from ._records import AttemptRecord, CallRecord, RunRecord
from ._run import Run
from ._timeline import chrome_trace, render_html

_clock = time.perf_counter


class _Attempt:
    __slots__ = ("delay", "ended", "error", "number", "started")

    def __init__(self, number: int, started: float) -> None:
        self.number = number
        self.started = started
        self.ended: float | None = None
        self.error: str | None = None
        self.delay: float | None = None

    def record(self) -> AttemptRecord:
        return AttemptRecord(self.number, self.started, self.ended, self.error, self.delay)


class _Call:
    __slots__ = (
        "args",
        "attempts",
        "ended",
        "error",
        "key",
        "name",
        "parent_key",
        "replayed",
        "result",
        "started",
        "status",
    )

    def __init__(self, event: TaskBeginEvent[Any], parent_key: str | None) -> None:
        self.key = event.call_key
        self.name = event.name
        self.parent_key = parent_key
        self.started = event.start_timestamp
        self.args = arguments(event.args, event.kwargs)
        self.status = "running"
        self.ended: float | None = None
        self.result: str | None = None
        self.error: str | None = None
        self.replayed = False
        self.attempts: list[_Attempt] = []

    def record(self, run_id: str) -> CallRecord:
        return CallRecord(
            run_id,
            self.key,
            self.name,
            self.parent_key,
            self.status,
            self.started,
            self.ended,
            tuple(attempt.record() for attempt in self.attempts),
            self.args,
            self.result,
            self.error,
            self.replayed,
        )


class _Run:
    __slots__ = ("args", "body", "calls", "ended", "error", "result", "run_id", "started", "status")

    def __init__(self, event: ProcessBeginEvent[Any]) -> None:
        self.run_id = event.run_id
        self.started = event.timestamp
        self.body = "(not called)"
        self.args = ""
        self.status = "running"
        self.ended: float | None = None
        self.result: str | None = None
        self.error: str | None = None
        self.calls: dict[int, _Call] = {}

    def record(self) -> RunRecord:
        return RunRecord(
            self.run_id,
            self.body,
            self.status,
            self.started,
            self.ended,
            self.args,
            self.result,
            self.error,
        )


class _Attempts(Interceptor):
    """Times each attempt, and learns each run's body and arguments."""

    def __init__(self, timeline: Timeline) -> None:
        self._runs = timeline._runs

    async def intercept_run(self, run: Run[Any], proceed: Proceed) -> Any:
        recorded = self._runs.get(run.run_id)
        if recorded is not None:
            recorded.body = _body(run.body)
            recorded.args = arguments(run.args, run.kwargs)
        return await proceed()

    async def intercept_attempt(self, call: CallInfo[Any], proceed: Proceed) -> Any:
        recorded = self._runs.get(call.run.run_id)
        made = None if recorded is None else recorded.calls.get(call.task_id)
        if made is None:
            return await proceed()
        epoch = call.run.epoch
        attempt = _Attempt(call.attempts, _clock() + epoch)
        made.attempts.append(attempt)
        try:
            return await proceed()
        except BaseException as exc:
            attempt.error = describe(exc)
            raise
        finally:
            attempt.ended = _clock() + epoch


def _body(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "name", None)
    if not isinstance(name, str):
        name = type(fn).__qualname__
    return f"{module}:{name}" if isinstance(module, str) else name


class Timeline:
    """Records the runs of ``orchestrator`` that begin from now on, for a picture of each.

    Every run is kept, with all its calls, until :meth:`clear`; a run id used again replaces
    the earlier run's record. :meth:`close` (or leaving a ``with`` block) stops recording and
    keeps what was recorded. A run in progress can be drawn: its unfinished calls are shown
    as running.

    Raises:
        TypeError: ``orchestrator`` is not an ``Orchestrator``.

    """

    def __init__(self, orchestrator: Orchestrator[Any]) -> None:
        if not isinstance(orchestrator, Orchestrator):
            raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
        self._orchestrator: Orchestrator[Any] | None = orchestrator
        self._runs: dict[str, _Run] = {}
        self._interceptor = _Attempts(self)
        (
            orchestrator.on_process_begin(self._run_begin)
            .on_process_completion(self._run_end)
            .on_task_begin(self._call_begin)
            .on_task_retry(self._retry)
            .on_task_completion(self._call_end)
            .add_interceptor(self._interceptor)
        )

    def __repr__(self) -> str:
        state = "closed" if self._orchestrator is None else "recording"
        return f"<Timeline {state}, {len(self._runs)} run(s)>"

    def __enter__(self) -> Timeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Hooks -------------------------------------------------------------------------------

    def _run_begin(self, event: ProcessBeginEvent[Any]) -> None:
        self._runs.pop(event.run_id, None)  # a reused id: the newest run is kept, last
        self._runs[event.run_id] = _Run(event)

    def _run_end(self, event: ProcessCompletionEvent[Any]) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        run.ended = event.timestamp
        run.status = status(event.error)
        if event.error is None:
            run.result = value(event.result)
        else:
            run.error = describe(event.error)

    def _call_begin(self, event: TaskBeginEvent[Any]) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        parent = None if event.parent_id is None else run.calls.get(event.parent_id)
        run.calls[event.task_id] = _Call(event, None if parent is None else parent.key)

    def _retry(self, event: TaskRetryEvent[Any]) -> None:
        run = self._runs.get(event.run_id)
        call = None if run is None else run.calls.get(event.task_id)
        if call is not None and len(call.attempts) >= event.attempt:
            call.attempts[event.attempt - 1].delay = event.delay

    def _call_end(self, event: TaskCompletionEvent[Any]) -> None:
        run = self._runs.get(event.run_id)
        call = None if run is None else run.calls.get(event.task_id)
        if call is None:
            return
        call.ended = event.end_timestamp
        call.status = status(event.error)
        call.replayed = event.replayed
        if event.error is None:
            call.result = value(event.result)
        else:
            call.error = describe(event.error)

    # Reading -----------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """The ids of the recorded runs, in the order they began."""
        return list(self._runs)

    def records(self, run_id: str | None = None) -> tuple[RunRecord, list[CallRecord]]:
        """The record of a run and of its calls, in the order they began.

        Args:
            run_id: The run; may be left out when exactly one run was recorded.

        Raises:
            TypeError: ``run_id`` is not a str or None.
            ValueError: No run has that id, or ``run_id`` is None and not exactly one run was
                recorded.

        """
        run = self._run(run_id)
        return run.record(), [call.record(run.run_id) for call in run.calls.values()]

    def html(self, run_id: str | None = None) -> str:
        """A run as one self-contained HTML page (see :meth:`to_html`)."""
        return render_html(*self.records(run_id))

    def chrome_trace(self, run_id: str | None = None) -> dict[str, Any]:
        """A run in the Trace Event Format, as a dict ready for ``json.dump``."""
        return chrome_trace(*self.records(run_id))

    def to_html(self, path: str | os.PathLike[str], run_id: str | None = None) -> Path:
        """Write a run as one self-contained HTML page: a Gantt chart of its calls.

        One bar per call on a time axis, under the call it was made from, with its attempts
        and the waits between them inside the bar, failures and cancellations coloured and
        labelled, and the call's details as hover text. The page loads nothing and runs no
        script. Returns the path written.

        Raises:
            TypeError: ``path`` is not a str or path, or ``run_id`` not a str or None.
            ValueError: As for :meth:`records`.
            OSError: The file cannot be written.

        """
        target = _path(path)
        target.write_text(self.html(run_id), encoding="utf-8")
        return target

    def to_chrome_trace(self, path: str | os.PathLike[str], run_id: str | None = None) -> Path:
        """Write a run as a Chrome trace (JSON) for Perfetto or ``chrome://tracing``.

        Returns the path written.

        Raises:
            TypeError: ``path`` is not a str or path, or ``run_id`` not a str or None.
            ValueError: As for :meth:`records`.
            OSError: The file cannot be written.

        """
        target = _path(path)
        target.write_text(json.dumps(self.chrome_trace(run_id)) + "\n", encoding="utf-8")
        return target

    def clear(self) -> None:
        """Forget every run recorded so far; runs in progress are no longer recorded either."""
        self._runs.clear()

    def close(self) -> None:
        """Stop recording; what was recorded stays readable. Closing twice does nothing."""
        orchestrator, self._orchestrator = self._orchestrator, None
        if orchestrator is None:
            return
        for hook in (self._run_begin, self._run_end, self._call_begin, self._retry, self._call_end):
            orchestrator.remove_hook(hook)
        orchestrator.remove_interceptor(self._interceptor)

    def _run(self, run_id: str | None) -> _Run:
        if run_id is None:
            if len(self._runs) == 1:
                return next(iter(self._runs.values()))
            if not self._runs:
                raise ValueError("no run was recorded; run_id cannot be left out")
            shown = ", ".join(repr(key) for key in list(self._runs)[:5])
            more = ", ..." if len(self._runs) > 5 else ""
            raise ValueError(
                f"{len(self._runs)} runs were recorded; pass run_id= one of {shown}{more}"
            )
        if not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str or None, got {run_id!r}")
        run = self._runs.get(run_id)
        if run is None:
            raise ValueError(f"no run with the id {run_id!r} was recorded")
        return run


def _path(path: object) -> Path:
    if isinstance(path, str | os.PathLike):
        return Path(path)
    raise TypeError(f"path must be a str or a path, got {path!r}")


__all__ = ["AttemptRecord", "CallRecord", "RunRecord", "Timeline"]
