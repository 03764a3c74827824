import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def run_python(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout, elapsed


def test_demo_runs_every_scenario_and_prints_the_hooks_within_five_seconds() -> None:
    out, elapsed = run_python("-m", "orchestrator", "demo")
    assert elapsed < 5
    for name in (
        "check_inventory",
        "notify_team",
        "get_user_profile",
        "get_shipping_options",
        "fetch_user_data",
        "update_profile",
        "reserve_stock",
        "charge_card",
        "book_shipping",
        "send_confirmation",
    ):
        assert f"{name}(" in out, name
    lines = out.splitlines()
    assert sum(line.startswith("  process begin") for line in lines) == 6
    assert sum(line.startswith("  process completion") for line in lines) == 6
    assert sum(line.startswith("  task begin") for line in lines) == sum(
        line.startswith("  task completion") for line in lines
    )
    assert "task retry         #1 fetch_user_data: attempt 1 failed (ConnectionError" in out
    assert "update_profile: ActionTimeout: action 'update_profile'" in out
    assert "get_user_profile cancelled" in out
    assert "process error      ConnectionError" in out
    assert "(API key cleared)" in out


def test_demo_ends_by_writing_the_timeline_of_each_of_its_runs(tmp_path: Path) -> None:
    out, _ = run_python("-m", "orchestrator", "demo", "--timeline", str(tmp_path))
    lines = out.splitlines()
    heading = lines.index(f"== Timelines of the runs, one HTML page each, in {tmp_path}")
    written = [Path(line.strip()) for line in lines[heading + 1 :]]
    assert sorted(written) == sorted(tmp_path.iterdir())
    assert len(written) == 5  # the durable run's two attempts share a run id: the newest is kept
    pages = [path.read_text(encoding="utf-8") for path in written]
    assert all(page.startswith("<!DOCTYPE html>") for page in pages)
    assert 'data-key="1.2.1"' in pages[2]  # the failing member of the fail-fast group
    assert "ActionTimeout" in pages[3]


def durable_part(out: str) -> str:
    return out[out.index("== 4. A durable run") :]


def test_demo_durable_run_fails_halfway_then_resumes_replaying_its_completed_calls() -> None:
    out = durable_part(run_python("-m", "orchestrator", "demo")[0])
    failed, resumed = out.split("...later, with the carrier back")
    assert "task retry         #3 book_shipping: attempt 1 failed (ConnectionError" in failed
    assert "process completion failed" in failed
    assert "send_confirmation(" not in failed
    for name in ("reserve_stock", "charge_card"):
        assert re.search(rf"task completion +#\d+ {name} -> .* \[1 attempt\(s\)", failed), name
        assert re.search(
            rf"task completion +#\d+ {name} -> .* \[replayed from the journal", resumed
        )
    assert "process completion ok" in resumed
    # The payment ran once in all: on resume it came from the journal.
    assert out.count("(card charged") == 1
    assert "the card was charged 1 time(s) in all" in resumed


def test_demo_prints_the_resumed_run_as_the_show_command_does_at_the_end() -> None:
    out = durable_part(run_python("-m", "orchestrator", "demo")[0])
    run_id = re.search(r"run (order-[0-9a-f]{8}) again", out)
    assert run_id is not None
    tree = out[out.index("the run, as python -m orchestrator show prints it:") :].splitlines()[1:]
    assert tree[0].split() == ["run", run_id.group(1)]
    assert tree[2].split() == ["status", "succeeded"]
    header = next(line for line in tree if line.split()[:2] == ["KEY", "CALL"])
    rows = tree[tree.index(header) + 1 :]
    rows = rows[: rows.index("")]  # the tree ends at the first empty line
    names = ("reserve_stock", "charge_card", "book_shipping", "send_confirmation")
    assert [row.split()[0] for row in rows] == ["1", "2", "3", "4"]
    for row, name in zip(rows, names, strict=True):
        assert row.split()[1].startswith(f"{name}('{run_id.group(1)}'")
        assert row[header.index("STATUS") :].split()[:2] == ["succeeded", "1"]


def test_demo_leaves_nothing_behind_by_default_but_the_timelines_it_names(tmp_path: Path) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    out, _ = run_python("-m", "orchestrator", "demo", cwd=work, env={"TMPDIR": str(temporary)})
    (folder,) = temporary.iterdir()  # the journal's temporary folder is gone
    assert f"== Timelines of the runs, one HTML page each, in {folder}" in out
    assert all(page.suffix == ".html" for page in folder.iterdir())
    assert list(work.iterdir()) == []


def test_demo_keeps_the_journal_it_is_given_for_the_runs_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "runs.db"
    out, _ = run_python("-m", "orchestrator", "demo", "--journal", str(journal))
    run_id = re.search(r"run (order-[0-9a-f]{8}) again", out)
    assert run_id is not None
    assert f"the journal is kept: python -m orchestrator runs --journal {journal}" in out
    assert main(["runs", "--journal", str(journal)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["RUN", run_id.group(1)]
    assert listed[1].split()[2] == "succeeded"


def test_demo_refuses_a_journal_that_cannot_be_one_before_any_scenario_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "notes.txt"
    journal.write_text("not a journal\n")
    assert main(["demo", "--journal", str(journal)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"python -m orchestrator: error: {str(journal)!r} is not a journal")
    assert journal.read_text() == "not a journal\n"


def test_command_line_without_a_command_prints_usage_and_fails() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "demo" in done.stderr


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("inventory.py", "notified: True"),
        ("lifecycle_hooks.py", "task step_b completed in"),
        ("parallel.py", "shipping: ['Standard', 'Express', 'Overnight']"),
        ("api_context.py", "errors recorded: 2"),
    ],
)
def test_example_script_runs(script: str, expected: str) -> None:
    out, _ = run_python(str(ROOT / "examples" / script))
    assert expected in out
