"""Module-level functions for tests/test_process_executor.py, importable by worker processes.

Worker processes find a function by its module and name: these live here, in a module on the
test run's ``sys.path`` (which spawned workers receive), rather than in the test module. Calls
in different processes coordinate through files: a function waits for a file to appear, or
makes one to say that it ran.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator import Orchestrator
from orchestrator.executors import Executor

GIVE_UP_SECONDS = 30.0
"""How long a function waits for a file before it fails: only a broken test waits that long."""

orch: Orchestrator[Any] = Orchestrator()
orch.set_state("secret", "the run's own value")


class Delegating:
    """An executor that passes calls on to the one a test sets, so that actions made here at
    import time can be sent to a pool that a test fixture makes."""

    inner: Executor | None = None

    def run(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        assert self.inner is not None, "set Delegating.inner first"
        return self.inner.run(fn, args, kwargs)


to_workers = Delegating()


@orch.action(executor=to_workers)
def cube(value: int) -> tuple[int, int]:
    """The cube, and the id of the process that computed it."""
    return value**3, os.getpid()


def square(value: int) -> int:
    return value * value


def pid() -> int:
    return os.getpid()


def read_state() -> Any:
    return orch.get_state().secret


def wait_for(gate: str) -> int:
    """Wait until the file ``gate`` exists; return this process's id."""
    ends = time.monotonic() + GIVE_UP_SECONDS
    while not os.path.exists(gate):
        if time.monotonic() > ends:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.005)
    return os.getpid()


def touch(path: str) -> None:
    Path(path).touch()


def announce_then_wait(started: str, gate: str, done: str) -> int:
    """Make ``started``, wait for ``gate``, then make ``done``; return this process's id."""
    touch(started)
    wait_for(gate)
    touch(done)
    return os.getpid()


def fail_once(path: str) -> str:
    """Fail the first time (making ``path``), succeed every later time."""
    if not os.path.exists(path):
        touch(path)
        raise ConnectionError("first attempt fails")
    return "second attempt"


def fails(message: str) -> None:
    raise ValueError(message)


def stops() -> None:
    raise StopIteration


def die() -> None:
    os._exit(3)


def make_lock() -> Any:
    return threading.Lock()


class HoldsLock(Exception):
    """An exception with a lock in its arguments: it cannot be pickled."""


def raise_holding_lock() -> None:
    raise HoldsLock("with a lock", threading.Lock())


class CodedError(Exception):
    """An exception whose constructor takes two arguments but passes one to Exception.

    It pickles, but cannot be unpickled: unpickling calls ``CodedError("boom")``.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def raise_coded() -> None:
    raise CodedError(7, "boom")


def refuse_to_load() -> None:
    raise ValueError("this value refuses to be unpickled")


class LoadsBadly:
    """A value that pickles, but whose unpickling raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse_to_load, ())


def returns_loads_badly() -> LoadsBadly:
    return LoadsBadly()
