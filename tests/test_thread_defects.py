"""Worker threads of sync actions: the max_threads limit, abandoned threads, idle threads, and
what a call leaves behind in memory (its job, reference cycles)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from orchestrator import ActionTimeout, Orchestrator, ParallelError, RetryPolicy, _threads
from orchestrator._threads import WorkerPool
from test_threads import Tracker, gated_job, until


class Payload:
    """An object that a weak reference can watch."""


class Context:
    """A run context that a weak reference can watch."""


@pytest.fixture
def gc_off() -> Iterator[None]:
    """Only reference counting frees objects meanwhile: what lives in a cycle stays."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_max_threads_sets_how_many_sync_actions_run_at_once() -> None:
    orch = Orchestrator(max_threads=3)
    tracker = Tracker()
    gate = threading.Event()
    work = orch.action(gated_job(tracker, gate), name="work")

    async def body() -> list[int]:
        calls = asyncio.ensure_future(orch.map(work, range(10), concurrency=10))
        await until(lambda: tracker.running >= 3)
        await asyncio.sleep(0.05)  # room for a fourth to start, if one would
        assert tracker.running == 3
        gate.set()
        return await calls

    try:
        assert orch.run_sync(body) == list(range(10))
    finally:
        gate.set()
    assert tracker.peak == 3


def test_by_default_24_blocking_sync_calls_run_at_once() -> None:
    orch = Orchestrator()
    tracker = Tracker()
    gate = threading.Event()
    work = orch.action(gated_job(tracker, gate), name="work")

    async def body() -> list[int]:
        calls = asyncio.ensure_future(orch.map(work, range(24), concurrency=24))
        try:
            await until(lambda: tracker.running == 24, limit=1.5)
        finally:
            gate.set()
        return await calls

    try:
        assert orch.run_sync(body) == list(range(24))
    finally:
        gate.set()


def test_abandoned_threads_never_number_more_than_twice_max_threads() -> None:
    orch = Orchestrator(max_threads=2)
    release = threading.Event()
    threads: set[int] = set()

    @orch.action(timeout=0.05)
    def hangs(index: int) -> None:
        threads.add(threading.get_ident())
        release.wait(5)

    async def body() -> None:
        with pytest.raises(ParallelError) as info:
            await orch.map(hangs, range(40), concurrency=8)
        # Every call past the cap waited for a thread, and its own timeout ended the wait.
        assert len(info.value.exceptions) == 40
        assert all(isinstance(e, ActionTimeout) for e in info.value.exceptions)

    try:
        orch.run_sync(body)
        # Each of these threads still hangs: 2 counted against the limit, 2 more abandoned.
        assert len(threads) == 4
    finally:
        release.set()


def test_a_call_past_the_thread_cap_runs_once_an_abandoned_call_returns() -> None:
    orch = Orchestrator(max_threads=1)
    releases = [threading.Event(), threading.Event()]
    ran = threading.Event()

    @orch.action(timeout=0.05)
    def hangs(index: int) -> None:
        releases[index].wait(5)

    @orch.action
    def quick() -> str:
        ran.set()
        return "quick"

    async def body() -> str:
        for index in range(2):  # two abandoned threads: the cap for max_threads=1
            with pytest.raises(ActionTimeout):
                await hangs(index)
        waiting = asyncio.ensure_future(quick())
        await asyncio.sleep(0.05)  # room for it to start, if it would
        assert not ran.is_set()
        releases[0].set()
        return await waiting

    try:
        assert orch.run_sync(body) == "quick"
    finally:
        for release in releases:
            release.set()


def test_a_call_waiting_past_the_thread_cap_still_times_out_and_never_runs() -> None:
    orch = Orchestrator(max_threads=1)
    release = threading.Event()
    ran = threading.Event()

    @orch.action(timeout=0.05)
    def hangs() -> None:
        release.wait(5)

    @orch.action(timeout=0.05)
    def quick() -> None:
        ran.set()

    async def body() -> None:
        for _ in range(2):
            with pytest.raises(ActionTimeout):
                await hangs()
        with pytest.raises(ActionTimeout):
            await quick()
        release.set()
        await asyncio.sleep(0.05)  # room for the abandoned call to run, if it would

    try:
        orch.run_sync(body)
    finally:
        release.set()
    assert not ran.is_set()


