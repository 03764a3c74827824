"""ProcessExecutor: sync actions' functions in worker processes, the run staying where it runs.

Most tests share one pool of two spawned workers (starting workers is the slow part); a test
that breaks, closes or forks a pool makes its own and closes it. The functions the workers run
live in ``process_work``, a module the workers can import.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import process_work
from orchestrator import ActionTimeout, Orchestrator, OutsideRunError, RetryPolicy, _processes
from orchestrator.executors import Executor, ProcessExecutor, ThreadExecutor
from orchestrator.testing import EventRecorder

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

# Python 3.12 and later warn when fork() copies a process that runs threads, as pytest's does.
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


@pytest.fixture(scope="module")
def executor() -> Iterator[ProcessExecutor]:
    with ProcessExecutor(max_workers=2) as shared:
        yield shared
    # Every test closed what it started: no worker of this module outlives it.
    assert multiprocessing.active_children() == []


class Counting:
    """An executor that counts the calls it passes on to another."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.submitted = 0

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        self.submitted += 1
        return self.inner.run(fn, args, kwargs)


def wait_until_exists(path: Path) -> None:
    """Poll for a file another process makes; fail only if it never comes."""
    ends = time.monotonic() + process_work.GIVE_UP_SECONDS
    while not path.exists():
        assert time.monotonic() < ends, f"{path} never appeared"
        time.sleep(0.005)


def worker_pids() -> set[int]:
    return {child.pid for child in multiprocessing.active_children() if child.pid is not None}


# Where the function runs --------------------------------------------------------------------


def test_a_sync_action_runs_in_a_worker_process(executor: ProcessExecutor) -> None:
    orch = Orchestrator(executor=executor)
    where = orch.action(process_work.pid)
    assert orch.run_sync(where) != os.getpid()


def test_an_action_executor_sends_only_that_action_to_a_worker(
    executor: ProcessExecutor,
) -> None:
    orch = Orchestrator()
    there = orch.action(process_work.pid, executor=executor)
    here = orch.action(process_work.pid, name="here")

    async def body() -> tuple[int, int]:
        return await there(), await here()

    remote, local = orch.run_sync(body)
    assert remote != os.getpid()
    assert local == os.getpid()


def test_map_over_processes_returns_the_results_in_order(executor: ProcessExecutor) -> None:
    orch = Orchestrator(executor=executor)
    square = orch.action(process_work.square)
    items = list(range(12))

    async def body() -> list[int]:
        return await orch.map(square, items)

    assert orch.run_sync(body) == [item * item for item in items]


