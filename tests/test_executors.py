"""Executors: where the function of a sync action runs."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

import process_work
from orchestrator import ActionTimeout, Orchestrator, OutsideRunError
from orchestrator.executors import Executor, FuturesExecutor, InlineExecutor, ThreadExecutor


class Counting:
    """An executor of our own: runs functions inline and counts them."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.ran.append(getattr(fn, "__name__", "?"))
        return fn(*args, **kwargs)


def current_thread_name() -> str:
    return threading.current_thread().name


def test_an_orchestrator_runs_sync_actions_on_its_executor() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="app-pool") as pool:
        orch = Orchestrator(executor=pool)
        orch.set_state("user", "ada")
        where = orch.action(current_thread_name)
        reads = orch.action(lambda: orch.get_state().user, name="reads")

        async def body() -> tuple[str, str]:
            return await where(), await reads()

        name, user = orch.run_sync(body)
    assert name.startswith("app-pool")
    assert user == "ada"


def test_an_action_executor_overrides_the_orchestrator_one() -> None:
    mine = Counting()
    orch = Orchestrator()
    here = orch.action(current_thread_name, executor=mine)
    default = orch.action(current_thread_name, name="default")

    async def body() -> tuple[str, str]:
        return await here(), await default()

    on_loop, in_worker = orch.run_sync(body)
    assert mine.ran == ["current_thread_name"]
    assert on_loop == "MainThread"
    assert in_worker.startswith("orchestrator-worker")


def test_any_object_with_a_run_method_is_an_executor() -> None:
    assert isinstance(Counting(), Executor)
    assert isinstance(ThreadExecutor(2), Executor)
    assert isinstance(InlineExecutor(), Executor)
    with ThreadPoolExecutor(1) as pool:
        assert isinstance(FuturesExecutor(pool), Executor)


def test_inline_executor_runs_on_the_loop_thread() -> None:
    orch = Orchestrator(executor=InlineExecutor())
    where = orch.action(current_thread_name)
    assert orch.run_sync(where) == "MainThread"
    assert where.inline


def test_thread_executor_limits_how_many_run_at_once() -> None:
    executor = ThreadExecutor(max_threads=2)
    orch = Orchestrator(executor=executor)
    lock = threading.Lock()
    running = [0]
    most = [0]
    release = threading.Event()

    def work(_: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(1.0)
        with lock:
            running[0] -= 1

    action = orch.action(work)

    async def body() -> None:
        task = asyncio.ensure_future(orch.map(action, range(6)))
        await asyncio.sleep(0.05)
        release.set()
        await task

    orch.run_sync(body)
    assert most[0] == 2
    assert repr(executor) == "ThreadExecutor(max_threads=2)"


def test_a_queued_call_on_a_futures_executor_that_timed_out_never_runs() -> None:
    started: list[str] = []
    gate = threading.Event()

    def blocker() -> None:
        started.append("blocker")
        gate.wait(2.0)

    def queued() -> None:
        started.append("queued")

    with ThreadPoolExecutor(1) as pool:
        orch = Orchestrator(executor=pool)
        first = orch.action(blocker)
        second = orch.action(queued, timeout=0.02)

        async def body() -> None:
            running = asyncio.ensure_future(first())
            await asyncio.sleep(0.01)
            with pytest.raises(ActionTimeout):
                await second()
            gate.set()
            await running

        orch.run_sync(body)
    assert started == ["blocker"]


@pytest.mark.parametrize("bad", [object(), "threads", 4])
def test_an_executor_that_is_not_one_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="executor must be an Executor"):
        Orchestrator(executor=bad)
    with pytest.raises(TypeError, match="executor must be an Executor"):
        Orchestrator().action(current_thread_name, executor=bad)


def test_an_executor_for_an_async_action_is_refused() -> None:
    async def fetch() -> None:
        return None

    with pytest.raises(ValueError, match="async actions run on the event loop"):
        Orchestrator().action(fetch, executor=InlineExecutor())


def test_inline_and_an_executor_together_are_refused() -> None:
    with pytest.raises(ValueError, match="inline=True and executor="):
        Orchestrator().action(current_thread_name, inline=True, executor=InlineExecutor())


def test_an_inline_executor_with_a_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="an InlineExecutor cannot be combined with a timeout"):
        Orchestrator().action(current_thread_name, executor=InlineExecutor(), timeout=1)


def test_max_threads_must_be_a_positive_int() -> None:
    with pytest.raises(TypeError, match="max_threads must be an int"):
        ThreadExecutor(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_threads must be 1 or more"):
        ThreadExecutor(0)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_process_pool_never_reads_the_copy_of_the_run_context_it_inherits() -> None:
    # The pool forks its worker inside the run, which copies the run's context: the function
    # must not see it.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        reads = process_work.orch.action(process_work.read_state, executor=pool)
        with pytest.raises(OutsideRunError, match="running in a worker process"):
            process_work.orch.run_sync(reads)
