"""DaskExecutor on a cluster of worker processes: what travels by pickle, and dying workers.

The workers import this module to find the functions sent to them by reference.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import dask

# distributed comes with the test extra: a missing install fails here rather than skipping.
import distributed  # noqa: F401
import pytest
from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker

from orchestrator import Orchestrator, OutsideRunError, RetryPolicy
from orchestrator.dask import DaskExecutor
from orchestrator.testing import EventRecorder

orch = Orchestrator().set_state("user", "ada")


@orch.action
def process_id() -> int:
    return os.getpid()


def read_user() -> str:
    return str(orch.get_state().user)


def length(value: object) -> int:
    return len(str(value))


def make_lock() -> threading.Lock:
    return threading.Lock()


def die_once(marker: str) -> str:
    # The first call kills its worker process mid-task; the next finds the marker and returns.
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return "survived"


@pytest.fixture(scope="module")
def process_executor() -> Iterator[DaskExecutor]:
    # Dask gives up on a task after its workers died this many times: none here, so that a
    # killed worker fails the task at once instead of after three more deaths.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield DaskExecutor(client)


def test_the_function_of_a_decorated_action_runs_in_a_worker_process(
    process_executor: DaskExecutor,
) -> None:
    remote = orch.action(process_id.__wrapped__, name="remote_pid", executor=process_executor)
    pid = orch.run_sync(remote)
    assert isinstance(pid, int)
    assert pid != os.getpid()


def test_get_state_in_a_worker_process_says_the_context_stays_with_the_run(
    process_executor: DaskExecutor,
) -> None:
    reads = orch.action(read_user, executor=process_executor)
    with pytest.raises(OutsideRunError, match="running in a Dask worker, and the context lives"):
        orch.run_sync(reads)


def test_an_argument_that_cannot_be_pickled_names_the_action_and_the_cause(
    process_executor: DaskExecutor,
) -> None:
    measure = orch.action(length, name="label", executor=process_executor)
    with pytest.raises(TypeError) as caught:
        orch.run_sync(measure, threading.Lock())
    assert str(caught.value) == (
        "the call of action 'label' could not be sent to a Dask worker: TypeError: cannot "
        "pickle '_thread.lock' object; its function and arguments must pickle (make locks, "
        "connections and open files inside the function)"
    )
    assert str(caught.value.__cause__).startswith("('Could not serialize object of type")


def test_a_result_that_cannot_be_pickled_names_the_action_and_the_cause(
    process_executor: DaskExecutor,
) -> None:
    lock = orch.action(make_lock, name="new_lock", executor=process_executor)
    with pytest.raises(TypeError) as caught:
        orch.run_sync(lock)
    assert str(caught.value) == (
        "the result of action 'new_lock' could not be sent back from a Dask worker: "
        "TypeError: cannot pickle '_thread.lock' object; the function must return a value "
        "that pickles"
    )
    assert str(caught.value.__cause__).startswith("Could not serialize object of type lock")


def test_a_worker_killed_mid_task_fails_the_call_with_killed_worker(
    process_executor: DaskExecutor, tmp_path: Path
) -> None:
    fatal = orch.action(die_once, executor=process_executor)
    with pytest.raises(KilledWorker):
        orch.run_sync(fatal, str(tmp_path / "died"))


def test_a_call_whose_worker_was_killed_is_retried_as_a_new_task(
    process_executor: DaskExecutor, tmp_path: Path
) -> None:
    retried = Orchestrator(executor=process_executor)
    recorder = EventRecorder(retried)
    fatal = retried.action(die_once, retry=RetryPolicy(retries=1, delay=0))
    assert retried.run_sync(fatal, str(tmp_path / "died")) == "survived"
    (retry,) = recorder.events("task_retry")
    assert isinstance(retry.error, KilledWorker)
