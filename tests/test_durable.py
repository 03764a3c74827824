"""Durable runs, as a user sees them: Orchestrator(journal=...) against real SQLite files.

A run recorded in a journal file is resumed under its run id: recorded successes come back
without running, the rest runs live. Processes here are real subprocesses, killed with SIGKILL
where a test needs a dead one; they coordinate through pipes, never through sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import orchestrator
from orchestrator import (
    CallInfo,
    Interceptor,
    JournalError,
    JournalMismatchError,
    Orchestrator,
    PickleSerializer,
    Proceed,
    RetryPolicy,
    SQLiteJournal,
    State,
)
from orchestrator.testing import EventRecorder

SRC = Path(orchestrator.__file__).resolve().parent.parent


def raises(kind: type[BaseException], *fragments: str) -> Any:
    """``pytest.raises(kind)`` whose message must contain every fragment, literally."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(kind, match=re.compile(pattern, re.DOTALL))


def journal_of(orch: Orchestrator[Any]) -> SQLiteJournal:
    journal = orch.journal
    assert isinstance(journal, SQLiteJournal)
    return journal


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def orch(path: Path) -> Iterator[Orchestrator[State]]:
    made = Orchestrator(journal=path)
    yield made
    journal_of(made).close()


class Steps:
    """Actions of one orchestrator that note each call that runs, and fail where told."""

    def __init__(self, orch: Orchestrator[Any], retry: RetryPolicy | None = None) -> None:
        self.ran: list[int] = []
        self.failing: set[int] = set()
        self.step = orch.action(self._step, name="step", retry=retry)

    async def _step(self, i: int) -> int:
        self.ran.append(i)
        if i in self.failing:
            raise ConnectionError(f"step {i} is down")
        return i * 10

    async def body(self, n: int) -> list[int]:
        return [await self.step(i) for i in range(1, n + 1)]


@pytest.fixture
def steps(orch: Orchestrator[State]) -> Steps:
    return Steps(orch)


FLOWS = '''\
"""Runs for the durable-run tests, in a module of their own so that recover() can import them."""

import os
import sys

from orchestrator import Orchestrator

orch = Orchestrator(journal=JOURNAL)
ran = []
failing = set()
returns = {}
BLOCKING = os.environ.get("FLOWS_BLOCK") == "1"


@orch.action
async def step(i):
    ran.append(i)
    if i in failing:
        raise ConnectionError(f"step {i} is down")
    return returns.get(i, i * 10)


@orch.action
def pause(i):
    # A sync action blocks a worker thread: the event loop runs on while it waits.
    ran.append(i)
    if BLOCKING:
        print("paused", i, flush=True)
        sys.stdin.readline()
    return i * 10


async def steps(n):
    return [await step(i) for i in range(1, n + 1)]


async def paused(n):
    first = await step(1)
    second = await pause(2)
    return [first, second, *[await step(i) for i in range(3, n + 1)]]


async def mapped(n):
    return await orch.map(step, range(1, n + 1), concurrency=8)
'''


