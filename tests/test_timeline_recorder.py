"""Timeline(orchestrator): recording live runs into records, and drawing them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator import CallInfo, Interceptor, Orchestrator, RetryPolicy, set_testing
from orchestrator.timeline import CallRecord, RunRecord, Timeline
from test_timeline import TreeBuilder, rows


def recorded() -> tuple[Orchestrator[Any], Timeline]:
    orch: Orchestrator[Any] = Orchestrator()
    return orch, Timeline(orch)


def shape(calls: list[CallRecord]) -> list[tuple[str, str, str | None, str]]:
    return [(c.call_key, c.name, c.parent_key, c.status) for c in calls]


def parsed(html: str) -> Any:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def test_a_run_and_its_calls_are_recorded_with_their_parents_and_outcomes() -> None:
    orch, timeline = recorded()

    @orch.action
    async def fetch(item: int) -> int:
        return item * 10

    @orch.action
    def resize(size: int, *, square: bool) -> str:  # a worker thread
        return f"{size}px"

    @orch.action
    async def fetch_all() -> list[int]:
        return await orch.map(fetch, [1, 2])

    async def main(user: str) -> str:
        await fetch_all()
        return await resize(64, square=True)

    assert orch.run_sync(main, "u1", run_id="r1") == "64px"
    run, calls = timeline.records()
    assert (run.run_id, run.status, run.args, run.result, run.error) == (
        "r1",
        "succeeded",
        "'u1'",
        "'64px'",
        None,
    )
    assert run.body.endswith(
        ":test_a_run_and_its_calls_are_recorded_with_their_parents_and_outcomes.<locals>.main"
    )
    assert shape(calls) == [
        ("1", "fetch_all", None, "succeeded"),
        ("1.1.1.1", "fetch", "1", "succeeded"),
        ("1.1.2.1", "fetch", "1", "succeeded"),
        ("2", "resize", None, "succeeded"),
    ]
    assert [(c.args, c.result) for c in calls] == [
        ("", "[10, 20]"),
        ("1", "10"),
        ("2", "20"),
        ("64, square=True", "'64px'"),
    ]
    for call in calls:
        assert call.ended is not None
        assert run.started <= call.started <= call.ended <= run.ended  # type: ignore[operator]


def test_each_attempt_is_recorded_with_its_error_and_the_wait_after_it() -> None:
    orch, timeline = recorded()
    failures = iter([ConnectionError("reset")])

    @orch.action(retry=RetryPolicy(retries=2, delay=0.001, jitter=0))
    async def fetch() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    with set_testing(False):
        orch.run_sync(fetch)
    (call,) = timeline.records()[1]
    first, second = call.attempts
    assert (first.number, first.error, first.delay) == (1, "ConnectionError: reset", 0.001)
    assert (second.number, second.error, second.delay) == (2, None, None)
    assert first.ended is not None
    assert second.ended is not None
    assert call.started <= first.started <= first.ended <= second.started <= second.ended


def test_failed_timed_out_and_cancelled_calls_are_recorded_as_such() -> None:
    orch, timeline = recorded()

    @orch.action(timeout=0.01)
    async def hang() -> None:
        await asyncio.Event().wait()

    @orch.action
    async def slow() -> None:
        await asyncio.Event().wait()

    @orch.action
    async def broken() -> None:
        with contextlib.suppress(TimeoutError):
            await hang()
        raise ValueError("bad <input>")

    with pytest.raises(ValueError, match="bad"):
        orch.run_sync(orch.parallel([slow, broken], fail_fast=True), run_id="r1")
    run, calls = timeline.records()
    assert (run.status, run.error) == ("failed", "ValueError: bad <input>")
    assert shape(calls) == [
        ("1.1.1", "slow", None, "cancelled"),
        ("1.2.1", "broken", None, "failed"),
        ("1.2.1.1", "hang", "1.2.1", "failed"),
    ]
    by_key = {c.call_key: c for c in calls}
    assert by_key["1.2.1.1"].error == (
        "ActionTimeout: action 'hang' did not finish within its timeout of 0.01 s"
    )
    assert by_key["1.2.1.1"].attempts[0].error == by_key["1.2.1.1"].error
    assert by_key["1.1.1"].error == "CancelledError"


def test_a_replayed_call_is_recorded_as_replayed() -> None:
    class Replay(Interceptor):
        async def intercept_call(self, call: CallInfo[Any], proceed: Any) -> Any:
            call.replayed = True
            return "recorded"

    orch, timeline = recorded()
    orch.add_interceptor(Replay())
    fetch = orch.action(lambda: "live", name="fetch")
    orch.run_sync(fetch)
    (call,) = timeline.records()[1]
    assert (call.replayed, call.result, call.attempts) == (True, "'recorded'", ())


def test_a_run_in_progress_can_be_drawn_with_its_calls_running() -> None:
    orch, timeline = recorded()
    seen: list[tuple[str, list[str]]] = []

    @orch.action
    async def step() -> None:
        run, calls = timeline.records()
        seen.append((run.status, [c.status for c in calls]))
        parsed(timeline.html())

    orch.run_sync(step)
    assert seen == [("running", ["running"])]


def test_to_html_writes_one_bar_per_call_with_its_name_and_key(tmp_path: Path) -> None:
    orch, timeline = recorded()

    @orch.action
    async def fetch(item: int) -> int:
        return item

    async def main() -> None:
        await orch.map(fetch, [1, 2, 3])
        await fetch.keyed("last")(4)

    orch.run_sync(main)
    path = timeline.to_html(tmp_path / "run.html")
    assert path == tmp_path / "run.html"
    root = parsed(path.read_text(encoding="utf-8"))
    labels = [(row.one("name").text, row.one("key").text) for row in rows(root)]
    assert labels == [("fetch", "1.1.1"), ("fetch", "1.2.1"), ("fetch", "1.3.1"), ("fetch", "last")]
    assert all(len(row.all("bar")) == 1 for row in rows(root))


def test_to_chrome_trace_writes_one_complete_event_per_call(tmp_path: Path) -> None:
    orch, timeline = recorded()
    step = orch.action(lambda: None, name="step", inline=True)

    async def main() -> None:
        await step()
        await step()

    orch.run_sync(main)
    path = timeline.to_chrome_trace(str(tmp_path / "trace.json"))
    events = json.loads(path.read_text(encoding="utf-8"))["traceEvents"]
    calls = [e["args"]["call_key"] for e in events if e["ph"] == "X" and e["cat"] != "run"]
    assert calls == ["1", "2"]


@pytest.mark.parametrize(
    "hostile",
    ["</script><script>alert(1)</script>", "<img src=x onerror=alert(1)>"],
)
def test_values_from_outside_are_shown_as_text_and_inject_nothing(hostile: str) -> None:
    orch, timeline = recorded()

    @orch.action
    async def fetch(value: str) -> str:
        raise ValueError(value)

    with pytest.raises(ValueError, match="alert"):
        orch.run_sync(fetch, hostile)
    html = timeline.html()
    assert hostile not in html
    assert "<script" not in html
    assert "<img" not in html


def test_every_run_is_kept_and_picked_by_its_id() -> None:
    orch, timeline = recorded()
    step = orch.action(lambda: None, name="step", inline=True)
    orch.run_sync(step, run_id="a")
    orch.run_sync(step, run_id="b")
    assert timeline.run_ids() == ["a", "b"]
    assert timeline.records("b")[0].run_id == "b"
    with pytest.raises(ValueError, match=r"^2 runs were recorded; pass run_id= one of 'a', 'b'$"):
        timeline.html()


def test_a_run_id_used_again_replaces_the_earlier_record() -> None:
    orch, timeline = recorded()
    orch.run_sync(orch.action(lambda: 1, name="first", inline=True), run_id="a")
    orch.run_sync(orch.action(lambda: 2, name="second", inline=True), run_id="a")
    assert [c.name for c in timeline.records("a")[1]] == ["second"]


def test_close_stops_recording_and_keeps_what_was_recorded() -> None:
    orch, timeline = recorded()
    step = orch.action(lambda: None, name="step", inline=True)
    orch.run_sync(step, run_id="a")
    timeline.close()
    timeline.close()
    orch.run_sync(step, run_id="b")
    assert timeline.run_ids() == ["a"]


def test_a_with_block_closes_the_timeline() -> None:
    orch: Orchestrator[Any] = Orchestrator()
    with Timeline(orch) as timeline:
        orch.run_sync(lambda: None, run_id="a")
    orch.run_sync(lambda: None, run_id="b")
    assert timeline.run_ids() == ["a"]


def test_clear_forgets_the_runs() -> None:
    orch, timeline = recorded()
    orch.run_sync(lambda: None)
    timeline.clear()
    assert timeline.run_ids() == []


def test_the_records_are_the_renderers_types() -> None:
    orch, timeline = recorded()
    orch.run_sync(orch.action(lambda: None, name="step", inline=True))
    run, calls = timeline.records()
    assert isinstance(run, RunRecord)
    assert all(isinstance(call, CallRecord) for call in calls)


@pytest.mark.parametrize(
    ("run_id", "error", "message"),
    [
        (None, ValueError, "no run was recorded; run_id cannot be left out"),
        ("nope", ValueError, "no run with the id 'nope' was recorded"),
        (5, TypeError, "run_id must be a str or None, got 5"),
    ],
)
def test_a_run_that_cannot_be_found_is_refused(
    run_id: Any, error: type[Exception], message: str
) -> None:
    _, timeline = recorded()
    with pytest.raises(error, match=f"^{message}$"):
        timeline.records(run_id)


def test_a_path_of_the_wrong_type_is_refused() -> None:
    orch, timeline = recorded()
    orch.run_sync(lambda: None)
    with pytest.raises(TypeError, match=r"^path must be a str or a path, got 5$"):
        timeline.to_html(5)  # type: ignore[arg-type]


def test_something_else_than_an_orchestrator_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^orchestrator must be an Orchestrator, got 5$"):
        Timeline(5)  # type: ignore[arg-type]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def test_an_error_whose_message_cannot_be_made_is_recorded_by_its_type() -> None:
    orch, timeline = recorded()

    @orch.action
    async def fetch() -> None:
        raise Unprintable

    with pytest.raises(Unprintable):
        orch.run_sync(fetch)
    (call,) = timeline.records()[1]
    assert call.error == "Unprintable (its message could not be made)"
