"""What a journal records of runs and their action calls, as plain immutable values.

The journal store returns them, and the timeline renderer draws them; a call that is still
running or was observed live uses the same shape as one read back from a journal file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a call."""

    number: int
    """The attempt's position, from 1."""
    started: float
    """When the attempt started, as a POSIX timestamp."""
    ended: float | None
    """When it ended; None while it runs, or when its process died."""
    error: str | None = None
    """``"TypeName: message"`` of a failed attempt; None if it succeeded."""
    delay: float | None = None
    """The wait before the next attempt, in seconds, if one was scheduled."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One action call of a run, as recorded or observed."""

    run_id: str
    """The run the call belongs to."""
    call_key: str
    """Dot-separated positions from 1, unique within the run: ``"3"``, ``"3.2"``, ``"3.2.1"``."""
    name: str
    """The action's name."""
    parent_key: str | None
    """The ``call_key`` of the action call this one was made from; None for the run body."""
    status: str
    """``"running"``, ``"succeeded"``, ``"failed"`` or ``"cancelled"``."""
    started: float
    """When the call started, as a POSIX timestamp."""
    ended: float | None
    """When it ended; None while it runs, or when its process died."""
    attempts: tuple[AttemptRecord, ...] = ()
    """Each attempt, in order."""
    args: str = ""
    """Display text of the arguments; it may be long, so shorten it when shown."""
    result: str | None = None
    """Display or serialized text of the result."""
    error: str | None = None
    """``"TypeName: message"`` of a failed or cancelled call."""
    replayed: bool = False
    """Whether the result came from the journal without running the action."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run."""

    run_id: str
    """The run's id."""
    body: str
    """``"module:qualname"`` of the run's body."""
    status: str
    """``"running"``, ``"succeeded"``, ``"failed"`` or ``"cancelled"``."""
    started: float
    """When the run first started, as a POSIX timestamp."""
    ended: float | None
    """When it last ended; None while it runs, or when its process died."""
    args: str = ""
    """Display text of the body's arguments."""
    result: str | None = None
    """Display or serialized text of the result of a run that succeeded."""
    error: str | None = None
    """``"TypeName: message"`` of a run that failed or was cancelled."""


def key_order(call_key: str) -> tuple[tuple[int, int, str], ...]:
    """A sort key for call keys: positions in numeric order, then explicit parts in text order.

    ``"2.10"`` comes after ``"2.9"``, and ``"2.alice"`` (from ``action.keyed``) after both.
    """
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in call_key.split(".")
    )
