"""An event loop on virtual time, with worker threads that can sleep in it.

The loop's clock jumps straight to the next timer whenever nothing is ready to run, so
timeouts, retry waits and sleeps cost no real time and happen in a fixed order. Worker threads
are real, so the clock must not move while one of them is doing real work: it moves only when
every busy worker-pool job is parked here (asleep in virtual time, or hanging until released).
"""

from __future__ import annotations

import asyncio
import math
import selectors
import threading
from typing import Any

from orchestrator._threads import WorkerPool


class Released(Exception):
    """Raised in a parked thread whose attempt was abandoned: its job ends at once."""


class _Parked:
    __slots__ = ("event", "key", "released", "wake")

    def __init__(self, key: object, wake: float) -> None:
        self.key = key
        self.wake = wake
        self.event = threading.Event()
        self.released = False


class VirtualClock:
    """The time of one virtual loop, and the threads parked in it.

    A parked thread is known by a key, the attempt it works for. The harness learns from the
    hooks when an attempt is abandoned and says so with `abandon`; a thread of that attempt
    is then released, or never parks if it had not parked yet. Keys travel with the attempt
    through a context variable, so they cannot be confused between attempts.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool  # the time stands still while a job of it works
        self.now = 0.0
        self.lock = threading.Lock()
        self.parked: list[_Parked] = []
        self.abandoned: set[object] = set()

    def park(self, seconds: float, key: object) -> None:
        """From a worker thread: sleep ``seconds`` of virtual time (math.inf: until released).

        Raises:
            Released: the attempt ``key`` was abandoned.
        """
        with self.lock:
            if key in self.abandoned:
                raise Released()
            entry = _Parked(key, self.now + seconds)
            self.parked.append(entry)
        entry.event.wait()
        if entry.released:
            raise Released()

    def abandon(self, key: object) -> None:
        """From the loop: attempt ``key`` is over for the library; release its thread."""
        with self.lock:
            self.abandoned.add(key)
            entries = [entry for entry in self.parked if entry.key == key]
            for entry in entries:
                self.parked.remove(entry)
        for entry in entries:
            entry.released = True
            entry.event.set()

    def release_all(self) -> None:
        """Wake every parked thread with `Released`."""
        with self.lock:
            entries, self.parked = self.parked, []
        for entry in entries:
            entry.released = True
            entry.event.set()


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None  # set by VirtualLoop
        self.idle_rounds = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        clock = self.clock
        # Count the working threads before looking for their results: a thread delivers its
        # result (a write to the loop's self-pipe) before it stops counting as busy, so a
        # count of zero taken first means every delivery is already visible to the poll.
        with clock.lock:
            working = clock.pool.busy() - len(clock.parked)
            nearest = min(clock.parked, key=lambda p: p.wake, default=None)
        ready = super().select(0)
        if ready or timeout == 0:
            return ready  # type: ignore[no-any-return]
        if working > 0:
            return super().select(0.002)  # type: ignore[no-any-return]
        target = math.inf if timeout is None else clock.now + timeout
        if nearest is not None and nearest.wake <= target and math.isfinite(nearest.wake):
            clock.now = max(clock.now, nearest.wake)
            with clock.lock:
                clock.parked.remove(nearest)
            nearest.event.set()
            return []
        if math.isinf(target):
            # Nothing scheduled and no thread to wait for: a real deadlock. Let the watchdog see.
            self.idle_rounds += 1
            return super().select(0.01)  # type: ignore[no-any-return]
        # Land exactly on the timer's instant: now + (when - now) can miss it by a rounding.
        timers = self.loop._scheduled  # type: ignore[attr-defined]
        clock.now = timers[0].when() if timers else target
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is a `VirtualClock`."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        selector = _Selector(clock)
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.clock.now
