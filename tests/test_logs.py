"""Log records through the standard library's logging: levels, messages and extra fields."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from orchestrator import Orchestrator, RetryPolicy, set_testing
from orchestrator.logs import LOGGER_NAME, log_to_logging, stop_logging


@pytest.fixture
def orch() -> Orchestrator[Any]:
    orchestrator: Orchestrator[Any] = Orchestrator()
    log_to_logging(orchestrator)
    return orchestrator


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    return caplog


def ours(log: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in log.records if r.name == LOGGER_NAME]


def test_a_run_logs_its_begin_and_end_at_info_and_each_call_end_at_debug(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    fetch = orch.action(lambda: 1, name="fetch", inline=True)

    async def main() -> None:
        await fetch()

    orch.run_sync(main, run_id="r1")
    levels_and_starts = [(level, message.split(" in ")[0]) for level, message in ours(log)]
    assert levels_and_starts == [
        ("INFO", "run r1 began"),
        ("DEBUG", "call 1 fetch succeeded"),
        ("INFO", "run r1 succeeded"),
    ]
    assert ours(log)[1][1].endswith(" ms, 1 attempt")


def test_records_carry_the_run_id_call_key_and_action_as_extra_fields(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    fetch = orch.action(lambda: 1, name="fetch", inline=True)

    async def main() -> None:
        await fetch()
        await fetch()

    orch.run_sync(main, run_id="r1")
    call_end = [r for r in log.records if r.levelno == logging.DEBUG][1]
    assert (
        call_end.orchestrator_run_id,  # type: ignore[attr-defined]
        call_end.orchestrator_call_key,  # type: ignore[attr-defined]
        call_end.orchestrator_action,  # type: ignore[attr-defined]
        call_end.orchestrator_task_id,  # type: ignore[attr-defined]
        call_end.orchestrator_attempts,  # type: ignore[attr-defined]
        call_end.orchestrator_replayed,  # type: ignore[attr-defined]
    ) == ("r1", "2", "fetch", 2, 1, False)
    assert call_end.orchestrator_duration_ms >= 0  # type: ignore[attr-defined]
    mine = [r for r in log.records if r.name == LOGGER_NAME]
    assert all(r.orchestrator_run_id == "r1" for r in mine)  # type: ignore[attr-defined]


def test_each_retry_is_a_warning_with_the_attempt_delay_and_error(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    failures = iter([ConnectionError("reset by peer")])

    @orch.action(retry=RetryPolicy(retries=2))
    async def fetch() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    with set_testing(True):
        orch.run_sync(fetch, run_id="r1")
    (retry,) = [r for r in log.records if r.levelno == logging.WARNING]
    assert retry.getMessage() == (
        "call 1 fetch: attempt 1 failed, retrying in 0.00 s: ConnectionError: reset by peer"
    )
    assert (
        retry.orchestrator_call_key,  # type: ignore[attr-defined]
        retry.orchestrator_attempt,  # type: ignore[attr-defined]
        retry.orchestrator_delay,  # type: ignore[attr-defined]
        retry.orchestrator_error_type,  # type: ignore[attr-defined]
    ) == ("1", 1, 0.0, "ConnectionError")


def test_a_failed_call_and_its_run_are_warnings_with_the_error(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    @orch.action
    async def store() -> None:
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        orch.run_sync(store, run_id="r1")
    warnings = [
        (r.getMessage(), r.orchestrator_error_type)  # type: ignore[attr-defined]
        for r in log.records
        if r.levelno == logging.WARNING
    ]
    assert [message.split(" after ")[0] for message, _ in warnings] == [
        "call 1 store failed",
        "run r1 failed",
    ]
    assert all(message.endswith(": ValueError: disk full") for message, _ in warnings)
    assert [error_type for _, error_type in warnings] == ["ValueError", "ValueError"]


def test_a_cancelled_call_is_a_warning_that_says_cancelled(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    @orch.action
    async def slow() -> None:
        await asyncio.Event().wait()

    @orch.action
    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        orch.run_sync(orch.parallel([slow, broken], fail_fast=True), run_id="r1")
    cancelled = [m for level, m in ours(log) if m.startswith("call 1.1.1 slow")]
    assert len(cancelled) == 1
    assert cancelled[0].startswith("call 1.1.1 slow was cancelled after ")
    assert [level for level, m in ours(log) if m.startswith("call 1.1.1")] == ["WARNING"]


def test_a_long_error_message_is_shortened(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    @orch.action
    async def store() -> None:
        raise ValueError("x" * 1000)

    with pytest.raises(ValueError, match="x"):
        orch.run_sync(store)
    message = ours(log)[1][1]
    assert message.endswith("ValueError: " + "x" * 199 + "…")


def test_below_the_enabled_level_nothing_is_logged(
    orch: Orchestrator[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    orch.run_sync(orch.action(lambda: 1, name="fetch", inline=True), run_id="r1")
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [
        "run r1 began",
        "run r1 succeeded",
    ]


def test_stop_logging_stops_the_records(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    stop_logging(orch)
    orch.run_sync(orch.action(lambda: 1, name="fetch", inline=True))
    assert ours(log) == []


def test_logging_twice_is_refused(orch: Orchestrator[Any]) -> None:
    with pytest.raises(ValueError, match=r"^<Orchestrator context=State> already logs;"):
        log_to_logging(orch)


def test_stop_logging_what_does_not_log_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^<Orchestrator context=State> does not log;"):
        stop_logging(Orchestrator())


@pytest.mark.parametrize("function", [log_to_logging, stop_logging])
def test_something_else_than_an_orchestrator_is_refused(function: Any) -> None:
    with pytest.raises(TypeError, match=r"^orchestrator must be an Orchestrator, got 5$"):
        function(5)


UNCONFIGURED = """
import warnings
from orchestrator import Orchestrator
from orchestrator.logs import log_to_logging

orch = Orchestrator()
log_to_logging(orch)

@orch.action
async def store():
    raise ValueError("disk full")

try:
    orch.run_sync(store)
except ValueError:
    print("raised")
"""


def test_nothing_is_printed_while_the_application_has_not_configured_logging() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(UNCONFIGURED)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("raised\n", "")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def test_an_error_whose_message_cannot_be_made_is_logged_by_its_type(
    orch: Orchestrator[Any], log: pytest.LogCaptureFixture
) -> None:
    @orch.action
    async def store() -> None:
        raise Unprintable

    with pytest.raises(Unprintable):
        orch.run_sync(store)
    assert ours(log)[1][1].endswith(": Unprintable (its message could not be made)")
