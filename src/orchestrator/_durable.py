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
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from ._describe import describe
from ._errors import JournalError, JournalMismatchError
from ._interceptors import CallInfo, Interceptor, Proceed
from ._journal import Journal, _differing, _show
from ._records import AttemptRecord
from ._run import Run

_REFUSED: ContextVar[list[str] | None] = ContextVar("journal-refused", default=None)


def body_reference(body: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a run's body: how the journal names it and finds it again."""
    module = getattr(body, "__module__", None) or "?"
    qualname = getattr(body, "__qualname__", None) or type(body).__qualname__
    return f"{module}:{qualname}"


@contextlib.contextmanager
def refusals() -> Iterator[list[str]]:
    """Collect the id of each run that a journal refuses to open, while in this block.

    A refused run (held by a live process, or recorded for other work) never started its body;
    its error cannot be told by its type from a ``JournalError`` that the body itself raised.
    """
    refused: list[str] = []
    token = _REFUSED.set(refused)
    try:
        yield refused
    finally:
        _REFUSED.reset(token)


class _Done:
    """The result of a nested call that succeeded in this run, for a retry of its caller."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_UNLOADED: Any = object()


class _OpenRun:
    """What the journal knows of one run in progress in this process."""

    __slots__ = ("calls", "keys", "replayed", "results", "run_id", "tries")

    def __init__(
        self,
        run_id: str,
        calls: dict[str, tuple[str, str, str | bytes]],
        results: dict[str, Any] | None,
    ) -> None:
        self.run_id = run_id
        # call key -> (action name, args hash, result data or _Done): the successes
        self.calls: dict[str, tuple[str, str, str | bytes | _Done]] = dict(calls)
        self.results = {} if results is None else results  # call key -> result, loaded already
        self.keys: dict[int, str] = {}  # task id -> call key, to name each call's parent
        self.tries: dict[int, list[AttemptRecord]] = {}  # task id -> its attempts so far
        self.replayed: list[str] = []  # keys of the calls replayed from the file, to mark there


class JournalInterceptor(Interceptor):
    """Records the runs and calls of one orchestrator in ``journal``, and replays them."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        """The journal runs are recorded in."""
        self._open: ContextVar[_OpenRun] = ContextVar(f"journal-{id(self):x}")

    async def intercept_run(self, run: Run[Any], proceed: Proceed) -> Any:
        """Open the run in the journal (or return its recorded result), run it, record its end."""
        journal = self.journal
        try:
            opened = await journal.open_run(
                run.run_id, body_reference(run.body), run.args, run.kwargs
            )
        except BaseException:
            refused = _REFUSED.get()
            if refused is not None:
                refused.append(run.run_id)
            raise
        if opened.previous == "succeeded":
            return opened.result
        state = _OpenRun(run.run_id, opened.calls, opened.results)
        token = self._open.set(state)
        try:
            result = await proceed()
        except BaseException as exc:
            try:
                await _end(journal, state, error=exc)
            except JournalError as failure:
                # The run's own failure is what the caller must see; the journal's is a note.
                exc.add_note(
                    f"the journal could not record how run {run.run_id!r} ended: {failure}"
                )
            raise
        finally:
            self._open.reset(token)
        await _end(journal, state, result=result)
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
            stored = recorded[2]
            if recorded[0] != name or recorded[1] != args_hash:
                earlier = isinstance(stored, _Done)
                raise _mismatch(journal, state.run_id, call, recorded[0], earlier)
            call.replayed = True
            if isinstance(stored, _Done):
                return stored.value
            state.replayed.append(key)
            # Each loaded result serves once: a key replayed again (its parent call retried)
            # gets a fresh copy, as a live call would return a fresh value.
            result = state.results.pop(key, _UNLOADED)
            return journal.load(stored, name, key) if result is _UNLOADED else result
        parent = state.keys.get(call.parent_id) if call.parent_id is not None else None
        started = time.time()

        def record(**outcome: Any) -> Awaitable[None]:
            return journal.record(
                state.run_id,
                key,
                name,
                parent_key=parent,
                args=data,
                args_hash=args_hash,
                started=started,
                ended=time.time(),
                attempts=_attempts(state, call),
                **outcome,
            )

        try:
            result = await proceed()
        except BaseException as exc:
            try:
                if isinstance(exc, asyncio.CancelledError):
                    # Unwinding a cancellation must not wait; a failed call runs again anyway.
                    asyncio.ensure_future(record(error=exc)).add_done_callback(_retrieve)
                else:
                    await record(error=exc)
            except JournalError as failure:
                # The call's own failure is what its caller must see; the journal's is a note.
                exc.add_note(f"the journal could not record it: {failure}")
            raise
        await record(result=result)
        if call.parent_id is not None:
            # A retry of the caller makes this call again under this key, and it must not run
            # twice. The body makes each of its calls once, so only nested ones are kept.
            state.calls[key] = (name, args_hash, _Done(result))
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
            tries.append(AttemptRecord(call.attempts, started, time.time(), describe(exc)))
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


async def _end(
    journal: Journal, state: _OpenRun, *, result: Any = None, error: BaseException | None = None
) -> None:
    """Record how the run ended, and release it, whatever else fails.

    Raises:
        JournalError: The replays, the run's end or its result could not be recorded.
    """
    try:
        await _mark(journal, state)
    finally:
        try:
            await journal.end_run(state.run_id, result=result, error=error)
        except JournalError as failure:
            if error is not None:
                raise
            # The result could not be recorded: the run is recorded as failed with that error,
            # if the journal still holds it open (it does when the result did not serialize;
            # a commit that failed released it already).
            with contextlib.suppress(ValueError):
                await journal.end_run(state.run_id, error=failure)
            raise


async def _mark(journal: Journal, state: _OpenRun) -> None:
    # Which records this resume replayed, in one statement when the run ends: marking each
    # call as it is replayed would cost a commit per replay.
    if state.replayed:
        await journal.mark_replayed(state.run_id, state.replayed)
        state.replayed = []


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a record that could not be committed: the call fails anyway


def _mismatch(
    journal: Journal, run_id: str, call: CallInfo[Any], recorded: str, earlier: bool
) -> Exception:
    key = call.call_key
    kwargs = dict(sorted(call.kwargs.items()))  # in the order the journal shows recorded ones
    before, after = _differing(_recorded_args(journal, run_id, key), _show(call.args, kwargs))
    if earlier:
        return JournalMismatchError(
            f"run {run_id!r} made action {recorded!r} called with ({before}) at call key "
            f"{key!r} in an earlier attempt of its caller, and this attempt makes action "
            f"{call.name!r} called with ({after}) there: a call that succeeded is replayed, "
            "not run again, so each attempt must make the same calls. Give this call a key "
            "of its own with keyed(), or make its action with journal=False"
        )
    return JournalMismatchError(
        f"run {run_id!r} recorded action {recorded!r} called with ({before}) at call key "
        f"{key!r}, and this run now makes action {call.name!r} called with ({after}) there: "
        "the code of the run changed since it was recorded. Resume it with the code that "
        "recorded it, or start it again under a new run_id"
    )


def _recorded_args(journal: Journal, run_id: str, key: str) -> str:
    # Read back on this failure path only: a resumed run keeps no arguments in memory.
    try:
        found = [record.args for record in journal.calls(run_id) if record.call_key == key]
    except JournalError as exc:
        return f"unreadable: {exc}"
    return found[0] if found else "?"