@pytest.fixture
def flows(tmp_path: Path, path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The module above, importable under a name of its own, with its journal at ``path``."""
    name = f"flows_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(FLOWS.replace("JOURNAL", repr(str(path))))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    journal_of(sys.modules[name].orch).close()
    del sys.modules[name]


def child(flows: ModuleType, code: str, *args: str, block: bool = False) -> subprocess.Popen[str]:
    """A Python subprocess running ``code``, with the flows module importable as ``flows``."""
    folder = str(Path(flows.__file__ or "").parent)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), folder])}
    environment["FLOWS_BLOCK"] = "1" if block else "0"
    return subprocess.Popen(
        [sys.executable, "-c", f"import {flows.__name__} as flows\n{code}", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


PAUSE_RUN = "flows.orch.run_sync(flows.paused, 3, run_id='r')"


@contextlib.contextmanager
def paused_in_child(flows: ModuleType) -> Iterator[subprocess.Popen[str]]:
    """A child process in the middle of run 'r': step 1 recorded, the call at key 2 waiting."""
    proc = child(flows, PAUSE_RUN, block=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line == "paused 2\n", proc.communicate()[1]
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def raw_rows(path: Path, sql: str) -> list[Any]:
    """Rows read straight from the journal file, past the library."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


# --- recording and resuming ---------------------------------------------------------------


def test_first_run_is_recorded_with_each_call_and_its_result(
    orch: Orchestrator[State], steps: Steps
) -> None:
    assert asyncio.run(orch.run(steps.body, 3, run_id="order-42")) == [10, 20, 30]
    journal = journal_of(orch)
    (run,) = journal.list_runs()
    assert (run.run_id, run.body, run.status, run.args, run.result) == (
        "order-42",
        f"{__name__}:Steps.body",
        "succeeded",
        "3",
        "[10, 20, 30]",
    )
    calls = journal.calls("order-42")
    assert [(c.call_key, c.name, c.status, c.args, c.result) for c in calls] == [
        ("1", "step", "succeeded", "1", "10"),
        ("2", "step", "succeeded", "2", "20"),
        ("3", "step", "succeeded", "3", "30"),
    ]


def test_completed_run_returns_its_recorded_result_without_calling_the_body(
    orch: Orchestrator[State],
) -> None:
    bodies: list[int] = []

    async def body(n: int) -> list[int]:
        bodies.append(n)
        return [n, n + 1]

    first = asyncio.run(orch.run(body, 5, run_id="r"))
    again = asyncio.run(orch.run(body, 5, run_id="r"))
    assert (first, again, bodies) == ([5, 6], [5, 6], [5])


def test_failed_run_resumes_replaying_recorded_calls_and_runs_live_from_the_first_unrecorded(
    orch: Orchestrator[State], steps: Steps
) -> None:
    steps.failing.add(2)
    with raises(ConnectionError, "step 2 is down"):
        asyncio.run(orch.run(steps.body, 3, run_id="r"))
    assert journal_of(orch).list_runs()[0].status == "failed"
    steps.failing.clear()
    steps.ran.clear()
    assert asyncio.run(orch.run(steps.body, 3, run_id="r")) == [10, 20, 30]
    assert steps.ran == [2, 3]


def test_replayed_calls_complete_with_replayed_true_and_live_calls_with_false(
    orch: Orchestrator[State], steps: Steps
) -> None:
    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 3, run_id="r"))
    steps.failing.clear()
    recorder = EventRecorder(orch)
    asyncio.run(orch.run(steps.body, 3, run_id="r"))
    completions = recorder.events("task_completion")
    assert [(e.call_key, e.result, e.replayed) for e in completions] == [
        ("1", 10, True),
        ("2", 20, False),
        ("3", 30, False),
    ]


def test_the_journal_marks_the_calls_a_resume_replayed_and_keeps_their_outcomes(
    orch: Orchestrator[State], steps: Steps
) -> None:
    steps.failing.add(3)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 3, run_id="r"))
    before = {c.call_key: c for c in journal_of(orch).calls("r")}
    steps.failing.clear()
    asyncio.run(orch.run(steps.body, 3, run_id="r"))
    after = {c.call_key: c for c in journal_of(orch).calls("r")}
    assert [(key, c.replayed) for key, c in sorted(after.items())] == [
        ("1", True),
        ("2", True),
        ("3", False),
    ]
    for key in ("1", "2"):
        kept = (before[key].result, before[key].started, before[key].ended, before[key].args)
        assert (after[key].result, after[key].started, after[key].ended, after[key].args) == kept


def test_cancelled_run_resumes_from_the_first_unrecorded_call(
    orch: Orchestrator[State], steps: Steps
) -> None:
    blocking = True

    @orch.action
    async def wait_for_service() -> str:
        if blocking:
            reached.set()
            await asyncio.Event().wait()
        return "up"

    async def body() -> list[Any]:
        return [await steps.step(1), await wait_for_service(), await steps.step(3)]

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(orch.run(body, run_id="r"))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    reached = asyncio.Event()
    asyncio.run(cancel_midway())
    assert journal_of(orch).list_runs()[0].status == "cancelled"
    blocking = False
    steps.ran.clear()
    assert asyncio.run(orch.run(body, run_id="r")) == [10, "up", 30]
    assert steps.ran == [3]


def test_failed_call_runs_again_on_resume_with_its_retry_policy(
    orch: Orchestrator[State],
) -> None:
    steps = Steps(orch, retry=RetryPolicy(retries=2, delay=0))
    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 2, run_id="r"))
    assert steps.ran == [1, 2, 2, 2]
    recorder = EventRecorder(orch)
    orch.on_task_retry(lambda event: steps.failing.clear())  # the service is back after one try
    steps.ran.clear()
    assert asyncio.run(orch.run(steps.body, 2, run_id="r")) == [10, 20]
    assert steps.ran == [2, 2]
    assert [e.attempts for e in recorder.events("task_completion")] == [0, 2]


def test_call_recorded_in_an_earlier_attempt_is_replayed_when_its_caller_retries(
    orch: Orchestrator[State], steps: Steps
) -> None:
    attempts: list[int] = []

    @orch.action(retry=RetryPolicy(retries=1, delay=0))
    async def charge() -> int:
        paid = await steps.step(1)  # key "1.1" in every attempt
        attempts.append(paid)
        if len(attempts) == 1:
            raise ConnectionError("receipt service is down")
        return paid

    recorder = EventRecorder(orch)
    assert asyncio.run(orch.run(charge, run_id="r")) == 10
    assert steps.ran == [1]
    replayed = [(e.call_key, e.replayed) for e in recorder.events("task_completion")]
    assert replayed == [("1.1", False), ("1.1", True), ("1", False)]


