"""DaskExecutor on the shared in-process cluster: the semantics of calls on Dask."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

# distributed comes with the test extra: a missing install fails here rather than skipping.
import distributed
import pytest
from distributed import Client, Future, LocalCluster
from distributed.client import FutureCancelledError

from orchestrator import ActionTimeout, Orchestrator, OutsideRunError, RetryPolicy
from orchestrator.dask import DaskExecutor
from orchestrator.testing import EventRecorder

Waiter = Callable[[Callable[[], bool], str], None]

# What the functions below did on the workers (threads of this process), and the gate that
# holds the ones that wait.
started: list[str] = []
finished: list[str] = []
gate = threading.Event()
tries: dict[str, int] = {}


@pytest.fixture(autouse=True)
def fresh_workers(wait_until: Waiter) -> Iterator[None]:
    started.clear()
    finished.clear()
    tries.clear()
    gate.clear()
    try:
        yield
    finally:
        # A task whose call was abandoned may still run: let it end before the next test.
        gate.set()
        wait_until(lambda: len(finished) == len(started), "the held functions to return")


def record(label: str) -> str:
    started.append(label)
    finished.append(label)
    return label


def hold(label: str) -> str:
    started.append(label)
    gate.wait(10)
    finished.append(label)
    return label


def double(x: int) -> int:
    return 2 * x


def fails(x: int) -> int:
    raise ValueError(f"no {x}")


def fails_once(label: str) -> str:
    tries[label] = tries.get(label, 0) + 1
    if tries[label] == 1:
        raise ConnectionError(f"{label} failed")
    return f"{label} on try {tries[label]}"


def worker_address() -> str:
    return str(distributed.get_worker().address)


async def worker_address_async() -> str:
    await asyncio.sleep(0)
    return str(distributed.get_worker().address)


shared = Orchestrator().set_state("user", "ada")


def read_user() -> str:
    return str(shared.get_state().user)


def loop_thread() -> int:
    return threading.get_ident()


async def loop_thread_async() -> int:
    return threading.get_ident()


def keys_of(function: Callable[..., Any], keys: list[str]) -> list[str]:
    return [key for key in keys if key.startswith(f"{function.__name__}-")]


@contextlib.asynccontextmanager
async def executor_with(kind: str, cluster: LocalCluster, client: Client) -> AsyncIterator[Any]:
    """A DaskExecutor with the shared synchronous client, or an asynchronous one of this loop."""
    if kind == "sync":
        yield DaskExecutor(client)
        return
    async with Client(cluster.scheduler_address, asynchronous=True) as own:
        yield DaskExecutor(own)


CLIENTS = pytest.mark.parametrize("kind", ["sync", "async"])


def test_importing_orchestrator_imports_neither_dask_nor_distributed() -> None:
    code = (
        "import sys, orchestrator, orchestrator.executors, orchestrator.testing; "
        "print(sorted(name for name in ('dask', 'distributed') if name in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_sync_actions_of_an_orchestrator_run_on_dask_workers(
    dask_executor: DaskExecutor, dask_cluster: LocalCluster
) -> None:
    orch = Orchestrator(executor=dask_executor)
    where = orch.action(worker_address)
    workers = {worker.address for worker in dask_cluster.workers.values()}
    assert orch.run_sync(where) in workers


def test_an_action_runs_on_its_own_dask_executor_and_the_others_in_threads(
    dask_executor: DaskExecutor, submissions: Any
) -> None:
    orch = Orchestrator()
    on_dask = orch.action(record, executor=dask_executor)
    in_thread = orch.action(loop_thread)
    mark = len(submissions.keys)

    async def body() -> tuple[str, int]:
        return await on_dask("sent"), await in_thread()

    label, thread = orch.run_sync(body)
    assert label == "sent"
    assert thread != threading.get_ident()
    assert len(keys_of(record, submissions.since(mark))) == 1
    assert keys_of(loop_thread, submissions.since(mark)) == []


def test_functions_on_workers_can_use_dasks_get_worker_and_get_client(
    dask_executor: DaskExecutor, dask_cluster: LocalCluster
) -> None:
    def uses_dask() -> tuple[str, str]:
        return distributed.get_worker().address, distributed.get_client().scheduler.address

    orch = Orchestrator(executor=dask_executor)
    worker, scheduler = orch.run_sync(orch.action(uses_dask))
    assert worker in {w.address for w in dask_cluster.workers.values()}
    assert scheduler == dask_cluster.scheduler_address


def test_a_lambda_runs_on_dask(dask_executor: DaskExecutor) -> None:
    orch = Orchestrator(executor=dask_executor)
    assert orch.run_sync(orch.action(lambda x: x + 1, name="increment"), 41) == 42


def test_get_state_on_a_worker_says_the_context_stays_with_the_run(
    dask_executor: DaskExecutor,
) -> None:
    reads = shared.action(read_user, executor=dask_executor)
    with pytest.raises(OutsideRunError) as caught:
        shared.run_sync(reads)
    assert str(caught.value) == (
        "get_state() was called in a function running in a Dask worker, and the context lives "
        "in the process running the run; pass the function what it needs from the context as "
        "arguments"
    )


def test_identical_calls_run_as_two_tasks(dask_executor: DaskExecutor, submissions: Any) -> None:
    orch = Orchestrator(executor=dask_executor)
    act = orch.action(record)
    mark = len(submissions.keys)

    async def body() -> list[Any]:
        return await orch.parallel([act, act])("same", "same")

    assert orch.run_sync(body) == ["same", "same"]
    assert started == ["same", "same"]
    assert len(set(keys_of(record, submissions.since(mark)))) == 2


def test_an_identical_call_made_while_the_first_runs_is_a_task_of_its_own(
    dask_executor: DaskExecutor, wait_until: Waiter
) -> None:
    orch = Orchestrator(executor=dask_executor)
    held = orch.action(hold)

    async def body() -> list[str]:
        first = asyncio.ensure_future(held("same"))
        await asyncio.to_thread(wait_until, lambda: len(started) == 1, "the first call")
        second = asyncio.ensure_future(held("same"))
        await asyncio.to_thread(wait_until, lambda: len(started) == 2, "the second call")
        gate.set()
        return [await first, await second]

    assert orch.run_sync(body) == ["same", "same"]


@CLIENTS
def test_the_calls_of_a_map_reach_the_scheduler_as_one_graph(
    kind: str, dask_cluster: LocalCluster, dask_client: Client, submissions: Any
) -> None:
    orch = Orchestrator()

    async def body() -> list[int]:
        async with executor_with(kind, dask_cluster, dask_client) as executor:
            mark = len(submissions.keys)
            graphs = len(submissions.graphs)
            results = await orch.map(orch.action(double, executor=executor), range(20))
            assert len(keys_of(double, submissions.since(mark))) == 20
            assert len(submissions.graphs) == graphs + 1
            return results

    assert orch.run_sync(body) == [2 * i for i in range(20)]


@CLIENTS
def test_a_queued_task_never_starts_once_its_call_timed_out(
    kind: str,
    dask_cluster: LocalCluster,
    dask_client: Client,
    submissions: Any,
    wait_until: Waiter,
) -> None:
    orch = Orchestrator()
    (worker,) = dask_cluster.workers.values()
    queued_key: list[str] = []

    async def body() -> None:
        async with executor_with(kind, dask_cluster, dask_client) as executor:
            holding = orch.action(hold, executor=executor)
            queued = orch.action(record, executor=executor, timeout=0.3)
            holders = [asyncio.ensure_future(holding(f"holder {i}")) for i in (1, 2)]
            await asyncio.to_thread(wait_until, lambda: len(started) == 2, "both worker threads")
            mark = len(submissions.keys)
            with pytest.raises(ActionTimeout):
                await queued("queued")
            queued_key.extend(keys_of(record, submissions.since(mark)))
            # Dask drops a cancelled task from the worker's queue when the cancellation
            # arrives: only then may a worker thread free up.
            await asyncio.to_thread(
                wait_until,
                lambda: queued_key[0] not in worker.state.tasks,
                "the worker to drop the cancelled task",
            )
            gate.set()
            assert await asyncio.gather(*holders) == ["holder 1", "holder 2"]
            assert await orch.action(record, executor=executor)("after") == "after"

    orch.run_sync(body)
    assert len(queued_key) == 1
    assert "queued" not in started
    assert queued_key[0] in submissions.forgotten


@CLIENTS
def test_a_cancelled_call_cancels_and_releases_its_task(
    kind: str,
    dask_cluster: LocalCluster,
    dask_client: Client,
    submissions: Any,
    wait_until: Waiter,
) -> None:
    orch = Orchestrator()
    held: list[str] = []

    async def body() -> None:
        async with executor_with(kind, dask_cluster, dask_client) as executor:
            mark = len(submissions.keys)
            call = asyncio.ensure_future(orch.action(hold, executor=executor)("held"))
            await asyncio.to_thread(wait_until, lambda: started == ["held"], "the task to start")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            held.extend(keys_of(hold, submissions.since(mark)))
            await asyncio.to_thread(
                wait_until, lambda: held[0] in submissions.forgotten, "the task to be released"
            )

    orch.run_sync(body)
    assert len(held) == 1


def test_a_task_already_running_when_its_call_timed_out_runs_to_its_end(
    dask_executor: DaskExecutor, wait_until: Waiter
) -> None:
    orch = Orchestrator(executor=dask_executor)
    slow = orch.action(hold, timeout=0.2)
    with pytest.raises(ActionTimeout):
        orch.run_sync(slow, "slow")
    assert started == ["slow"]
    assert finished == []
    gate.set()
    wait_until(lambda: finished == ["slow"], "the function to return")


def test_a_retry_submits_a_new_task(dask_executor: DaskExecutor, submissions: Any) -> None:
    orch = Orchestrator(executor=dask_executor)
    flaky = orch.action(fails_once, retry=RetryPolicy(retries=1, delay=0))
    mark = len(submissions.keys)
    assert orch.run_sync(flaky, "flaky") == "flaky on try 2"
    assert len(set(keys_of(fails_once, submissions.since(mark)))) == 2


def test_a_task_cancelled_in_dask_is_not_retried(
    dask_executor: DaskExecutor,
    dask_client: Client,
    submissions: Any,
    wait_until: Waiter,
) -> None:
    orch = Orchestrator(executor=dask_executor)
    recorder = EventRecorder(orch)
    held = orch.action(hold, retry=RetryPolicy(retries=3, delay=0))
    mark = len(submissions.keys)

    async def body() -> None:
        call = asyncio.ensure_future(held("held"))
        await asyncio.to_thread(wait_until, lambda: started == ["held"], "the task to start")
        (key,) = keys_of(hold, submissions.since(mark))
        await asyncio.to_thread(dask_client.cancel, [Future(key, dask_client)])
        await call

    with pytest.raises(FutureCancelledError):
        orch.run_sync(body)
    (done,) = recorder.events("task_completion")
    assert done.attempts == 1
    assert recorder.events("task_retry") == []
    assert len(keys_of(hold, submissions.since(mark))) == 1


def _lifecycle(executor: DaskExecutor | None) -> dict[str | None, list[tuple[Any, ...]]]:
    """What the hooks of one run see, per call key, with ``executor`` or worker threads."""
    tries.clear()
    orch = Orchestrator() if executor is None else Orchestrator(executor=executor)
    recorder = EventRecorder(orch)
    twice = orch.action(double, name="twice")
    bad = orch.action(fails)
    flaky = orch.action(fails_once, retry=RetryPolicy(retries=1, delay=0))

    async def body() -> int:
        total = await twice(1)
        total += sum(await orch.map(twice, [1, 2, 3]))
        with contextlib.suppress(ValueError):
            await bad(7)
        await flaky("flaky")
        return total + await twice.keyed("last")(5)

    assert orch.run_sync(body, run_id="same") == 24
    seen: dict[str | None, list[tuple[Any, ...]]] = {}
    for point, event in recorder.records:
        key = getattr(event, "call_key", None)
        error = getattr(event, "error", None)
        seen.setdefault(key, []).append(
            (
                point,
                getattr(event, "name", None),
                getattr(event, "args", None),
                getattr(event, "result", None),
                None if error is None else repr(error),
                getattr(event, "attempts", None),
                getattr(event, "attempt", None),
                getattr(event, "replayed", None),
            )
        )
    return seen


def test_hooks_events_and_call_keys_are_the_same_as_with_threads(
    dask_executor: DaskExecutor,
) -> None:
    on_dask = _lifecycle(dask_executor)
    assert on_dask == _lifecycle(None)
    assert sorted(key for key in on_dask if key is not None) == [
        "1",
        "2.1.1",
        "2.2.1",
        "2.3.1",
        "3",
        "4",
        "last",
    ]


def test_a_replayed_call_submits_nothing(
    dask_executor: DaskExecutor, submissions: Any, tmp_path: Path
) -> None:
    orch = Orchestrator(executor=dask_executor, journal=tmp_path / "runs.db")
    recorder = EventRecorder(orch)
    twice = orch.action(double)
    interrupted = [True]

    async def body() -> int:
        first = await twice(1)
        if interrupted[0]:
            raise RuntimeError("interrupted")
        return first + await twice(2)

    with pytest.raises(RuntimeError, match="interrupted"):
        orch.run_sync(body, run_id="resumed")
    interrupted[0] = False
    recorder.clear()
    mark = len(submissions.keys)
    assert orch.run_sync(body, run_id="resumed") == 6
    assert len(keys_of(double, submissions.since(mark))) == 1
    done = recorder.events("task_completion")
    assert [(event.call_key, event.replayed) for event in done] == [("1", True), ("2", False)]
    assert orch.journal is not None
    orch.journal.close()


def test_an_async_action_given_a_dask_executor_runs_on_a_worker(
    dask_executor: DaskExecutor, dask_cluster: LocalCluster
) -> None:
    orch = Orchestrator()
    where = orch.action(worker_address_async, executor=dask_executor)
    assert orch.run_sync(where) in {w.address for w in dask_cluster.workers.values()}


def test_async_actions_of_an_orchestrator_on_dask_stay_on_the_event_loop(
    dask_executor: DaskExecutor, submissions: Any
) -> None:
    orch = Orchestrator(executor=dask_executor)
    here = orch.action(loop_thread_async)
    mark = len(submissions.keys)
    assert orch.run_sync(here) == threading.get_ident()
    assert here.executor is None
    assert submissions.since(mark) == []


def test_an_asynchronous_client_serves_runs_on_its_own_event_loop(
    dask_cluster: LocalCluster,
) -> None:
    orch = Orchestrator()

    async def main() -> list[int]:
        async with Client(dask_cluster.scheduler_address, asynchronous=True) as client:
            twice = orch.action(double, executor=DaskExecutor(client))
            return await orch.run(orch.map, twice, [1, 2, 3])

    assert asyncio.run(main()) == [2, 4, 6]


def test_an_asynchronous_client_whose_event_loop_has_ended_is_a_clear_error(
    dask_cluster: LocalCluster,
) -> None:
    async def connect() -> DaskExecutor:
        async with Client(dask_cluster.scheduler_address, asynchronous=True) as client:
            return DaskExecutor(client)

    executor = asyncio.run(connect())
    orch = Orchestrator(executor=executor)
    with pytest.raises(RuntimeError, match="serves only the event loop it was made in"):
        orch.run_sync(orch.action(double), 1)


def test_an_executor_made_from_an_address_connects_at_its_first_call(
    dask_cluster: LocalCluster,
) -> None:
    with DaskExecutor(dask_cluster.scheduler_address) as executor:
        assert executor.owns_client
        assert executor.client is None
        orch = Orchestrator(executor=executor)
        assert orch.run_sync(orch.action(double), 4) == 8
        assert executor.client is not None
        assert executor.client.status == "running"


def test_an_executor_made_from_an_address_closes_its_client_and_refuses_later_calls(
    dask_cluster: LocalCluster,
) -> None:
    executor = DaskExecutor(dask_cluster.scheduler_address)
    orch = Orchestrator(executor=executor)
    twice = orch.action(double)
    assert orch.run_sync(twice, 4) == 8
    client = executor.client
    assert client is not None
    executor.close()
    assert client.status == "closed"
    with pytest.raises(RuntimeError, match="was closed; make another executor"):
        orch.run_sync(twice, 4)


def test_an_executor_leaves_a_client_it_was_given_open(dask_client: Client) -> None:
    with DaskExecutor(dask_client) as executor:
        assert not executor.owns_client
    assert dask_client.status == "running"
