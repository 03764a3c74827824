"""The suite's asyncio debug mode (tests/conftest.py) is on and its complaints fail tests."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest

from conftest import SLOW_STEP, ComplaintHandler, fail_on_complaints


def test_every_new_event_loop_runs_in_debug_mode() -> None:
    seen: list[bool] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop().get_debug())

    asyncio.run(main())
    loop = asyncio.new_event_loop()
    try:
        seen.append(loop.get_debug())
    finally:
        loop.close()
    assert seen == [True, True]


def test_a_callback_blocking_the_loop_is_captured_and_would_fail_the_test(
    asyncio_complaints: ComplaintHandler,
) -> None:
    def block() -> None:
        time.sleep(SLOW_STEP + 0.05)  # longer than the suite allows, on purpose

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert loop.slow_callback_duration == pytest.approx(0.1)
        done = loop.create_future()
        loop.call_soon(block)
        loop.call_soon(done.set_result, None)
        await done

    asyncio.run(main())
    messages = [record.getMessage() for record in asyncio_complaints.records]
    assert len(messages) == 1, messages
    assert messages[0].startswith("Executing <Handle ")
    assert "block()" in messages[0]
    assert " took 0.5" in messages[0]
    assert asyncio_complaints.records[0].levelname == "WARNING"
    with pytest.raises(pytest.fail.Exception, match=r"(?s)asyncio complained.*Executing <Handle "):
        fail_on_complaints(asyncio_complaints)
    asyncio_complaints.records.clear()  # handled here: do not fail this test at teardown


def test_a_step_slower_than_debug_mode_reports_but_under_the_limit_passes(
    asyncio_complaints: ComplaintHandler,
) -> None:
    async def main() -> None:
        time.sleep(0.15)  # noqa: ASYNC251  # asyncio reports it (over 0.1 s); the suite lets it pass

    reported: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reported.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("asyncio").addHandler(handler)
    try:
        asyncio.run(main())
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    assert any(" took 0.1" in message for message in reported), reported
    assert asyncio_complaints.records == []


def test_a_task_destroyed_while_pending_is_captured(asyncio_complaints: ComplaintHandler) -> None:
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(asyncio.sleep(10))
        loop.run_until_complete(asyncio.sleep(0))  # the task starts and waits
    finally:
        loop.close()
    del task
    gc.collect()
    messages = [record.getMessage() for record in asyncio_complaints.records]
    assert any(m.startswith("Task was destroyed but it is pending!") for m in messages), messages
    assert {record.levelname for record in asyncio_complaints.records} == {"ERROR"}
    asyncio_complaints.records.clear()