def test_retry_making_another_call_where_an_earlier_attempt_recorded_one_is_a_mismatch(
    orch: Orchestrator[State], steps: Steps
) -> None:
    attempts: list[int] = []

    @orch.action(retry=RetryPolicy(retries=1, delay=0))
    async def charge() -> int:
        attempts.append(len(attempts) + 1)
        paid = await steps.step(attempts[-1])  # other arguments in the second attempt
        if len(attempts) == 1:
            raise ConnectionError("receipt service is down")
        return paid

    with raises(
        JournalMismatchError,
        "run 'r'",
        "call key '1.1'",
        "in an earlier attempt of its caller",
        "(1)",
        "(2)",
        "keyed()",
    ):
        asyncio.run(orch.run(charge, run_id="r"))
    assert steps.ran == [1]
    records = [(c.call_key, c.status, c.args) for c in journal_of(orch).calls("r")]
    assert records == [("1", "failed", ""), ("1.1", "succeeded", "1")]


# --- mismatches ---------------------------------------------------------------------------


def test_same_run_id_with_another_body_is_a_mismatch_naming_both_bodies(
    orch: Orchestrator[State], steps: Steps
) -> None:
    async def other(n: int) -> int:
        return n

    asyncio.run(orch.run(steps.body, 1, run_id="r"))
    with raises(
        JournalMismatchError,
        "run 'r'",
        f"'{__name__}:Steps.body'",
        f"'{__name__}:{other.__qualname__}'",
        "use another run_id",
    ):
        asyncio.run(orch.run(other, 1, run_id="r"))


def test_same_run_id_with_other_arguments_is_a_mismatch_showing_both(
    orch: Orchestrator[State], steps: Steps
) -> None:
    steps.failing.add(1)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 3, run_id="r"))
    steps.ran.clear()
    with raises(JournalMismatchError, "run 'r'", "(3)", "(4)", "pass the recorded arguments"):
        asyncio.run(orch.run(steps.body, 4, run_id="r"))
    assert steps.ran == []


def test_mismatched_arguments_are_shortened_around_where_they_differ(
    orch: Orchestrator[State],
) -> None:
    async def body(text: str) -> str:
        return text

    recorded, attempted = "a" * 300 + "b" * 300, "a" * 300 + "c" * 300
    asyncio.run(orch.run(body, recorded, run_id="r"))
    with pytest.raises(JournalMismatchError) as caught:
        asyncio.run(orch.run(body, attempted, run_id="r"))
    message = str(caught.value)
    assert len(message) < 400
    assert message.count("...") == 4  # each cut at both ends, around where they differ
    assert "aaaabbbb" in message
    assert "aaaacccc" in message


def test_call_at_a_recorded_key_under_another_name_is_a_mismatch_naming_run_key_and_calls(
    orch: Orchestrator[State], steps: Steps
) -> None:
    @orch.action
    async def refund(i: int) -> int:
        return -i

    changed = False

    async def body() -> int:
        first = await (refund(1) if changed else steps.step(1))
        return first + await steps.step(2)

    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    changed = True
    with raises(
        JournalMismatchError,
        "run 'r'",
        "call key '1'",
        "'step'",
        "'refund'",
        "Resume it with the code that recorded it, or start it again under a new run_id",
    ):
        asyncio.run(orch.run(body, run_id="r"))


def test_call_at_a_recorded_key_with_other_arguments_is_a_mismatch_showing_both_arguments(
    orch: Orchestrator[State], steps: Steps
) -> None:
    first = 1

    async def body() -> list[int]:
        return [await steps.step(first), await steps.step(9)]

    steps.failing.add(9)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    first = 7
    with raises(JournalMismatchError, "run 'r'", "call key '1'", "'step'", "(1)", "(7)"):
        asyncio.run(orch.run(body, run_id="r"))


def test_mismatched_call_leaves_the_recorded_calls_unchanged(
    orch: Orchestrator[State], steps: Steps
) -> None:
    first = 1

    async def body() -> list[int]:
        return [await steps.step(first), await steps.step(9)]

    steps.failing.add(9)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    before = journal_of(orch).calls("r")
    first = 7
    with pytest.raises(JournalMismatchError):
        asyncio.run(orch.run(body, run_id="r"))
    assert journal_of(orch).calls("r") == before


