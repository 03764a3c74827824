"""Helpers for the test suites of programs that use orchestrator.

``set_testing`` turns every retry wait off (and can cap attempts); ``EventRecorder`` keeps every
event an orchestrator fires, in order, so that a test can assert on the lifecycle.
"""

from __future__ import annotations

from typing import Any, Generic, NamedTuple, TypeVar

from ._orchestrator import Orchestrator
from ._retry import set_testing

C = TypeVar("C")

POINTS = (
    "process_begin",
    "process_error",
    "process_completion",
    "task_begin",
    "task_retry",
    "task_error",
    "task_completion",
)
"""The lifecycle points, by the names ``EventRecorder`` files events under."""


class Recorded(NamedTuple):
    """One recorded event and the lifecycle point it was fired at."""

    point: str
    """One of ``POINTS``, e.g. ``"task_begin"``."""
    event: Any
    """The event object the hooks received."""


class EventRecorder(Generic[C]):
    """Registers a hook on every lifecycle point of ``orchestrator`` and records each event.

    Hooks registered before the recorder run before it; those registered after, after it.
    """

    def __init__(self, orchestrator: Orchestrator[C]) -> None:
        if not isinstance(orchestrator, Orchestrator):
            raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
        self.records: list[Recorded] = []
        """Every event so far, in the order fired."""
        for point in POINTS:
            getattr(orchestrator, f"on_{point}")(self._recorder(point))

    def _recorder(self, point: str) -> Any:
        def record(event: Any) -> None:
            self.records.append(Recorded(point, event))

        record.__name__ = f"record_{point}"
        return record

    def points(self) -> list[str]:
        """The lifecycle point of each event so far, in order."""
        return [record.point for record in self.records]

    def events(self, point: str) -> list[Any]:
        """The events fired at ``point``, in order.

        Raises:
            ValueError: ``point`` is not one of ``POINTS``.
        """
        if point not in POINTS:
            raise ValueError(f"point must be one of {', '.join(POINTS)}; got {point!r}")
        return [record.event for record in self.records if record.point == point]

    def clear(self) -> None:
        """Forget the events recorded so far."""
        self.records.clear()


__all__ = ["POINTS", "EventRecorder", "Recorded", "set_testing"]
