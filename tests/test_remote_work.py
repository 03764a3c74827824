"""Work sent to another process: what runs there, what it may read, and what cannot travel."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator import Orchestrator, OutsideRunError
from orchestrator._remote import UnnamedError, call_remote, call_remote_async

# A variable of the worker's own, as Dask keeps the worker running a task in one.
worker_variable: contextvars.ContextVar[str] = contextvars.ContextVar("worker")

REMOTE_ERROR = (
    "get_state() was called in a function running in a test worker, and the context lives in "
    "the process running the run; pass the function what it needs from the context as arguments"
)


def test_work_sent_away_from_inside_a_run_cannot_read_its_context() -> None:
    # As in a worker forked during a run, or a worker thread of this process whose context
    # was copied inside one: the run's variable is there, and must not be read.
    orch = Orchestrator().set_state("user", "ada")

    def body() -> None:
        with pytest.raises(OutsideRunError) as caught:
            call_remote("a test worker", orch.get_state, (), {})
        assert str(caught.value) == REMOTE_ERROR

    orch.run_sync(body)


def test_an_action_called_in_work_sent_away_is_outside_the_run() -> None:
    orch = Orchestrator()
    act = orch.action(lambda: "ran", name="nested")

    def body() -> None:
        with pytest.raises(OutsideRunError, match="action 'nested' was called outside a run"):
            call_remote("a test worker", act, (), {})

    orch.run_sync(body)


def test_work_sent_away_keeps_the_workers_own_variables() -> None:
    token = worker_variable.set("worker 1")
    try:
        assert call_remote("a test worker", worker_variable.get, (), {}) == "worker 1"
    finally:
        worker_variable.reset(token)


def test_async_work_sent_away_cannot_read_the_run_but_keeps_the_workers_variables() -> None:
    orch = Orchestrator().set_state("user", "ada")

    async def reads() -> str:
        with pytest.raises(OutsideRunError) as caught:
            orch.get_state()
        assert str(caught.value) == REMOTE_ERROR
        return worker_variable.get()

    async def body() -> str:
        worker_variable.set("worker 2")
        return await call_remote_async("a test worker", reads, (), {})  # type: ignore[no-any-return]

    assert orch.run_sync(body) == "worker 2"


class Unsendable:
    """An executor whose calls cannot travel: it raises what a remote executor would."""

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        cause = TypeError("cannot pickle '_thread.lock' object")
        raise UnnamedError(
            TypeError, "the call of action ", " could not be sent to a test worker", "fn"
        ) from cause


def test_a_call_that_cannot_travel_is_a_type_error_naming_the_action_and_its_cause() -> None:
    orch = Orchestrator(executor=Unsendable())
    act = orch.action(lambda: None, name="label")
    with pytest.raises(TypeError) as caught:
        orch.run_sync(act)
    assert type(caught.value) is TypeError
    assert str(caught.value) == "the call of action 'label' could not be sent to a test worker"
    assert str(caught.value.__cause__) == "cannot pickle '_thread.lock' object"


class Coroutines:
    """An executor that runs coroutines too (on this loop), and records what it ran."""

    runs_coroutines = True

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.ran.append(fn.__name__)
        return await fn(*args, **kwargs)


async def fetch(user: str) -> str:
    await asyncio.sleep(0)
    return f"user {user}"


def test_an_async_action_runs_on_its_executor_when_that_runs_coroutines() -> None:
    executor = Coroutines()
    orch = Orchestrator()
    act = orch.action(fetch, executor=executor, timeout=5)
    assert orch.run_sync(act, "ada") == "user ada"
    assert act.executor is executor
    assert executor.ran == ["fetch"]


def test_async_actions_stay_on_the_loop_with_an_orchestrator_executor_that_runs_coroutines() -> (
    None
):
    executor = Coroutines()
    orch = Orchestrator(executor=executor)
    act = orch.action(fetch)
    assert orch.run_sync(act, "ada") == "user ada"
    assert act.executor is None
    assert executor.ran == []
