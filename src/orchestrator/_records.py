"""The records of a run and its action calls, shared by the journal store and the timeline.

Plain frozen dataclasses of text and POSIX timestamps: they are what a journal stores and what
a renderer draws, so they hold display text rather than live objects.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a call."""

    number: int  # 1-based
    started: float  # POSIX timestamp
    ended: float | None  # None while running / when the process died
    error: str | None = None  # "TypeName: message" of a failed attempt, None if it succeeded
    delay: float | None = None  # the wait before the next attempt, seconds, if one was scheduled


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One action call of a run, as recorded or observed."""

    run_id: str
    call_key: str  # dot-separated positions from 1: "3", "3.2", "3.2.1"
    name: str  # the action's name
    parent_key: str | None  # call_key of the action call it was made from; None for the run body
    status: str  # "running", "succeeded", "failed", "cancelled"
    started: float  # POSIX timestamp
    ended: float | None
    attempts: tuple[AttemptRecord, ...] = ()
    args: str = ""  # display text of the arguments (a repr, may be long: shorten when shown)
    result: str | None = None  # display/serialized text of the result
    error: str | None = None  # "TypeName: message"
    replayed: bool = False  # the result came from the journal without running


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run."""

    run_id: str
    body: str  # "module:qualname" of the body
    status: str  # "running", "succeeded", "failed", "cancelled"
    started: float
    ended: float | None
    args: str = ""
    result: str | None = None
    error: str | None = None
