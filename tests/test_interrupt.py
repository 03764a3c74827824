"""Ctrl-C (SIGINT) during ``run_sync``: the run ends promptly and still fires its completions.

Each test runs a small script in a subprocess (``python -W error`` with
``PYTHONASYNCIODEBUG=1``), waits until the script prints ``READY`` from inside a long-running
action, sends SIGINT, and reads what the script printed.

The script's choices, which the assertions rely on:

- It installs ``signal.default_int_handler`` for SIGINT first. A child inherits an *ignored*
  SIGINT from a parent that ignores it (a CI runner started in the background, for example),
  and ``asyncio.run`` only turns SIGINT into cancellation when the default handler is in place;
  a Python program started from a terminal has that handler anyway.
- It catches ``KeyboardInterrupt`` around ``run_sync``, prints ``KEYBOARD_INTERRUPT`` and exits
  with :data:`INTERRUPTED` (42). Any other exception escapes and the exit code is 1, so exit
  code 42 proves that ``run_sync`` raised exactly ``KeyboardInterrupt``; printing the marker
  after the hook markers proves that the completions fired before it reached the caller.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

INTERRUPTED = 42
"""The exit code the script uses when ``run_sync`` raised ``KeyboardInterrupt``."""

PROMPT = 3.0
"""How long the script may take to exit after SIGINT."""

FORBIDDEN = (
    "Task was destroyed but it is pending",
    "was never awaited",
    "Task exception was never retrieved",
    "Traceback",
    "Exception ignored",
)
"""Nothing of this may appear on the script's stderr."""

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import signal
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.default_int_handler)

    from orchestrator import Orchestrator

    SCENARIO = sys.argv[1]
    orch = Orchestrator()
    sync_entered = threading.Event()
    release = threading.Event()  # never set: the sync action blocks until its 30 s wait ends


    def mark(text):
        # One write per line: print() writes the text and the newline apart, and a worker
        # thread's line could then run into the main thread's.
        sys.stdout.write(text + "\\n")
        sys.stdout.flush()


    def on_task_completion(event):
        mark(f"TASK_COMPLETION {event.name} {type(event.error).__name__}")


    def on_process_error(event):
        mark(f"PROCESS_ERROR {type(event.error).__name__}")


    async def on_process_completion(event):
        await asyncio.sleep(0.01)  # async cleanup still gets to await after the interrupt
        mark(f"PROCESS_COMPLETION {type(event.error).__name__}")


    orch.on_task_completion(on_task_completion)
    orch.on_process_error(on_process_error)
    orch.on_process_completion(on_process_completion)


    @orch.action
    async def slow_async():
        if SCENARIO == "parallel":
            while not sync_entered.is_set():
                await asyncio.sleep(0.005)
        mark("READY")
        await asyncio.sleep(30)


    @orch.action
    def slow_sync():
        sync_entered.set()
        if SCENARIO == "sync":
            mark("READY")
        release.wait(30)


    async def body():
        if SCENARIO == "async":
            await slow_async()
        elif SCENARIO == "sync":
            await slow_sync()
        else:
            await orch.parallel([slow_async, slow_sync])()
        mark("BODY_RETURNED")


    try:
        orch.run_sync(body)
    except KeyboardInterrupt:
        mark("KEYBOARD_INTERRUPT")
        sys.exit(42)
    mark("RUN_SYNC_RETURNED")
    """
)


def _read_until(proc: subprocess.Popen[bytes], wanted: bytes, timeout: float) -> bytes:
    """Read the script's raw stdout until it holds the whole line ``wanted``, or EOF, or timeout.

    Reads the pipe's file descriptor directly (no buffered reader), so that ``communicate()``
    later gets exactly what was not read here.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        # Only complete lines count: print() may write a line's text and its newline apart,
        # and SIGINT sent between the two would split the line around other output.
        while wanted not in seen.split(b"\n")[:-1] and time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # the script ended
            seen += chunk
    return seen


def _interrupt(tmp_path: Path, scenario: str) -> tuple[int, list[str], str, float]:
    """Run the script, SIGINT it once READY; return its code, stdout lines, stderr, delay."""
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONASYNCIODEBUG": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", str(script), scenario],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env=env,
    )
    try:
        before = _read_until(proc, b"READY", timeout=10.0)
        if b"READY" not in before.splitlines():
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the script never printed READY; stdout {before!r}, stderr:\n{err!r}")
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            out, err = proc.communicate(timeout=PROMPT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(
                f"the run did not end within {PROMPT} s of SIGINT; "
                f"stdout {before + out!r}, stderr:\n{err.decode(errors='replace')}"
            )
        delay = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = (before + out).decode().splitlines()
    return proc.returncode, lines, err.decode(errors="replace"), delay


def _assert_clean(stderr: str) -> None:
    for text in FORBIDDEN:
        assert text not in stderr, f"stderr contains {text!r}:\n{stderr}"


def test_sigint_during_an_async_action_cancels_it_fires_completions_and_raises_keyboard_interrupt(
    tmp_path: Path,
) -> None:
    code, lines, stderr, delay = _interrupt(tmp_path, "async")
    _assert_clean(stderr)
    assert code == INTERRUPTED, (code, lines, stderr)
    assert delay < PROMPT
    assert lines == [
        "READY",
        "TASK_COMPLETION slow_async CancelledError",
        "PROCESS_ERROR CancelledError",
        "PROCESS_COMPLETION CancelledError",
        "KEYBOARD_INTERRUPT",
    ]


def test_sigint_during_a_sync_action_in_a_thread_returns_without_waiting_for_the_thread(
    tmp_path: Path,
) -> None:
    code, lines, stderr, delay = _interrupt(tmp_path, "sync")
    _assert_clean(stderr)
    assert code == INTERRUPTED, (code, lines, stderr)
    # The worker thread blocks for 30 s; the process must not wait for it.
    assert delay < PROMPT
    assert lines == [
        "READY",
        "TASK_COMPLETION slow_sync CancelledError",
        "PROCESS_ERROR CancelledError",
        "PROCESS_COMPLETION CancelledError",
        "KEYBOARD_INTERRUPT",
    ]


def test_sigint_during_a_parallel_group_completes_every_member_before_process_completion(
    tmp_path: Path,
) -> None:
    code, lines, stderr, delay = _interrupt(tmp_path, "parallel")
    _assert_clean(stderr)
    assert code == INTERRUPTED, (code, lines, stderr)
    assert delay < PROMPT
    assert lines[0] == "READY"
    # The members' completions come in either order, both before the process's.
    assert sorted(lines[1:3]) == [
        "TASK_COMPLETION slow_async CancelledError",
        "TASK_COMPLETION slow_sync CancelledError",
    ]
    assert lines[3:] == [
        "PROCESS_ERROR CancelledError",
        "PROCESS_COMPLETION CancelledError",
        "KEYBOARD_INTERRUPT",
    ]
