"""The SQLite journal store, against real files on disk: bad files, records, claims, processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator._errors import JournalError, JournalMismatchError
from orchestrator._journal import JsonSerializer, PickleSerializer, SQLiteJournal
from orchestrator._journal_file import APPLICATION_ID
from orchestrator._records import AttemptRecord, CallRecord, RunRecord

SRC = Path(orchestrator.__file__).resolve().parent.parent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def journal(path: Path) -> Iterator[SQLiteJournal]:
    with SQLiteJournal(path) as opened:
        yield opened


def raises(kind: type[BaseException], *fragments: str) -> Any:
    """``pytest.raises(kind)`` whose message must contain every fragment, literally."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(kind, match=re.compile(pattern, re.DOTALL))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def record(
    journal: SQLiteJournal,
    run_id: str,
    key: str,
    result: Any = None,
    *,
    error: BaseException | None = None,
    name: str = "fetch",
    args: tuple[Any, ...] = (1,),
    parent_key: str | None = None,
) -> None:
    data, args_hash = journal.call_args(name, key, args, {})
    await journal.record(
        run_id,
        key,
        name,
        parent_key=parent_key,
        args=data,
        args_hash=args_hash,
        started=100.0,
        ended=101.0,
        result=result,
        error=error,
    )


def child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python subprocess running ``code`` with this checkout's orchestrator importable."""
    environment = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


HOLDER = """
import asyncio, sys
from orchestrator._journal import SQLiteJournal

journal = SQLiteJournal(sys.argv[1])
asyncio.run(journal.open_run("held", "app:main", (), {}))
print("claimed", flush=True)
sys.stdin.read()
"""


# --- bad arguments and bad files ----------------------------------------------------------


def test_path_of_the_wrong_type_is_a_type_error() -> None:
    with raises(TypeError, "path must be a str or an os.PathLike path, got 5"):
        SQLiteJournal(5)  # type: ignore[arg-type]


def test_bytes_path_is_a_type_error() -> None:
    with raises(TypeError, "path", "b'runs.db'"):
        SQLiteJournal(b"runs.db")  # type: ignore[arg-type]


def test_empty_path_is_a_value_error() -> None:
    with raises(ValueError, "path must be a non-empty path, got ''"):
        SQLiteJournal("")


def test_durability_of_the_wrong_type_is_a_type_error(path: Path) -> None:
    with raises(TypeError, "durability must be 'normal' or 'fsync', got True"):
        SQLiteJournal(path, durability=True)  # type: ignore[arg-type]
    assert not path.exists()


def test_unknown_durability_is_a_value_error(path: Path) -> None:
    with raises(ValueError, "durability must be 'normal' or 'fsync', got 'FULL'"):
        SQLiteJournal(path, durability="FULL")
    assert not path.exists()


def test_serializer_without_dumps_and_loads_is_a_type_error(path: Path) -> None:
    with raises(
        TypeError, "serializer must have dumps(value) and loads(data) methods", "function dumps"
    ):
        SQLiteJournal(path, serializer=json.dumps)  # type: ignore[arg-type]


