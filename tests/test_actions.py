"""Actions: the ways to make them, what calling them gives, where they run, names and ids."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading

import pytest

from orchestrator import Action, ActionTimeout, Orchestrator, OutsideRunError
from orchestrator.testing import EventRecorder, set_testing

# The four ways of making an action ---------------------------------------------------------


def test_action_called_with_function_makes_working_action():
    orch = Orchestrator()

    async def double(x):
        return x * 2

    act = orch.action(double)

    assert isinstance(act, Action)
    assert orch.run_sync(act, 21) == 42


def test_bare_decorator_makes_working_action():
    orch = Orchestrator()

    @orch.action
    def add(a, b=1):
        return a + b

    assert isinstance(add, Action)
    assert orch.run_sync(add, 2, b=5) == 7


def test_decorator_with_options_applies_name_retry_and_timeout():
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    attempts = []

    @orch.action(name="flaky_call", retry=2, timeout=0.05)
    async def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError(f"attempt {len(attempts)}")
        return "ok"

    @orch.action(name="slow_call", retry=1, timeout=0.05)
    async def slow():
        await asyncio.sleep(1)

    assert isinstance(flaky, Action)
    assert (flaky.name, flaky.retry.retries, flaky.timeout) == ("flaky_call", 2, 0.05)

    async def body():
        first = await flaky()
        with pytest.raises(ActionTimeout):
            await slow()
        return first

    with set_testing(True):
        assert orch.run_sync(body) == "ok"
    assert len(attempts) == 3
    done = {e.name: e.attempts for e in recorder.events("task_completion")}
    assert done == {"flaky_call": 3, "slow_call": 2}


def test_action_called_with_function_and_options_applies_retry_and_timeout():
    orch = Orchestrator()
    recorder = EventRecorder(orch)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 2:
            raise ValueError("first attempt fails")
        return "ok"

    async def slow():
        await asyncio.sleep(1)

    flaky_act = orch.action(flaky, retry=1, timeout=0.05)
    slow_act = orch.action(slow, retry=1, timeout=0.05)
    assert (flaky_act.retry.retries, flaky_act.timeout) == (1, 0.05)

    async def body():
        first = await flaky_act()
        with pytest.raises(ActionTimeout):
            await slow_act()
        return first

    with set_testing(True):
        assert orch.run_sync(body) == "ok"
    assert len(attempts) == 2
    done = {e.name: e.attempts for e in recorder.events("task_completion")}
    assert done == {"flaky": 2, "slow": 2}


# What calling an action gives ----------------------------------------------------------------


def test_calling_async_action_returns_coroutine_of_result():
    orch = Orchestrator()

    @orch.action
    async def square(x):
        return x * x

    async def body():
        pending = square(7)
        assert inspect.iscoroutine(pending)
        return await pending

    assert orch.run_sync(body) == 49


def test_calling_sync_action_returns_coroutine_of_result():
    orch = Orchestrator()

    @orch.action
    def square(x):
        return x * x

    async def body():
        pending = square(6)
        assert inspect.iscoroutine(pending)
        return await pending

    assert orch.run_sync(body) == 36


def test_sync_action_runs_in_worker_thread_by_default():
    orch = Orchestrator()

    @orch.action
    def where():
        return threading.get_ident()

    async def body():
        return threading.get_ident(), await where()

    loop_thread, action_thread = orch.run_sync(body)
    assert action_thread != loop_thread


def test_inline_sync_action_runs_on_loop_thread():
    orch = Orchestrator()

    @orch.action(inline=True)
    def where():
        return threading.get_ident()

    async def body():
        return threading.get_ident(), await where()

    loop_thread, action_thread = orch.run_sync(body)
    assert action_thread == loop_thread


def test_sync_function_returning_awaitable_is_awaited_in_thread_and_inline():
    orch = Orchestrator()

    async def later(value):
        await asyncio.sleep(0)
        return value

    threaded = orch.action(lambda: later("from thread"))
    inline = orch.action(lambda: later("inline"), inline=True)

    async def body():
        return await threaded(), await inline()

    assert orch.run_sync(body) == ("from thread", "inline")


# Task names ----------------------------------------------------------------------------------


def _begin_names(orch, *actions):
    recorder = EventRecorder(orch)

    async def body():
        for act in actions:
            await act()

    orch.run_sync(body)
    return [e.name for e in recorder.events("task_begin")]


def test_task_name_is_function_name():
    orch = Orchestrator()

    async def check_inventory():
        return None

    act = orch.action(check_inventory)
    assert act.name == "check_inventory"
    assert _begin_names(orch, act) == ["check_inventory"]


def test_task_name_of_lambda_is_anonymous():
    orch = Orchestrator()
    act = orch.action(lambda: 1)
    assert act.name == "anonymous"
    assert _begin_names(orch, act) == ["anonymous"]


def test_task_name_argument_overrides_function_name():
    orch = Orchestrator()

    def fetch():
        return 1

    act = orch.action(fetch, name="fetch_user_data")
    anon = orch.action(lambda: 1, name="named_lambda")
    assert (act.name, anon.name) == ("fetch_user_data", "named_lambda")
    assert _begin_names(orch, act, anon) == ["fetch_user_data", "named_lambda"]


def test_task_name_of_partial_is_wrapped_function_name():
    orch = Orchestrator()

    async def notify_team(channel, message):
        return channel, message

    act = orch.action(functools.partial(notify_team, "ops", "hi"))
    nested = orch.action(functools.partial(functools.partial(notify_team, "ops"), "hi"))
    assert (act.name, nested.name) == ("notify_team", "notify_team")
    assert _begin_names(orch, act, nested) == ["notify_team", "notify_team"]
    assert orch.run_sync(act) == ("ops", "hi")


# Outside a run -------------------------------------------------------------------------------


def test_action_awaited_outside_any_run_raises_outside_run_error():
    orch = Orchestrator()
    ran = []

    @orch.action
    async def step():
        ran.append(1)

    async def main():
        await step()

    with pytest.raises(OutsideRunError, match=r"'step'.*outside a run"):
        asyncio.run(main())
    assert ran == []


def test_action_called_outside_a_run_raises_at_the_call_not_at_the_await():
    orch = Orchestrator()

    @orch.action
    async def step():
        return 1

    # No coroutine is created, so nothing is left un-awaited (warnings are errors here).
    with pytest.raises(OutsideRunError, match=r"'step'.*outside a run"):
        step()


def test_action_in_run_of_different_orchestrator_raises_outside_run_error():
    mine = Orchestrator()
    other = Orchestrator()
    ran = []

    @mine.action
    def step():
        ran.append(1)

    async def body():
        await step()

    with pytest.raises(OutsideRunError, match="outside a run"):
        other.run_sync(body)
    assert ran == []


# Nesting and task ids ------------------------------------------------------------------------


def test_inner_action_events_name_outer_task_as_parent():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def innermost():
        return 1

    @orch.action
    async def inner():
        return await innermost()

    @orch.action
    async def outer():
        return await inner() + await inner()

    assert orch.run_sync(outer) == 2

    begins = {e.task_id: e for e in recorder.events("task_begin")}
    by_name = {}
    for event in begins.values():
        by_name.setdefault(event.name, []).append(event)
    (top,) = by_name["outer"]
    assert top.parent_id is None
    assert [e.parent_id for e in by_name["inner"]] == [top.task_id, top.task_id]
    inner_ids = [e.task_id for e in by_name["inner"]]
    assert sorted(e.parent_id for e in by_name["innermost"]) == sorted(inner_ids)

    completions = recorder.events("task_completion")
    assert len(completions) == len(begins)
    for event in completions:
        assert event.parent_id == begins[event.task_id].parent_id


def test_task_ids_are_unique_within_run_across_parallel_and_nested_calls():
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action
    async def leaf(x):
        await asyncio.sleep(0)
        return x

    @orch.action
    async def branch(x):
        return await leaf(x) + await leaf(x)

    @orch.action
    def sync_leaf():
        return 0

    async def body():
        group = orch.parallel([lambda: branch(1), lambda: branch(2), lambda: leaf(0), sync_leaf])
        results = await group()
        results.append(await branch(3))
        return results

    assert orch.run_sync(body) == [2, 4, 0, 0, 6]
    begin_ids = [e.task_id for e in recorder.events("task_begin")]
    assert len(begin_ids) == 3 * 3 + 2
    assert len(set(begin_ids)) == len(begin_ids)
    assert sorted(e.task_id for e in recorder.events("task_completion")) == sorted(begin_ids)


# Metadata ------------------------------------------------------------------------------------


def test_action_keeps_name_doc_and_wrapped():
    orch = Orchestrator()

    async def get_user_profile(user_id):
        """Fetch a user's profile."""
        return user_id

    act = orch.action(get_user_profile, name="profile")
    assert act.__name__ == "get_user_profile"
    assert act.__doc__ == "Fetch a user's profile."
    assert act.__wrapped__ is get_user_profile


