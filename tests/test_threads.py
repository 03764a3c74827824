"""The worker pool that runs sync actions: its limit, abandoned jobs, outcomes, fork safety."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator import Orchestrator
from orchestrator._threads import WorkerPool

WORKER = "orchestrator-worker"


def worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == WORKER}


async def until(condition: Callable[[], bool], limit: float = 1.0) -> None:
    """Let the loop run until ``condition()`` holds; fail after ``limit`` seconds."""
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.002)


class Tracker:
    """Counts how many jobs run at once, and which ones ever started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.running = 0
        self.peak = 0

    def enter(self, index: int) -> None:
        with self.lock:
            self.started.append(index)
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


def gated_job(tracker: Tracker, gate: threading.Event) -> Callable[[int], int]:
    """A job that the tracker sees run, and that blocks until ``gate`` opens (2 s at most)."""

    def job(index: int) -> int:
        tracker.enter(index)
        try:
            gate.wait(2)
        finally:
            tracker.leave()
        return index

    return job


def test_cancelled_queued_jobs_never_run_and_start_no_extra_threads() -> None:
    tracker = Tracker()
    gate = threading.Event()
    before = worker_threads()

    job = gated_job(tracker, gate)

    async def main() -> None:
        pool = WorkerPool(2)
        tasks = [asyncio.ensure_future(pool.run(job, (i,), {})) for i in range(12)]
        await until(lambda: len(tracker.started) == 2)
        assert len(worker_threads() - before) == 2
        for task in tasks[2:]:
            task.cancel()
        outcomes = await asyncio.gather(*tasks[2:], return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        # Cancelling ten queued jobs started no thread: the limit of two still holds.
        assert len(worker_threads() - before) == 2
        fresh = [asyncio.ensure_future(pool.run(job, (i,), {})) for i in (100, 101, 102)]
        await asyncio.sleep(0.05)
        assert sorted(tracker.started) == [0, 1]  # the fresh jobs wait for a free worker
        gate.set()
        assert await asyncio.gather(*tasks[:2], *fresh) == [0, 1, 100, 101, 102]
        await asyncio.sleep(0.02)
        assert len(worker_threads() - before) == 2
        assert pool.busy() == 0

    try:
        asyncio.run(main())
    finally:
        gate.set()
    # No cancelled job ever ran, and never more than two jobs ran at once.
    assert sorted(tracker.started) == [0, 1, 100, 101, 102]
    assert tracker.peak == 2


def test_fail_fast_map_over_many_sync_items_runs_only_a_handful_of_bodies() -> None:
    pool_size = 6
    orch = Orchestrator(max_threads=pool_size)
    tracker = Tracker()
    gate = threading.Event()

    @orch.action
    def work(index: int) -> int:
        tracker.enter(index)
        try:
            if index == 0:
                raise ValueError("item 0 fails")
            gate.wait(2)
            return index
        finally:
            tracker.leave()

    async def body() -> None:
        # Creating 200 tasks in one step is slow only in asyncio's debug mode (it records where
        # each was created); that is not what this test measures.
        asyncio.get_running_loop().slow_callback_duration = 1.0
        try:
            with pytest.raises(ValueError, match="item 0 fails"):
                await orch.map(work, range(200), fail_fast=True)
        finally:
            gate.set()
        await asyncio.sleep(0.05)  # room for any leftover job to start, if one would

    orch.run_sync(body)
    assert 0 in tracker.started
    assert len(tracker.started) <= pool_size + 4


def test_an_abandoned_running_job_stops_counting_against_the_limit() -> None:
    release = threading.Event()
    blocked = threading.Event()

    def stuck() -> str:
        blocked.set()
        release.wait(2)
        return "late"

    def quick() -> str:
        return "quick"

    async def main() -> None:
        pool = WorkerPool(1)
        abandoned = asyncio.ensure_future(pool.run(stuck, (), {}))
        await until(blocked.is_set)
        assert pool.busy() == 1
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert pool.busy() == 0
        # The only worker still blocks in stuck(), yet a new job runs at once.
        assert await asyncio.wait_for(pool.run(quick, (), {}), 1) == "quick"
        assert not release.is_set()

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_a_jobs_result_and_exception_reach_the_caller() -> None:
    error = LookupError("from the thread")
    loop_thread: list[int] = []

    def where(tag: str, *, suffix: str) -> tuple[str, int]:
        return tag + suffix, threading.get_ident()

    def fails() -> None:
        raise error

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        pool = WorkerPool(2)
        value, ident = await pool.run(where, ("a",), {"suffix": "b"})
        assert value == "ab"
        assert ident != loop_thread[0]
        with pytest.raises(LookupError) as info:
            await pool.run(fails, (), {})
        assert info.value is error

    asyncio.run(main())


def test_busy_counts_waiting_and_running_jobs_and_is_zero_once_idle() -> None:
    gate = threading.Event()
    tracker = Tracker()

    job = gated_job(tracker, gate)

    async def main() -> None:
        pool = WorkerPool(2)
        assert pool.busy() == 0
        tasks = [asyncio.ensure_future(pool.run(job, (i,), {})) for i in range(3)]
        await until(lambda: len(tracker.started) == 2)
        assert pool.busy() == 3  # two running, one queued
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 1, 2]
        await until(lambda: pool.busy() == 0)
        await asyncio.sleep(0.02)
        assert pool.busy() == 0

    try:
        asyncio.run(main())
    finally:
        gate.set()


def in_forked_child(child: Callable[[], bool], hang: str) -> None:
    """Fork, run ``child`` in the child, and fail unless it returns True within 5 s.

    The child never returns into pytest: it exits at once with its outcome as the status.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if child() else 3
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    status: Any = None
    end = time.monotonic() + 5
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(hang)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_can_run_a_sync_action() -> None:
    orch = Orchestrator()
    work = orch.action(lambda: 42, name="work")
    # The parent uses the pool first, so the child inherits its counters and idle workers.
    assert orch.run_sync(work) == 42
    in_forked_child(
        lambda: orch.run_sync(work) == 42, "the forked child hung running a sync action"
    )


def test_a_forked_child_can_use_a_pool_whose_worker_was_idle_at_the_fork() -> None:
    # Every ThreadExecutor has a pool of its own; the child must not count the parent's idle
    # worker as its own, for no thread of the parent's exists in the child.
    pool = WorkerPool(1)

    async def use_and_settle() -> None:
        assert await pool.run(lambda: 42, (), {}) == 42
        await until(lambda: pool.busy() == 0)  # the worker has counted itself idle

    asyncio.run(use_and_settle())
    in_forked_child(
        lambda: asyncio.run(pool.run(lambda: 7, (), {})) == 7,
        "the forked child hung: it counted the parent's idle worker as its own",
    )