def test_an_action_made_with_the_decorator_at_module_level_is_sent(
    executor: ProcessExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its function pickles as the path through the action, process_work.cube.__wrapped__.
    monkeypatch.setattr(process_work.to_workers, "inner", executor)
    value, where = process_work.orch.run_sync(process_work.cube, 3)
    assert (value, where != os.getpid()) == (27, True)


def test_an_exception_from_the_function_comes_back_with_its_remote_traceback(
    executor: ProcessExecutor,
) -> None:
    orch = Orchestrator(executor=executor)
    fails = orch.action(process_work.fails)
    with pytest.raises(ValueError, match=r"^no such user$") as caught:
        orch.run_sync(fails, "no such user")
    assert "in fails" in str(caught.value.__cause__)


def test_stop_iteration_from_the_function_becomes_a_runtime_error_as_in_a_thread(
    executor: ProcessExecutor,
) -> None:
    orch = Orchestrator(executor=executor)
    stops = orch.action(process_work.stops)
    with pytest.raises(RuntimeError, match="raised StopIteration") as caught:
        orch.run_sync(stops)
    assert isinstance(caught.value.__cause__, StopIteration)


# The context stays with the run -------------------------------------------------------------


def test_get_state_in_a_worker_says_the_context_stays_with_the_run(
    executor: ProcessExecutor,
) -> None:
    reads = process_work.orch.action(process_work.read_state, executor=executor)
    with pytest.raises(OutsideRunError, match="running in a worker process, and the context"):
        process_work.orch.run_sync(reads)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_forked_worker_never_reads_the_copy_of_the_run_context_it_inherits() -> None:
    # The pool starts inside the run, so the forked workers copy the run's context.
    with ProcessExecutor(max_workers=1, start_method="fork") as forked:
        reads = process_work.orch.action(process_work.read_state, executor=forked)
        with pytest.raises(OutsideRunError, match="running in a worker process"):
            process_work.orch.run_sync(reads)


# What cannot be sent ------------------------------------------------------------------------


def test_a_lambda_fails_at_the_call_naming_the_action_and_starts_no_worker() -> None:
    before = worker_pids()
    with ProcessExecutor(max_workers=1) as unused:
        orch = Orchestrator(executor=unused)
        anonymous = orch.action(lambda: 1, name="compute")
        with pytest.raises(TypeError) as caught:
            orch.run_sync(anonymous)
        assert worker_pids() == before
    assert str(caught.value) == (
        "cannot pickle the function of action 'compute': it is a lambda ('test_a_lambda_fails_"
        "at_the_call_naming_the_action_and_starts_no_worker.<locals>.<lambda>'), which a "
        "worker process cannot import by name; define it at module level"
    )
    assert caught.value.__cause__ is not None  # pickle's own error, the root cause


def test_a_local_function_fails_at_the_call_naming_the_action(
    executor: ProcessExecutor,
) -> None:
    def inner() -> int:
        return 1

    orch = Orchestrator(executor=executor)
    local = orch.action(inner, name="local_step")
    with pytest.raises(TypeError, match=r"^cannot pickle the function of action 'local_step': it"):
        orch.run_sync(local)


def test_an_unpicklable_argument_fails_at_the_call_naming_the_action_and_the_argument(
    executor: ProcessExecutor,
) -> None:
    orch = Orchestrator(executor=executor)
    square = orch.action(process_work.square, name="squares")
    with pytest.raises(TypeError) as caught:
        orch.run_sync(square, threading.Lock())
    assert str(caught.value) == (
        "cannot pickle argument 0 of action 'squares': cannot pickle '_thread.lock' object; a "
        "worker process receives its arguments pickled, so pass values that pickle"
    )
    assert isinstance(caught.value.__cause__, TypeError)


def test_an_unpicklable_keyword_argument_is_named(executor: ProcessExecutor) -> None:
    orch = Orchestrator(executor=executor)
    square = orch.action(process_work.square, name="squares")
    with pytest.raises(TypeError, match=r"^cannot pickle keyword argument 'value' of action"):
        orch.run_sync(square, value=threading.Lock())


def test_an_unpicklable_result_fails_naming_the_action(executor: ProcessExecutor) -> None:
    orch = Orchestrator(executor=executor)
    lock = orch.action(process_work.make_lock, name="locks")
    with pytest.raises(TypeError) as caught:
        orch.run_sync(lock)
    assert str(caught.value) == (
        "cannot pickle the result of action 'locks' in its worker process: cannot pickle "
        "'_thread.lock' object; the result goes back pickled, so return values that pickle"
    )


def test_a_result_that_cannot_be_unpickled_fails_naming_the_action(
    executor: ProcessExecutor,
) -> None:
    orch = Orchestrator(executor=executor)
    odd = orch.action(process_work.returns_loads_badly, name="odd")
    with pytest.raises(RuntimeError) as caught:
        orch.run_sync(odd)
    assert str(caught.value) == (
        "cannot unpickle the result of action 'odd', sent back by its worker process: this "
        "value refuses to be unpickled"
    )


def test_an_exception_that_cannot_be_pickled_fails_naming_the_action_and_what_it_was(
    executor: ProcessExecutor,
) -> None:
    orch = Orchestrator(executor=executor)
    raises = orch.action(process_work.raise_holding_lock, name="holds")
    with pytest.raises(TypeError) as caught:
        orch.run_sync(raises)
    assert str(caught.value).startswith(
        "cannot pickle the exception raised by action 'holds' in its worker process: cannot "
        "pickle '_thread.lock' object; it raised HoldsLock: ('with a lock', <unlocked "
    )
    assert "raise_holding_lock" in str(caught.value.__cause__)


def test_an_exception_that_cannot_be_unpickled_fails_only_its_own_call(
    executor: ProcessExecutor,
) -> None:
    orch = Orchestrator(executor=executor)
    coded = orch.action(process_work.raise_coded, name="coded")
    square = orch.action(process_work.square)
    with pytest.raises(RuntimeError) as caught:
        orch.run_sync(coded)
    assert str(caught.value).startswith(
        "cannot unpickle the exception raised by action 'coded' in its worker process: "
    )
    assert str(caught.value).endswith("; it raised CodedError: boom (its traceback follows)")
    assert orch.run_sync(square, 3) == 9  # the pool is still whole


def test_a_function_a_worker_cannot_import_fails_naming_the_action(
    executor: ProcessExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module made at run time: found by name here, nowhere in a worker.
    module = types.ModuleType("made_at_run_time")
    exec("def step():\n    return 1\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    orch = Orchestrator(executor=executor)
    step = orch.action(module.step, name="ghost")
    with pytest.raises(RuntimeError) as caught:
        orch.run_sync(step)
    assert str(caught.value).startswith(
        "cannot unpickle the function or arguments of action 'ghost' in a worker process: "
        "No module named 'made_at_run_time'; "
    )


# Timeouts and cancellation ------------------------------------------------------------------


def test_a_call_waiting_for_a_worker_that_timed_out_never_starts(tmp_path: Path) -> None:
    gate, late = tmp_path / "gate", tmp_path / "late-ran"
    with ProcessExecutor(max_workers=1) as single:
        orch = Orchestrator(executor=single)
        hold = orch.action(process_work.wait_for)
        queued = orch.action(process_work.touch, timeout=0.05)
        where = orch.action(process_work.pid)

        async def body() -> None:
            await where()  # the worker has started
            holder = asyncio.ensure_future(hold(str(gate)))
            await asyncio.sleep(0)  # the holder takes the only worker's place
            with pytest.raises(ActionTimeout):
                await queued(str(late))
            gate.touch()
            await holder

        orch.run_sync(body)
    # close() has waited for every call in the pool to end: the late one would have run.
    assert not late.exists()


def test_a_call_a_worker_runs_runs_to_its_end_after_its_caller_stops_waiting(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    started, gate, done = tmp_path / "started", tmp_path / "gate", tmp_path / "done"
    orch = Orchestrator(executor=executor)
    step = orch.action(process_work.announce_then_wait)

    async def body() -> None:
        call = asyncio.ensure_future(step(str(started), str(gate), str(done)))
        await asyncio.to_thread(wait_until_exists, started)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    orch.run_sync(body)
    gate.touch()
    wait_until_exists(done)


# Retries, hooks, call keys, the journal -----------------------------------------------------


def test_a_retry_sends_the_call_again(executor: ProcessExecutor, tmp_path: Path) -> None:
    counting = Counting(executor)
    orch = Orchestrator(executor=counting)
    recorder = EventRecorder(orch)
    flaky = orch.action(process_work.fail_once, retry=RetryPolicy(retries=2, delay=0))
    assert orch.run_sync(flaky, str(tmp_path / "failed-once")) == "second attempt"
    assert counting.submitted == 2
    [retry] = recorder.events("task_retry")
    assert isinstance(retry.error, ConnectionError)
    [completion] = recorder.events("task_completion")
    assert completion.attempts == 2


def events_of_a_run(executor: Executor) -> list[tuple[Any, ...]]:
    """What hooks see of a run of a few calls, some failing, on ``executor``."""
    orch = Orchestrator(executor=executor)
    recorder = EventRecorder(orch)
    square = orch.action(process_work.square)
    fails = orch.action(process_work.fails)

    async def body() -> list[int]:
        values = await orch.map(square, [1, 2, 3])
        with pytest.raises(ValueError, match="bad"):
            await fails("bad")
        return [*values, await square.keyed("last")(4)]

    assert orch.run_sync(body) == [1, 4, 9, 16]
    seen = []
    for record in recorder.records:
        event = record.event
        error = getattr(event, "error", None)
        seen.append(
            (
                record.point,
                getattr(event, "call_key", None),
                getattr(event, "name", None),
                getattr(event, "args", None),
                getattr(event, "result", None),
                None if error is None else (type(error), str(error)),
                getattr(event, "attempts", None),
                getattr(event, "replayed", None),
            )
        )
    return sorted(seen, key=repr)


def test_hooks_events_and_call_keys_are_the_same_as_with_threads(
    executor: ProcessExecutor,
) -> None:
    assert events_of_a_run(executor) == events_of_a_run(ThreadExecutor())


def test_a_replayed_call_sends_nothing_to_the_workers(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    counting = Counting(executor)
    orch = Orchestrator(executor=counting, journal=tmp_path / "runs.db")
    seen: list[tuple[str, Any, bool]] = []
    orch.on_task_completion(
        lambda event: seen.append((event.call_key, event.result, event.replayed))
    )
    square = orch.action(process_work.square)
    interrupted = [True]

    async def body() -> int:
        value = await square(7)
        if interrupted[0]:
            raise RuntimeError("stopped after the call")
        return value

    try:
        with pytest.raises(RuntimeError, match="stopped after the call"):
            orch.run_sync(body, run_id="run-1")
        interrupted[0] = False
        assert orch.run_sync(body, run_id="run-1") == 49
    finally:
        assert orch.journal is not None
        orch.journal.close()
    assert counting.submitted == 1
    assert seen == [("1", 49, False), ("1", 49, True)]


# A worker that dies -------------------------------------------------------------------------


def test_a_worker_that_dies_fails_its_call_naming_the_action_and_the_next_call_gets_new_ones() -> (
    None
):
    with ProcessExecutor(max_workers=1) as single:
        orch = Orchestrator(executor=single)
        crash = orch.action(process_work.die, name="crash")
        where = orch.action(process_work.pid)
        first = orch.run_sync(where)
        with pytest.raises(BrokenProcessPool) as caught:
            orch.run_sync(crash)
        assert orch.run_sync(where) != first
    assert str(caught.value).startswith(
        "a worker process of ProcessExecutor(max_workers=1, start_method='spawn') ended "
        "abruptly (killed, out of memory, or os._exit() in a function) while action 'crash' "
        "was in its pool"
    )
    assert isinstance(caught.value.__cause__, BrokenProcessPool)


def test_workers_that_cannot_start_fail_the_call_naming_the_action_and_the_next_call_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What each new worker runs first, made to end its process: as a worker that cannot
    # import the script that made the pool ends.
    monkeypatch.setattr(_processes, "ready", process_work.die)
    with ProcessExecutor(max_workers=1) as single:
        orch = Orchestrator(executor=single)
        square = orch.action(process_work.square, name="squares")
        with pytest.raises(BrokenProcessPool) as caught:
            orch.run_sync(square, 2)
        monkeypatch.undo()
        assert orch.run_sync(square, 2) == 4
    assert str(caught.value).startswith(
        "the worker processes of ProcessExecutor(max_workers=1, start_method='spawn') could "
        "not start for action 'squares': "
    )


# Shutting down ------------------------------------------------------------------------------


def test_close_stops_the_workers_and_later_calls_are_refused_naming_the_action() -> None:
    single = ProcessExecutor(max_workers=1)
    orch = Orchestrator(executor=single)
    where = orch.action(process_work.pid, name="where")
    worker = orch.run_sync(where)
    assert worker in worker_pids()
    single.close()
    assert worker not in worker_pids()
    with pytest.raises(RuntimeError) as caught:
        orch.run_sync(where)
    assert str(caught.value) == (
        "cannot run action 'where': ProcessExecutor(max_workers=1, start_method='spawn') was "
        "closed; give the action an executor that is open"
    )
    single.close()  # again: nothing to do


def test_close_fails_the_calls_still_waiting_for_a_worker_and_waits_for_the_running_one(
    tmp_path: Path,
) -> None:
    started, gate, done = tmp_path / "started", tmp_path / "gate", tmp_path / "done"
    late = tmp_path / "late-ran"
    single = ProcessExecutor(max_workers=1)
    orch = Orchestrator(executor=single)
    hold = orch.action(process_work.announce_then_wait)
    queued = orch.action(process_work.touch, name="queued")

    async def body() -> int:
        holder = asyncio.ensure_future(hold(str(started), str(gate), str(done)))
        await asyncio.to_thread(wait_until_exists, started)
        waiting = asyncio.ensure_future(queued(str(late)))
        await asyncio.sleep(0)  # it waits for the only worker
        closing = asyncio.ensure_future(asyncio.to_thread(single.close))
        with pytest.raises(RuntimeError, match=r"^cannot run action 'queued': .* was closed"):
            await waiting
        gate.touch()
        await closing
        return await holder

    worker = orch.run_sync(body)  # the running call ended with its result
    assert worker not in worker_pids()
    assert not late.exists()


EXIT_SCRIPT = """
import sys
sys.path[:0] = [{here!r}, {src!r}]
import process_work
from orchestrator import ActionTimeout, Orchestrator
from orchestrator.executors import ProcessExecutor

orch = Orchestrator(executor=ProcessExecutor(max_workers=1))
where = orch.action(process_work.pid)
stuck = orch.action(process_work.wait_for, timeout=0.05)


async def body():
    print(await where(), flush=True)
    if {stuck_call!r}:
        try:
            await stuck("/nonexistent/never")
        except ActionTimeout:
            pass


orch.run_sync(body)
"""


def exit_with_pool_open(stuck_call: bool) -> int:
    """Run a script that leaves its pool open at exit; return the id of its worker."""
    script = EXIT_SCRIPT.format(here=str(HERE), src=str(SRC), stuck_call=stuck_call)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=process_work.GIVE_UP_SECONDS,
        check=True,
    )
    return int(done.stdout.split()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_left_open_stop_at_interpreter_exit() -> None:
    assert not alive(exit_with_pool_open(stuck_call=False))


def test_a_call_nobody_waits_for_does_not_keep_the_interpreter_from_exiting() -> None:
    # Its worker would wait for the file far longer than the script is given.
    assert not alive(exit_with_pool_open(stuck_call=True))


# Options ------------------------------------------------------------------------------------


def test_repr_and_defaults() -> None:
    default = ProcessExecutor()
    assert default.max_workers == (os.cpu_count() or 1)
    assert default.start_method == "spawn"
    assert repr(ProcessExecutor(3, start_method="spawn")) == (
        "ProcessExecutor(max_workers=3, start_method='spawn')"
    )
    assert isinstance(default, Executor)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_below_one_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match=f"^max_workers must be 1 or more, got {bad}$"):
        ProcessExecutor(bad)


@pytest.mark.parametrize("bad", [2.5, "2", True])
def test_max_workers_that_is_not_an_int_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"^max_workers must be an int or None, got "):
        ProcessExecutor(bad)


def test_an_unknown_start_method_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^start_method must be 'spawn', 'forkserver' or 'fork'"):
        ProcessExecutor(start_method="thread")
    with pytest.raises(TypeError, match=r"^start_method must be a str, got None$"):
        ProcessExecutor(start_method=None)  # type: ignore[arg-type]


def test_an_async_function_stays_on_the_loop_and_refuses_a_process_executor() -> None:
    async def fetch() -> None:
        return None

    with pytest.raises(ValueError, match="async actions run on the event loop"):
        Orchestrator().action(fetch, executor=ProcessExecutor(max_workers=1))