def test_editing_an_unrelated_line_does_not_strand_a_run(flows: ModuleType) -> None:
    flows.failing.add(2)
    with pytest.raises(ConnectionError):
        flows.orch.run_sync(flows.steps, 3, run_id="r")
    journal_of(flows.orch).close()
    source = Path(flows.__file__ or "")
    edited = source.read_text().replace(
        "async def steps(n):", "def unrelated():\n    return 42  # new\n\n\nasync def steps(n):"
    )
    source.write_text("# edited after the run failed\n" + edited)
    importlib.invalidate_caches()
    reloaded = importlib.reload(flows)
    assert reloaded.unrelated() == 42
    assert reloaded.orch.run_sync(reloaded.steps, 3, run_id="r") == [10, 20, 30]
    assert reloaded.ran == [2, 3]


def test_run_sync_replays_a_failed_run_and_returns_a_completed_runs_result(
    orch: Orchestrator[State], steps: Steps
) -> None:
    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        orch.run_sync(steps.body, 2, run_id="r")
    steps.failing.clear()
    steps.ran.clear()
    assert orch.run_sync(steps.body, 2, run_id="r") == [10, 20]
    assert orch.run_sync(steps.body, 2, run_id="r") == [10, 20]
    assert steps.ran == [2]


# --- recover() ----------------------------------------------------------------------------


def test_recover_resumes_an_unfinished_run_with_its_recorded_body_and_arguments(
    flows: ModuleType,
) -> None:
    flows.failing.add(2)
    with pytest.raises(ConnectionError):
        flows.orch.run_sync(flows.steps, 3, run_id="r")
    flows.failing.clear()
    flows.ran.clear()
    assert asyncio.run(flows.orch.recover()) == ["r: resumed and finished"]
    assert flows.ran == [2, 3]
    assert journal_of(flows.orch).list_runs()[0].result == "[10, 20, 30]"


def test_recover_reports_a_run_that_fails_again(flows: ModuleType) -> None:
    flows.failing.add(2)
    with pytest.raises(ConnectionError):
        flows.orch.run_sync(flows.steps, 3, run_id="r")
    assert asyncio.run(flows.orch.recover()) == ["r: failed again, ConnectionError: step 2 is down"]


def test_recover_reports_a_journal_error_raised_inside_the_resumed_run_as_failed_again(
    flows: ModuleType,
) -> None:
    flows.failing.add(1)
    with pytest.raises(ConnectionError):
        flows.orch.run_sync(flows.steps, 1, run_id="r")
    flows.failing.clear()
    flows.returns[1] = {1}  # the call now returns a set, which JSON cannot hold
    (line,) = asyncio.run(flows.orch.recover())
    assert line.startswith("r: failed again, JournalError: cannot record the result of action")


def test_recover_resumes_runs_although_another_run_holds_a_value_it_cannot_load(
    flows: ModuleType, path: Path
) -> None:
    flows.orch.run_sync(flows.steps, 1, run_id="done")
    flows.failing.add(1)
    with pytest.raises(ConnectionError):
        flows.orch.run_sync(flows.steps, 1, run_id="r")
    flows.failing.clear()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE runs SET result = 'not JSON' WHERE run_id = 'done'")
    assert asyncio.run(flows.orch.recover()) == ["r: resumed and finished"]


def test_recover_leaves_completed_runs_alone(flows: ModuleType) -> None:
    flows.orch.run_sync(flows.steps, 2, run_id="r")
    flows.ran.clear()
    assert asyncio.run(flows.orch.recover()) == []
    assert flows.ran == []


def test_recover_skips_a_run_whose_body_is_local_to_a_function(
    orch: Orchestrator[State],
) -> None:
    async def body() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    assert asyncio.run(orch.recover()) == [
        f"r: skipped, body {__name__}:{body.__qualname__} cannot be imported (it is local to "
        "a function or a lambda)"
    ]


def test_recover_skips_a_run_whose_module_is_gone(flows: ModuleType, path: Path) -> None:
    flows.failing.add(1)
    with pytest.raises(ConnectionError):
        flows.orch.run_sync(flows.steps, 1, run_id="r")
    name = flows.__name__
    Path(flows.__file__ or "").unlink()
    del sys.modules[name]
    importlib.invalidate_caches()
    later = Orchestrator(journal=path)
    try:
        assert asyncio.run(later.recover()) == [
            f"r: skipped, body {name}:steps cannot be imported (No module named '{name}')"
        ]
    finally:
        journal_of(later).close()
        sys.modules[name] = flows


def test_recover_skips_a_run_held_by_a_live_process(flows: ModuleType) -> None:
    with paused_in_child(flows) as proc:
        (line,) = asyncio.run(flows.orch.recover())
        assert line.startswith(
            f"r: skipped, run 'r' is in progress in another process (pid {proc.pid}"
        )
        assert flows.ran == []


def test_recover_without_a_journal_is_a_runtime_error() -> None:
    with raises(RuntimeError, "recover()", "Orchestrator(journal=...)"):
        asyncio.run(Orchestrator().recover())


# --- processes ----------------------------------------------------------------------------


