"""Randomized workflows: every promise of the library, under every mix of failures.

Hypothesis draws whole scenarios (see model.py); harness.py runs each on a virtual-time event
loop and records everything; this module checks the invariants and compares with what the
oracle predicts from the scenario alone. A failure shrinks to a minimal scenario.

ORCHESTRATOR_FUZZ_EXAMPLES sets the number of examples (default 300, about ten seconds, and the
same examples every time; with the variable set, Hypothesis draws new ones);
ORCHESTRATOR_FUZZ_STATS names a JSON file that receives the run's figures.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import figures
import oracle
from harness import (
    GroupRecord,
    Observation,
    PlainRecord,
    Token,
    cancel_message,
    describe,
    execute,
)
from hypothesis import HealthCheck, given, settings
from model import Scenario, scenarios

EXAMPLES = int(os.environ.get("ORCHESTRATOR_FUZZ_EXAMPLES", "300"))
STATS = figures.STATS


def _chain(error: BaseException) -> Iterator[BaseException]:
    # The error and all that a traceback of it shows: its cause, its context unless suppressed
    # (``raise ... from None``), and the members of groups, all the way down.
    todo, done = [error], set()
    while todo:
        current = todo.pop()
        if id(current) in done:
            continue
        done.add(id(current))
        yield current
        if current.__cause__ is not None:
            todo.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            todo.append(current.__context__)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)


def check_invariants(scenario: Scenario, seen: Observation) -> None:
    points = [point for point, _, _ in seen.records]
    for index in range(len(scenario.runs)):
        run_id = f"r{index}"
        mine = [(p, e, t) for p, e, t in seen.records if e.run_id == run_id]
        kinds = [p for p, _, _ in mine]
        assert kinds[0] == "process_begin", kinds
        assert kinds[-1] == "process_completion", kinds
        assert kinds.count("process_begin") == kinds.count("process_completion") == 1
        failed = seen.outcomes[index][0] == "err"
        assert kinds.count("process_error") == int(failed)
        if failed:
            assert kinds[-2] == "process_error"
            assert mine[-1][1].error is mine[-2][1].error
            error = seen.outcomes[index][1]
            if isinstance(error, asyncio.CancelledError):
                # The caller's own cancellation, message kept, whatever groups it went through.
                assert scenario.runs[index].cancel_at is not None, f"{run_id}: {error!r}"
                assert error.args == (cancel_message(run_id),), f"{run_id}: {error!r}"
    tasks: dict[tuple[str, int], list[int]] = {}
    for position, (point, event, _) in enumerate(seen.records):
        if point.startswith("task_"):
            tasks.setdefault((event.run_id, event.task_id), []).append(position)
    for key, positions in tasks.items():
        site = scenario.sites[seen.tokens[key].site]
        events = [seen.records[p] for p in positions]
        kinds = [p for p, _, _ in events]
        assert kinds[0] == "task_begin", (key, kinds)
        assert kinds[-1] == "task_completion", (key, kinds)
        assert kinds.count("task_begin") == kinds.count("task_completion") == 1, (key, kinds)
        completion = events[-1][1]
        assert completion.attempts <= site.retries + 1
        retries = kinds.count("task_retry")
        assert retries in (completion.attempts - 1, completion.attempts), (key, kinds)
        if retries and retries == completion.attempts:
            # No attempt followed the last retry event: the retry hook raised, or the wait was
            # cancelled (and an error or completion hook may have replaced the cancellation).
            cancelled = any(isinstance(e, asyncio.CancelledError) for e in _chain(completion.error))
            assert cancelled or site.raising_hook in ("retry", "error", "completion"), kinds
        for point, event, _ in events:
            if point == "task_retry":
                assert not isinstance(event.error, asyncio.CancelledError)
        if completion.error is None:
            assert "task_error" not in kinds
        else:
            # The error event comes just before the completion, in the global order too.
            position = positions[-1]
            assert points[position - 1] == "task_error", (key, kinds)
            assert seen.records[position - 1][1].task_id == completion.task_id
        if site.deadline is not None:
            elapsed = events[-1][2] - events[0][2]
            assert elapsed <= site.deadline + 1e-9, (key, elapsed, site.deadline)
    for index, run in enumerate(scenario.runs):
        if run.cancel_at is not None:
            late = [
                e
                for p, e, t in seen.records
                if p == "task_retry" and e.run_id == f"r{index}" and t > run.cancel_at
            ]
            assert late == [], f"retried after the run was cancelled: {late}"
    assert seen.witnessed["task"] == points.count("task_completion")
    assert seen.witnessed["process"] == points.count("process_completion")
    assert seen.context_violations == []
    assert seen.pending_tasks == []
    assert seen.busy_after == 0
    for plain in seen.plains:
        # A group cancels a member once: a second cancellation would cut its cleanup short.
        assert plain.cleanup in ("", "done"), f"the cleanup of p{plain.spec.site} was cut short"
    _check_nothing_lost(seen)
    _check_groups_report_their_members(seen)


def _check_nothing_lost(seen: Observation) -> None:
    # Every failure must reach the caller: in an event, in what a run raised (chains and
    # groups included), or named in a note on what a run raised (a fail-fast group's others).
    surfaced: set[int] = set()
    notes: list[str] = []
    errors = [getattr(event, "error", None) for _, event, _ in seen.records]
    errors += [value for outcome, value in seen.outcomes if outcome == "err"]
    for error in errors:
        if error is not None:
            for linked in _chain(error):
                surfaced.add(id(linked))
                notes.extend(getattr(linked, "__notes__", ()))
    for error, may_drop in seen.raised:
        named = any(repr(error) in note for note in notes)
        assert may_drop or id(error) in surfaced or named, f"{error!r} was lost"


# How a note names a failure: the repr of an exception the harness raised (unique by its serial).
_NAMED = re.compile(r"\b(?:Retryable|Fatal|HookError|CleanupError|Abort)\([^()]*\)")


def _shown(error: BaseException, raised: dict[str, BaseException]) -> set[int]:
    # What a traceback of ``error`` shows: the failures (ids of what the harness raised) in
    # its chain and groups, and those named in a note on any of these. (A group names up to
    # ten members in notes; the model's groups have at most four.)
    found: set[int] = set()
    for linked in _chain(error):
        found.add(id(linked))
        for note in getattr(linked, "__notes__", ()):
            found.update(id(raised[name]) for name in _NAMED.findall(note) if name in raised)
    return found & {id(e) for e in raised.values()}


def _named(error: BaseException, raised: dict[str, BaseException]) -> set[int]:
    # The failures that a member's exception stands for, which its group must pass on even
    # when it can only name that exception in a note: the exception itself, if the harness
    # raised it; those named in its own notes; and those of the members of an exception
    # group. Not its context or cause, which no note can carry (when a hook's exception
    # replaced a call's own, the call's events hold the latter).
    found = {id(error)}
    for note in getattr(error, "__notes__", ()):
        found.update(id(raised[name]) for name in _NAMED.findall(note) if name in raised)
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            found |= _named(member, raised)
    return found & {id(e) for e in raised.values()}


def _member_error(
    member: Any, completions: dict[int, Any], seen: Observation
) -> BaseException | None:
    # What a member that began raised: for a call, what its last completion hook raised if
    # one did, else its completion event's error.
    if isinstance(member, GroupRecord | PlainRecord):
        return member.raised
    assert isinstance(member, Token)
    if member.serial in seen.completion_raised:
        return seen.completion_raised[member.serial]
    completion = completions.get(member.serial)
    return None if completion is None else completion.error


def _check_groups_report_their_members(seen: Observation) -> None:
    # At every depth, what a group raises accounts for every failure that any of its members
    # reports: "no failure goes unreported" holds level by level up to the run's caller.
    raised = {repr(error): error for error, _ in seen.raised}
    completions = {
        seen.tokens[(event.run_id, event.task_id)].serial: event
        for point, event, _ in seen.records
        if point == "task_completion"
    }
    for record in seen.groups:
        assert record.ended
        required: set[int] = set()
        failed = []
        for position, member in sorted(record.members.items()):
            error = _member_error(member, completions, seen)
            if error is not None:
                failed.append((position, error))
                required |= _named(error, raised)
        if record.raised is None:
            assert failed == [], f"a group returned although members failed: {failed}"
            continue
        missing = required - _shown(record.raised, raised)
        lost = [repr(e) for e in raised.values() if id(e) in missing]
        assert not lost, (
            f"m{record.spec.site} raised {record.raised!r} (notes "
            f"{getattr(record.raised, '__notes__', [])}) and lost {lost} of its members {failed}"
        )


def compare_with_oracle(scenario: Scenario, seen: Observation) -> None:
    try:
        predicted = [oracle.run(run) for run in scenario.runs]
    except oracle.Ambiguous as tie:
        STATS["ambiguous (invariants only)"] += 1
        STATS[f"ambiguous: {tie}"] += 1
        return
    observed_attempts: dict[int, list[int]] = {}
    for point, event, _ in seen.records:
        if point == "task_completion":
            site = seen.tokens[(event.run_id, event.task_id)].site
            observed_attempts.setdefault(site, []).append(event.attempts)
    for plain in seen.plains:
        observed_attempts.setdefault(plain.spec.site, []).append(0 if plain.cleanup else 1)
    expected_attempts: dict[int, list[int]] = {}
    for index, (result, log) in enumerate(predicted):
        kind, value = seen.outcomes[index]
        observed = ("ok", value) if kind == "ok" else ("err", describe(value))
        assert observed == result, f"run r{index}: observed {observed}, predicted {result}"
        for site, attempts in log:
            expected_attempts.setdefault(site, []).append(attempts)
    for table in (observed_attempts, expected_attempts):
        for attempts in table.values():
            attempts.sort()
    assert observed_attempts == expected_attempts
    STATS["compared with the oracle"] += 1


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The suite's run is the same every time; a long run asked for explores new examples.
    derandomize="ORCHESTRATOR_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_random_workflows_keep_every_promise(scenario: Scenario) -> None:
    seen = execute(scenario)
    STATS["examples"] += 1
    STATS["runs"] += len(scenario.runs)
    STATS["calls begun"] += sum(1 for point, _, _ in seen.records if point == "task_begin")
    for kind, count in seen.faults.items():
        STATS[f"fault: {kind}"] += count
    for record in seen.groups:
        STATS[f"groups run at depth {record.depth}"] += 1
    check_invariants(scenario, seen)
    compare_with_oracle(scenario, seen)
    check_call_keys(scenario, seen)


def check_call_keys(scenario: Scenario, seen: Observation) -> None:
    """The same workflow under other timings gives every call it makes the same key.

    Every call site is made at most once per run and attempt of its caller, so a site has one
    key in a run (the attempts of a retried caller number their calls afresh). The workflow
    runs again with every duration stretched or shrunk at random: timeouts, fail-fast and
    cancellations may then make other calls, but a call made both times has the same key.
    """
    first = _keys_by_site(seen)
    rng = random.Random(repr(scenario))
    stretched = Scenario(
        scenario.runs,
        {
            site: replace(
                call,
                outcomes=tuple(
                    replace(o, duration=o.duration * rng.uniform(0.2, 3.0)) for o in call.outcomes
                ),
            )
            for site, call in scenario.sites.items()
        },
    )
    second = _keys_by_site(execute(stretched))
    common = first.keys() & second.keys()
    STATS["calls compared under other timings"] += len(common)
    for made in common:
        assert first[made] == second[made], f"{made}: keys {first[made]} and then {second[made]}"


def _keys_by_site(seen: Observation) -> dict[tuple[str, int], str]:
    keys: dict[tuple[str, int], set[str]] = {}
    for point, event, _ in seen.records:
        if point == "task_begin":
            site = seen.tokens[(event.run_id, event.task_id)].site
            keys.setdefault((event.run_id, site), set()).add(event.call_key)
    for made, found in keys.items():
        assert len(found) == 1, f"{made} was made under several keys: {sorted(found)}"
    return {made: found.pop() for made, found in keys.items()}


def teardown_module() -> None:
    figures.write()