def test_the_limit_holds_after_abandoned_calls_return() -> None:
    orch = Orchestrator(max_threads=3)
    release = threading.Event()
    entered: list[int] = []
    returned: list[int] = []
    tracker = Tracker()
    gate = threading.Event()
    work = orch.action(gated_job(tracker, gate), name="work")

    @orch.action(timeout=0.05)
    def hangs(index: int) -> None:
        entered.append(index)
        try:
            release.wait(5)
        finally:
            returned.append(index)

    async def body() -> list[int]:
        # A burst of timeouts: threads are abandoned, and others started in their place.
        with pytest.raises(ParallelError):
            await orch.map(hangs, range(12), concurrency=3)
        assert len(entered) > 3
        release.set()
        await until(lambda: len(returned) == len(entered))
        await asyncio.sleep(0.05)  # the threads back from abandoned calls settle
        calls = asyncio.ensure_future(orch.map(work, range(12), concurrency=12))
        await until(lambda: tracker.running >= 3)
        await asyncio.sleep(0.05)  # room for a fourth to start, if one would
        gate.set()
        return await calls

    try:
        assert orch.run_sync(body) == list(range(12))
    finally:
        release.set()
        gate.set()
    assert tracker.peak == 3


def test_worker_threads_exit_once_run_sync_returns() -> None:
    orch = Orchestrator(max_threads=4)
    together = threading.Barrier(4)
    seen: set[threading.Thread] = set()

    @orch.action
    def work(index: int) -> int:
        seen.add(threading.current_thread())
        together.wait(2)  # four threads at once
        return index

    async def body() -> list[int]:
        return await orch.map(work, range(4))

    assert orch.run_sync(body) == [0, 1, 2, 3]
    assert len(seen) == 4
    end = time.monotonic() + 2
    while any(thread.is_alive() for thread in seen):
        assert time.monotonic() < end, "idle worker threads outlived run_sync()"
        time.sleep(0.01)


def test_an_idle_worker_thread_keeps_nothing_of_the_call_it_ran(gc_off: None) -> None:
    orch = Orchestrator(Context)
    refs: list[weakref.ref[Any]] = []
    workers: list[threading.Thread] = []

    @orch.action
    def echo(argument: Payload) -> Payload:
        workers.append(threading.current_thread())
        refs.append(weakref.ref(orch.get_state()))
        result = Payload()
        refs.append(weakref.ref(result))
        return result

    async def main() -> None:
        argument = Payload()
        refs.append(weakref.ref(argument))
        assert isinstance(await orch.run(echo, argument), Payload)
        del argument
        # The argument, the result and the run's context are freed; the thread lives on.
        await until(lambda: all(ref() is None for ref in refs))
        assert workers[0].is_alive()

    asyncio.run(main())
    assert len(refs) == 3


def test_an_idle_worker_thread_exits_after_its_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_threads, "_IDLE_SECONDS", 0.05)
    orch = Orchestrator()
    workers: list[threading.Thread] = []

    @orch.action
    def work() -> None:
        workers.append(threading.current_thread())

    async def main() -> None:
        await orch.run(work)
        # No run_sync() here to retire the thread: its idle timeout ends it.
        await until(lambda: not workers[0].is_alive())

    asyncio.run(main())


def test_a_queued_call_abandoned_before_it_starts_is_let_go_at_once(gc_off: None) -> None:
    orch = Orchestrator(max_threads=1)
    tracker = Tracker()
    gate = threading.Event()
    blocker = orch.action(gated_job(tracker, gate), name="blocker")

    @orch.action(timeout=0.05)
    def queued(argument: Payload) -> None:
        pass  # never runs: the only thread is taken

    async def body() -> None:
        running = asyncio.ensure_future(blocker(0))
        await until(lambda: tracker.running == 1)
        argument = Payload()
        ref = weakref.ref(argument)
        with pytest.raises(ActionTimeout):
            await queued(argument)
        del argument
        # asyncio frees the cancellation's traceback, and the frames holding the argument,
        # one loop step later; the blocker still runs meanwhile.
        await until(lambda: ref() is None)
        assert tracker.running == 1
        gate.set()
        assert await running == 0

    try:
        orch.run_sync(body)
    finally:
        gate.set()


def cyclic_garbage(make: Callable[[], Awaitable[None]]) -> list[str]:
    """The types of what ``make()`` leaves in reference cycles, called three times."""

    async def main() -> list[str]:
        await make()  # first calls fill caches
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                await make()
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
        finally:
            gc.set_debug(0)
            gc.enable()
        found = sorted(type(thing).__name__ for thing in gc.garbage)
        gc.garbage.clear()
        return found

    return asyncio.run(main())


