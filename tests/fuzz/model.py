"""Randomized workflows: what a scenario is made of, and the Hypothesis strategy that draws one.

A scenario is a few concurrent runs of one orchestrator. Each run executes a workflow: a
sequence of steps, each a call of an action or a group (`parallel` or `map`). A group's members
are calls, groups (nested up to three deep) or plain coroutine functions that are no actions (no
events, no retries) and whose cleanup, when cancelled, may await and then raise. An async action
may run a nested workflow inside each attempt (actions calling actions). Every attempt of every
call has a drawn outcome. All durations are in virtual seconds (see `clock.py`); each is
spread by a factor unique to its place in the scenario, so that no two things in a scenario
happen at the same instant by accident and the oracle can order them.

A journaled scenario is such runs, never cancelled from outside, recorded in a journal, with the
crashes that interrupt them one execution after another (see `Crash`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from hypothesis import strategies as st

# "stubborn": hang, and when cancelled raise a retryable error instead (cleanup that fails);
# "abort": the same, but raise the user's own BaseException subclass.
OutcomeKind = Literal["ok", "retryable", "fatal", "hang", "stubborn", "abort"]
PlainKind = Literal["ok", "fatal", "hang"]
# What a plain member does when cancelled: let the cancellation through, or raise an error or
# the user's BaseException subclass instead.
CleanupKind = Literal["cancel", "error", "abort"]
HookPoint = Literal["begin", "retry", "error", "completion"]
GOLDEN = (math.sqrt(5) - 1) / 2


def spread(base: float, key: int, width: float = 0.3) -> float:
    """``base`` stretched by a factor in [1, 1 + width) that depends on ``key`` only."""
    return base * (1 + width * ((key * GOLDEN) % 1.0))


@dataclass(frozen=True)
class Outcome:
    """What one attempt does: work for ``duration``, then return or raise; or hang."""

    kind: OutcomeKind
    duration: float


@dataclass(frozen=True)
class Call:
    """One call site: an action with its options, the outcomes of its attempts, and more."""

    site: int
    sync: bool
    retries: int
    timeout: float | None
    deadline: float | None
    delay: float
    outcomes: tuple[Outcome, ...]  # one per possible attempt
    inner: tuple[Step, ...]  # run inside each attempt (async actions only)
    raising_hook: HookPoint | None
    action: str  # the action's name: its own, or the map's for a map item


@dataclass(frozen=True)
class Plain:
    """A group member that is a plain coroutine function: works for ``duration`` or hangs.

    When cancelled, its cleanup awaits ``cleanup_steps`` loop steps (closing a connection, say)
    and then lets the cancellation through or raises instead, as ``cleanup`` says.
    """

    site: int
    kind: PlainKind
    duration: float
    cleanup: CleanupKind
    cleanup_steps: int


@dataclass(frozen=True)
class Group:
    """A `parallel()` group, or a `map()` whose calls share one action's options.

    Members that are no calls (groups, plain members) take part in a map through a plain
    coroutine function that runs each item: a call of the map's action or such a member.
    """

    kind: Literal["parallel", "map"]
    site: int  # names the map action; unused for parallel
    fail_fast: bool
    concurrency: int | None
    members: tuple[Member, ...]


Step = Call | Group
Member = Call | Group | Plain


@dataclass(frozen=True)
class RunSpec:
    """One run: its workflow, and when (virtual time) it is cancelled from outside, if ever.

    ``recancel``: if not None, the run is cancelled a second time that many turns of the event
    loop after the first, at the same virtual instant, when members may still be unwinding.
    """

    steps: tuple[Step, ...]
    cancel_at: float | None
    recancel: int | None = None


@dataclass(frozen=True)
class Scenario:
    """Concurrent runs of one orchestrator."""

    runs: tuple[RunSpec, ...]
    sites: dict[int, Call] = field(hash=False, compare=False)


class _Sites:
    def __init__(self) -> None:
        self.next = 1

    def take(self) -> int:
        site = self.next
        self.next += 1
        return site


@st.composite
def _call(
    draw: st.DrawFn,
    sites: _Sites,
    depth: int,
    bounded: bool,
    template: Call | None = None,
    map_site: int | None = None,
) -> Call:
    site = sites.take()
    action = f"s{site}" if map_site is None else f"m{map_site}"
    if template is not None:  # a map item: the action's options are the map's
        sync, retries, timeout, deadline, delay = (
            template.sync,
            template.retries,
            template.timeout,
            template.deadline,
            template.delay,
        )
    else:
        sync = draw(st.booleans())
        retries = draw(st.integers(0, 3))
        timeout = draw(st.sampled_from([None, None, 0.01, 0.05, 0.3]))
        deadline = draw(st.sampled_from([None, None, None, 0.04, 0.2])) if retries else None
        delay = draw(st.sampled_from([0.0, 0.004, 0.03]))
        timeout = None if timeout is None else spread(timeout, 7 * site + 1, 0.05)
        deadline = None if deadline is None else spread(deadline, 7 * site + 2, 0.05)
        delay = spread(delay, 7 * site + 3)
    limited = bounded or timeout is not None or deadline is not None
    kinds: list[OutcomeKind] = ["ok", "ok", "retryable", "fatal"]
    if limited:
        kinds.append("hang")
        if not sync:
            kinds += ["stubborn", "abort"]
    outcomes = tuple(
        Outcome(
            draw(st.sampled_from(kinds)),
            spread(draw(st.sampled_from([0.001, 0.006, 0.02, 0.1])), 31 * site + attempt),
        )
        for attempt in range(retries + 1)
    )
    inner: tuple[Step, ...] = ()
    if not sync and depth < 2 and map_site is None and draw(st.integers(0, 3)) == 0:
        inner = draw(_steps(sites, depth + 1, limited))
    hook = draw(
        st.sampled_from([None] * 12 + ["begin", "retry", "error", "completion"])  # type: ignore[list-item]
    )
    return Call(site, sync, retries, timeout, deadline, delay, outcomes, inner, hook, action)


@st.composite
def _plain(draw: st.DrawFn, sites: _Sites, bounded: bool) -> Plain:
    site = sites.take()
    kinds: list[PlainKind] = ["ok", "ok", "fatal"] + (["hang"] if bounded else [])
    kind = draw(st.sampled_from(kinds))
    duration = spread(draw(st.sampled_from([0.001, 0.006, 0.02, 0.1])), 31 * site + 5)
    cleanup = draw(st.sampled_from(["cancel", "error", "error", "abort"]))
    return Plain(site, kind, duration, cleanup, draw(st.integers(0, 2)))  # type: ignore[arg-type]


@st.composite
def _group(draw: st.DrawFn, sites: _Sites, depth: int, bounded: bool, nest: int = 1) -> Group:
    kind = draw(st.sampled_from(["parallel", "map"]))
    site = sites.take()
    fail_fast = draw(st.booleans())
    size = draw(st.integers(1, 4))
    concurrency = draw(st.sampled_from([None, None, 1, 2]))
    # Each member is a call, a group (``nest`` counts the groups around it) or a plain member.
    shapes = ["call"] * 3 + ["plain"] + (["group"] if nest < 3 else [])
    members: list[Member] = []
    template: Call | None = None
    for _ in range(size):
        shape = draw(st.sampled_from(shapes))
        if shape == "group":
            members.append(draw(_group(sites, depth, bounded, nest + 1)))
        elif shape == "plain":
            members.append(draw(_plain(sites, bounded)))
        elif kind == "parallel":
            members.append(draw(_call(sites, depth + 1, bounded)))
        else:  # a map item: the first call makes the action, later ones share its options
            item = draw(_call(sites, depth + 1, bounded, template, map_site=site))
            template = template or item
            members.append(item)
    return Group(kind, site, fail_fast, concurrency, tuple(members))


@st.composite
def _steps(draw: st.DrawFn, sites: _Sites, depth: int, bounded: bool) -> tuple[Step, ...]:
    count = draw(st.integers(1, 3 if depth == 0 else 2))
    steps: list[Step] = []
    for _ in range(count):
        if depth < 2 and draw(st.integers(0, 2)) == 0:
            steps.append(draw(_group(sites, depth, bounded)))
        else:
            steps.append(draw(_call(sites, depth, bounded)))
    return tuple(steps)


def _collect(steps: tuple[Member, ...], into: dict[int, Call]) -> None:
    for step in steps:
        if isinstance(step, Group):
            _collect(step.members, into)
        elif isinstance(step, Call):
            into[step.site] = step
            _collect(step.inner, into)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Draw one scenario: one to three concurrent runs."""
    sites = _Sites()
    runs = []
    for index in range(draw(st.integers(1, 3))):
        cancel = draw(st.sampled_from([None, None, None, 0.003, 0.03, 0.15]))
        cancel_at = None if cancel is None else spread(cancel, 1000 + index, 0.5)
        recancel = None
        if cancel_at is not None:
            recancel = draw(st.sampled_from([None, None, 1, 2, 3, 4]))
        steps = draw(_steps(sites, 0, cancel_at is not None))
        runs.append(RunSpec(steps, cancel_at, recancel))
    table: dict[int, Call] = {}
    for run in runs:
        _collect(run.steps, table)
    return Scenario(tuple(runs), table)


