"""``python -m orchestrator runs | show | prune`` against real journal files."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Orchestrator, RetryPolicy, SQLiteJournal
from orchestrator.__main__ import main
from orchestrator._cli import parse_age
from orchestrator._records import CallRecord, RunRecord
from orchestrator._timeline import chrome_trace, render_html

DAY = 86400.0


# Journals to inspect -------------------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


def record_shop(path: Path) -> None:
    """Record a run that succeeds with nested calls, and one that fails in a nested call."""
    orch = Orchestrator(journal=str(path))

    @orch.action
    async def reserve(sku: str) -> str:
        return f"reservation-{sku}"

    @orch.action(retry=RetryPolicy(retries=1, delay=0.001, jitter=0))
    async def charge(amount: int) -> str:
        raise ConnectionError("card network down")

    @orch.action
    async def pack(sku: str) -> str:
        return await reserve(sku)

    @orch.action
    async def pay(amount: int) -> str:
        return await charge(amount)

    async def checkout(sku: str) -> str:
        await reserve(sku)
        return await pack(sku)

    async def failing_checkout(sku: str) -> str:
        await pack(sku)
        return await pay(10)

    orch.run_sync(checkout, "A1", run_id="order-1")
    with pytest.raises(ConnectionError):
        orch.run_sync(failing_checkout, "B2", run_id="order-2")
    close(orch)


def close(orch: Orchestrator[Any]) -> None:
    journal = orch.journal
    assert isinstance(journal, SQLiteJournal)
    journal.close()


def records(path: Path, run_id: str) -> tuple[RunRecord, list[CallRecord]]:
    journal = SQLiteJournal(path)
    try:
        run = next(run for run in journal.list_runs() if run.run_id == run_id)
        return run, list(journal.calls(run_id))
    finally:
        journal.close()


def record_by_hand(path: Path, work: Callable[[SQLiteJournal], Coroutine[Any, Any, None]]) -> None:
    """Run ``work(journal)`` against the store itself."""
    journal = SQLiteJournal(path)
    try:
        asyncio.run(work(journal))
    finally:
        journal.close()


async def finished_run(
    journal: SQLiteJournal, run_id: str, *, started: float, ended: float | None
) -> None:
    await journal.open_run(run_id, "shop:checkout", (), {}, started=started)
    if ended is not None:
        await journal.end_run(run_id, result="done", ended=ended)


async def one_call(
    journal: SQLiteJournal,
    run_id: str,
    key: str,
    name: str,
    *,
    error: BaseException | None = None,
    replayed: bool = False,
) -> None:
    data, args_hash = journal.call_args(name, key, (), {})
    parent = key.rpartition(".")[0] or None
    now = time.time()
    await journal.record(
        run_id,
        key,
        name,
        parent_key=parent,
        args=data,
        args_hash=args_hash,
        started=now,
        ended=now,
        result=None if error else "ok",
        error=error,
        replayed=replayed,
    )


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def line_of(out: str, start: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(start)]
    assert len(found) == 1, out
    return found[0]


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def terminal(monkeypatch: pytest.MonkeyPatch, **env: str) -> Terminal:
    """Make the output a terminal with the environment ``env``; called in the test itself, as
    pytest sets its own capturing stream between the fixtures and the test."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return stream


# runs ----------------------------------------------------------------------------------------


