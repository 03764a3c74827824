"""Suite-wide settings: asyncio debug mode on, and asyncio's complaints fail the test.

``PYTHONASYNCIODEBUG=1`` is set when this file is imported, before any test runs: asyncio
reads it each time an event loop is created, so every loop a test creates (``asyncio.run``,
``run_sync``, ``new_event_loop``) runs in debug mode, and so do subprocesses, which inherit the
environment. Debug mode makes asyncio log a callback or task step that blocks the loop longer
than ``loop.slow_callback_duration`` (0.1 s; a test fails for one over ``SLOW_STEP``), raise
on a non-thread-safe call from another thread, and record where each never-awaited coroutine
and each pending task was created.

The autouse fixture :func:`asyncio_complaints` attaches a handler to the ``asyncio`` logger for
the duration of each test; any record at WARNING or above (a slow callback, "Task was destroyed
but it is pending!", "Task exception was never retrieved", an exception in a callback...)
fails that test at teardown (after a collection of the young garbage generations, so that a
task dropped while pending complains in the test that dropped it; a session fixture makes a
full collection after the last test for the rest). Never-awaited coroutines and unraisable
exceptions already fail through ``filterwarnings = error`` in pyproject.toml.

A test that provokes a complaint on purpose takes the fixture as an argument, checks what it
captured, and empties ``records`` before it ends.
"""

from __future__ import annotations

import gc
import logging
import os
import re
from collections.abc import Iterator

import pytest

os.environ["PYTHONASYNCIODEBUG"] = "1"


SLOW_STEP = 0.5
"""Seconds a task step or callback may block the loop before it fails the test.

Debug mode reports steps over 0.1 s. On a machine shared with other work a thread start or a
subprocess spawn now and then takes that long with nothing wrong in the code, so only a step
that blocks five times longer counts; anything that really blocks the loop does far worse.
"""

_TOOK = re.compile(r"took (\d+(?:\.\d+)?) seconds$")


class ComplaintHandler(logging.Handler):
    """Keeps every record the ``asyncio`` logger emits at WARNING or above."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        slow = _TOOK.search(record.getMessage())
        if slow is not None and float(slow.group(1)) < SLOW_STEP:
            return
        self.records.append(record)


def fail_on_complaints(handler: ComplaintHandler) -> None:
    """Fail the current test if ``handler`` holds any record.

    Raises:
        pytest.fail.Exception: The message lists each record's level and text.

    """
    if handler.records:
        lines = [f"{r.levelname}: {r.getMessage()}" for r in handler.records]
        pytest.fail(
            "asyncio complained during this test (debug mode is on):\n" + "\n".join(lines),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def asyncio_complaints() -> Iterator[ComplaintHandler]:
    """Capture the ``asyncio`` logger's warnings and errors; fail the test if there are any."""
    logger = logging.getLogger("asyncio")
    handler = ComplaintHandler()
    logger.addHandler(handler)
    try:
        yield handler
        # A task or future dropped by this test complains when it is collected: collect the
        # young generations now, so that the complaint is charged to this test and not to a
        # later one. (A full collection per test would double the suite's time; the session
        # fixture below makes one at the end for what survived.)
        gc.collect(1)
    finally:
        logger.removeHandler(handler)
    fail_on_complaints(handler)


@pytest.fixture(autouse=True, scope="session")
def asyncio_complaints_at_exit() -> Iterator[None]:
    """After the last test, collect all garbage and fail on what asyncio says about it."""
    yield
    logger = logging.getLogger("asyncio")
    handler = ComplaintHandler()
    logger.addHandler(handler)
    try:
        gc.collect()
    finally:
        logger.removeHandler(handler)
    fail_on_complaints(handler)
