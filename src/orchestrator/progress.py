"""A live progress display of runs in a terminal: ``with progress(orchestrator): ...``.

Needs the ``rich`` extra (``pip install 'aio-orchestrator[rich]'``); nothing here is imported by
``import orchestrator``.

The display has one row per action name, not per call: rich redraws every row on each refresh,
so a row per call would grow with the run and stall a ``map()`` over thousands of items. Each
row counts the calls of that action that succeeded (done), are running, failed (a cancellation
included) and the retries made; the title gives the runs and their elapsed time. Hooks only
count; rich redraws from its own thread a few times a second, so a call pays for a few integer
additions, not for drawing. On a terminal the display updates in place; anywhere else (a file,
a pipe, CI logs) rich prints the final table once, when the block ends.
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Any, NamedTuple

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ._events import (
    ProcessBeginEvent,
    ProcessCompletionEvent,
    TaskBeginEvent,
    TaskCompletionEvent,
    TaskRetryEvent,
)
from ._orchestrator import Orchestrator

_DONE, _RUNNING, _FAILED, _RETRIED = range(4)
_clock = time.perf_counter


class Counts(NamedTuple):
    """The calls of one action, as the display counts them."""

    done: int
    """Calls that succeeded."""
    running: int
    """Calls that began and have not ended."""
    failed: int
    """Calls that ended with an exception, a cancellation included."""
    retried: int
    """Retries scheduled, over all calls of the action."""


class ProgressDisplay:
    """A live table of the calls of ``orchestrator``'s runs, shown while the ``with`` block runs.

    Made by :func:`progress`. Entering registers the hooks that count and starts the display;
    leaving removes the hooks and draws the final table. The counts stay readable afterwards.
    """

    def __init__(
        self,
        orchestrator: Orchestrator[Any],
        console: Console | None,
        refresh_per_second: float,
    ) -> None:
        self._orchestrator = orchestrator
        self._console = console
        self._refresh = refresh_per_second
        self._live: Live | None = None
        # name -> [done, running, failed, retried]; lists so that a hook adds in place.
        self._rows: dict[str, list[int]] = {}
        self._first_start: float | None = None
        self._last_end: float | None = None
        self._runs_running = 0
        self._runs_ended = 0

    def __repr__(self) -> str:
        state = "shown" if self._live is not None else "not shown"
        return f"<ProgressDisplay {state}, {len(self._rows)} action(s)>"

    # The with block ------------------------------------------------------------------------

    def __enter__(self) -> ProgressDisplay:
        if self._live is not None:
            raise RuntimeError("this progress display is already shown; make another one")
        self._live = Live(
            console=self._console,
            refresh_per_second=self._refresh,
            get_renderable=self.render,
        )
        (
            self._orchestrator.on_process_begin(self._run_begin)
            .on_process_completion(self._run_end)
            .on_task_begin(self._call_begin)
            .on_task_retry(self._retry)
            .on_task_completion(self._call_end)
        )
        self._live.start(refresh=True)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        live, self._live = self._live, None
        for hook in (self._run_begin, self._run_end, self._call_begin, self._retry, self._call_end):
            self._orchestrator.remove_hook(hook)
        if live is not None:
            live.stop()

    # Hooks -----------------------------------------------------------------------------------

    def _row(self, name: str) -> list[int]:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = [0, 0, 0, 0]
        return row

    def _call_begin(self, event: TaskBeginEvent[Any]) -> None:
        self._row(event.name)[_RUNNING] += 1

    def _call_end(self, event: TaskCompletionEvent[Any]) -> None:
        row = self._row(event.name)
        # A call that began before the display was shown ends without having been counted.
        if row[_RUNNING]:
            row[_RUNNING] -= 1
        row[_DONE if event.error is None else _FAILED] += 1

    def _retry(self, event: TaskRetryEvent[Any]) -> None:
        self._row(event.name)[_RETRIED] += 1

    def _run_begin(self, event: ProcessBeginEvent[Any]) -> None:
        if self._first_start is None:
            self._first_start = _clock()
        self._runs_running += 1

    def _run_end(self, event: ProcessCompletionEvent[Any]) -> None:
        self._last_end = _clock()
        if self._runs_running:
            self._runs_running -= 1
        self._runs_ended += 1

    # Reading ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, Counts]:
        """The counts of each action name, in the order the names were first seen."""
        return {name: Counts(*row) for name, row in tuple(self._rows.items())}

    def elapsed(self) -> float:
        """Seconds from the first run's begin to now, or to the last end once none runs."""
        if self._first_start is None:
            return 0.0
        end = _clock() if self._runs_running or self._last_end is None else self._last_end
        return end - self._first_start

    def render(self) -> Table:
        """The table as it stands; rich calls this from its refresh thread."""
        title = (
            f"runs: {self._runs_running} running, {self._runs_ended} ended · {self.elapsed():.1f} s"
        )
        table = Table(title=title, title_justify="left")
        table.add_column("action")
        for column in ("done", "running", "failed", "retried"):
            table.add_column(column, justify="right")
        # A copy made in one step: the event loop's thread may add a name meanwhile.
        for name, row in tuple(self._rows.items()):
            table.add_row(name, *(str(count) for count in row))
        return table


def progress(
    orchestrator: Orchestrator[Any],
    *,
    console: Console | None = None,
    refresh_per_second: float = 4.0,
) -> ProgressDisplay:
    """A live display of ``orchestrator``'s runs for a ``with`` block.

    ``with progress(orchestrator): orchestrator.run_sync(main)`` shows, while the block runs,
    one row per action name with its done, running, failed and retried counts, and the runs'
    elapsed time.

    Args:
        orchestrator: The orchestrator whose runs to show.
        console: Where to draw, a ``rich.console.Console``; by default rich's, on stdout.
        refresh_per_second: How often the display is redrawn.

    Raises:
        TypeError: ``orchestrator`` is not an ``Orchestrator``, ``console`` not a rich
            ``Console``, or ``refresh_per_second`` not a number.
        ValueError: ``refresh_per_second`` is not a finite number above zero.

    """
    if not isinstance(orchestrator, Orchestrator):
        raise TypeError(f"orchestrator must be an Orchestrator, got {orchestrator!r}")
    if console is not None and not isinstance(console, Console):
        raise TypeError(f"console must be a rich Console or None, got {console!r}")
    rate: object = refresh_per_second
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"refresh_per_second must be a number, got {rate!r}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"refresh_per_second must be a finite number above zero, got {rate!r}")
    return ProgressDisplay(orchestrator, console, float(rate))


__all__ = ["Counts", "ProgressDisplay", "progress"]