def test_runs_lists_each_run_with_its_body_status_start_duration_and_call_counts(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    status, out, err = cli(capsys, "runs", "--journal", str(path))
    assert (status, err) == (0, "")
    assert out.splitlines()[0].split() == [
        *("RUN", "ID", "BODY", "STATUS", "STARTED", "(UTC)", "DURATION", "DONE", "FAILED"),
        *("FAILING", "CALL"),
    ]
    for run_id in ("order-1", "order-2"):
        run, calls = records(path, run_id)
        fields = line_of(out, run_id + " ").split()
        body = run.body
        assert fields[1] == body if len(body) <= 40 else body.endswith(fields[1].split("...")[1])
        assert fields[2] == run.status
        started = datetime.fromtimestamp(run.started, UTC)
        assert fields[3:5] == [f"{started:%Y-%m-%d}", f"{started:%H:%M:%S}"]
        assert float(fields[5]) >= 0
        assert fields[6] in ("ms", "s")
        done = sum(call.status == "succeeded" for call in calls)
        assert fields[7:9] == [str(done), str(len(calls) - done)]


def test_runs_shortens_a_long_body_in_the_middle_keeping_its_module_and_function(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    _, out, _ = cli(capsys, "runs", "--journal", str(path))
    run, _ = records(path, "order-2")
    body = run.body
    shown = line_of(out, "order-2 ").split()[1]
    assert len(body) > len(shown) == 40
    head, tail = shown.split("...")
    assert body.startswith(head)
    assert body.endswith(tail)
    assert tail.endswith(".failing_checkout")


def test_runs_names_the_call_where_a_failed_run_failed_not_the_calls_it_failed_in(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    _, out, _ = cli(capsys, "runs", "--journal", str(path))
    # charge (2.1) failed inside pay (2), which failed too: charge is where it failed.
    assert line_of(out, "order-2 ").endswith("  2.1 charge: ConnectionError: card network down")
    assert line_of(out, "order-1 ").endswith(" 0")


def test_runs_names_the_body_when_a_run_failed_outside_any_call(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orch = Orchestrator(journal=str(path))

    async def body() -> None:
        raise ValueError("no such customer")

    with pytest.raises(ValueError, match="no such customer"):
        orch.run_sync(body, run_id="lost")
    close(orch)
    _, out, _ = cli(capsys, "runs", "--journal", str(path))
    assert line_of(out, "lost ").endswith("  the body: ValueError: no such customer")


def test_runs_names_the_call_where_a_cancelled_run_was_cancelled(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def work(journal: SQLiteJournal) -> None:
        await finished_run(journal, "stopped", started=time.time(), ended=None)
        await one_call(journal, "stopped", "1", "fetch")
        await one_call(journal, "stopped", "2", "upload", error=asyncio.CancelledError())
        await one_call(journal, "stopped", "2.1", "send", error=asyncio.CancelledError())
        await journal.end_run("stopped", error=asyncio.CancelledError())

    record_by_hand(path, work)
    _, out, _ = cli(capsys, "runs", "--journal", str(path))
    fields = line_of(out, "stopped ").split()
    assert fields[2] == "cancelled"
    assert fields[-3:] == ["2.1", "send:", "CancelledError"]


def test_runs_of_an_empty_journal_says_it_has_no_runs(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SQLiteJournal(path).close()
    status, out, _ = cli(capsys, "runs", "--journal", str(path))
    assert status == 0
    assert out == f"no runs recorded in {path}\n"


def test_runs_shows_a_run_not_ended_as_running_with_no_duration(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_by_hand(path, lambda j: finished_run(j, "open", started=time.time(), ended=None))
    _, out, _ = cli(capsys, "runs", "--journal", str(path))
    fields = line_of(out, "open ").split()
    assert fields[2] == "running"
    assert fields[5:8] == ["-", "0", "0"]


# Missing and bad journals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["runs"],
        ["show", "order-1"],
        ["prune", "--older-than", "30d"],
        ["show", "order-1", "--html", "run.html"],
    ],
)
def test_a_command_on_a_missing_journal_fails_and_creates_no_file(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.db"
    status, out, err = cli(capsys, *argv, "--journal", str(missing))
    assert status == 1
    assert out == ""
    assert err == (
        f"python -m orchestrator: error: there is no journal at {str(missing)!r}: the file does "
        "not exist; give the path that was passed as Orchestrator(journal=...)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_command_on_a_file_that_is_not_a_journal_fails_and_leaves_it_unchanged(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path.write_bytes(b"not a journal at all\n" * 10)
    status, out, err = cli(capsys, "runs", "--journal", str(path))
    assert (status, out) == (1, "")
    assert err.startswith(f"python -m orchestrator: error: {str(path)!r} is not a journal")
    assert path.read_bytes() == b"not a journal at all\n" * 10


def test_a_command_on_an_empty_file_fails_and_leaves_it_empty(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path.touch()
    status, out, err = cli(capsys, "runs", "--journal", str(path))
    assert (status, out) == (1, "")
    assert err == (
        f"python -m orchestrator: error: the file {str(path)!r} is empty: no journal was ever "
        "recorded in it; give the path that was passed as Orchestrator(journal=...)\n"
    )
    assert path.read_bytes() == b""


@pytest.mark.parametrize("command", [["runs"], ["show", "x"], ["prune", "--older-than", "1d"]])
def test_an_empty_journal_path_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--journal", ""])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: argument --journal: expected the path of a journal file, got ''\n"
    )


# show ----------------------------------------------------------------------------------------


def test_show_prints_the_run_and_its_calls_nested_under_the_calls_they_were_made_from(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    status, out, err = cli(capsys, "show", "order-1", "--journal", str(path))
    assert (status, err) == (0, "")
    assert line_of(out, "run ") == "run      order-1"
    assert line_of(out, "status ") == "status   succeeded"
    assert line_of(out, "result ") == "result   'reservation-A1'"
    assert line_of(out, "calls ") == "calls    3 (3 succeeded)"
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["KEY", "CALL", "STATUS", "TRIES", "DURATION"]
    assert [row.split()[:3] for row in table[1:]] == [
        ["1", "reserve('A1')", "succeeded"],
        ["2", "pack('A1')", "succeeded"],
        ["2.1", "└─", "reserve('A1')"],
    ]


def test_show_puts_sibling_calls_in_numeric_key_order_with_tree_guides(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def work(journal: SQLiteJournal) -> None:
        await finished_run(journal, "wide", started=time.time(), ended=None)
        for key in ("1", *(f"1.{i}" for i in range(1, 12)), "1.11.1", "2"):
            await one_call(journal, "wide", key, f"step_{key.replace('.', '_')}")

    record_by_hand(path, work)
    _, out, _ = cli(capsys, "show", "wide", "--journal", str(path))
    header, *rows = out.split("\n\n", 1)[1].splitlines()
    keys = [row.split()[0] for row in rows]
    assert keys == ["1", *(f"1.{i}" for i in range(1, 12)), "1.11.1", "2"]
    calls = [row[header.index("CALL") :] for row in rows]
    assert calls[1].startswith("├─ step_1_1()")
    assert calls[10].startswith("├─ step_1_10()")
    assert calls[11].startswith("└─ step_1_11()")
    assert calls[12].startswith("   └─ step_1_11_1()")
    assert calls[13].startswith("step_2()")


def test_show_prints_each_calls_attempts_duration_retried_errors_and_final_error(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    _, out, _ = cli(capsys, "show", "order-2", "--journal", str(path))
    _, calls = records(path, "order-2")
    charge = next(call for call in calls if call.name == "charge")
    assert line_of(out, "status ") == "status   failed: ConnectionError: card network down"
    fields = line_of(out, "2.1 ").split()
    assert fields[:4] == ["2.1", "└─", "charge(10)", "failed"]
    assert fields[4] == str(len(charge.attempts)) == "2"
    assert float(fields[5]) >= 0
    assert fields[6] in ("ms", "s")
    lines = out.splitlines()
    under = lines[lines.index(line_of(out, "2.1 ")) + 1 :]
    first = charge.attempts[0]
    assert first.delay is not None
    waited = re.fullmatch(
        r"attempt 1: ConnectionError: card network down \(retried after ([0-9.]+) ms\)",
        under[0].strip(),
    )
    assert waited is not None, under[0]
    assert float(waited.group(1)) == pytest.approx(first.delay * 1e3, abs=0.05)
    assert under[1].strip() == "error: ConnectionError: card network down"


def test_show_marks_the_calls_the_journal_recorded_as_replayed(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def work(journal: SQLiteJournal) -> None:
        await finished_run(journal, "again", started=time.time(), ended=None)
        await one_call(journal, "again", "1", "fetch", replayed=True)
        await one_call(journal, "again", "2", "store")

    record_by_hand(path, work)
    _, out, _ = cli(capsys, "show", "again", "--journal", str(path))
    assert line_of(out, "1 ").endswith("  replayed")
    assert not line_of(out, "2 ").endswith("replayed")
    assert line_of(out, "calls ") == "calls    2 (2 succeeded, 1 replayed)"


def test_show_of_an_unknown_run_fails_and_suggests_the_ids_it_starts(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    status, out, err = cli(capsys, "show", "order", "--journal", str(path))
    assert (status, out) == (1, "")
    assert err == (
        f"python -m orchestrator: error: the journal {str(path)!r} has no run 'order' (did you "
        f"mean 'order-1' or 'order-2'?); python -m orchestrator runs --journal {path} lists its "
        "runs\n"
    )


def test_show_writes_the_html_timeline_of_the_run_and_prints_its_path(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    page = tmp_path / "run.html"
    status, out, _ = cli(capsys, "show", "order-2", "--journal", str(path), "--html", str(page))
    assert status == 0
    assert out.splitlines()[-1] == f"HTML timeline: {page}"
    run, calls = records(path, "order-2")
    assert page.read_text(encoding="utf-8") == render_html(run, calls)


def test_show_writes_the_chrome_trace_of_the_run_and_prints_its_path(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_shop(path)
    trace = tmp_path / "trace.json"
    status, out, _ = cli(capsys, "show", "order-1", "--journal", str(path), "--chrome", str(trace))
    assert status == 0
    assert out.splitlines()[-1] == f"Chrome trace: {trace}"
    run, calls = records(path, "order-1")
    written = json.loads(trace.read_text(encoding="utf-8"))
    assert written == chrome_trace(run, calls)


def test_show_refuses_an_output_file_in_a_missing_directory_before_reading_the_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "no" / "run.html"
    status, out, err = cli(
        capsys, "show", "x", "--journal", str(tmp_path / "runs.db"), "--html", str(page)
    )
    assert (status, out) == (1, "")
    assert err == (
        f"python -m orchestrator: error: cannot write the HTML timeline to {str(page)!r}: the "
        f"directory {str(page.parent)!r} does not exist\n"
    )


def test_show_writes_control_characters_of_recorded_text_as_escapes(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def work(journal: SQLiteJournal) -> None:
        await finished_run(journal, "noisy", started=time.time(), ended=None)
        await one_call(journal, "noisy", "1", "fetch", error=OSError("bad\n\x1b[2Jgone"))

    record_by_hand(path, work)
    _, out, _ = cli(capsys, "show", "noisy", "--journal", str(path))
    assert "\x1b" not in out
    assert line_of(out, "   ").strip() == "error: OSError: bad\\n\\x1b[2Jgone"


# Terminals and pipes ---------------------------------------------------------------------------


def test_statuses_are_coloured_on_a_terminal(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record_shop(path)
    output = terminal(monkeypatch)
    assert main(["runs", "--journal", str(path)]) == 0
    assert "\x1b[32msucceeded\x1b[0m" in output.getvalue()
    assert "\x1b[31mfailed   \x1b[0m" in output.getvalue()


def test_no_color_turns_colour_off_on_a_terminal(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_shop(path)
    output = terminal(monkeypatch, NO_COLOR="1")
    assert main(["show", "order-2", "--journal", str(path)]) == 0
    assert "succeeded" in output.getvalue()
    assert "\x1b" not in output.getvalue()


def test_lines_are_fitted_to_the_width_of_a_terminal(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_shop(path)
    output = terminal(monkeypatch, NO_COLOR="1", COLUMNS="140")
    assert main(["runs", "--journal", str(path)]) == 0
    lines = output.getvalue().splitlines()
    assert max(map(len, lines)) < 140
    assert line_of(output.getvalue(), "order-2 ").endswith("...")


def test_piped_output_is_plain_and_complete(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record_shop(path)
    monkeypatch.setenv("COLUMNS", "110")
    monkeypatch.delenv("NO_COLOR", raising=False)
    _, out, _ = cli(capsys, "runs", "--journal", str(path))
    assert "\x1b" not in out
    assert line_of(out, "order-2 ").endswith("charge: ConnectionError: card network down")


def test_a_stream_that_cannot_encode_the_tree_gets_ascii_guides(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_shop(path)
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stream)
    assert main(["show", "order-1", "--journal", str(path)]) == 0
    stream.seek(0)
    assert line_of(stream.read(), "2.1 ").split()[:3] == ["2.1", "`-", "reserve('A1')"]


# prune -----------------------------------------------------------------------------------------


def test_prune_deletes_the_finished_runs_older_than_the_age_and_keeps_the_rest(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()

    async def work(journal: SQLiteJournal) -> None:
        await finished_run(journal, "old", started=now - 40 * DAY, ended=now - 40 * DAY)
        await finished_run(journal, "recent", started=now - 40 * DAY, ended=now - 10 * DAY)
        await finished_run(journal, "unfinished", started=now - 40 * DAY, ended=None)

    record_by_hand(path, work)
    status, out, _ = cli(capsys, "prune", "--journal", str(path), "--older-than", "30d")
    assert status == 0
    assert out.startswith("deleted 1 finished run that ended more than 30d ago (before ")
    assert out.endswith(f" UTC) from {path}\n")
    journal = SQLiteJournal(path)
    assert [run.run_id for run in journal.list_runs()] == ["old", "recent", "unfinished"][1:]
    journal.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("90m", 90 * 60), ("1.5h", 1.5 * 3600), ("30d", 30 * DAY), ("0s", 0)],
)
def test_an_age_is_a_number_and_a_unit_of_seconds_minutes_hours_or_days(
    text: str, seconds: float
) -> None:
    assert parse_age(text).seconds == seconds


@pytest.mark.parametrize("text", ["30", "30x", "30 days", "-1d", "d", "1e3d", "", "30D"])
def test_prune_refuses_an_age_without_a_known_unit_as_a_usage_error(
    text: str, path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["prune", "--journal", str(path), f"--older-than={text}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "python -m orchestrator prune: error: argument --older-than: expected a number "
        f"followed by a unit, s, m, h or d (such as 30d or 12h), got {text!r}\n"
    )
    assert not path.exists()


def test_prune_refuses_an_age_too_long_to_count_in_seconds(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "9" * 400 + "d"
    with pytest.raises(SystemExit) as exited:
        main(["prune", "--journal", str(path), "--older-than", text])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: argument --older-than: expected an age of a finite number of seconds, "
        f"got {text!r}\n"
    )


# A real process ------------------------------------------------------------------------------


def test_python_m_orchestrator_lists_the_runs_of_a_journal(path: Path) -> None:
    record_shop(path)
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "runs", "--journal", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["RUN", "order-1", "order-2"]


def test_python_m_orchestrator_stops_quietly_when_the_reader_of_its_output_has_gone(
    path: Path,
) -> None:
    record_shop(path)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "runs", "--journal", str(path)],
            stdout=writer,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (1, b"")
