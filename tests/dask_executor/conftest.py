"""One in-process Dask cluster (worker threads) for all the Dask tests, and what they observe.

The cluster starts in well under a second; its dashboard takes a free port (``":0"``), as
``dashboard_address=None`` would still bind port 8787. It lives as long as the tests of this
package run, and is gone before the others, some of which look for garbage left in reference
cycles by anything in the process. Tests that need worker processes make a cluster of their own
(``test_dask_processes.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

# distributed comes with the test extra: a missing install fails here rather than skipping.
import distributed  # noqa: F401
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from orchestrator.dask import DaskExecutor


class Submissions(SchedulerPlugin):
    """Every task the scheduler is sent, in order, each graph, and every task it forgot."""

    name = "orchestrator-tests-submissions"

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.graphs: list[list[str]] = []
        self.forgotten: set[str] = set()

    def update_graph(self, scheduler: Any, *, tasks: list[str], **kwargs: Any) -> None:
        keys = [str(key) for key in tasks]
        self.graphs.append(keys)
        self.keys.extend(keys)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "forgotten":
            self.forgotten.add(str(key))

    def since(self, mark: int) -> list[str]:
        """The keys sent since ``len(self.keys)`` was ``mark``."""
        return self.keys[mark:]


@pytest.fixture(scope="package")
def dask_cluster() -> Iterator[LocalCluster]:
    """Two worker threads in this process; a scheduler plugin records what it is sent."""
    with LocalCluster(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0"
    ) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def submissions(dask_cluster: LocalCluster) -> Submissions:
    """The scheduler's record of the tasks it was sent."""
    plugin = Submissions()

    async def add() -> None:
        dask_cluster.scheduler.add_plugin(plugin)

    dask_cluster.sync(add)
    return plugin


@pytest.fixture(scope="package")
def dask_client(dask_cluster: LocalCluster, submissions: Submissions) -> Iterator[Client]:
    """A synchronous client of the shared cluster: its event loop runs in a thread of its own."""
    with Client(dask_cluster) as client:
        yield client


@pytest.fixture
def dask_executor(dask_client: Client) -> DaskExecutor:
    """A DaskExecutor on the shared cluster."""
    return DaskExecutor(dask_client)


Waiter = Callable[[Callable[[], bool], str], None]


@pytest.fixture
def wait_until() -> Waiter:
    """``wait_until(condition, what)`` returns once ``condition()`` is true; fails after 10 s."""

    def wait(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10.0
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"still waiting after 10 s for {what}")
            time.sleep(0.005)

    return wait