@dataclass(frozen=True)
class Crash:
    """How one execution of a journaled scenario is interrupted, at virtual time ``at``.

    ``"cancel"``: each run is cancelled from outside, run ``i`` at its own instant a little
    after ``at``, and once more ``recancel`` loop turns later if that is not None; it ends as
    cancelled, and the journal records it so. ``"stop"``: the event loop stops at ``at``, or
    if ``after`` is not None ``turns`` loop turns after the ``after``-th attempt to end
    returned or raised (when its call's record may be on its way to the journal), as a process
    that dies there: nothing later reaches the journal, whose runs stay recorded as running.
    """

    kind: Literal["cancel", "stop"]
    at: float
    recancel: int | None = None
    after: int | None = None
    turns: int = 0

    def cancel_at(self, index: int, number: int) -> float:
        """When run ``index`` is cancelled by this crash, the ``number``-th of its scenario."""
        return spread(self.at, 3000 + 10 * number + index, 0.5)


@dataclass(frozen=True)
class JournaledScenario:
    """Runs recorded in one journal, interrupted by each crash in turn, then run to the end.

    No run is cancelled from outside otherwise, so every workflow ends by itself.
    """

    scenario: Scenario
    crashes: tuple[Crash, ...]


@st.composite
def journaled_scenarios(draw: st.DrawFn) -> JournaledScenario:
    """Draw one to three concurrent runs, and one to three crashes that interrupt them."""
    sites = _Sites()
    runs = tuple(
        RunSpec(draw(_steps(sites, 0, False)), None) for _ in range(draw(st.integers(1, 3)))
    )
    table: dict[int, Call] = {}
    for run in runs:
        _collect(run.steps, table)
    crashes = []
    for number in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cancel", "stop", "stop"]))
        at = spread(draw(st.sampled_from([0.002, 0.01, 0.03, 0.08, 0.2])), 2000 + number, 0.5)
        if kind == "cancel":
            recancel = draw(st.sampled_from([None, None, 1, 3]))
            crashes.append(Crash("cancel", at, recancel))
        elif draw(st.sampled_from(["instant", "attempt", "attempt"])) == "instant":
            crashes.append(Crash("stop", at))
        else:
            # Zero turns stops in the turn where the call's record is to be committed.
            after, turns = draw(st.integers(1, 8)), draw(st.sampled_from([0, 0, 1, 2, 3]))
            crashes.append(Crash("stop", at, after=after, turns=turns))
    return JournaledScenario(Scenario(runs, table), tuple(crashes))
