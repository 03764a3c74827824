"""Timeouts: ActionTimeout, returning on time for async and threaded sync actions, starvation."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time

import pytest

from orchestrator import ActionTimeout, Orchestrator
from orchestrator.testing import EventRecorder

LIMIT = 0.05


def test_async_action_that_hangs_raises_action_timeout_on_time() -> None:
    orch = Orchestrator()

    @orch.action(timeout=LIMIT)
    async def fetch_user_data() -> None:
        await asyncio.Event().wait()

    start = time.perf_counter()
    with pytest.raises(ActionTimeout) as info:
        orch.run_sync(fetch_user_data)
    elapsed = time.perf_counter() - start
    assert LIMIT - 0.005 <= elapsed < LIMIT + 0.05
    assert isinstance(info.value, TimeoutError)
    assert "fetch_user_data" in str(info.value)
    assert "0.05" in str(info.value)
    assert info.value.action == "fetch_user_data"
    assert info.value.seconds == LIMIT
    assert info.value.deadline is False


def test_action_timeout_is_a_timeout_error_subclass() -> None:
    assert issubclass(ActionTimeout, TimeoutError)
    assert issubclass(ActionTimeout, OSError)


def test_timeout_message_uses_the_name_override() -> None:
    orch = Orchestrator()

    @orch.action(name="slow-service", timeout=LIMIT)
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(ActionTimeout, match=r"'slow-service'.*0\.05 s") as info:
        orch.run_sync(hangs)
    assert info.value.action == "slow-service"


def test_sync_action_in_a_worker_thread_that_blocks_times_out_on_time() -> None:
    orch = Orchestrator()
    release = threading.Event()
    thread_names: list[str] = []

    @orch.action(timeout=LIMIT)
    def update_profile() -> None:
        thread_names.append(threading.current_thread().name)
        release.wait(0.5)

    start = time.perf_counter()
    try:
        with pytest.raises(ActionTimeout) as info:
            orch.run_sync(update_profile)
        elapsed = time.perf_counter() - start
    finally:
        release.set()
    assert LIMIT - 0.005 <= elapsed < LIMIT + 0.05
    assert isinstance(info.value, TimeoutError)
    assert "update_profile" in str(info.value)
    assert "0.05" in str(info.value)
    (worker_name,) = thread_names
    assert worker_name != threading.current_thread().name


def test_timeout_fires_completion_with_the_action_timeout() -> None:
    orch = Orchestrator()
    recorder = EventRecorder(orch)

    @orch.action(timeout=LIMIT)
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(ActionTimeout) as info:
        orch.run_sync(hangs)
    assert recorder.points() == [
        "process_begin",
        "task_begin",
        "task_error",
        "task_completion",
        "process_error",
        "process_completion",
    ]
    (completion,) = recorder.events("task_completion")
    assert completion.error is info.value
    assert completion.attempts == 1


def test_the_hanging_attempt_is_cancelled() -> None:
    orch = Orchestrator()
    cancelled: list[bool] = []

    @orch.action(timeout=LIMIT)
    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(ActionTimeout):
        orch.run_sync(hangs)
    assert cancelled == [True]


def test_user_timeout_error_is_not_converted_to_action_timeout() -> None:
    orch = Orchestrator()
    mine = TimeoutError("the upstream said so")

    @orch.action(timeout=1.0)
    async def raises_its_own() -> None:
        raise mine

    with pytest.raises(TimeoutError) as info:
        orch.run_sync(raises_its_own)
    assert info.value is mine
    assert type(info.value) is TimeoutError


def test_user_inner_asyncio_timeout_is_not_converted_to_action_timeout() -> None:
    orch = Orchestrator()

    @orch.action(timeout=1.0)
    async def own_timeout() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError) as info:
        orch.run_sync(own_timeout)
    assert not isinstance(info.value, ActionTimeout)


def test_sync_user_timeout_error_is_not_converted_to_action_timeout() -> None:
    orch = Orchestrator()
    mine = TimeoutError("socket timed out")

    @orch.action(timeout=1.0)
    def raises_its_own() -> None:
        raise mine

    with pytest.raises(TimeoutError) as info:
        orch.run_sync(raises_its_own)
    assert info.value is mine


def test_timed_out_threads_do_not_starve_later_sync_actions() -> None:
    # 10 blocked threads are more than the limit of 6, and fewer than the cap of 12 threads.
    orch = Orchestrator(max_threads=6)
    release = threading.Event()
    blocked: list[int] = []

    @orch.action(timeout=0.02)
    def sleeper(i: int) -> None:
        blocked.append(i)
        release.wait(5)

    @orch.action
    def quick() -> str:
        return "done"

    async def body() -> float:
        for i in range(10):
            with pytest.raises(ActionTimeout):
                await sleeper(i)
        start = time.perf_counter()
        assert await quick() == "done"
        return time.perf_counter() - start

    try:
        elapsed = orch.run_sync(body)
        # More timed-out calls than the limit of 6 really started a thread that is still
        # blocking. (A call whose timeout fires before a thread took it never runs.)
        assert len(set(blocked)) > 6
        assert not release.is_set()
    finally:
        release.set()
    assert elapsed < 0.1


def test_timeout_none_means_no_limit() -> None:
    orch = Orchestrator()

    async def takes_a_while() -> str:
        await asyncio.sleep(0.08)
        return "finished"

    unlimited = orch.action(takes_a_while, timeout=None)
    limited = orch.action(takes_a_while, timeout=LIMIT)
    assert unlimited.timeout is None
    assert orch.action(takes_a_while).timeout is None
    assert orch.run_sync(unlimited) == "finished"
    with pytest.raises(ActionTimeout):
        orch.run_sync(limited)


def test_timeout_is_kept_as_float_seconds() -> None:
    orch = Orchestrator()
    assert orch.action(lambda: None, timeout=2).timeout == 2.0
    assert isinstance(orch.action(lambda: None, timeout=2).timeout, float)


@pytest.mark.parametrize("deadline", [False, True])
def test_action_timeout_pickles_with_its_attributes(deadline: bool) -> None:
    original = ActionTimeout("fetch_user_data", 0.05, deadline=deadline)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is ActionTimeout
    assert copy.action == "fetch_user_data"
    assert copy.seconds == 0.05
    assert copy.deadline is deadline
    assert str(copy) == str(original)
    assert copy.args == original.args
