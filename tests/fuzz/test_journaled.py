"""Journaled workflows: runs recorded in a journal, crashed at random points, and resumed.

Each example draws concurrent workflows as the randomized suite does (model.py) and records
them in a real SQLite journal, a file in a temporary directory. One to three crashes interrupt
them in turn: each run cancelled from outside, or the event loop stopped at an instant, as a
process that dies there. Each execution is a fresh orchestrator on the same file that starts
every run again under its run id, so that an unfinished run resumes. After the crashes, one
execution runs to the end, and one more starts every run again: a run that succeeded returns
its recorded result without running its body, and a failed one resumes once more.

The journal is read back between executions, and each execution is checked against it:

- no call whose success the journal held ran its function, and no call ran again after its
  success was recorded in the same execution (a retried caller makes its calls again);
- every call at such a key reports ``replayed=True``, no attempt, and the recorded result,
  and no other call does;
- no record of a success is lost or changed, every success a call reported is recorded with
  its result, and every new record is what an attempt of that call returned;
- every execution that was not stopped keeps every promise the randomized suite checks, and
  ends every run as the oracle predicts from the scenario and the journal's records (a
  replayed call returns at once); each run's recorded status is the outcome it had.

After the execution that runs to the end, every run has finished; how often its outcome is
that of an uninterrupted run is counted (a replay takes no time, so a timeout or a fail-fast
race around it can end otherwise).

ORCHESTRATOR_FUZZ_EXAMPLES sets the number of examples, as for test_workflows.py (default
100 here, the same ones every time).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import figures
import oracle
from harness import Observation, describe, execute
from hypothesis import HealthCheck, given, settings
from model import JournaledScenario, Scenario, journaled_scenarios
from test_workflows import check_invariants

from orchestrator import SQLiteJournal

EXAMPLES = int(os.environ.get("ORCHESTRATOR_FUZZ_EXAMPLES", "100"))
STATS = figures.STATS
MEMORY = "/dev/shm"


@dataclass
class Recorded:
    """What the journal holds of one run."""

    status: str | None  # None: no such run
    result: str | None  # the repr of a succeeded run's result
    error: str | None  # "Type: message" of what a failed run raised
    calls: dict[str, tuple[int, int]]  # call key -> (site, result) of each recorded success


def read_journal(path: str, run_ids: list[str]) -> dict[str, Recorded]:
    """Read back what the journal at ``path`` holds of each run."""
    with SQLiteJournal(path) as journal:
        runs = {record.run_id: record for record in journal.list_runs()}
        found = {}
        for run_id in run_ids:
            record = runs.get(run_id)
            calls = {
                # A call's only argument is its site's number, and its result an int.
                call.call_key: (int(call.args), int(call.result or ""))
                for call in journal.calls(run_id)
                if call.status == "succeeded"
            }
            if record is None:
                found[run_id] = Recorded(None, None, None, calls)
            else:
                found[run_id] = Recorded(record.status, record.result, record.error, calls)
    return found


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="ORCHESTRATOR_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(journaled_scenarios())
def test_crashed_journaled_workflows_resume_without_running_a_recorded_call_again(
    example: JournaledScenario,
) -> None:
    # A directory in memory where the system has one: what is checked is what the journal
    # records, not the disk, whose syncs would make the test take half as long again.
    with tempfile.TemporaryDirectory(dir=MEMORY if os.path.isdir(MEMORY) else None) as folder:
        resume_until_finished(example, os.path.join(folder, "runs.db"))


def resume_until_finished(example: JournaledScenario, path: str) -> None:
    """Run ``example``'s executions on the journal ``path``, each checked against it."""
    scenario = example.scenario
    run_ids = [f"r{index}" for index in range(len(scenario.runs))]
    STATS["journaled: examples"] += 1
    STATS["journaled: runs"] += len(run_ids)
    before = read_journal(path, run_ids)
    last = len(example.crashes)  # the execution that runs to the end; one more follows
    for number, crash in enumerate([*example.crashes, None, None]):
        stop_at = stop_after = None
        runs = scenario.runs
        if crash is not None:
            if crash.kind == "stop" and crash.after is not None:
                STATS["journaled: crashes (stop after an attempt)"] += 1
                stop_after = (crash.after, crash.turns)
            elif crash.kind == "stop":
                STATS["journaled: crashes (stop at an instant)"] += 1
                stop_at = crash.at
            else:
                STATS["journaled: crashes (cancel)"] += 1
                runs = tuple(
                    replace(spec, cancel_at=crash.cancel_at(index, number), recancel=crash.recancel)
                    for index, spec in enumerate(runs)
                )
        current = Scenario(runs, scenario.sites)
        seen = execute(current, journal=path, stop_at=stop_at, stop_after=stop_after)
        STATS["journaled: executions"] += 1
        after = read_journal(path, run_ids)
        check_against_journal(current, seen, before, after)
        if seen.stopped:
            STATS["journaled: executions stopped mid-run"] += 1
            assert seen.pending_tasks == []
        else:
            check_invariants(current, seen)
            check_statuses(seen, after)
            if crash is not None and crash.recancel is not None:
                # A second cancellation can land while a run's or a call's failure is being
                # recorded, an await that the oracle does not model.
                STATS["journaled: executions cancelled twice (invariants only)"] += 1
            else:
                compare_with_oracle(current, seen, before, final=number == last)
        if number == last:
            unfinished = {run_id: r.status for run_id, r in after.items()}
            assert set(unfinished.values()) <= {"succeeded", "failed"}, unfinished
        before = after