def test_action_repr_mentions_name():
    orch = Orchestrator()

    def get_shipping_options():
        return []

    assert "get_shipping_options" in repr(orch.action(get_shipping_options))
    assert "'shipping'" in repr(orch.action(get_shipping_options, name="shipping"))


# Edge cases of the call path --------------------------------------------------------------


@pytest.mark.parametrize("inline", [False, True])
def test_sync_action_raising_stop_iteration_raises_runtime_error_caused_by_it(inline):
    orch = Orchestrator()

    @orch.action(inline=inline)
    def first(items):
        return next(iter(items))  # StopIteration on an empty list

    async def body():
        # A guard, so that a call that never finishes fails the test instead of hanging it.
        async with asyncio.timeout(1):
            return await first([7]), await first([])

    with pytest.raises(RuntimeError) as info:
        orch.run_sync(body)
    assert isinstance(info.value.__cause__, StopIteration)
    assert not isinstance(info.value, TimeoutError)


def test_action_made_from_an_async_action_runs_on_the_loop_thread_without_a_worker(monkeypatch):
    from orchestrator import _threads

    orch = Orchestrator()
    hops = []
    real_run = _threads.WorkerPool.run

    async def spy(self, fn, args, kwargs):
        hops.append(fn)
        return await real_run(self, fn, args, kwargs)

    monkeypatch.setattr(_threads.WorkerPool, "run", spy)

    @orch.action
    async def inner(value):
        return value, threading.get_ident()

    outer = orch.action(inner, name="outer")

    async def body():
        return threading.get_ident(), await outer("v")

    loop_thread, (value, ident) = orch.run_sync(body)
    assert value == "v"
    assert ident == loop_thread
    assert hops == []  # no hop to a worker thread on the way


def test_a_partial_of_an_async_action_is_async_too() -> None:
    orch = Orchestrator()
    threads: list[int] = []

    @orch.action
    async def fetch(user_id: str) -> str:
        threads.append(threading.get_ident())
        return user_id

    bound = orch.action(functools.partial(fetch, "u1"))
    with pytest.raises(ValueError, match="applies to sync functions only"):
        orch.action(functools.partial(fetch, "u1"), inline=True)
    assert orch.run_sync(bound) == "u1"
    assert threads == [threading.get_ident()]
