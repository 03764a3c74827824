"""Call keys: each observed call's stable position in its run, whatever the timing."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from orchestrator import Orchestrator, RetryPolicy, set_testing
from orchestrator.testing import EventRecorder


def recorded(orch: Orchestrator[Any]) -> EventRecorder[Any]:
    return EventRecorder(orch)


def keys_by_name(recorder: EventRecorder[Any]) -> list[tuple[str, str]]:
    """(name, call_key) of each call, in the order the calls began."""
    return [(e.name, e.call_key) for e in recorder.events("task_begin")]


def test_calls_of_the_body_are_numbered_from_one_in_the_order_they_are_made() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)
    a = orch.action(lambda: None, name="a")
    b = orch.action(lambda: None, name="b")

    async def body() -> None:
        await a()
        await b()
        await a()

    orch.run_sync(body)
    assert keys_by_name(recorder) == [("a", "1"), ("b", "2"), ("a", "3")]


def test_nested_calls_extend_the_key_of_the_call_they_are_made_from() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)

    @orch.action
    async def leaf() -> None:
        return None

    @orch.action
    async def middle() -> None:
        await leaf()
        await leaf()

    @orch.action
    async def top() -> None:
        await leaf()
        await middle()

    async def body() -> None:
        await leaf()
        await top()

    orch.run_sync(body)
    assert sorted(key for _, key in keys_by_name(recorder)) == sorted(
        ["1", "2", "2.1", "2.2", "2.2.1", "2.2.2"]
    )
    completions = {e.call_key: e.name for e in recorder.events("task_completion")}
    assert completions == {
        "1": "leaf",
        "2": "top",
        "2.1": "leaf",
        "2.2": "middle",
        "2.2.1": "leaf",
        "2.2.2": "leaf",
    }


def test_keys_follow_the_order_calls_are_made_not_the_order_they_start() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)

    @orch.action
    async def step(label: str) -> str:
        return label

    async def body() -> None:
        first = step("made first")
        second = step("made second")
        await second
        await first

    orch.run_sync(body)
    assert {e.args[0]: e.call_key for e in recorder.events("task_begin")} == {
        "made first": "1",
        "made second": "2",
    }


@pytest.mark.parametrize("concurrency", [None, 2])
def test_map_members_sit_under_the_group_position_and_their_index(
    concurrency: int | None,
) -> None:
    orch = Orchestrator()
    recorder = recorded(orch)

    @orch.action
    async def item(value: int) -> int:
        # Later items finish first.
        await asyncio.sleep((5 - value) * 0.001)
        return value

    @orch.action
    async def before() -> None:
        return None

    async def body() -> list[int]:
        await before()
        return await orch.map(item, [1, 2, 3, 4], concurrency=concurrency)

    assert orch.run_sync(body) == [1, 2, 3, 4]
    keys = {e.args[0]: e.call_key for e in recorder.events("task_begin") if e.name == "item"}
    assert keys == {1: "2.1.1", 2: "2.2.1", 3: "2.3.1", 4: "2.4.1"}


def test_a_member_that_makes_several_calls_numbers_them_under_its_index() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)

    @orch.action
    async def step(label: str) -> str:
        return label

    async def first_member() -> None:
        await step("x1")
        await step("x2")

    async def second_member() -> None:
        await step("y1")

    async def body() -> None:
        await orch.parallel([first_member, second_member])()
        await step("after")

    orch.run_sync(body)
    assert {e.args[0]: e.call_key for e in recorder.events("task_begin")} == {
        "x1": "1.1.1",
        "x2": "1.1.2",
        "y1": "1.2.1",
        "after": "2",
    }


def test_groups_inside_an_action_sit_under_that_action() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)

    @orch.action
    async def leaf(value: int) -> int:
        return value

    @orch.action
    async def fan_out() -> list[int]:
        return await orch.map(leaf, [10, 20])

    async def body() -> None:
        await fan_out()

    orch.run_sync(body)
    keys = {e.args[0]: e.call_key for e in recorder.events("task_begin") if e.name == "leaf"}
    # The group is the first call made in fan_out ("1.1"); member i makes its calls under "1.1.i".
    assert keys == {10: "1.1.1.1", 20: "1.1.2.1"}


def test_retries_and_worker_threads_do_not_change_keys() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)
    failures = {"flaky": 2}

    def flaky() -> str:
        if failures["flaky"]:
            failures["flaky"] -= 1
            raise OSError("again")
        return "ok"

    retried = orch.action(flaky, retry=RetryPolicy(retries=3))
    threaded = orch.action(lambda: "thread", name="threaded")

    async def body() -> None:
        await retried()
        await threaded()

    with set_testing(True):
        orch.run_sync(body)
    assert keys_by_name(recorder) == [("flaky", "1"), ("threaded", "2")]
    retry_keys = [e.call_key for e in recorder.events("task_retry")]
    assert retry_keys == ["1", "1"]
    assert [e.call_key for e in recorder.events("task_completion")] == ["1", "2"]


def test_error_events_carry_the_key() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)

    @orch.action
    async def broken() -> None:
        raise KeyError("x")

    async def body() -> None:
        await broken()

    with pytest.raises(KeyError):
        orch.run_sync(body)
    assert [e.call_key for e in recorder.events("task_error")] == ["1"]


def test_the_same_body_gives_the_same_keys_whatever_the_timing() -> None:
    def run_once(seed: int) -> dict[tuple[str, int], str]:
        rng = random.Random(seed)
        orch = Orchestrator()
        recorder = recorded(orch)

        @orch.action
        async def leaf(value: int) -> int:
            await asyncio.sleep(rng.random() * 0.002)
            return value

        @orch.action
        async def branch(value: int) -> list[int]:
            await asyncio.sleep(rng.random() * 0.002)
            return await orch.map(leaf, [value * 10 + i for i in range(3)], concurrency=2)

        async def body() -> None:
            await orch.map(branch, range(4))
            await orch.parallel([branch, branch])(7, 8)

        orch.run_sync(body)
        return {(e.name, e.args[0]): e.call_key for e in recorder.events("task_begin")}

    first = run_once(1)
    assert len(first) == 4 * 4 + 2 * 4
    for seed in (2, 3, 4):
        assert run_once(seed) == first


def test_an_explicit_key_part_replaces_the_position_without_taking_one() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)

    @orch.action
    async def fetch(user: str) -> str:
        return user

    @orch.action
    async def outer() -> None:
        await fetch.keyed("alice")("alice")

    async def body() -> None:
        await fetch("first")
        await fetch.keyed("bob")("bob")
        await fetch("second")
        await outer()

    orch.run_sync(body)
    assert {e.args[0] if e.args else e.name: e.call_key for e in recorder.events("task_begin")} == {
        "first": "1",
        "bob": "bob",
        "second": "2",
        "outer": "3",
        "alice": "3.alice",
    }


def test_an_explicit_key_part_used_twice_in_one_scope_is_refused() -> None:
    orch = Orchestrator()
    orch.on_task_begin(lambda event: None)

    @orch.action
    async def fetch(user: str) -> str:
        return user

    async def body() -> None:
        await fetch.keyed("same")("a")
        fetch.keyed("same")("b")

    with pytest.raises(ValueError, match="call key 'same' of run 'r' was already used"):
        orch.run_sync(body, run_id="r")


@pytest.mark.parametrize(
    ("part", "error"),
    [(3, TypeError), ("", ValueError), ("a.b", ValueError), ("12", ValueError)],
)
def test_a_bad_key_part_is_refused_when_given(part: Any, error: type[Exception]) -> None:
    orch = Orchestrator()
    step = orch.action(lambda: None, name="step")
    with pytest.raises(error, match="call key part"):
        step.keyed(part)


def test_a_keyed_call_outside_a_run_is_refused_at_the_call() -> None:
    from orchestrator import OutsideRunError

    orch = Orchestrator()
    step = orch.action(lambda: None, name="step")
    with pytest.raises(OutsideRunError):
        step.keyed("x")()


def test_each_attempt_numbers_its_nested_calls_afresh() -> None:
    orch = Orchestrator()
    recorder = recorded(orch)
    attempts: list[int] = []

    @orch.action
    async def leaf(label: str) -> str:
        return label

    @orch.action(retry=RetryPolicy(retries=2))
    async def outer() -> None:
        attempts.append(len(attempts) + 1)
        await leaf("first")
        await leaf.keyed("named")("named")
        if len(attempts) < 3:
            raise OSError("again")

    async def body() -> None:
        await outer()

    with set_testing(True):
        orch.run_sync(body)
    keys = [(e.args[0], e.call_key) for e in recorder.events("task_begin") if e.name == "leaf"]
    assert keys == [("first", "1.1"), ("named", "1.named")] * 3