def check_against_journal(
    scenario: Scenario,
    seen: Observation,
    before: dict[str, Recorded],
    after: dict[str, Recorded],
) -> None:
    """Check what ran, what replayed and what was recorded against the journal's records."""
    executed: dict[tuple[str, str], list[int]] = {}
    ran: set[tuple[str, str, int, int]] = set()
    for token, attempt, position in seen.executions:
        place = (token.run_id, token.key)
        assert token.key not in before[token.run_id].calls, (
            f"{place} (s{token.site}) ran although its success was recorded before this execution"
        )
        executed.setdefault(place, []).append(position)
        ran.add((token.run_id, token.key, token.site, attempt))
    STATS["journaled: attempts run"] += len(seen.executions)
    # The successes calls reported in this execution: (run id, key) -> (position, site, result).
    live: dict[tuple[str, str], tuple[int, int, Any]] = {}
    for position, (point, event, _) in enumerate(seen.records):
        if seen.stopped and position >= seen.stopped_at_record:
            break  # what cleaning up after the stop did is no evidence
        if point != "task_completion":
            continue
        place = (event.run_id, event.call_key)
        site = seen.tokens[(event.run_id, event.task_id)].site
        recorded = before[event.run_id].calls.get(event.call_key)
        if event.replayed:
            if recorded is None:
                # A retried caller made it again after its success was recorded in this run.
                assert place in live, f"{place} replayed, and no success of it was recorded"
                STATS["journaled: calls replayed in the run that recorded them"] += 1
                expected = live[place][1:]
            else:
                STATS["journaled: calls replayed on a resume"] += 1
                expected = recorded
            replayed = (site, event.result, event.attempts, event.error)
            assert replayed == (*expected, 0, None), (place, replayed, expected)
        else:
            assert recorded is None, f"{place} was not replayed although its success was recorded"
            assert place not in live, f"{place} ran again after its success was recorded"
            if event.error is None:
                live[place] = (position, site, event.result)
    for place, (position, _, _) in live.items():
        again = [later for later in executed.get(place, []) if later > position]
        assert not again, f"{place} ran again after its success was recorded in this execution"
    for run_id, records in before.items():
        for key, value in records.calls.items():
            kept = after[run_id].calls.get(key)
            assert kept == value, f"the record of {run_id} {key}, {value}, became {kept}"
    for (run_id, key), (_, site, result) in live.items():
        kept = after[run_id].calls.get(key)
        assert kept == (site, result), f"{run_id} {key} returned {result}, and {kept} is recorded"
    for run_id, records in after.items():
        for key, (site, result) in records.calls.items():
            if key in before[run_id].calls:
                continue
            STATS["journaled: successes recorded"] += 1
            attempt = result - site * 1000
            assert (run_id, key, site, attempt) in ran, f"{run_id} {key}: {result} never returned"
            assert scenario.sites[site].outcomes[attempt - 1].kind == "ok"


