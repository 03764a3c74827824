"""RetryPolicy, its delay schedule, and the process-wide testing switch."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import CancelledError as FuturesCancelled
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias

from . import _checks
from ._errors import JournalError

RetryOn: TypeAlias = (
    type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool | float]
)
"""What ``retry_on`` accepts: an exception type, a tuple of them, or a predicate."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How an action retries a failed attempt.

    The wait before retry ``n`` (1-based) starts from ``base = min(max_delay, delay * backoff **
    (n - 1))`` and is drawn at random, evenly, from ``base * (1 - jitter)`` to ``base * (1 +
    jitter)``, that upper end lowered to ``max_delay`` where it would pass it. No wait exceeds
    ``max_delay``, and waits that reach the cap spread below it instead of landing on it
    together. With the defaults the waits are about 0.1, 0.2 and 0.4 seconds.

    Attributes:
        retries: How many times to retry after the first attempt; 0 means one attempt only.
        delay: The first wait, in seconds.
        backoff: The factor each later wait is multiplied by; 1 keeps the wait constant.
        max_delay: The cap on any one wait, in seconds.
        jitter: The fraction (0 to 1) of each wait that is added or removed at random, so that
            many callers failing together do not retry in lockstep.
        retry_on: Which failures are retried: an exception type, a tuple of types, or a
            predicate taking the exception. A predicate returns True or False, or a number of
            seconds to wait before the retry instead of the schedule (for example, from a
            ``Retry-After`` header). Only ``Exception`` subclasses are ever retried:
            cancellation, ``KeyboardInterrupt`` and ``SystemExit`` never are. ``RecursionError``,
            ``concurrent.futures.CancelledError`` (work cancelled where it ran, such as Dask's
            ``FutureCancelledError``) and ``JournalError`` are retried only when ``retry_on``
            names them (or a subclass), alone or in a tuple, or a predicate accepts them; a
            broader type such as ``Exception`` leaves them out. A call with arguments the
            function cannot accept is never retried, whatever this says.
        deadline: A budget in seconds for all attempts and waits of one call together, or
            None. Each attempt's time limit shrinks to what is left of it, and no retry is
            scheduled whose wait would end past it.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field is out of range (negative, NaN, infinite, jitter above 1...).

    """

    retries: int = 3
    delay: float = 0.1
    backoff: float = 2.0
    max_delay: float = 10.0
    jitter: float = 0.25
    retry_on: RetryOn = Exception
    deadline: float | None = None

    def __post_init__(self) -> None:
        _checks.count("RetryPolicy.retries", self.retries, minimum=0)
        _checks.seconds("RetryPolicy.delay", self.delay, allow_zero=True)
        _checks.seconds("RetryPolicy.max_delay", self.max_delay, allow_zero=True)
        _checks.seconds("RetryPolicy.deadline", self.deadline, allow_zero=False, allow_none=True)
        backoff = self.backoff
        if isinstance(backoff, bool) or not isinstance(backoff, int | float):
            raise TypeError(f"RetryPolicy.backoff must be a number, got {backoff!r}")
        if not (math.isfinite(_checks.as_float(backoff)) and backoff >= 1):
            raise ValueError(
                f"RetryPolicy.backoff must be a finite number >= 1, got {_checks.shown(backoff)}"
            )
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float):
            raise TypeError(f"RetryPolicy.jitter must be a number from 0 to 1, got {jitter!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter must be from 0 to 1, got {_checks.shown(jitter)}")
        _check_retry_on(self.retry_on)

    def wait(self, retry: int, rand: float | None = None) -> float:
        """The wait in seconds before retry number ``retry`` (1-based), jitter included.

        ``rand`` is the random draw in [0, 1] that places the wait within its jitter interval;
        by default one is drawn. Below the cap, 0.5 gives the wait without jitter.

        Raises:
            TypeError: ``retry`` is not an int, or ``rand`` not a number or None.
            ValueError: ``retry`` is below 1, or ``rand`` outside [0, 1].

        """
        _checks.count("RetryPolicy.wait(retry=...)", retry, minimum=1)
        if rand is not None:
            expected = (
                f"RetryPolicy.wait(rand=...) must be a number from 0 to 1 or None, got {rand!r}"
            )
            if isinstance(rand, bool) or not isinstance(rand, int | float):
                raise TypeError(expected)
            if not 0 <= rand <= 1:  # NaN fails this too
                raise ValueError(expected)
        base = self._unjittered(retry)
        if not (self.jitter and base):
            return base
        if rand is None:
            import random  # here, not at the top: only a retry pays for importing it

            rand = random.random()
        # Jitter that would go past the cap is not clipped to it (that would put many callers
        # on the cap together, in lockstep): the draw spreads over what is left below it.
        low = base * (1 - self.jitter)
        high = min(float(self.max_delay), base * (1 + self.jitter))
        return low + (high - low) * rand

    def _unjittered(self, retry: int) -> float:
        cap = float(self.max_delay)
        delay = float(self.delay)
        if retry == 1 or self.backoff == 1:
            return min(cap, delay)
        try:
            # In floats: an int backoff would otherwise raise an exact integer to a power as
            # large as ``retry`` before the cap could apply.
            return min(cap, delay * float(self.backoff) ** (retry - 1))
        except OverflowError:  # a thousand retries and more: the cap has long been reached
            return cap if delay else 0.0

    def suggested_wait(self, error: Exception) -> float | None:
        """Whether ``error`` is retried: None if not, else the wait the predicate asked for.

        Returns ``-1.0`` when ``error`` is retried on the regular schedule.

        Raises:
            TypeError: A ``retry_on`` predicate returned something other than a bool or a
                non-negative number.

        """
        retry_on = self.retry_on
        if isinstance(retry_on, type | tuple):
            if not isinstance(error, retry_on):
                return None
            for kind in _ONLY_WHEN_NAMED:
                if isinstance(error, kind) and not _names(retry_on, kind):
                    return None
            return -1.0
        verdict = retry_on(error)
        if isinstance(verdict, bool):
            return -1.0 if verdict else None
        if isinstance(verdict, int | float) and math.isfinite(verdict) and verdict >= 0:
            return float(verdict)
        raise TypeError(
            f"retry_on predicate {retry_on!r} must return a bool or a number of seconds >= 0, "
            f"got {verdict!r}"
        )


_ONLY_WHEN_NAMED: tuple[type[Exception], ...] = (
    # Retried, a recursion that went too deep would go as deep again at every level of nested
    # retried calls: the attempts multiply at each level.
    RecursionError,
    # Work cancelled where it ran (Dask's FutureCancelledError, say) was stopped on purpose by
    # whoever runs it; submitting it again would overrule them.
    FuturesCancelled,
    # A journal problem (a value that cannot be recorded, a mismatch with the record, a file
    # that cannot be written) comes back at every attempt, and a retried caller would run its
    # nested calls again, against the promise that such a call is never retried.
    JournalError,
)
"""Failures that ``retry_on`` retries only when it names them, not through a broader type."""


def _names(retry_on: type[Exception] | tuple[type[Exception], ...], kind: type) -> bool:
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    return any(issubclass(named, kind) for named in kinds)


def _check_retry_on(retry_on: object) -> None:
    types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if isinstance(retry_on, tuple) and not retry_on:
        raise ValueError(
            "RetryPolicy.retry_on must be an exception type, a non-empty tuple of them, "
            "or a predicate, got ()"
        )
    if not isinstance(retry_on, type | tuple) and callable(retry_on):
        return
    for kind in types:
        if not isinstance(kind, type) or not issubclass(kind, BaseException):
            raise TypeError(
                "RetryPolicy.retry_on must be an exception type, a tuple of them, or a "
                f"predicate, got {retry_on!r}"
            )
        if not issubclass(kind, Exception):
            raise ValueError(
                f"RetryPolicy.retry_on: {kind.__name__} is not an Exception subclass; "
                "cancellation, KeyboardInterrupt and SystemExit are never retried"
            )


def as_policy(retry: object) -> RetryPolicy | None:
    """Turn an action's ``retry=`` argument into a policy, or None for no retries.

    Raises:
        TypeError: ``retry`` is neither None, an int nor a RetryPolicy.
        ValueError: ``retry`` is a negative int.

    """
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, bool) or not isinstance(retry, int):
        raise TypeError(
            f"retry must be a number of retries (int), a RetryPolicy or None, got {retry!r}"
        )
    _checks.count("retry", retry, minimum=0)
    return RetryPolicy(retries=retry) if retry else None


# (enabled, max_attempts): replaced whole, never changed in place, so a reader sees one state.
_testing: tuple[bool, int | None] = (False, None)


def testing_mode() -> tuple[bool, int | None]:
    """The testing switch as ``(enabled, max_attempts)``; read once per retry decision."""
    return _testing


class set_testing:
    """Switch testing mode on or off for the whole process.

    In testing mode every retry wait is zero, so that a test suite exercising retries does
    not sleep; ``max_attempts`` additionally caps the attempts of every call (1 disables
    retries). Retry events report the wait actually taken, 0.

    The switch applies at once. Used as a context manager it also restores the previous
    setting on exit::

        with set_testing(True, max_attempts=2):
            ...

    Raises:
        TypeError: ``enabled`` is not a bool, or ``max_attempts`` not an int or None.
        ValueError: ``max_attempts`` is below 1.

    """

    def __init__(self, enabled: bool = True, *, max_attempts: int | None = None) -> None:
        global _testing
        _checks.flag("enabled", enabled)
        if max_attempts is not None:
            _checks.count("max_attempts", max_attempts, minimum=1)
            if not enabled:
                raise ValueError(
                    f"max_attempts={max_attempts!r} applies in testing mode only, but enabled is "
                    "False; pass enabled=True or drop max_attempts"
                )
        self._previous = _testing
        _testing = (enabled, max_attempts)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _testing
        _testing = self._previous
