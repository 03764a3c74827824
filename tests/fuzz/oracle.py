"""What must happen in a scenario, worked out from the scenario alone.

The oracle walks the workflow on a timeline of virtual seconds, applying the library's
documented rules: attempts and their time limits, retry waits and deadlines, fail-fast groups
and concurrency limits, outside cancellation, and hooks that raise. It predicts each run's
result or the exception it raises, and how many attempts every call that begins makes.

An attempt that is "stubborn" hangs, and raises a retryable error when cancelled; one that is
"abort" raises the user's BaseException subclass instead, which is never retried and stops a
group even without fail-fast. A plain member's cleanup runs only when its group stops it, so
what it raises is named on what the group raises and never changes an outcome.

Results are ``("ok", value)`` or ``("err", error)``, where an error is described as
``("retryable" | "fatal" | "abort", site, attempt)``, ``("cleanup", site, 0)``,
``("timeout", action name)``, ``("hook", site, point)``, ``("group", ((index, error), ...))``
or ``("cancel",)``.

When two things would happen at the same instant, their order is up to the event loop and the
oracle cannot tell it: it raises `Ambiguous`, and the example is checked for the invariants only.

A run with a journal starts from the calls whose success the journal holds, by site: such a
call returns its recorded result at once, with no attempt, and so does a call that an earlier
attempt of its caller made in this run and that succeeded. Everything else is as without one.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from model import Call, Group, Member, Plain, RunSpec, Step

INF = math.inf
Result = tuple[str, Any]
# (site, attempts) of every call that began, 0 attempts for a replayed one; (site, 1) of a plain
# member that ended by itself, (site, 0) of one that was cancelled.
Log = list[tuple[int, int]]
# The result of each call whose success the run's journal holds, by site; None: no journal.
Journal = dict[int, Any] | None


class Ambiguous(Exception):
    """Two events fall on one instant; their order is not the oracle's to predict."""


def _apart(a: float, b: float) -> None:
    if math.isfinite(a) and math.isfinite(b) and abs(a - b) < 1e-9:
        raise Ambiguous("two events coincide")


def _retryable(error: Any) -> bool:
    return error[0] in ("retryable", "timeout")


CANCEL: Result = ("err", ("cancel",))


def run(spec: RunSpec, recorded: dict[int, Any] | None = None) -> tuple[Result, Log]:
    """Predict one run: its result and the attempts of every call that began.

    ``recorded``: with a journal, the result of each call whose success it holds, by site
    (a copy is used); None for a run without a journal.
    """
    log: Log = []
    cut = INF if spec.cancel_at is None else spec.cancel_at
    journal = None if recorded is None else dict(recorded)
    _, result = steps(spec.steps, 0.0, cut, log, journal)
    return result, log


def steps(
    workflow: tuple[Step, ...], t: float, cut: float, log: Log, journal: Journal
) -> tuple[float, Result]:
    """Run ``workflow`` in order from ``t``; the first failure ends it."""
    values = []
    for step in workflow:
        if isinstance(step, Group):
            t, result = group(step, t, cut, log, journal)
        else:
            t, result = call(step, t, cut, log, journal)
        if result[0] == "err":
            return t, result
        values.append(result[1])
    return t, ("ok", values)


def _ended(c: Call, t: float, result: Result) -> tuple[float, Result]:
    # The error and completion hooks: a raising one replaces the outcome.
    if result[0] == "err" and c.raising_hook == "error":
        result = ("err", ("hook", c.site, "error"))
    if c.raising_hook == "completion":
        result = ("err", ("hook", c.site, "completion"))
    return t, result


def call(c: Call, t0: float, cut: float, log: Log, journal: Journal) -> tuple[float, Result]:
    """One call that begins at ``t0`` in a task cancelled at ``cut``."""
    _apart(t0, cut)
    entry = len(log)
    log.append((c.site, 0))
    if c.raising_hook == "begin":
        return _ended(c, t0, ("err", ("hook", c.site, "begin")))
    if journal is not None and c.site in journal:
        return _ended(c, t0, ("ok", journal[c.site]))  # replayed: no attempt, no time
    deadline = None if c.deadline is None else t0 + c.deadline
    t, attempt, last = t0, 0, None
    while True:
        limit = c.timeout
        if deadline is not None:
            left = deadline - t
            if last is not None and left <= 0:
                return _ended(c, t, ("err", last))
            if limit is None or left < limit:
                limit = left
        attempt += 1
        log[entry] = (c.site, attempt)
        limit_at = INF if limit is None else t + limit
        _apart(limit_at, cut)
        end, result = _attempt(c, attempt, t, min(limit_at, cut), log, journal)
        if result == ("cut",):
            if math.isinf(limit_at) and math.isinf(cut):
                return INF, CANCEL  # never ends by itself (a hang bounded only from outside)
            if cut < limit_at:
                return _ended(c, cut, CANCEL)
            error, failed_at = ("timeout", c.action), limit_at
        elif result[0] == "err":
            error, failed_at = result[1], end
        else:
            if journal is not None:
                journal[c.site] = result[1]  # recorded before the completion hooks run
            return _ended(c, end, result)
        if failed_at >= cut:
            # The task is being cancelled: an error that arrives with the cancellation (cleanup
            # that raised, a hook that replaced it) is never retried.
            return _ended(c, failed_at, ("err", error))
        if attempt >= c.retries + 1 or not _retryable(error):
            return _ended(c, failed_at, ("err", error))
        wait = c.delay
        # The library computes these sums with the same float operations: no tie to fear.
        if deadline is not None and failed_at + wait >= deadline:
            return _ended(c, failed_at, ("err", error))
        if c.raising_hook == "retry":
            return _ended(c, failed_at, ("err", ("hook", c.site, "retry")))
        _apart(failed_at + wait, cut)
        if failed_at + wait > cut:
            return _ended(c, cut, CANCEL)
        t, last = failed_at + wait, error


