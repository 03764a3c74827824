"""Durable runs: the interceptor that records a run's calls in a journal and replays them.

It is the innermost interceptor at every point, so that the others (tracing, progress) see a
replayed call as a call that returned at once, with ``CallInfo.replayed`` set. A run opens in
the journal before its body starts; a run that succeeded before returns its recorded result
without calling the body. Each journaled call is identified by its call key, its action's name
and its arguments: a recorded success comes back without running, a mismatch raises, and a live
call's outcome is committed before the caller (and the completion hooks) see it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from ._errors import JournalError, JournalMismatchError
from ._interceptors import CallInfo, Interceptor, Proceed
from ._journal import Journal
from ._records import AttemptRecord
from ._run import Run


def body_reference(body: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a run's body: how the journal names it and finds it again."""
    module = getattr(body, "__module__", None) or "?"
    qualname = getattr(body, "__qualname__", None) or type(body).__qualname__
    return f"{module}:{qualname}"


_UNLOADED: Any = object()


class _OpenRun:
    """What the journal knows of one run in progress in this process."""

    __slots__ = ("calls", "keys", "results", "run_id", "tries")

    def __init__(
        self,
        run_id: str,
        calls: dict[str, tuple[str, str, str | bytes]],
        results: dict[str, Any] | None,
    ) -> None:
        self.run_id = run_id
        self.calls = calls  # call key -> (action name, args hash, result data): the successes
        self.results = {} if results is None else results  # call key -> result, loaded already
        self.keys: dict[int, str] = {}  # task id -> call key, to name each call's parent
        self.tries: dict[int, list[AttemptRecord]] = {}  # task id -> its attempts so far


class JournalInterceptor(Interceptor):
    """Records the runs and calls of one orchestrator in ``journal``, and replays them."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        """The journal runs are recorded in."""
        self._open: ContextVar[_OpenRun] = ContextVar(f"journal-{id(self):x}")

    async def intercept_run(self, run: Run[Any], proceed: Proceed) -> Any:
        """Open the run in the journal (or return its recorded result), run it, record its end."""
        journal = self.journal
        opened = await journal.open_run(run.run_id, body_reference(run.body), run.args, run.kwargs)
        if opened.previous == "succeeded":
            return opened.result
        token = self._open.set(_OpenRun(run.run_id, opened.calls, opened.results))
        try:
            result = await proceed()
        except BaseException as exc:
            await journal.end_run(run.run_id, error=exc)
            raise
        finally:
            self._open.reset(token)
        try:
            await journal.end_run(run.run_id, result=result)
        except JournalError as exc:
            # The result could not be recorded: the run is recorded as failed with that error.
            await journal.end_run(run.run_id, error=exc)
            raise
        return result

    def intercept_call(self, call: CallInfo[Any], proceed: Proceed) -> Awaitable[Any]:
        """Replay a recorded success, or run the call and commit its outcome."""
        state = self._open.get(None)
        if state is None or not call.action.journaled:
            return proceed()
        return self._call(state, call, proceed)

    async def _call(self, state: _OpenRun, call: CallInfo[Any], proceed: Proceed) -> Any:
        journal = self.journal
        key = call.call_key
        name = call.action.name
        state.keys[call.task_id] = key
        # Checked before any attempt: arguments that cannot be recorded fail the call at once.
        data, args_hash = journal.call_args(name, key, call.args, call.kwargs)
        recorded = state.calls.get(key)
        if recorded is not None:
            if recorded[0] != name or recorded[1] != args_hash:
                raise _mismatch(state.run_id, key, recorded[0], name, args_hash == recorded[1])
            call.replayed = True
            # Each loaded result serves once: a key replayed again (its parent call retried)
            # gets a fresh copy, as a live call would return a fresh value.
            result = state.results.pop(key, _UNLOADED)
            return journal.load(recorded[2], name, key) if result is _UNLOADED else result
        parent = state.keys.get(call.parent_id) if call.parent_id is not None else None
        started = time.time()
        try:
            result = await proceed()
        except BaseException as exc:
            record = journal.record(
                state.run_id,
                key,
                name,
                parent_key=parent,
                args=data,
                args_hash=args_hash,
                started=started,
                ended=time.time(),
                error=exc,
                attempts=_attempts(state, call),
            )
            if isinstance(exc, asyncio.CancelledError):
                # Unwinding a cancellation must not wait; a failed call runs again anyway.
                asyncio.ensure_future(record).add_done_callback(_retrieve)
            else:
                await record
            raise
        await journal.record(
            state.run_id,
            key,
            name,
            parent_key=parent,
            args=data,
            args_hash=args_hash,
            started=started,
            ended=time.time(),
            result=result,
            attempts=_attempts(state, call),
        )
        return result

    def intercept_attempt(self, call: CallInfo[Any], proceed: Proceed) -> Awaitable[Any]:
        """Time each attempt of a retried journaled call, for the record of the call."""
        state = self._open.get(None)
        if state is None or call.action.retry is None or not call.action.journaled:
            # Without a retry policy there is one attempt, and the call's record spans it.
            return proceed()
        return self._attempt(state, call, proceed)

    async def _attempt(self, state: _OpenRun, call: CallInfo[Any], proceed: Proceed) -> Any:
        tries = state.tries.setdefault(call.task_id, [])
        started = time.time()
        try:
            result = await proceed()
        except BaseException as exc:
            tries.append(AttemptRecord(call.attempts, started, time.time(), _describe(exc)))
            raise
        tries.append(AttemptRecord(call.attempts, started, time.time()))
        return result


def _attempts(state: _OpenRun, call: CallInfo[Any]) -> tuple[AttemptRecord, ...]:
    # A single attempt spans its call's record; those of a retried call are kept, each with the
    # wait that followed it.
    if call.action.retry is None:
        return ()  # one attempt, not timed apart (see intercept_attempt)
    tries = state.tries.pop(call.task_id, [])
    if len(tries) <= 1:
        return ()
    return tuple(
        replace(attempt, delay=max(0.0, later.started - attempt.ended))
        if later is not None and attempt.ended is not None
        else attempt
        for attempt, later in zip(tries, [*tries[1:], None], strict=True)
    )


def _describe(error: BaseException) -> str:
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a record that could not be committed: the call fails anyway


def _mismatch(run_id: str, key: str, recorded: str, name: str, same_args: bool) -> Exception:
    what = f"action {name!r}" if recorded != name else f"action {name!r} with other arguments"
    return JournalMismatchError(
        f"run {run_id!r} recorded action {recorded!r} at call key {key!r}, and this run now "
        f"makes {what} there: the code of the run changed since it was recorded. Resume it with "
        "the code that recorded it, or start it again under a new run_id"
    )