def check_statuses(seen: Observation, after: dict[str, Recorded]) -> None:
    """Each run is recorded with the outcome it had: its result, or how it failed."""
    for index, (kind, value) in enumerate(seen.outcomes):
        recorded = after[f"r{index}"]
        if kind == "ok":
            assert (recorded.status, recorded.result) == ("succeeded", repr(value))
        elif isinstance(value, asyncio.CancelledError):
            if recorded.status != "cancelled":
                # Cancelled a second time while its failure was being recorded: the record
                # holds that failure, and the cancellation has it as its context.
                failure = value.__context__
                assert recorded.status == "failed", recorded
                assert failure is not None, recorded
                assert recorded.error == f"{type(failure).__name__}: {failure}", recorded
                STATS["journaled: runs cancelled while their failure was recorded"] += 1
        else:
            assert recorded.status == "failed"


def compare_with_oracle(
    scenario: Scenario, seen: Observation, before: dict[str, Recorded], final: bool
) -> None:
    """Each run ends as the oracle predicts from the scenario and the journal's records."""
    predicted: list[tuple[oracle.Result, oracle.Log] | None] = []
    try:
        for index, spec in enumerate(scenario.runs):
            recorded = before[f"r{index}"]
            if recorded.status == "succeeded":
                predicted.append(None)  # its recorded result, and no call
            else:
                predicted.append(oracle.run(spec, dict(recorded.calls.values())))
        uninterrupted = [oracle.run(spec, {})[0] for spec in scenario.runs] if final else []
    except oracle.Ambiguous as tie:
        STATS["journaled: executions ambiguous (invariants only)"] += 1
        STATS[f"journaled: ambiguous: {tie}"] += 1
        return
    observed_attempts: dict[int, list[int]] = {}
    for point, event, _ in seen.records:
        if point == "task_completion":
            site = seen.tokens[(event.run_id, event.task_id)].site
            observed_attempts.setdefault(site, []).append(event.attempts)
    for plain in seen.plains:
        observed_attempts.setdefault(plain.spec.site, []).append(0 if plain.cleanup else 1)
    expected_attempts: dict[int, list[int]] = {}
    for index, prediction in enumerate(predicted):
        kind, value = seen.outcomes[index]
        observed = ("ok", value) if kind == "ok" else ("err", describe(value))
        if prediction is None:
            recorded = before[f"r{index}"].result
            assert kind == "ok", f"run r{index} succeeded before, and now raised {value!r}"
            assert repr(value) == recorded, f"run r{index}: {value!r}, recorded {recorded}"
            STATS["journaled: finished runs that returned their recorded result"] += 1
        else:
            result, log = prediction
            assert observed == result, f"run r{index}: observed {observed}, predicted {result}"
            for site, attempts in log:
                expected_attempts.setdefault(site, []).append(attempts)
        if final:
            same = observed == uninterrupted[index]
            STATS[f"journaled: final outcomes {'as' if same else 'unlike'} uninterrupted"] += 1
    for table in (observed_attempts, expected_attempts):
        for attempts in table.values():
            attempts.sort()
    assert observed_attempts == expected_attempts
    STATS["journaled: executions compared with the oracle"] += 1


def teardown_module() -> None:
    figures.write()