def test_run_in_progress_in_a_live_process_is_refused_by_another(flows: ModuleType) -> None:
    with paused_in_child(flows) as proc:
        with raises(JournalError, "run 'r' is in progress in another process", f"pid {proc.pid}"):
            flows.orch.run_sync(flows.paused, 3, run_id="r")
        assert flows.ran == []
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait() == 0
    assert journal_of(flows.orch).list_runs()[0].status == "succeeded"


def test_run_of_a_killed_process_is_resumed_by_another_replaying_its_recorded_calls(
    flows: ModuleType,
) -> None:
    with paused_in_child(flows) as proc:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    assert journal_of(flows.orch).list_runs()[0].status == "running"
    assert flows.orch.run_sync(flows.paused, 3, run_id="r") == [10, 20, 30]
    assert flows.ran == [2, 3]


WRITER = """
import asyncio, sys

async def main():
    sys.stdin.readline()  # all writers start together
    tag = sys.argv[1]
    runs = (flows.orch.run(flows.mapped, 20, run_id=f"{tag}-{k}") for k in range(5))
    print(sum(map(len, await asyncio.gather(*runs))), flush=True)

asyncio.run(main())
"""


def test_processes_writing_one_journal_at_once_lose_nothing(flows: ModuleType, path: Path) -> None:
    writers = [child(flows, WRITER, f"w{n}") for n in range(4)]
    for proc in writers:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
    outcomes = [proc.communicate() for proc in writers]
    for proc, (out, err) in zip(writers, outcomes, strict=True):
        assert (proc.returncode, out) == (0, "100\n"), err
        assert "locked" not in err
    journal = journal_of(flows.orch)
    runs = journal.list_runs()
    assert sorted(run.run_id for run in runs) == sorted(
        f"w{n}-{k}" for n in range(4) for k in range(5)
    )
    assert {run.status for run in runs} == {"succeeded"}
    for run in runs:
        calls = journal.calls(run.run_id)
        assert [c.call_key for c in calls] == [f"1.{i}.1" for i in range(1, 21)]
        assert [c.result for c in calls] == [str(i * 10) for i in range(1, 21)]
    (integrity,) = raw_rows(path, "PRAGMA integrity_check")
    assert integrity == ("ok",)


def test_many_concurrent_runs_in_one_process_share_the_journal(
    orch: Orchestrator[State], steps: Steps
) -> None:
    async def all_runs() -> list[list[int]]:
        return await asyncio.gather(*(orch.run(steps.body, 4, run_id=f"r{k}") for k in range(20)))

    assert asyncio.run(all_runs()) == [[10, 20, 30, 40]] * 20
    journal = journal_of(orch)
    assert len(journal.list_runs()) == 20
    assert all(len(journal.calls(f"r{k}")) == 4 for k in range(20))
    steps.ran.clear()
    assert asyncio.run(all_runs()) == [[10, 20, 30, 40]] * 20
    assert steps.ran == []


def test_same_run_id_started_twice_at_once_in_one_process_is_refused(
    orch: Orchestrator[State], steps: Steps
) -> None:
    async def twice() -> list[Any]:
        return await asyncio.gather(
            orch.run(steps.body, 2, run_id="r"),
            orch.run(steps.body, 2, run_id="r"),
            return_exceptions=True,
        )

    first, second = asyncio.run(twice())
    assert first == [10, 20]
    assert isinstance(second, JournalError)
    assert str(second) == (
        "run 'r' is already in progress in this process; wait for it to end before starting "
        "it again"
    )
    assert steps.ran == [1, 2]


# --- values -------------------------------------------------------------------------------


def test_results_and_arguments_are_stored_as_json_text(
    orch: Orchestrator[State], path: Path
) -> None:
    @orch.action
    async def lookup(user: str, *, fields: list[str]) -> dict[str, Any]:
        return {"user": user, "fields": fields, "score": 1.5, "admin": None}

    async def body(user: str) -> dict[str, Any]:
        return await lookup(user, fields=["name"])

    asyncio.run(orch.run(body, "ada", run_id="r"))
    journal_of(orch).close()
    (call,) = raw_rows(path, "SELECT args, result FROM calls")
    (run,) = raw_rows(path, "SELECT args, result FROM runs")
    assert [json.loads(text) for text in (*call, *run)] == [
        [["ada"], {"fields": ["name"]}],
        {"user": "ada", "fields": ["name"], "score": 1.5, "admin": None},
        [["ada"], {}],
        {"user": "ada", "fields": ["name"], "score": 1.5, "admin": None},
    ]
    assert all(isinstance(text, str) for text in (*call, *run))


class TupleSerializer:
    """JSON that keeps tuples as tuples: what ``serializer=`` is for."""

    def dumps(self, value: Any) -> str:
        return json.dumps(value, cls=_TaggingEncoder)

    def loads(self, data: str | bytes) -> Any:
        return json.loads(data, object_hook=_untag)


