import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(*args: str) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
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
    ):
        assert f"{name}(" in out, name
    lines = out.splitlines()
    assert sum(line.startswith("  process begin") for line in lines) == 4
    assert sum(line.startswith("  process completion") for line in lines) == 4
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
    assert len(written) == 4
    pages = [path.read_text(encoding="utf-8") for path in written]
    assert all(page.startswith("<!DOCTYPE html>") for page in pages)
    assert 'data-key="1.2.1"' in pages[2]  # the failing member of the fail-fast group
    assert "ActionTimeout" in pages[3]


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
