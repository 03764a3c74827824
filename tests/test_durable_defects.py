"""Durable runs: edge cases of recording and replaying calls in a journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator import JournalError, Orchestrator, RetryPolicy

NO_WAIT = RetryPolicy(retries=1, delay=0.0, jitter=0.0)


class Declined(Exception):
    """A payment that is refused when charged a second time."""


def _checkout(
    journal: Path, charged: list[int], *, checkout_fails: bool, declines: bool = True
) -> tuple[Orchestrator[Any], Any]:
    # A checkout whose first attempt charges and then fails, so that its second attempt makes
    # the charge again under the same call key; with ``declines``, a second charge is refused.
    orch: Orchestrator[Any] = Orchestrator(journal=journal)
    tries: list[int] = []

    @orch.action
    async def charge(amount: int) -> int:
        charged.append(amount)
        if declines and len(charged) > 1:
            raise Declined(amount)
        return amount

    @orch.action(retry=NO_WAIT)
    async def checkout(amount: int) -> int:
        paid = await charge(amount)
        tries.append(1)
        if checkout_fails or len(tries) == 1:
            raise ConnectionError("the shop went away")
        return paid

    async def body(amount: int) -> int:
        return await checkout(amount)

    return orch, body


def test_a_nested_call_made_again_by_its_callers_retry_replays_its_recorded_success(
    tmp_path: Path,
) -> None:
    charged: list[int] = []
    orch, body = _checkout(tmp_path / "runs.db", charged, checkout_fails=False)
    replayed: list[tuple[str, bool, Any]] = []
    orch.on_task_completion(
        lambda event: replayed.append((event.call_key, event.replayed, event.result))
    )

    assert orch.run_sync(body, 5, run_id="order-1") == 5

    assert charged == [5]
    assert replayed == [("1.1", False, 5), ("1.1", True, 5), ("1", False, 5)]


def test_a_resume_replays_a_nested_call_that_a_later_attempt_of_its_caller_made_again(
    tmp_path: Path,
) -> None:
    charged: list[int] = []
    orch, body = _checkout(tmp_path / "runs.db", charged, checkout_fails=True)
    # Declined if the second attempt charges again: this test is about the resume.
    with pytest.raises((ConnectionError, Declined)):
        orch.run_sync(body, 5, run_id="order-1")
    assert orch.journal is not None
    orch.journal.close()
    charged.clear()

    resumed, body = _checkout(tmp_path / "runs.db", charged, checkout_fails=True, declines=False)
    with pytest.raises(ConnectionError):
        resumed.run_sync(body, 5, run_id="order-1")

    assert charged == []


def test_a_run_whose_end_cannot_be_committed_raises_the_journal_error(tmp_path: Path) -> None:
    orch = Orchestrator(journal=tmp_path / "runs.db")
    assert orch.journal is not None
    journal = orch.journal

    async def body() -> str:
        journal.close()  # the end of the run can no longer be committed
        return "done"

    with pytest.raises(JournalError, match="closed"):
        orch.run_sync(body, run_id="r")


def test_a_failed_run_raises_its_own_error_when_the_journal_cannot_record_it(
    tmp_path: Path,
) -> None:
    orch = Orchestrator(journal=tmp_path / "runs.db")
    assert orch.journal is not None
    journal = orch.journal

    async def body() -> None:
        journal.close()
        raise ConnectionError("the carrier is down")

    with pytest.raises(ConnectionError, match="the carrier is down") as caught:
        orch.run_sync(body, run_id="r")
    (note,) = caught.value.__notes__
    assert note.startswith("the journal could not record how run 'r' ended: ")


def test_a_nested_call_whose_result_cannot_be_recorded_is_not_run_again_by_its_retried_caller(
    tmp_path: Path,
) -> None:
    orch = Orchestrator(journal=tmp_path / "runs.db")
    sent: list[str] = []

    @orch.action
    async def send_email(to: str) -> set[str]:
        sent.append(to)
        return {to}  # a set: JSON cannot record it

    @orch.action(retry=RetryPolicy(retries=3, delay=0))
    async def notify(to: str) -> None:
        await send_email(to)

    async def body() -> None:
        await notify("ada@example.com")

    with pytest.raises(JournalError, match="cannot record the result of action 'send_email'"):
        orch.run_sync(body, run_id="r")
    assert sent == ["ada@example.com"]
