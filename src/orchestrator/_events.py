"""The objects that hooks receive.

Each event is a named tuple: immutable, and cheap enough to build on every action call. Events
are built only when a hook listens for them. Wall-clock instants are stored as POSIX timestamps
and turned into timezone-aware UTC datetimes only when read, because building a datetime costs
more than the rest of the event together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    from datetime import datetime

C = TypeVar("C")


def _utc(timestamp: float) -> datetime:
    # Imported here: most programs never read a datetime, and the import costs at start-up.
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC)


class ProcessBeginEvent(NamedTuple, Generic[C]):
    """A run is starting; passed to ``on_process_begin`` hooks before the body is called."""

    run_id: str
    """The run's id, given to ``run(run_id=...)`` or generated."""
    timestamp: float
    """When the run started, as a POSIX timestamp."""
    context: C
    """The run's context, the same object ``get_state()`` returns inside the run."""

    @property
    def time(self) -> datetime:
        """When the run started, as a timezone-aware UTC datetime."""
        return _utc(self.timestamp)


class ProcessErrorEvent(NamedTuple, Generic[C]):
    """A run failed; passed to ``on_process_error`` hooks just before completion."""

    run_id: str
    """The run's id."""
    timestamp: float
    """When the run ended, as a POSIX timestamp."""
    total_duration: float
    """How long the run took, in milliseconds."""
    result: None
    """Always None: a failed run has no result. Present so both end events have one shape."""
    error: BaseException
    """What the run raises: the body's exception, a hook's, or ``CancelledError``."""
    context: C
    """The run's context."""

    @property
    def time(self) -> datetime:
        """When the run ended, as a timezone-aware UTC datetime."""
        return _utc(self.timestamp)


class ProcessCompletionEvent(NamedTuple, Generic[C]):
    """A run ended, whether it succeeded or not; passed to ``on_process_completion`` hooks."""

    run_id: str
    """The run's id."""
    timestamp: float
    """When the run ended, as a POSIX timestamp."""
    total_duration: float
    """How long the run took, in milliseconds."""
    result: Any
    """What the body returned, or None if the run failed."""
    error: BaseException | None
    """What the run raises, or None if it succeeded."""
    context: C
    """The run's context."""

    @property
    def time(self) -> datetime:
        """When the run ended, as a timezone-aware UTC datetime."""
        return _utc(self.timestamp)


class TaskBeginEvent(NamedTuple, Generic[C]):
    """An action call is starting; passed to ``on_task_begin`` hooks before the first attempt."""

    run_id: str
    """The id of the run the call belongs to."""
    task_id: int
    """The call's id, unique within its run (1, 2, 3... in order of calls)."""
    parent_id: int | None
    """The ``task_id`` of the action call this one was made from, or None at the top."""
    call_key: str
    """The call's stable position in its run, such as ``"3.2.1"``: the same on every run of the
    same body, whatever the timing."""
    name: str
    """The action's name."""
    start_timestamp: float
    """When the call started, as a POSIX timestamp."""
    args: tuple[Any, ...]
    """The positional arguments of the call."""
    kwargs: Mapping[str, Any]
    """The keyword arguments of the call, as a read-only mapping."""
    context: C
    """The run's context."""

    @property
    def start_time(self) -> datetime:
        """When the call started, as a timezone-aware UTC datetime."""
        return _utc(self.start_timestamp)


class TaskRetryEvent(NamedTuple, Generic[C]):
    """An attempt failed and another is scheduled; passed to ``on_task_retry`` hooks.

    The hooks run before the wait starts.
    """

    run_id: str
    """The id of the run the call belongs to."""
    task_id: int
    """The call's id."""
    call_key: str
    """The call's stable position in its run, such as ``"3.2.1"``: the same on every run of the
    same body, whatever the timing."""
    name: str
    """The action's name."""
    attempt: int
    """The number (1-based) of the attempt that just failed."""
    error: Exception
    """What that attempt raised."""
    delay: float
    """Seconds until the next attempt starts."""
    context: C
    """The run's context."""


class TaskErrorEvent(NamedTuple, Generic[C]):
    """An action call failed; passed to ``on_task_error`` hooks just before completion."""

    run_id: str
    """The id of the run the call belongs to."""
    task_id: int
    """The call's id."""
    call_key: str
    """The call's stable position in its run, such as ``"3.2.1"``: the same on every run of the
    same body, whatever the timing."""
    name: str
    """The action's name."""
    error: BaseException
    """What the call raises: the last attempt's exception, cancellation, or the exception of a
    begin or retry hook or of a ``retry_on`` predicate."""
    attempts: int
    """How many attempts started (0 if a begin hook failed)."""
    context: C
    """The run's context."""


class TaskCompletionEvent(NamedTuple, Generic[C]):
    """An action call ended, successfully or not; passed to ``on_task_completion`` hooks."""

    run_id: str
    """The id of the run the call belongs to."""
    task_id: int
    """The call's id."""
    parent_id: int | None
    """The ``task_id`` of the action call this one was made from, or None at the top."""
    call_key: str
    """The call's stable position in its run, such as ``"3.2.1"``: the same on every run of the
    same body, whatever the timing."""
    name: str
    """The action's name."""
    start_timestamp: float
    """When the call started, as a POSIX timestamp."""
    end_timestamp: float
    """When the call ended, as a POSIX timestamp."""
    duration: float
    """How long the call took, attempts, waits and hooks before it included, in milliseconds."""
    result: Any
    """What the call returned, or None if it failed."""
    error: BaseException | None
    """What the call raises, or None if it succeeded."""
    attempts: int
    """How many attempts started."""
    replayed: bool
    """Whether an interceptor (a journal) supplied the outcome instead of running the call."""
    context: C
    """The run's context."""

    @property
    def start_time(self) -> datetime:
        """When the call started, as a timezone-aware UTC datetime."""
        return _utc(self.start_timestamp)

    @property
    def end_time(self) -> datetime:
        """When the call ended, as a timezone-aware UTC datetime."""
        return _utc(self.end_timestamp)