def _attempt(
    c: Call, attempt: int, t: float, cut: float, log: Log, journal: Journal
) -> tuple[float, Result]:
    # An attempt: the nested workflow, then the attempt's own work. ("cut",): stopped at cut.
    if c.inner:
        t, result = steps(c.inner, t, cut, log, journal)
        if result == CANCEL:
            return cut, ("cut",)
        if result[0] == "err":
            return t, result
    outcome = c.outcomes[attempt - 1]
    hangs = outcome.kind in ("hang", "stubborn", "abort")
    end = INF if hangs else t + outcome.duration
    _apart(end, cut)
    if end > cut or (hangs and math.isinf(cut)):
        if outcome.kind in ("stubborn", "abort") and math.isfinite(cut):
            # Cancelled, it raises a retryable error, or the user's BaseException subclass,
            # instead of the cancellation.
            kind = "retryable" if outcome.kind == "stubborn" else "abort"
            return cut, ("err", (kind, c.site, attempt))
        return cut, ("cut",)
    if outcome.kind == "ok":
        return end, ("ok", c.site * 1000 + attempt)
    return end, ("err", (outcome.kind, c.site, attempt))


def plain(p: Plain, t0: float, cut: float, log: Log) -> tuple[float, Result]:
    """A plain member that starts at ``t0`` in a task cancelled at ``cut``."""
    _apart(t0, cut)
    end = INF if p.kind == "hang" else t0 + p.duration
    _apart(end, cut)
    if end > cut or math.isinf(end):
        log.append((p.site, 0))
        if math.isinf(cut):
            return INF, CANCEL
        if p.cleanup == "cancel":
            return cut, CANCEL
        return cut, ("err", ("cleanup" if p.cleanup == "error" else "abort", p.site, 0))
    log.append((p.site, 1))
    if p.kind == "ok":
        return end, ("ok", p.site * 1000)
    return end, ("err", ("fatal", p.site, 1))


def member(m: Member, t0: float, cut: float, log: Log, journal: Journal) -> tuple[float, Result]:
    """One member of a group: a call, a nested group or a plain member."""
    if isinstance(m, Group):
        return group(m, t0, cut, log, journal)
    if isinstance(m, Plain):
        return plain(m, t0, cut, log)
    return call(m, t0, cut, log, journal)


def _stops(g: Group, result: Result) -> bool:
    # Under fail-fast any failure stops a group; a BaseException that is no cancellation
    # (the user's "abort") always does.
    return result[0] == "err" and (g.fail_fast or result[1][0] == "abort")


def _schedule(
    g: Group, t0: float, cut: float, stop: float, first: int | None, log: Log, journal: Journal
) -> list[tuple[float, float, Result] | None]:
    # Each member's (start, end, result), or None if it never starts. Members are cut at the
    # outer ``cut``, and the others also at ``stop``, when the ``first`` failure stops the group.
    size = len(g.members)
    workers = size if g.concurrency is None else min(g.concurrency, size)
    free = [t0] * workers
    heapq.heapify(free)
    placed: list[tuple[float, float, Result] | None] = []
    for index, m in enumerate(g.members):
        start = heapq.heappop(free)
        limit = cut if index == first else min(cut, stop)
        if start >= limit:
            placed.append(None)
            heapq.heappush(free, INF)
            continue
        end, result = member(m, start, limit, log, journal)
        placed.append((start, end, result))
        # A worker whose call was cut, or that saw the group's first failure, takes no more.
        heapq.heappush(free, INF if end >= limit or index == first else end)
    return placed


def group(g: Group, t0: float, cut: float, log: Log, journal: Journal) -> tuple[float, Result]:
    """A parallel group or a map that starts at ``t0`` in a task cancelled at ``cut``."""
    natural_log: Log = []
    # As if nothing stopped the group; what it records counts only if nothing does.
    natural_journal = None if journal is None else dict(journal)
    natural = _schedule(g, t0, INF, INF, None, natural_log, natural_journal)
    failures = sorted(
        (item[1], index)
        for index, item in enumerate(natural)
        if item is not None and _stops(g, item[2])
    )
    if failures:
        tf, first = failures[0]
        if len(failures) > 1:
            _apart(tf, failures[1][0])
        _apart(tf, cut)
        if tf == t0:
            # A failure in the very step the members start in (a raising begin hook): which
            # siblings had begun by then depends on the loop's order of steps and callbacks.
            raise Ambiguous("a member failed the instant the group started")
        if tf < cut:
            for index, item in enumerate(natural):
                if item is not None and index != first:
                    _apart(item[1], tf)  # a sibling ending on its own as the group stops
            _schedule(g, t0, cut, tf, first, log, journal)
            return tf, natural[first][2]  # type: ignore[index]
    finish = max((item[1] for item in natural if item is not None), default=t0)
    _apart(finish, cut)
    if finish > cut:
        _schedule(
            g, t0, cut, INF, None, log, journal
        )  # who began, and their attempts, until the cut
        return cut, CANCEL
    log.extend(natural_log)
    if journal is not None and natural_journal is not None:
        journal.update(natural_journal)
    errors = tuple(
        (index, item[2][1])
        for index, item in enumerate(natural)
        if item is not None and item[2][0] == "err"
    )
    if errors:
        return finish, ("err", ("group", errors))
    return finish, ("ok", [item[2][1] for item in natural if item is not None])
