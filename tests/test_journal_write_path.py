"""The journal's write path: JSON encoding, commits shared by a batch, and recorded attempts."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Orchestrator, RetryPolicy
from orchestrator._errors import JournalError
from orchestrator._journal import JsonSerializer, SQLiteJournal
from orchestrator._records import AttemptRecord


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def journal(path: Path) -> Iterator[SQLiteJournal]:
    with SQLiteJournal(path) as opened:
        yield opened


async def record(journal: SQLiteJournal, key: str, result: Any) -> None:
    data, args_hash = journal.call_args("fetch", key, (1,), {})
    await journal.record(
        "r",
        key,
        "fetch",
        parent_key=None,
        args=data,
        args_hash=args_hash,
        started=100.0,
        ended=101.0,
        result=result,
    )


JSON_VALUES = [
    None,
    True,
    0,
    -(2**70),
    0.1,
    -0.0,
    1e300,
    "",
    "plain",
    'quote " and \\ backslash',
    "é ü 中 \U0001f600",
    "lone \ud800 surrogate",
    "\x00\n\t",
    [],
    {},
    [1, [2, [3, {"a": [None, False]}]]],
    {"z": 1, "a": {"nested": ["x", 2.5]}, "": 0},
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_json_serializer_writes_what_the_json_module_writes(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), allow_nan=False)
    assert JsonSerializer().dumps(value) == expected


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_json_serializer_reads_back_what_it_writes(value: Any) -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


def test_json_serializer_reads_a_value_with_whitespace_around_it() -> None:
    assert JsonSerializer().loads(' \n{"a": [1, 2]}\t ') == {"a": [1, 2]}


def test_json_serializer_reads_utf8_bytes() -> None:
    assert JsonSerializer().loads('{"name": "é"}'.encode()) == {"name": "é"}


def test_json_serializer_refuses_text_after_the_value() -> None:
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        JsonSerializer().loads("[1] [2]")


def test_json_serializer_refuses_a_circular_list() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(RecursionError):
        JsonSerializer().dumps(value)


def test_failed_commit_fails_every_record_of_the_batch(journal: SQLiteJournal) -> None:
    assert journal._fast is not None
    # A trigger of the loop's connection alone: the commit of a batch fails, and nothing else.
    journal._fast.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.calls "
        "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
    )

    async def scenario() -> list[BaseException | None]:
        return await asyncio.gather(
            *(record(journal, str(i), i) for i in range(1, 4)), return_exceptions=True
        )

    errors = asyncio.run(scenario())
    assert all(isinstance(error, JournalError) for error in errors)
    assert all("refused by a trigger" in str(error) for error in errors)
    assert len({id(error) for error in errors}) == 3  # one error each, each with its traceback
    assert journal.calls("r") == []


def test_cancelled_waiter_of_a_batch_in_the_writer_thread_leaves_the_others_waiting(
    path: Path,
) -> None:
    async def scenario(journal: SQLiteJournal) -> None:
        first = asyncio.ensure_future(record(journal, "1", 1))
        second = asyncio.ensure_future(record(journal, "2", 2))
        for _ in range(2):  # the records are queued, then handed to the writer thread
            await asyncio.sleep(0)
        first.cancel()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first

    with SQLiteJournal(path, durability="fsync") as journal:
        asyncio.run(scenario(journal))
        assert [call.call_key for call in journal.calls("r")] == ["1", "2"]


def test_record_awaited_after_its_commit_returns_at_once(journal: SQLiteJournal) -> None:
    async def scenario() -> None:
        data, args_hash = journal.call_args("fetch", "1", (1,), {})
        pending = journal.record(
            "r",
            "1",
            "fetch",
            parent_key=None,
            args=data,
            args_hash=args_hash,
            started=1.0,
            ended=2.0,
            result="kept",
        )
        for _ in range(3):
            await asyncio.sleep(0)
        await pending

    asyncio.run(scenario())
    assert [call.result for call in journal.calls("r")] == ["'kept'"]


def test_retried_journaled_call_records_each_attempt(path: Path) -> None:
    orch = Orchestrator(journal=path)
    failures = iter([ConnectionError("down"), TimeoutError("slow")])

    @orch.action(retry=RetryPolicy(retries=2, delay=0.0))
    async def fetch() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "fetched"

    async def body() -> str:
        return await fetch()

    try:
        assert orch.run_sync(body, run_id="retried") == "fetched"
        assert orch.journal is not None
        [call] = orch.journal.calls("retried")
    finally:
        assert isinstance(orch.journal, SQLiteJournal)
        orch.journal.close()
    assert [(a.number, a.error) for a in call.attempts] == [
        (1, "ConnectionError: down"),
        (2, "TimeoutError: slow"),
        (3, None),
    ]
    assert all(a.delay is not None and a.delay >= 0 for a in call.attempts[:2])


def test_journaled_call_without_retry_is_recorded_with_one_attempt_spanning_it(
    path: Path,
) -> None:
    orch = Orchestrator(journal=path)

    @orch.action
    async def fetch() -> str:
        return "fetched"

    async def body() -> str:
        return await fetch()

    try:
        orch.run_sync(body, run_id="once")
        assert orch.journal is not None
        [call] = orch.journal.calls("once")
    finally:
        assert isinstance(orch.journal, SQLiteJournal)
        orch.journal.close()
    assert call.attempts == (AttemptRecord(1, call.started, call.ended, None),)


def test_unserializable_argument_names_the_argument_among_keywords(
    journal: SQLiteJournal,
) -> None:
    pattern = re.escape("argument 'when', of type tuple")
    with pytest.raises(JournalError, match=pattern):
        journal.call_args("fetch", "1", (1,), {"zone": "utc", "when": (2024, 1)})


def test_arguments_go_through_a_json_serializer_subclass_of_its_own(path: Path) -> None:
    class TuplesAsLists(JsonSerializer):
        def dumps(self, value: Any) -> str:
            return json.dumps(value, default=list)

    with SQLiteJournal(path, serializer=TuplesAsLists()) as journal:
        data, _ = journal.call_args("fetch", "1", ({1, 2},), {})
    assert json.loads(data) == [[[1, 2]], {}]


def test_keyword_argument_that_is_not_json_is_refused(journal: SQLiteJournal) -> None:
    with pytest.raises(JournalError, match=re.escape("argument 'when', of type tuple")):
        journal.call_args("fetch", "1", (), {"when": (2024, 1)})


def test_resumed_run_comes_back_with_the_results_of_its_calls_loaded(
    journal: SQLiteJournal,
) -> None:
    async def scenario() -> Any:
        await journal.open_run("r", "app:main", (), {})
        await record(journal, "1", {"id": 7})
        await record(journal, "2", [1, 2])
        await journal.end_run("r", error=ConnectionError("down"))
        return await journal.open_run("r", "app:main", (), {})

    opened = asyncio.run(scenario())
    assert opened.results == {"1": {"id": 7}, "2": [1, 2]}


def test_result_that_cannot_be_loaded_fails_its_replay_not_the_resume(path: Path) -> None:
    class Refusing(JsonSerializer):
        def loads(self, data: str | bytes) -> Any:
            value = super().loads(data)
            if value == "unreadable":
                raise ValueError("refused")
            return value

    async def scenario(journal: SQLiteJournal) -> Any:
        await journal.open_run("r", "app:main", (), {})
        await record(journal, "1", "fine")
        await record(journal, "2", "unreadable")
        await journal.end_run("r", error=ConnectionError("down"))
        return await journal.open_run("r", "app:main", (), {})

    with SQLiteJournal(path, serializer=Refusing()) as journal:
        opened = asyncio.run(scenario(journal))
        assert opened.results == {"1": "fine"}
        with pytest.raises(JournalError, match=r"call key '2'.*ValueError: refused"):
            journal.load(opened.calls["2"][2], "fetch", "2")


def test_call_replayed_twice_in_one_run_returns_a_fresh_result_each_time(path: Path) -> None:
    orch = Orchestrator(journal=path)
    live: list[str] = []
    seen: list[list[str]] = []
    failing = {"attempts": 2}

    @orch.action
    async def child() -> list[str]:
        live.append("child")
        return ["original"]

    @orch.action(retry=RetryPolicy(retries=1, delay=0.0))
    async def parent() -> list[str]:
        value = await child()  # key "1.1" in every attempt
        seen.append(list(value))
        value.append("changed by the caller")
        if failing["attempts"]:
            failing["attempts"] -= 1
            raise ConnectionError("flaky")
        return value

    async def body() -> list[str]:
        return await parent()

    try:
        with pytest.raises(ConnectionError):
            orch.run_sync(body, run_id="twice")  # both attempts fail; "1.1" is recorded
        failing["attempts"] = 1
        live.clear()
        seen.clear()
        assert orch.run_sync(body, run_id="twice") == ["original", "changed by the caller"]
    finally:
        assert isinstance(orch.journal, SQLiteJournal)
        orch.journal.close()
    assert live == []
    assert seen == [["original"], ["original"]]