class _TaggingEncoder(json.JSONEncoder):
    def encode(self, o: Any) -> str:
        return super().encode(_tag(o))


def _tag(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_tag(item) for item in value]}
    if isinstance(value, list):
        return [_tag(item) for item in value]
    if isinstance(value, dict):
        return {key: _tag(item) for key, item in value.items()}
    return value


def _untag(value: dict[str, Any]) -> Any:
    return tuple(value["__tuple__"]) if set(value) == {"__tuple__"} else value


def test_serializer_given_to_the_journal_stores_values_json_cannot_hold(path: Path) -> None:
    orch = Orchestrator(journal=SQLiteJournal(path, serializer=TupleSerializer()))
    steps = Steps(orch)

    @orch.action
    async def point(x: int) -> tuple[int, int]:
        return (x, x + 1)

    async def body() -> list[Any]:
        return [await point(1), await steps.step(2)]

    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    steps.failing.clear()
    try:
        assert asyncio.run(orch.run(body, run_id="r")) == [(1, 2), 20]
    finally:
        journal_of(orch).close()


def test_pickle_serializer_replays_values_json_cannot_hold(path: Path) -> None:
    orch = Orchestrator(journal=SQLiteJournal(path, serializer=PickleSerializer()))
    steps = Steps(orch)

    @orch.action
    async def tags(names: frozenset[str]) -> set[str]:
        return {name.upper() for name in names}

    async def body(names: frozenset[str]) -> list[Any]:
        return [await tags(names), await steps.step(2)]

    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, frozenset({"a", "b"}), run_id="r"))
    steps.failing.clear()
    try:
        assert asyncio.run(orch.run(body, frozenset({"a", "b"}), run_id="r")) == [{"A", "B"}, 20]
    finally:
        journal_of(orch).close()