def test_path_in_a_missing_directory_is_a_journal_error_naming_it(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "runs.db"
    with raises(JournalError, str(target), "does not exist", "create the directory first"):
        SQLiteJournal(target)
    assert not (tmp_path / "missing").exists()


def test_path_that_is_a_directory_is_a_journal_error(tmp_path: Path) -> None:
    with raises(JournalError, str(tmp_path), "is a directory", "runs.db"):
        SQLiteJournal(tmp_path)


def test_path_under_a_regular_file_is_a_journal_error_naming_it(tmp_path: Path) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("not a directory\n")
    with raises(
        JournalError, str(regular / "runs.db"), f"{str(regular)!r}, which is not a directory"
    ):
        SQLiteJournal(regular / "runs.db")
    assert regular.read_text() == "not a directory\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="/proc is Linux's")
def test_path_in_a_directory_where_no_file_can_be_made_is_a_journal_error() -> None:
    # Nobody, root included, can make a file in /proc: a directory that is not writable.
    with raises(JournalError, "'/proc/runs.db'"):
        SQLiteJournal("/proc/runs.db")
    assert not os.path.exists("/proc/runs.db")


def test_read_only_file_is_a_journal_error_and_stays_unchanged(path: Path) -> None:
    SQLiteJournal(path).close()
    path.chmod(0o400)
    before = digest(path)
    with raises(JournalError, str(path), "read-only", "make it writable"):
        SQLiteJournal(path)
    assert digest(path) == before


def test_file_of_garbage_bytes_is_a_journal_error_and_stays_unchanged(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 20)
    with raises(JournalError, str(path), "is not a journal", "not an SQLite database"):
        SQLiteJournal(path)
    assert path.read_bytes() == b"this is not a database\n" * 20
    assert sorted(os.listdir(path.parent)) == ["runs.db"]


def test_corrupted_journal_is_a_journal_error(path: Path) -> None:
    SQLiteJournal(path).close()
    data = bytearray(path.read_bytes())
    data[100:400] = b"\xff" * 300  # the schema table's page, right after the file header
    path.write_bytes(bytes(data))
    with raises(JournalError, str(path), "corrupted", "malformed", "Restore it from a backup"):
        SQLiteJournal(path)
    assert path.read_bytes() == bytes(data)


def test_another_applications_sqlite_database_is_refused_and_left_unchanged(
    path: Path,
) -> None:
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE users (name TEXT)")
        other.execute("INSERT INTO users VALUES ('ada')")
    other.close()
    before = digest(path)
    with raises(JournalError, str(path), "another application's SQLite database", "unchanged"):
        SQLiteJournal(path)
    assert digest(path) == before
    assert sorted(os.listdir(path.parent)) == ["runs.db"]


def test_sqlite_database_with_another_application_id_is_refused(path: Path) -> None:
    with sqlite3.connect(path) as other:
        other.execute("PRAGMA application_id = 42")
    other.close()
    before = digest(path)
    with raises(JournalError, "another application's SQLite database"):
        SQLiteJournal(path)
    assert digest(path) == before


def test_journal_from_a_newer_schema_version_is_a_journal_error(path: Path) -> None:
    SQLiteJournal(path).close()
    with sqlite3.connect(path) as writer:
        writer.execute("PRAGMA user_version = 7")
    writer.close()
    before = digest(path)
    with raises(JournalError, str(path), "newer version", "schema version 7", "reads up to 1"):
        SQLiteJournal(path)
    assert digest(path) == before


def test_new_journal_is_readable_and_writable_by_its_owner_only(path: Path) -> None:
    umask = os.umask(0)  # SQLite alone would create the file rw for everybody
    try:
        with SQLiteJournal(path) as journal:
            asyncio.run(journal.open_run("r", "app:main", (), {}))
            modes = {
                name: os.stat(path.parent / name).st_mode & 0o777
                for name in os.listdir(path.parent)
            }
    finally:
        os.umask(umask)
    assert modes["runs.db"] == 0o600
    assert set(modes.values()) == {0o600}


def test_new_journal_is_marked_with_the_application_id_and_schema_version(path: Path) -> None:
    SQLiteJournal(path).close()
    with sqlite3.connect(path) as reader:
        assert reader.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert reader.execute("PRAGMA user_version").fetchone() == (1,)
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reader.close()


def test_empty_existing_file_becomes_a_journal(path: Path) -> None:
    path.touch()
    with SQLiteJournal(path) as journal:
        assert journal.list_runs() == []


def test_records_survive_closing_and_reopening_the_journal(path: Path) -> None:
    async def first() -> None:
        with SQLiteJournal(path) as journal:
            await journal.open_run("r", "app:main", ("a",), {})
            await record(journal, "r", "1", {"total": 3})
            await journal.end_run("r", error=RuntimeError("stop"))

    asyncio.run(first())
    with SQLiteJournal(path) as journal:
        assert [(run.run_id, run.status) for run in journal.list_runs()] == [("r", "failed")]
        assert [(call.call_key, call.result) for call in journal.calls("r")] == [
            ("1", "{'total': 3}")
        ]


# --- runs -----------------------------------------------------------------------------------


def test_new_run_is_claimed_with_no_previous_status(journal: SQLiteJournal) -> None:
    opened = asyncio.run(journal.open_run("r", "app:main", (1,), {"b": 2}, started=50.0))
    assert opened == (None, None, {}, None)
    assert journal.list_runs() == [RunRecord("r", "app:main", "running", 50.0, None, "1, b=2")]


def test_run_id_that_is_not_a_str_is_a_type_error(journal: SQLiteJournal) -> None:
    with raises(TypeError, "run_id must be a str, got 5"):
        asyncio.run(journal.open_run(5, "app:main", (), {}))  # type: ignore[arg-type]


def test_empty_run_id_is_a_value_error(journal: SQLiteJournal) -> None:
    with raises(ValueError, "run_id must be a non-empty str, got ''"):
        asyncio.run(journal.open_run("", "app:main", (), {}))


def test_body_that_is_not_a_str_is_a_type_error(journal: SQLiteJournal) -> None:
    with raises(TypeError, "body must be a str, got None"):
        asyncio.run(journal.open_run("r", None, (), {}))  # type: ignore[arg-type]


def test_run_that_succeeded_returns_its_result_without_being_claimed(
    journal: SQLiteJournal,
) -> None:
    async def scenario() -> tuple[Any, Any]:
        await journal.open_run("r", "app:main", (), {})
        await record(journal, "r", "1", "one")
        await journal.end_run("r", result={"order": [1, 2]}, ended=60.0)
        again = await journal.open_run("r", "app:main", (), {})
        # Not claimed: opening it again at once is no conflict.
        return again, await journal.open_run("r", "app:main", (), {})

    again, twice = asyncio.run(scenario())
    assert again == ("succeeded", {"order": [1, 2]}, {}, None)
    assert twice == again
    assert journal.list_runs()[0].ended == 60.0


def test_failed_run_reopens_with_its_successful_calls_only(journal: SQLiteJournal) -> None:
    async def scenario() -> Any:
        await journal.open_run("r", "app:main", (), {})
        await record(journal, "r", "1", {"id": 7})
        await record(journal, "r", "2", error=ConnectionError("down"))
        await record(journal, "r", "3.1", [1, 2], name="child", parent_key="3")
        await journal.end_run("r", error=ConnectionError("down"))
        return await journal.open_run("r", "app:main", (), {})

    previous, result, calls, _ = asyncio.run(scenario())
    assert (previous, result) == ("failed", None)
    assert sorted(calls) == ["1", "3.1"]
    name, args_hash, data = calls["1"]
    assert (name, args_hash) == ("fetch", journal.call_args("fetch", "1", (1,), {})[1])
    assert journal.load(data, "fetch", "1") == {"id": 7}
    assert journal.list_runs()[0].status == "running"


def test_cancelled_run_reopens_as_cancelled(journal: SQLiteJournal) -> None:
    async def scenario() -> Any:
        await journal.open_run("r", "app:main", (), {})
        await journal.end_run("r", error=asyncio.CancelledError())
        return await journal.open_run("r", "app:main", (), {})

    assert asyncio.run(scenario()).previous == "cancelled"


def test_run_with_another_body_is_a_mismatch_naming_both_bodies(journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        await journal.open_run("order-42", "shop:checkout", (), {})
        await journal.end_run("order-42", error=ValueError("x"))
        await journal.open_run("order-42", "shop:refund", (), {})

    with raises(JournalMismatchError, "'order-42'", "'shop:checkout'", "'shop:refund'", "run_id"):
        asyncio.run(scenario())


def test_run_with_other_arguments_is_a_mismatch_naming_both(journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        await journal.open_run("r", "app:main", ("ada", 3), {"express": True})
        await journal.end_run("r", error=ValueError("x"))
        await journal.open_run("r", "app:main", ("ada", 4), {"express": True})

    with raises(JournalMismatchError, "('ada', 3, express=True)", "('ada', 4, express=True)"):
        asyncio.run(scenario())


def test_mismatch_shortens_long_arguments_around_where_they_differ(
    journal: SQLiteJournal,
) -> None:
    recorded = "x" * 500 + "recorded" + "y" * 500
    given = "x" * 500 + "given" + "y" * 500

    async def scenario() -> None:
        await journal.open_run("r", "app:main", (recorded,), {})
        await journal.end_run("r", error=ValueError("x"))
        await journal.open_run("r", "app:main", (given,), {})

    with pytest.raises(JournalMismatchError) as caught:
        asyncio.run(scenario())
    message = str(caught.value)
    assert "arguments (...xxxxxxxxxxxxxxxxxxxxrecordedyyyy" in message
    assert "not (...xxxxxxxxxxxxxxxxxxxxgivenyyyy" in message
    assert len(message) < 400


def test_mismatch_changes_nothing_in_the_journal(path: Path, journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        await journal.open_run("r", "app:main", (1,), {})
        await record(journal, "r", "1", "kept")
        await journal.end_run("r", error=ValueError("x"))
        before = (journal.list_runs(), journal.calls("r"))
        with pytest.raises(JournalMismatchError):
            await journal.open_run("r", "app:main", (2,), {})
        assert (journal.list_runs(), journal.calls("r")) == before
        assert (await journal.open_run("r", "app:main", (1,), {})).previous == "failed"

    asyncio.run(scenario())


def test_run_in_progress_in_this_process_cannot_be_opened_again(journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        await journal.open_run("r", "app:main", (), {})
        await journal.open_run("r", "app:main", (), {})

    with raises(JournalError, "'r'", "already in progress in this process"):
        asyncio.run(scenario())


def test_run_in_progress_is_refused_through_another_journal_on_the_same_file(
    path: Path, journal: SQLiteJournal
) -> None:
    asyncio.run(journal.open_run("r", "app:main", (), {}))
    with SQLiteJournal(path) as second, raises(JournalError, "already in progress"):
        asyncio.run(second.open_run("r", "app:main", (), {}))


def test_run_left_running_by_a_closed_journal_of_this_process_is_claimable(path: Path) -> None:
    with SQLiteJournal(path) as first:
        asyncio.run(first.open_run("r", "app:main", (), {}))
    with SQLiteJournal(path) as second:
        assert asyncio.run(second.open_run("r", "app:main", (), {})).previous == "running"


def test_ended_run_can_be_claimed_again_in_this_process(journal: SQLiteJournal) -> None:
    async def scenario() -> str | None:
        await journal.open_run("r", "app:main", (), {})
        await journal.end_run("r", error=ValueError("x"))
        return (await journal.open_run("r", "app:main", (), {})).previous

    assert asyncio.run(scenario()) == "failed"


def test_run_held_by_a_live_process_is_refused_and_claimable_once_it_is_killed(
    path: Path, journal: SQLiteJournal
) -> None:
    holder = child(HOLDER, str(path))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "claimed\n"
        with raises(JournalError, "'held'", f"pid {holder.pid}", "in progress in another process"):
            asyncio.run(journal.open_run("held", "app:main", (), {}))
        holder.kill()
        holder.wait()
        assert asyncio.run(journal.open_run("held", "app:main", (), {})).previous == "running"
    finally:
        holder.kill()
        holder.communicate()


def test_run_held_by_a_killed_process_not_yet_reaped_is_claimable(
    path: Path, journal: SQLiteJournal
) -> None:
    holder = child(HOLDER, str(path))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "claimed\n"
        os.kill(holder.pid, signal.SIGKILL)
        # Wait until it has died but leave it unreaped: a zombie still has its pid.
        os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)
        assert asyncio.run(journal.open_run("held", "app:main", (), {})).previous == "running"
    finally:
        holder.kill()
        holder.communicate()


def set_owner(path: Path, run_id: str, owner: list[Any]) -> None:
    with sqlite3.connect(path) as writer:
        writer.execute("UPDATE runs SET owner = ? WHERE run_id = ?", (json.dumps(owner), run_id))
    writer.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times come from /proc")
def test_run_recorded_by_an_earlier_process_with_a_reused_pid_is_claimable(
    path: Path, journal: SQLiteJournal
) -> None:
    with SQLiteJournal(path) as other:
        asyncio.run(other.open_run("r", "app:main", (), {}))
    # The parent process is alive, but it started at another time than recorded.
    set_owner(path, "r", [socket.gethostname(), os.getppid(), "1"])
    assert asyncio.run(journal.open_run("r", "app:main", (), {})).previous == "running"


def test_run_held_by_a_process_on_another_host_is_refused(
    path: Path, journal: SQLiteJournal
) -> None:
    with SQLiteJournal(path) as other:
        asyncio.run(other.open_run("r", "app:main", (), {}))
    set_owner(path, "r", ["elsewhere.example", 4242, "99"])
    with raises(JournalError, "pid 4242 on elsewhere.example"):
        asyncio.run(journal.open_run("r", "app:main", (), {}))


def test_unserializable_run_arguments_are_a_journal_error_recording_nothing(
    journal: SQLiteJournal,
) -> None:
    with raises(JournalError, "run 'r'", "'app:main'", "argument 'when'", "of type tuple"):
        asyncio.run(journal.open_run("r", "app:main", (1,), {"when": (2024, 1)}))
    assert journal.list_runs() == []


def test_end_run_records_the_result_of_a_run_that_succeeded(journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        await journal.open_run("r", "app:main", (), {}, started=10.0)
        await journal.end_run("r", result=[1, "two"], ended=12.0)

    asyncio.run(scenario())
    assert journal.list_runs() == [
        RunRecord("r", "app:main", "succeeded", 10.0, 12.0, "", "[1, 'two']", None)
    ]


def test_end_run_records_the_error_of_a_run_that_failed(journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        await journal.open_run("r", "app:main", (), {})
        await journal.end_run("r", error=KeyError("sku"))

    asyncio.run(scenario())
    run = journal.list_runs()[0]
    assert (run.status, run.result, run.error) == ("failed", None, "KeyError: 'sku'")


def test_end_run_of_a_run_not_open_is_a_value_error(journal: SQLiteJournal) -> None:
    with raises(ValueError, "run 'nope' is not open in this journal"):
        asyncio.run(journal.end_run("nope"))


def test_unserializable_run_result_keeps_the_run_open_to_be_ended_with_the_error(
    journal: SQLiteJournal,
) -> None:
    async def scenario() -> None:
        await journal.open_run("r", "app:main", (), {})
        with raises(JournalError, "the result of run 'r'", "of type set"):
            await journal.end_run("r", result={1, 2})
        assert journal.list_runs()[0].status == "running"
        await journal.end_run("r", error=TypeError("unserializable"))

    asyncio.run(scenario())
    assert journal.list_runs()[0].status == "failed"


# --- calls ----------------------------------------------------------------------------------


def test_recorded_call_reads_back_as_a_call_record(journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        data, args_hash = journal.call_args("charge", "2.1", ("ada", 30), {"currency": "EUR"})
        await journal.record(
            "r",
            "2.1",
            "charge",
            parent_key="2",
            args=data,
            args_hash=args_hash,
            started=5.0,
            ended=6.5,
            result={"receipt": "r-1"},
        )

    asyncio.run(scenario())
    assert journal.calls("r") == [
        CallRecord(
            "r",
            "2.1",
            "charge",
            "2",
            "succeeded",
            5.0,
            6.5,
            (AttemptRecord(1, 5.0, 6.5),),
            "'ada', 30, currency='EUR'",
            "{'receipt': 'r-1'}",
            None,
            False,
        )
    ]


def test_attempts_and_replayed_flag_read_back(journal: SQLiteJournal) -> None:
    attempts = (
        AttemptRecord(1, 1.0, 2.0, "TimeoutError: slow", 0.5),
        AttemptRecord(2, 2.5, 3.0),
    )

    async def scenario() -> None:
        data, args_hash = journal.call_args("fetch", "1", (), {})
        await journal.record(
            "r",
            "1",
            "fetch",
            parent_key=None,
            args=data,
            args_hash=args_hash,
            started=1.0,
            ended=3.0,
            result=None,
            attempts=attempts,
            replayed=True,
        )

    asyncio.run(scenario())
    [call] = journal.calls("r")
    assert (call.attempts, call.replayed, call.result) == (attempts, True, "None")


def test_failed_call_records_its_error_and_no_result(journal: SQLiteJournal) -> None:
    asyncio.run(record(journal, "r", "1", error=ConnectionError("refused")))
    [call] = journal.calls("r")
    assert (call.status, call.result, call.error) == ("failed", None, "ConnectionError: refused")
    assert call.attempts == (AttemptRecord(1, 100.0, 101.0, "ConnectionError: refused"),)


def test_cancelled_call_is_recorded_as_cancelled(journal: SQLiteJournal) -> None:
    asyncio.run(record(journal, "r", "1", error=asyncio.CancelledError()))
    [call] = journal.calls("r")
    assert (call.status, call.error) == ("cancelled", "CancelledError")


def test_awaited_record_is_committed_for_another_connection(
    path: Path, journal: SQLiteJournal
) -> None:
    async def scenario() -> list[Any]:
        await record(journal, "r", "1", "done")
        with sqlite3.connect(path) as reader:
            rows = reader.execute("SELECT call_key, status FROM calls").fetchall()
        reader.close()
        return rows

    assert asyncio.run(scenario()) == [("1", "succeeded")]


def test_records_made_in_one_loop_iteration_share_one_commit(journal: SQLiteJournal) -> None:
    statements: list[str] = []
    assert journal._fast is not None
    journal._fast.set_trace_callback(statements.append)

    async def scenario() -> None:
        await asyncio.gather(*(record(journal, "r", str(i), i) for i in range(1, 11)))

    asyncio.run(scenario())
    assert [s.split()[0] for s in statements] == ["BEGIN", *["INSERT"] * 10, "COMMIT"]
    assert len(journal.calls("r")) == 10


def test_cancelled_waiter_leaves_the_other_records_of_its_commit_alone(
    journal: SQLiteJournal,
) -> None:
    async def scenario() -> None:
        first = asyncio.ensure_future(record(journal, "r", "1", 1))
        second = asyncio.ensure_future(record(journal, "r", "2", 2))
        await asyncio.sleep(0)  # both records are queued; the commit is due next
        first.cancel()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())
    assert [call.call_key for call in journal.calls("r")] == ["1", "2"]


def test_calls_are_listed_in_key_order(journal: SQLiteJournal) -> None:
    keys = ["10", "2", "2.10", "2.9", "1", "2.1.3"]

    async def scenario() -> None:
        for key in keys:
            await record(journal, "r", key, key)

    asyncio.run(scenario())
    assert [call.call_key for call in journal.calls("r")] == [
        "1",
        "2",
        "2.1.3",
        "2.9",
        "2.10",
        "10",
    ]


def test_calls_of_an_unknown_run_are_none(journal: SQLiteJournal) -> None:
    assert journal.calls("nope") == []


def test_unserializable_result_names_action_key_and_type_and_records_nothing(
    journal: SQLiteJournal,
) -> None:
    async def scenario() -> None:
        data, args_hash = journal.call_args("connect", "4", (), {})
        journal.record(
            "r",
            "4",
            "connect",
            parent_key=None,
            args=data,
            args_hash=args_hash,
            started=1.0,
            ended=2.0,
            result=threading.Lock(),
        )

    with raises(JournalError, "action 'connect'", "call key '4'", "of type lock", "nothing"):
        asyncio.run(scenario())
    assert journal.calls("r") == []


def test_tuple_result_is_refused_rather_than_stored_as_a_list(journal: SQLiteJournal) -> None:
    with raises(JournalError, "of type tuple", "tuple is not a JSON type"):
        asyncio.run(record(journal, "r", "1", (1, 2)))
    assert journal.calls("r") == []


def test_dict_with_int_keys_is_refused_rather_than_stored_with_str_keys(
    journal: SQLiteJournal,
) -> None:
    with raises(JournalError, "the dict key 1 is not a str"):
        asyncio.run(record(journal, "r", "1", {"totals": {1: 10}}))


def test_nan_result_is_refused(journal: SQLiteJournal) -> None:
    with raises(JournalError, "of type list", "Out of range float values"):
        asyncio.run(record(journal, "r", "1", [float("nan")]))


def test_unserializable_argument_is_named_with_its_action_and_key(
    journal: SQLiteJournal,
) -> None:
    with raises(JournalError, "action 'upload'", "call key '3.2'", "argument 1", "of type bytes"):
        journal.call_args("upload", "3.2", ("name", b"data"), {})


def test_equal_arguments_hash_the_same_and_others_differently(journal: SQLiteJournal) -> None:
    hashes = {
        journal.call_args("f", "1", (1, "a"), {"k": [1]})[1],
        journal.call_args("g", "9", (1, "a"), {"k": [1]})[1],
    }
    assert len(hashes) == 1
    assert journal.call_args("f", "1", (1, "b"), {"k": [1]})[1] not in hashes
    assert journal.call_args("f", "1", (1, "a"), {"k": [2]})[1] not in hashes


def test_keyword_order_does_not_change_the_arguments_hash(journal: SQLiteJournal) -> None:
    first = journal.call_args("f", "1", (), {"a": 1, "b": 2})
    second = journal.call_args("f", "1", (), {"b": 2, "a": 1})
    assert first == second


def test_lone_surrogate_in_a_result_is_recorded_and_read_back(journal: SQLiteJournal) -> None:
    async def scenario() -> Any:
        await journal.open_run("r", "app:main", (), {})
        await record(journal, "r", "1", "broken \ud800 text")
        await journal.end_run("r", error=ValueError("x"))
        opened = await journal.open_run("r", "app:main", (), {})
        return journal.load(opened.calls["1"][2], "fetch", "1")

    assert asyncio.run(scenario()) == "broken \ud800 text"


def test_json_serializer_round_trips_json_values() -> None:
    value = {"s": "é", "i": 1, "f": 1.5, "b": True, "n": None, "l": [1, {"x": []}]}
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


def test_custom_serializer_stores_other_types(path: Path) -> None:
    class TupleAware:
        def dumps(self, value: Any) -> str:
            return json.dumps({"tuple": list(value)} if isinstance(value, tuple) else value)

        def loads(self, data: str | bytes) -> Any:
            value = json.loads(data)
            return tuple(value["tuple"]) if isinstance(value, dict) else value

    async def scenario(journal: SQLiteJournal) -> Any:
        await journal.open_run("r", "app:main", (), {})
        await record(journal, "r", "1", (1, 2))
        await journal.end_run("r", error=ValueError("x"))
        opened = await journal.open_run("r", "app:main", (), {})
        return journal.load(opened.calls["1"][2], "fetch", "1")

    with SQLiteJournal(path, serializer=TupleAware()) as journal:
        assert asyncio.run(scenario(journal)) == (1, 2)


def test_pickle_serializer_round_trips_what_json_refuses(path: Path) -> None:
    async def scenario(journal: SQLiteJournal) -> Any:
        await journal.open_run("r", "app:main", ({1, 2},), {})
        await record(journal, "r", "1", {"when": (2024, 1), 3: frozenset({4})})
        await journal.end_run("r", error=ValueError("x"))
        opened = await journal.open_run("r", "app:main", ({1, 2},), {})
        return journal.load(opened.calls["1"][2], "fetch", "1")

    with SQLiteJournal(path, serializer=PickleSerializer()) as journal:
        assert asyncio.run(scenario(journal)) == {"when": (2024, 1), 3: frozenset({4})}
        assert journal.list_runs()[0].args == "{1, 2}"


def test_serializer_returning_neither_str_nor_bytes_is_a_journal_error(path: Path) -> None:
    class Numbers:
        def dumps(self, value: Any) -> Any:
            return 42

        def loads(self, data: str | bytes) -> Any:
            return 42

    with SQLiteJournal(path, serializer=Numbers()) as journal:
        with raises(JournalError, "action 'fetch'", "dumps() returned int, not str or bytes"):
            journal.call_args("fetch", "1", (), {})
        assert journal.list_runs() == []


def test_result_the_serializer_cannot_load_is_a_journal_error(path: Path) -> None:
    with SQLiteJournal(path, serializer=PickleSerializer()) as journal:
        asyncio.run(record(journal, "r", "1", (1, 2)))
    with SQLiteJournal(path) as journal, raises(JournalError, "cannot be loaded", "serializer"):
        journal.calls("r")


# --- where commits run, and sharing the file ------------------------------------------------


def test_fsync_commits_never_run_on_the_event_loop_thread(path: Path) -> None:
    threads: list[tuple[int, str]] = []

    async def scenario(journal: SQLiteJournal) -> None:
        await journal.open_run("r", "app:main", (), {})
        await asyncio.gather(*(record(journal, "r", str(i), i) for i in range(1, 6)))
        await journal.end_run("r")

    with SQLiteJournal(path, durability="fsync") as journal:
        assert journal._fast is None
        journal._slow.set_trace_callback(lambda sql: threads.append((threading.get_ident(), sql)))
        asyncio.run(scenario(journal))
        assert len(journal.calls("r")) == 5
    writes = [ident for ident, sql in threads if sql.split()[0] in ("INSERT", "UPDATE", "COMMIT")]
    assert writes
    assert threading.get_ident() not in writes


def test_record_waits_off_the_loop_while_another_connection_holds_the_lock(
    path: Path, journal: SQLiteJournal
) -> None:
    async def scenario() -> None:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(record(journal, "r", "1", "late"))
        for _ in range(20):  # the loop keeps running while the record waits for the lock
            await asyncio.sleep(0)
        assert not pending.done()
        blocker.execute("COMMIT")
        blocker.close()
        await pending

    asyncio.run(scenario())
    assert [call.result for call in journal.calls("r")] == ["'late'"]
    assert journal._writer is not None


WRITER = """
import asyncio, sys
from orchestrator._journal import SQLiteJournal

async def main(journal):
    await journal.open_run("child", "app:main", (), {})
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(1, int(sys.argv[2]) + 1):
        data, args_hash = journal.call_args("step", str(i), (i,), {})
        await journal.record("child", str(i), "step", parent_key=None, args=data,
                             args_hash=args_hash, started=1.0, ended=2.0, result=i)
    await journal.end_run("child", result="done")

with SQLiteJournal(sys.argv[1]) as journal:
    asyncio.run(main(journal))
"""


def test_another_process_writes_to_the_same_file_without_lock_errors_or_lost_records(
    path: Path, journal: SQLiteJournal
) -> None:
    calls = 300
    writer = child(WRITER, str(path), str(calls))
    stdin, stdout = writer.stdin, writer.stdout
    assert stdin is not None
    assert stdout is not None
    try:
        assert stdout.readline() == "ready\n"

        async def scenario() -> None:
            await journal.open_run("parent", "app:main", (), {})
            stdin.write("go\n")
            stdin.flush()
            for start in range(1, calls + 1, 10):
                batch = range(start, start + 10)
                await asyncio.gather(*(record(journal, "parent", str(i), i) for i in batch))
            await journal.end_run("parent", result="done")

        asyncio.run(scenario())
        _, errors = writer.communicate()
    finally:
        writer.kill()
        writer.communicate()
    assert (writer.returncode, errors) == (0, "")
    for run_id in ("child", "parent"):
        assert [call.result for call in journal.calls(run_id)] == [str(i) for i in range(1, 301)]
    assert {(run.run_id, run.status) for run in journal.list_runs()} == {
        ("child", "succeeded"),
        ("parent", "succeeded"),
    }


def test_many_concurrent_runs_in_one_process_share_one_journal(journal: SQLiteJournal) -> None:
    async def run(number: int) -> None:
        run_id = f"run-{number}"
        await journal.open_run(run_id, "app:main", (number,), {})
        for key in range(1, 6):
            await record(journal, run_id, str(key), number * key)
        await journal.end_run(run_id, result=number)

    async def scenario() -> None:
        await asyncio.gather(*(run(number) for number in range(20)))

    asyncio.run(scenario())
    runs = journal.list_runs()
    assert sorted(run.result or "" for run in runs) == sorted(str(n) for n in range(20))
    assert all(len(journal.calls(run.run_id)) == 5 for run in runs)


def test_event_loops_in_two_threads_share_one_journal(journal: SQLiteJournal) -> None:
    async def run(run_id: str) -> None:
        await journal.open_run(run_id, "app:main", (), {})
        for key in range(1, 51):
            await record(journal, run_id, str(key), key)
        await journal.end_run(run_id)

    threads = [threading.Thread(target=asyncio.run, args=(run(name),)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(journal.calls(name)) for name in ("a", "b")] == [50, 50]
    assert {run.status for run in journal.list_runs()} == {"succeeded"}


# --- prune and close ------------------------------------------------------------------------


def test_prune_deletes_finished_runs_older_than_the_limit_with_their_calls(
    journal: SQLiteJournal,
) -> None:
    now = time.time()

    async def scenario() -> None:
        for run_id, ended in (("old", now - 1000), ("recent", now - 10)):
            await journal.open_run(run_id, "app:main", (), {})
            await record(journal, run_id, "1", run_id)
            await journal.end_run(run_id, error=ValueError("x"), ended=ended)

    asyncio.run(scenario())
    assert journal.prune(older_than_seconds=500) == 1
    assert [run.run_id for run in journal.list_runs()] == ["recent"]
    assert journal.calls("old") == []
    assert len(journal.calls("recent")) == 1


def test_prune_keeps_runs_that_have_not_ended(journal: SQLiteJournal) -> None:
    asyncio.run(journal.open_run("live", "app:main", (), {}, started=1.0))
    assert journal.prune(older_than_seconds=0) == 0
    assert [run.run_id for run in journal.list_runs()] == ["live"]


def test_prune_with_a_negative_age_is_a_value_error(journal: SQLiteJournal) -> None:
    with raises(ValueError, "older_than_seconds must be zero or more seconds, got -1"):
        journal.prune(-1)


def test_prune_with_a_str_age_is_a_type_error(journal: SQLiteJournal) -> None:
    with raises(TypeError, "older_than_seconds must be a number of seconds, got '30d'"):
        journal.prune("30d")  # type: ignore[arg-type]


def test_closed_journal_refuses_records(path: Path) -> None:
    with SQLiteJournal(path) as journal:
        pass
    with raises(JournalError, str(path), "is closed"):
        asyncio.run(record(journal, "r", "1", 1))


def test_closed_journal_refuses_runs_and_reads(path: Path) -> None:
    journal = SQLiteJournal(path)
    journal.close()
    journal.close()  # closing twice does nothing
    with raises(JournalError, "is closed"):
        asyncio.run(journal.open_run("r", "app:main", (), {}))
    with raises(JournalError, "is closed"):
        journal.list_runs()


def test_closing_waits_for_records_handed_to_the_writer(path: Path) -> None:
    journal = SQLiteJournal(path, durability="fsync")

    async def scenario() -> None:
        pending = [asyncio.ensure_future(record(journal, "r", str(i), i)) for i in range(1, 4)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the batch is in the writer's queue
        journal.close()
        await asyncio.gather(*pending)

    asyncio.run(scenario())
    with SQLiteJournal(path) as reopened:
        assert len(reopened.calls("r")) == 3


def test_calls_come_back_in_key_order_with_explicit_parts_after_positions(tmp_path: Path) -> None:
    from orchestrator import Orchestrator

    orch = Orchestrator(journal=tmp_path / "runs.db")

    @orch.action
    async def fetch(user: str) -> str:
        return user

    async def body() -> None:
        for index in range(11):
            await fetch(f"u{index}")
        await fetch.keyed("alice")("alice")

    orch.run_sync(body, run_id="keyed")
    assert orch.journal is not None
    keys = [call.call_key for call in orch.journal.calls("keyed")]
    assert keys == [str(n) for n in range(1, 12)] + ["alice"]