async def bare_timeout() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.001):
            await asyncio.sleep(1)


def timed_out_call(orch: Orchestrator[Any], *, raised: bool = False) -> Callable[[], Any]:
    """A run of ``orch`` whose action times out; the run raises it or the body catches it."""

    @orch.action(timeout=0.001)
    async def slow() -> None:
        await asyncio.sleep(1)

    async def body() -> None:
        with pytest.raises(ActionTimeout):
            await slow()

    async def make() -> None:
        if raised:
            with pytest.raises(ActionTimeout):
                await orch.run(slow)
        else:
            await orch.run(body)

    return make


def hooked() -> Orchestrator[Any]:
    orch = Orchestrator()
    for register in (
        orch.on_process_begin,
        orch.on_process_error,
        orch.on_process_completion,
        orch.on_task_begin,
        orch.on_task_retry,
        orch.on_task_error,
        orch.on_task_completion,
    ):
        register(lambda event: None)
    return orch


def test_a_bare_asyncio_timeout_leaves_no_reference_cycles() -> None:
    # The yardstick of the tests below: asyncio's own timeout.
    assert cyclic_garbage(bare_timeout) == []


def test_a_fired_timeout_leaves_no_reference_cycles() -> None:
    assert cyclic_garbage(timed_out_call(Orchestrator())) == cyclic_garbage(bare_timeout)


def test_a_fired_timeout_with_every_hook_leaves_no_reference_cycles() -> None:
    assert cyclic_garbage(timed_out_call(hooked())) == cyclic_garbage(bare_timeout)


def test_a_fired_timeout_that_fails_the_run_leaves_no_reference_cycles() -> None:
    assert cyclic_garbage(timed_out_call(hooked(), raised=True)) == []


def test_a_retried_fired_timeout_leaves_no_reference_cycles() -> None:
    orch = hooked()

    @orch.action(timeout=0.001, retry=RetryPolicy(retries=2, delay=0.001))
    async def slow() -> None:
        await asyncio.sleep(1)

    async def make() -> None:
        with pytest.raises(ActionTimeout):
            await orch.run(slow)

    assert cyclic_garbage(make) == []


def test_a_fired_timeout_of_a_sync_action_leaves_no_reference_cycles() -> None:
    orch = hooked()
    release = threading.Event()

    @orch.action(timeout=0.001)
    def slow() -> None:
        release.wait(0.5)

    async def make() -> None:
        with pytest.raises(ActionTimeout):
            await orch.run(slow)

    try:
        assert cyclic_garbage(make) == []
    finally:
        release.set()


def test_a_failing_sync_action_leaves_no_reference_cycles() -> None:
    orch = Orchestrator(max_threads=1)  # one thread for every call, whatever it keeps

    @orch.action
    def fails() -> None:
        raise LookupError("from the thread")

    async def make() -> None:
        with pytest.raises(LookupError):
            await orch.run(fails)

    assert cyclic_garbage(make) == []


def refuse_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, starting a thread fails as it does when the system has no more."""

    def start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", start)


def test_a_failed_thread_start_fails_that_call_and_leaves_the_pool_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        pool = WorkerPool(1)
        with monkeypatch.context() as patch:
            refuse_threads(patch)
            with pytest.raises(RuntimeError, match="can't start new thread"):
                await pool.run(lambda: "never", (), {})
        assert await asyncio.wait_for(pool.run(lambda: "ran", (), {}), 1) == "ran"

    asyncio.run(main())


def test_a_queued_call_whose_thread_cannot_start_gets_that_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker = Tracker()
    gate = threading.Event()
    job = gated_job(tracker, gate)

    async def main() -> None:
        pool = WorkerPool(1)
        running = asyncio.ensure_future(pool.run(job, (0,), {}))
        await until(lambda: tracker.running == 1)
        queued = asyncio.ensure_future(pool.run(job, (1,), {}))
        await asyncio.sleep(0)
        refuse_threads(monkeypatch)
        # Abandoning the running call makes room for a thread for the queued one.
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await asyncio.wait_for(queued, 1)

    try:
        asyncio.run(main())
    finally:
        gate.set()
    assert tracker.started == [0]