class _Planted:
    """What a pickle would build on loading: a file, as any code it could run."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.target),))


def test_default_journal_never_unpickles_a_recorded_value(
    orch: Orchestrator[State], steps: Steps, path: Path, tmp_path: Path
) -> None:
    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 2, run_id="r"))
    planted = tmp_path / "planted"
    payload = pickle.dumps(_Planted(str(planted)))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE calls SET result = ? WHERE call_key = '1'", (payload,))
    steps.failing.clear()
    with raises(JournalError, "the result of action 'step' at call key '1'", "cannot be loaded"):
        asyncio.run(orch.run(steps.body, 2, run_id="r"))
    assert not planted.exists()


def test_unserializable_argument_fails_the_call_at_once_naming_action_key_and_type(
    orch: Orchestrator[State],
) -> None:
    called: list[object] = []

    @orch.action(retry=RetryPolicy(retries=3, delay=0))
    async def notify(recipients: object) -> None:
        called.append(recipients)

    async def body() -> None:
        await notify({"ada", "bob"})

    with raises(
        JournalError,
        "action 'notify' at call key '1'",
        "argument 0, of type set, cannot be serialized",
        "nothing was recorded",
    ):
        asyncio.run(orch.run(body, run_id="r"))
    assert called == []
    assert journal_of(orch).calls("r") == []


def test_unserializable_result_fails_the_call_without_retry_naming_action_key_and_type(
    orch: Orchestrator[State],
) -> None:
    called: list[int] = []

    @orch.action(retry=RetryPolicy(retries=3, delay=0))
    async def recipients(n: int) -> set[str]:
        called.append(n)
        return {"ada", "bob"}

    async def body() -> set[str]:
        return await recipients(2)

    with raises(
        JournalError,
        "the result of action 'recipients' at call key '1'",
        "of type set, cannot be serialized",
        "nothing was recorded",
    ):
        asyncio.run(orch.run(body, run_id="r"))
    assert called == [2]
    assert journal_of(orch).calls("r") == []


def test_unserializable_run_argument_fails_the_run_before_any_action_runs(
    orch: Orchestrator[State], steps: Steps
) -> None:
    async def body(items: object) -> int:
        return await steps.step(1)

    with raises(JournalError, "the arguments of run 'r'", "argument 0, of type set"):
        asyncio.run(orch.run(body, {1, 2}, run_id="r"))
    assert steps.ran == []
    assert journal_of(orch).list_runs() == []


# --- journal=False ------------------------------------------------------------------------


def test_action_with_journal_false_is_never_recorded(
    orch: Orchestrator[State], steps: Steps
) -> None:
    @orch.action(journal=False)
    async def fetch_token() -> str:
        return "token-1"

    async def body() -> int:
        await fetch_token()
        return await steps.step(2)

    asyncio.run(orch.run(body, run_id="r"))
    assert [(c.call_key, c.name) for c in journal_of(orch).calls("r")] == [("2", "step")]


def test_action_with_journal_false_runs_again_on_resume(
    orch: Orchestrator[State], steps: Steps
) -> None:
    tokens: list[str] = []

    @orch.action(journal=False)
    async def fetch_token() -> str:
        tokens.append(f"token-{len(tokens) + 1}")
        return tokens[-1]

    async def body() -> list[Any]:
        return [await steps.step(1), await fetch_token(), await steps.step(3)]

    steps.failing.add(3)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    steps.failing.clear()
    steps.ran.clear()
    assert asyncio.run(orch.run(body, run_id="r")) == [10, "token-2", 30]
    assert steps.ran == [3]


def test_action_with_journal_false_may_take_and_return_values_json_cannot_hold(
    orch: Orchestrator[State],
) -> None:
    @orch.action(journal=False)
    async def connect(options: set[str]) -> object:
        return object()

    async def body() -> bool:
        return isinstance(await connect({"tls"}), object)

    assert asyncio.run(orch.run(body, run_id="r")) is True


# --- the file -----------------------------------------------------------------------------


def test_journal_files_are_readable_and_writable_by_their_owner_only(
    orch: Orchestrator[State], steps: Steps, path: Path
) -> None:
    asyncio.run(orch.run(steps.body, 1, run_id="r"))
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["runs.db", "runs.db-shm", "runs.db-wal"]
    assert {(path.parent / name).stat().st_mode & 0o777 for name in files} == {0o600}


def test_journal_files_are_owner_only_whatever_the_umask(path: Path) -> None:
    previous = os.umask(0)
    try:
        made = Orchestrator(journal=path)
        steps = Steps(made)
        asyncio.run(made.run(steps.body, 1, run_id="r"))
    finally:
        os.umask(previous)
    try:
        modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    finally:
        journal_of(made).close()
    assert modes == {"runs.db": 0o600, "runs.db-shm": 0o600, "runs.db-wal": 0o600}


def test_orchestrator_takes_a_journal_that_syncs_every_commit(path: Path) -> None:
    orch = Orchestrator(journal=SQLiteJournal(path, durability="fsync"))
    steps = Steps(orch)
    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 2, run_id="r"))
    steps.failing.clear()
    steps.ran.clear()
    try:
        assert asyncio.run(orch.run(steps.body, 2, run_id="r")) == [10, 20]
    finally:
        journal_of(orch).close()
    assert steps.ran == [2]


# --- the context --------------------------------------------------------------------------


def test_context_is_not_written_to_the_journal(
    orch: Orchestrator[State], steps: Steps, path: Path
) -> None:
    orch.on_process_begin(lambda event: orch.set_state("api_key", "sk-secret-4242"))
    asyncio.run(orch.run(steps.body, 2, run_id="r"))
    journal_of(orch).close()
    stored = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert b"sk-secret-4242" not in stored
    assert b"step" in stored  # the files were read, and hold the records


def test_process_begin_hooks_rebuild_the_context_on_resume(
    orch: Orchestrator[State], steps: Steps
) -> None:
    keys: list[str] = []
    orch.on_process_begin(lambda event: orch.set_state("api_key", f"key-{len(keys)}"))

    @orch.action
    async def call_api() -> str:
        keys.append(orch.get_state().api_key)
        if len(keys) == 1:
            raise ConnectionError("api is down")
        return "ok"

    async def body() -> list[Any]:
        return [await steps.step(1), await call_api()]

    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    assert asyncio.run(orch.run(body, run_id="r")) == [10, "ok"]
    assert keys == ["key-0", "key-1"]


def test_replayed_calls_do_not_redo_their_effects_on_the_context(
    orch: Orchestrator[State], steps: Steps
) -> None:
    @orch.action
    async def log_in() -> str:
        orch.set_state("session", "s-1")
        return "logged in"

    @orch.action
    async def session() -> str | None:
        return getattr(orch.get_state(), "session", None)

    async def body() -> list[Any]:
        return [await log_in(), await steps.step(2), await session()]

    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(body, run_id="r"))
    steps.failing.clear()
    assert asyncio.run(orch.run(body, run_id="r")) == ["logged in", 20, None]


# --- problems and where they are raised ---------------------------------------------------


def test_journal_path_in_a_missing_directory_is_refused_by_the_orchestrator(
    tmp_path: Path,
) -> None:
    with raises(JournalError, str(tmp_path / "missing"), "create the directory first"):
        Orchestrator(journal=tmp_path / "missing" / "runs.db")
    assert list(tmp_path.iterdir()) == []


def test_read_only_journal_file_is_refused_by_the_orchestrator(path: Path) -> None:
    path.touch(mode=0o400)
    with raises(JournalError, str(path), "read-only"):
        Orchestrator(journal=path)
    assert path.read_bytes() == b""


def test_file_of_garbage_is_refused_by_the_orchestrator_and_left_unchanged(path: Path) -> None:
    garbage = b"\x00\x01 not a journal \xff" * 40
    path.write_bytes(garbage)
    with raises(JournalError, str(path), "is not a journal"):
        Orchestrator(journal=path)
    assert path.read_bytes() == garbage


def test_another_applications_database_is_refused_by_the_orchestrator(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE invoices (total REAL)")
    before = path.read_bytes()
    with raises(JournalError, str(path), "another application's SQLite database"):
        Orchestrator(journal=path)
    assert path.read_bytes() == before


def test_journal_of_a_newer_schema_is_refused_by_the_orchestrator(path: Path) -> None:
    SQLiteJournal(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with raises(JournalError, str(path), "newer version", "schema version 99"):
        Orchestrator(journal=path)


def test_journal_that_is_neither_a_path_nor_a_journal_is_a_type_error() -> None:
    with raises(TypeError, "journal must be a path", "got 42"):
        Orchestrator(journal=42)  # type: ignore[call-overload]


def test_problem_met_when_a_run_starts_is_raised_before_any_action_runs(
    orch: Orchestrator[State], steps: Steps
) -> None:
    journal_of(orch).close()
    with raises(JournalError, "is closed"):
        asyncio.run(orch.run(steps.body, 2, run_id="r"))
    assert steps.ran == []


@pytest.mark.parametrize(
    ("run_id", "kind", "message"),
    [
        (42, TypeError, "run_id must be a str or None, got 42"),
        (b"r", TypeError, "run_id must be a str or None, got b'r'"),
        ("", ValueError, "run_id must be a non-empty str or None, got ''"),
    ],
)
def test_run_id_that_is_not_a_non_empty_str_is_refused_before_anything_is_recorded(
    orch: Orchestrator[State], steps: Steps, run_id: Any, kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind) as caught:
        orch.run(steps.body, 1, run_id=run_id)
    assert str(caught.value) == message
    assert journal_of(orch).list_runs() == []


def test_run_without_a_run_id_is_recorded_under_a_random_id_of_its_own(
    orch: Orchestrator[State], steps: Steps
) -> None:
    recorder = EventRecorder(orch)
    asyncio.run(orch.run(steps.body, 1))
    asyncio.run(orch.run(steps.body, 1))
    ids = [event.run_id for event in recorder.events("process_begin")]
    assert sorted(run.run_id for run in journal_of(orch).list_runs()) == sorted(ids)
    assert len(set(ids)) == 2
    assert steps.ran == [1, 1]


# --- hooks and interceptors ---------------------------------------------------------------


def test_completed_run_fires_its_process_hooks_with_the_recorded_result(
    orch: Orchestrator[State], steps: Steps
) -> None:
    asyncio.run(orch.run(steps.body, 2, run_id="r"))
    recorder = EventRecorder(orch)
    asyncio.run(orch.run(steps.body, 2, run_id="r"))
    assert recorder.points() == ["process_begin", "process_completion"]
    (completion,) = recorder.events("process_completion")
    assert (completion.result, completion.error) == ([10, 20], None)


class SeesReplays(Interceptor):
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    async def intercept_call(self, call: CallInfo[Any], proceed: Proceed) -> Any:
        result = await proceed()
        self.seen.append((call.call_key, call.replayed))
        return result


def test_user_interceptor_sees_which_calls_were_replayed(
    orch: Orchestrator[State], steps: Steps
) -> None:
    interceptor = SeesReplays()
    orch.add_interceptor(interceptor)
    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 2, run_id="r"))
    steps.failing.clear()
    asyncio.run(orch.run(steps.body, 2, run_id="r"))
    assert interceptor.seen == [("1", False), ("1", True), ("2", False)]


def test_completion_hooks_fire_after_the_calls_record_is_committed(
    orch: Orchestrator[State], steps: Steps
) -> None:
    journal = journal_of(orch)
    seen: list[tuple[str, str]] = []

    def check(event: Any) -> None:
        (record,) = [c for c in journal.calls(event.run_id) if c.call_key == event.call_key]
        seen.append((record.call_key, record.status))

    orch.on_task_completion(check)
    steps.failing.add(2)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 2, run_id="r"))
    assert seen == [("1", "succeeded"), ("2", "failed")]


def test_process_completion_hooks_fire_after_the_run_is_recorded(
    orch: Orchestrator[State], steps: Steps
) -> None:
    journal = journal_of(orch)
    seen: list[str] = []
    orch.on_process_completion(lambda event: seen.append(journal.list_runs()[0].status))
    steps.failing.add(1)
    with pytest.raises(ConnectionError):
        asyncio.run(orch.run(steps.body, 1, run_id="r"))
    steps.failing.clear()
    asyncio.run(orch.run(steps.body, 1, run_id="r"))
    assert seen == ["failed", "succeeded"]
