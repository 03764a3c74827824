"""Run a scenario for real, on a virtual-time loop, and record everything that happened.

With a journal, calls take JSON arguments (their site's number) instead of a `Token`, so that
the journal can record them and a resume can tell each call again; the harness finds the
token of a call from its begin event. An execution can also be stopped, as a process that dies,
at a virtual instant or a few loop turns after an attempt ends (between a call's return and
the commit of its record, say): nothing after that reaches the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clock import VirtualClock, VirtualLoop
from model import Call, Group, Member, Plain, Scenario, Step

from orchestrator import ActionTimeout, Orchestrator, ParallelError, RetryPolicy, State
from orchestrator._threads import WorkerPool

WATCHDOG_SECONDS = 20.0
MAX_THREADS = 256


class Retryable(Exception):
    """An attempt's failure that the retry policies retry."""


class Fatal(Exception):
    """An attempt's failure that is never retried."""


class HookError(Exception):
    """Raised by a hook that the scenario made raise."""


class CleanupError(Exception):
    """Raised by a plain member's cleanup when it is cancelled."""


class Abort(BaseException):
    """The user's own BaseException subclass, raised by cleanup instead of the cancellation."""


class Deadlock(AssertionError):
    """The scenario did not finish within the real-time watchdog."""


_serials = itertools.count(1)
# Every exception the harness raises ends its arguments with a serial number, so that its repr,
# as a note quotes it, names that one exception.
_failures = itertools.count(1)
# (call serial, attempt number) of the attempt under way in this task: set by the harness's
# begin and retry hooks, carried into worker threads with the context.
_attempt: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("attempt")


class Token:
    """The argument of one call: says which site it is, in which run."""

    __slots__ = ("key", "run_id", "serial", "site")

    def __init__(self, site: int, run_id: str) -> None:
        self.site = site
        self.run_id = run_id
        self.serial = next(_serials)
        self.key = ""  # the call key, once the call began

    def __repr__(self) -> str:
        return f"<call of s{self.site}>"


@dataclass
class PlainRecord:
    """One execution of a plain member."""

    spec: Plain
    raised: BaseException | None = None
    cleanup: str = ""  # "" (never cancelled), "begun" or "done"


@dataclass
class GroupRecord:
    """One execution of a group: what each member that began is, and what the group raised.

    A member is a `Token` (a call: what it raised is read from its events), a `GroupRecord` or
    a `PlainRecord`.
    """

    spec: Group
    depth: int  # 1 for a group that is no member of another
    members: dict[int, Any] = field(default_factory=dict)
    raised: BaseException | None = None
    ended: bool = False


def _nothing() -> None:
    pass


@dataclass
class Observation:
    """What a scenario did."""

    outcomes: list[tuple[str, Any]] = field(default_factory=list)  # per run
    records: list[tuple[str, Any, float]] = field(default_factory=list)  # point, event, virtual t
    tokens: dict[tuple[str, int], Token] = field(default_factory=dict)  # (run_id, task_id)
    # Every exception an attempt or a hook raised, with whether it may be dropped: only that of
    # an attempt abandoned before it raised.
    raised: list[tuple[BaseException, bool]] = field(default_factory=list)
    witnessed: Counter[str] = field(default_factory=Counter)  # completions seen by a last hook
    context_violations: list[str] = field(default_factory=list)
    pending_tasks: list[str] = field(default_factory=list)
    busy_after: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    groups: list[GroupRecord] = field(default_factory=list)
    plains: list[PlainRecord] = field(default_factory=list)
    # What a raising completion hook made a call raise, by the call's token serial.
    completion_raised: dict[int, BaseException] = field(default_factory=dict)
    # With a journal: the token of each call made and not yet begun, by (run id, site).
    journaled: bool = False
    made: dict[tuple[str, int], Token] = field(default_factory=dict)
    by_serial: dict[int, Token] = field(default_factory=dict)
    # Each attempt that ran an action's function before any stop: (token, attempt, how many
    # records there were then, to place it among the events).
    executions: list[tuple[Token, int, int]] = field(default_factory=list)
    stopped: bool = False  # the execution was stopped: later records are its cleanup
    stopped_at_record: int = 0  # how many records there were when it stopped
    # Called as each attempt returns or raises, from the loop or a worker thread.
    attempt_ended: Callable[[], None] = _nothing


def execute(
    scenario: Scenario,
    journal: str | None = None,
    stop_at: float | None = None,
    stop_after: tuple[int, int] | None = None,
) -> Observation:
    """Run every run of ``scenario`` concurrently on one orchestrator, and observe.

    The orchestrator runs many sync actions at once: the virtual clock stands still while a
    job waits for a worker thread, so every parked thread needs one.

    Args:
        scenario: The runs, and when each is cancelled from outside.
        journal: The path of the journal file the orchestrator records its runs in, if any.
        stop_at: The virtual instant the event loop stops at, as if the process died there:
            the journal is closed at once, so that nothing more is recorded, and the runs are
            cancelled to clean up. Needs a journal.
        stop_after: ``(count, turns)``: stop so ``turns`` loop turns after the ``count``-th
            attempt to end returned or raised.
    """
    orchestrator = Orchestrator(max_threads=MAX_THREADS, journal=journal)
    pool = orchestrator._executor._pool  # type: ignore[attr-defined]
    clock = VirtualClock(pool)
    loop = VirtualLoop(clock)
    seen = Observation(journaled=journal is not None)
    runs: list[asyncio.Task[Any]] = []
    try:
        _instrument(orchestrator, scenario, clock, loop, seen)
        actions = _actions(orchestrator, scenario, clock, seen)
        main = loop.create_task(_main(orchestrator, scenario, actions, loop, seen, runs))
        if stop_at is None and stop_after is None:
            loop.run_until_complete(main)
        else:
            stop = _stopper(orchestrator, loop, main, seen)
            if stop_at is not None:
                loop.call_at(stop_at, stop)
            if stop_after is not None:
                seen.attempt_ended = _stop_after(loop, stop, *stop_after)
            try:
                loop.run_until_complete(main)
            except RuntimeError:
                if not seen.stopped:
                    raise
            if seen.stopped:
                _clean_up_after_stop(loop, main, runs)
        if journal is not None:
            # The record of a cancelled call is committed in the next turn of the loop.
            loop.run_until_complete(asyncio.sleep(0))
        seen.pending_tasks = [repr(task) for task in asyncio.all_tasks(loop)]
        # Threads still parked now must all work for abandoned attempts, which the pool no
        # longer counts: any job it still counts was left behind by the library.
        seen.busy_after = _settled_busy(pool)
    finally:
        clock.release_all()
        _settled_busy(pool)
        if orchestrator.journal is not None:
            orchestrator.journal.close()
        loop.close()
    return seen


def _stopper(
    orchestrator: Orchestrator[State],
    loop: asyncio.AbstractEventLoop,
    main: asyncio.Task[Any],
    seen: Observation,
) -> Callable[[], None]:
    # A dead process records nothing more: the journal closes at once, so that a commit that
    # was to run later in this same turn of the loop fails, as do all later records.
    def stop() -> None:
        if main.done() or seen.stopped:
            return
        seen.stopped = True
        seen.stopped_at_record = len(seen.records)
        assert orchestrator.journal is not None
        orchestrator.journal.close()
        loop.stop()

    return stop


def _stop_after(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None], count: int, turns: int
) -> Callable[[], None]:
    lock = threading.Lock()
    ended = 0

    def later(left: int) -> None:
        if left:
            loop.call_soon(later, left - 1)
        else:
            stop()

    def attempt_ended() -> None:
        nonlocal ended
        with lock:
            ended += 1
            if ended != count:
                return
        # RuntimeError: a worker thread's attempt ended after the loop closed.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(later, turns)

    return attempt_ended


def _clean_up_after_stop(
    loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any], runs: list[asyncio.Task[Any]]
) -> None:
    # The runs are cancelled, so that no task or thread outlives the example; what they do
    # meanwhile, with the journal closed, is no evidence.
    for task in runs:
        task.cancel()
    loop.run_until_complete(main)


def _settled_busy(pool: WorkerPool) -> int:
    # A finished job leaves the count a moment after it delivered its result: wait a little.
    deadline = time.monotonic() + 2
    while pool.busy() and time.monotonic() < deadline:
        time.sleep(0.001)
    return pool.busy()


def _instrument(
    orchestrator: Orchestrator[State],
    scenario: Scenario,
    clock: VirtualClock,
    loop: asyncio.AbstractEventLoop,
    seen: Observation,
) -> None:
    # The harness's own hooks come first, so that a raising hook of the scenario cannot keep
    # them from running.
    def check_context(event: Any, where: str) -> None:
        if event.context.__dict__.get("run") != event.run_id:
            seen.context_violations.append(f"{where} of {event.run_id} saw {event.context!r}")

    def process_begin(event: Any) -> None:
        event.context.run = event.run_id
        seen.records.append(("process_begin", event, loop.time()))

    def task_begin(event: Any) -> None:
        check_context(event, "task_begin")
        token = event.args[0]
        if not isinstance(token, Token):
            token = seen.made[(event.run_id, token)]
        token.key = event.call_key
        seen.by_serial[token.serial] = token
        seen.tokens[(event.run_id, event.task_id)] = token
        _attempt.set((token.serial, 1))
        seen.records.append(("task_begin", event, loop.time()))

    def task_retry(event: Any) -> None:
        check_context(event, "task_retry")
        token = seen.tokens[(event.run_id, event.task_id)]
        clock.abandon((token.serial, event.attempt))
        _attempt.set((token.serial, event.attempt + 1))
        seen.records.append(("task_retry", event, loop.time()))

    def task_error(event: Any) -> None:
        check_context(event, "task_error")
        token = seen.tokens[(event.run_id, event.task_id)]
        clock.abandon((token.serial, event.attempts))
        seen.records.append(("task_error", event, loop.time()))

    def recorder(point: str) -> Any:
        def record(event: Any) -> None:
            check_context(event, point)
            seen.records.append((point, event, loop.time()))

        return record

    orchestrator.on_process_begin(process_begin)
    orchestrator.on_process_error(recorder("process_error"))
    orchestrator.on_process_completion(recorder("process_completion"))
    orchestrator.on_task_begin(task_begin)
    orchestrator.on_task_retry(task_retry)
    orchestrator.on_task_error(task_error)
    orchestrator.on_task_completion(recorder("task_completion"))

    for point in ("begin", "retry", "error", "completion"):
        sites = {site for site, c in scenario.sites.items() if c.raising_hook == point}
        if sites:
            getattr(orchestrator, f"on_task_{point}")(_raiser(point, sites, seen))
    # Witnesses registered last: every completion hook must run, even after one raised.
    orchestrator.on_task_completion(lambda event: seen.witnessed.update(["task"]))
    orchestrator.on_process_completion(lambda event: seen.witnessed.update(["process"]))


def _raiser(point: str, sites: set[int], seen: Observation) -> Any:
    def hook(event: Any) -> None:
        token = seen.tokens[(event.run_id, event.task_id)]
        if token.site in sites:
            error = HookError(token.site, point, next(_failures))
            seen.raised.append((error, False))
            seen.faults["raising hook"] += 1
            if point == "completion":
                seen.completion_raised[token.serial] = error
            raise error

    return hook


def _actions(
    orchestrator: Orchestrator[State], scenario: Scenario, clock: VirtualClock, seen: Observation
) -> dict[str, Any]:
    made: dict[str, Any] = {}
    for c in scenario.sites.values():
        if c.action in made:
            continue  # a map item: the map's action is made once, from its first item
        policy = None
        if c.retries or c.deadline is not None:
            policy = RetryPolicy(
                retries=c.retries,
                delay=c.delay,
                backoff=1.0,
                jitter=0.0,
                retry_on=(Retryable, TimeoutError),
                deadline=c.deadline,
            )
        if c.sync:
            function = _sync_function(scenario, orchestrator, clock, seen)
        else:
            function = _async_function(scenario, orchestrator, made, clock, seen)
        made[c.action] = orchestrator.action(
            function, name=c.action, retry=policy, timeout=c.timeout
        )
    return made


def _fail(
    kind: str, site: int, attempt: int, key: tuple[int, int], clock: VirtualClock, seen: Observation
) -> None:
    kinds = {"retryable": Retryable, "stubborn": Retryable, "fatal": Fatal, "abort": Abort}
    error = kinds[kind](site, attempt, next(_failures))
    seen.faults[kind] += 1
    # Only an attempt abandoned before it raised may have its error dropped.
    with clock.lock:
        abandoned = key in clock.abandoned
    seen.raised.append((error, abandoned))
    seen.attempt_ended()
    raise error


def _sync_function(
    scenario: Scenario, orchestrator: Orchestrator[State], clock: VirtualClock, seen: Observation
) -> Any:
    def work(argument: Token | int) -> int:
        key = _attempt.get()
        attempt = key[1]
        token = _executed(argument, key, seen)
        spec = scenario.sites[token.site]
        if orchestrator.get_state().run != token.run_id:  # in the worker thread
            seen.context_violations.append(f"s{spec.site} in {token.run_id}")
        outcome = spec.outcomes[attempt - 1]
        if outcome.kind == "hang":
            seen.faults["hang (thread)"] += 1
        clock.park(math.inf if outcome.kind == "hang" else outcome.duration, key)
        if outcome.kind == "ok":
            seen.attempt_ended()
            return spec.site * 1000 + attempt
        _fail(outcome.kind, spec.site, attempt, key, clock, seen)
        raise AssertionError("unreachable")

    return work


def _async_function(
    scenario: Scenario,
    orchestrator: Orchestrator[State],
    actions: dict[str, Any],
    clock: VirtualClock,
    seen: Observation,
) -> Any:
    async def work(argument: Token | int) -> int:
        key = _attempt.get()
        attempt = key[1]
        token = _executed(argument, key, seen)
        spec = scenario.sites[token.site]
        if orchestrator.get_state().run != token.run_id:
            seen.context_violations.append(f"s{spec.site} in {token.run_id}")
        for step in spec.inner:
            await run_step(orchestrator, actions, step, token.run_id, seen)
        outcome = spec.outcomes[attempt - 1]
        if outcome.kind == "hang":
            seen.faults["hang (async)"] += 1
            await asyncio.Event().wait()
        elif outcome.kind in ("stubborn", "abort"):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                _fail(outcome.kind, spec.site, attempt, key, clock, seen)
        await asyncio.sleep(outcome.duration)
        if outcome.kind == "ok":
            seen.attempt_ended()
            return spec.site * 1000 + attempt
        _fail(outcome.kind, spec.site, attempt, key, clock, seen)
        raise AssertionError("unreachable")

    return work


def _executed(argument: Token | int, key: tuple[int, int], seen: Observation) -> Token:
    # The token of the call whose attempt ``key`` runs its function now, which is noted.
    token = seen.by_serial[key[0]]
    assert argument is token or argument == token.site, (argument, token)
    if not seen.stopped:
        seen.executions.append((token, key[1], len(seen.records)))
    return token


def _argument(token: Token, seen: Observation) -> Token | int:
    # What a call is made with: the token, or with a journal its site's number (JSON).
    if not seen.journaled:
        return token
    seen.made[(token.run_id, token.site)] = token
    return token.site


async def run_step(
    orchestrator: Orchestrator[State],
    actions: dict[str, Any],
    step: Step,
    run_id: str,
    seen: Observation,
) -> Any:
    """Execute one step of a workflow inside a run."""
    if isinstance(step, Group):
        return await _run_group(orchestrator, actions, step, run_id, seen)
    return await actions[step.action](_argument(Token(step.site, run_id), seen))


class _Nested:
    """The argument of a group member that is no call: runs it, and says so to the group."""

    __slots__ = ("index", "member", "parent", "run")

    def __init__(self, member: Member, index: int, parent: GroupRecord, run: Any) -> None:
        self.member = member
        self.index = index
        self.parent = parent
        self.run = run  # (orchestrator, actions, run_id, seen)

    def __repr__(self) -> str:
        return f"<member {self.index} of m{self.parent.spec.site}>"


async def _nested(item: _Nested) -> Any:
    # A plain coroutine function, no action: the member of a parallel group that is a group or
    # a plain member.
    orchestrator, actions, run_id, seen = item.run
    if isinstance(item.member, Group):
        return await _run_group(
            orchestrator, actions, item.member, run_id, seen, item.parent, item.index
        )
    assert isinstance(item.member, Plain)
    return await _plain(item.member, item.parent, item.index, seen)


async def _plain(spec: Plain, parent: GroupRecord, index: int, seen: Observation) -> int:
    record = PlainRecord(spec)
    parent.members[index] = record
    seen.plains.append(record)
    try:
        try:
            if spec.kind == "hang":
                seen.faults["hang (plain)"] += 1
                await asyncio.Event().wait()
            await asyncio.sleep(spec.duration)
        except asyncio.CancelledError:
            record.cleanup = "begun"
            seen.faults["plain members cancelled"] += 1
            for _ in range(spec.cleanup_steps):
                await asyncio.sleep(0)  # cleanup that awaits: closing a connection, say
            record.cleanup = "done"
            if spec.cleanup == "cancel":
                raise
            error: BaseException = (CleanupError if spec.cleanup == "error" else Abort)(
                spec.site, 0, next(_failures)
            )
            seen.faults[f"plain cleanup raised {type(error).__name__}"] += 1
            seen.raised.append((error, False))
            # As a `finally: 1/0` would: the cancellation stays its context.
            raise error  # noqa: B904
        if spec.kind == "fatal":
            error = Fatal(spec.site, 1, next(_failures))
            seen.raised.append((error, False))
            raise error
        return spec.site * 1000
    except BaseException as exc:
        record.raised = exc
        raise


async def _run_group(
    orchestrator: Orchestrator[State],
    actions: dict[str, Any],
    step: Group,
    run_id: str,
    seen: Observation,
    parent: GroupRecord | None = None,
    index: int = 0,
) -> Any:
    record = GroupRecord(step, 1 if parent is None else parent.depth + 1)
    seen.groups.append(record)
    if parent is not None:
        parent.members[index] = record
    context = (orchestrator, actions, run_id, seen)
    arguments: list[Any] = []
    for position, member in enumerate(step.members):
        if isinstance(member, Call):
            token = Token(member.site, run_id)
            record.members[position] = token
            arguments.append(_argument(token, seen))
        else:
            arguments.append(_Nested(member, position, record, context))
    try:
        if step.kind == "map":
            calls = [m for m in step.members if isinstance(m, Call)]
            if len(calls) == len(step.members):
                function = actions[calls[0].action]
            else:
                function = _map_item(actions[calls[0].action] if calls else None)
            result = await orchestrator.map(
                function, arguments, concurrency=step.concurrency, fail_fast=step.fail_fast
            )
        else:
            members = [actions[m.action] if isinstance(m, Call) else _nested for m in step.members]
            group = orchestrator.parallel(
                members, fail_fast=step.fail_fast, concurrency=step.concurrency
            )
            result = await group(*arguments)
    except BaseException as exc:
        record.raised = exc
        raise
    finally:
        record.ended = True
    return result


def _map_item(action: Any) -> Any:
    # The function a map calls for each item when some items are no calls of its action.
    async def item(argument: Token | int | _Nested) -> Any:
        if isinstance(argument, _Nested):
            return await _nested(argument)
        return await action(argument)

    return item


async def _main(
    orchestrator: Orchestrator[State],
    scenario: Scenario,
    actions: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
    seen: Observation,
    tasks: list[asyncio.Task[Any]],
) -> None:
    workflows = {f"r{index}": spec.steps for index, spec in enumerate(scenario.runs)}

    # The body's argument, its run id, is JSON: a journal records it.
    async def body(run_id: str) -> list[Any]:
        return [
            await run_step(orchestrator, actions, step, run_id, seen) for step in workflows[run_id]
        ]

    for index, spec in enumerate(scenario.runs):
        run_id = f"r{index}"
        task = asyncio.ensure_future(orchestrator.run(body, run_id, run_id=run_id))
        if spec.cancel_at is not None:
            cancel = _canceller(loop, task, cancel_message(run_id), spec.recancel, seen)
            loop.call_at(spec.cancel_at, cancel)
            seen.faults["cancel"] += 1
        tasks.append(task)
    stuck = threading.Event()
    watchdog = threading.Timer(WATCHDOG_SECONDS, lambda: (stuck.set(), _cancel_all(loop, tasks)))
    watchdog.start()
    try:
        await asyncio.wait(tasks)
    finally:
        watchdog.cancel()
    if stuck.is_set():
        raise Deadlock(f"the scenario was still running after {WATCHDOG_SECONDS} s")
    for task in tasks:
        try:
            seen.outcomes.append(("ok", task.result()))
        except BaseException as error:  # the run's own exception, CancelledError included
            seen.outcomes.append(("err", error))


def cancel_message(run_id: str) -> str:
    """The message a run is cancelled with from outside."""
    return f"{run_id} cancelled from outside"


def _canceller(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any],
    message: str,
    again: int | None,
    seen: Observation,
) -> Any:
    # Cancels ``task``, and if ``again`` is not None once more that many loop turns later.
    def later(turns: int) -> None:
        if turns:
            loop.call_soon(later, turns - 1)
        elif not task.done():
            seen.faults["cancelled twice"] += 1
            task.cancel(message)

    def cancel() -> None:
        task.cancel(message)
        if again is not None:
            later(again)

    return cancel


def _cancel_all(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        loop.call_soon_threadsafe(task.cancel)


def describe(error: BaseException) -> Any:
    """The oracle's description of an exception that a run raised."""
    if isinstance(error, asyncio.CancelledError):
        return ("cancel",)
    kinds = {Retryable: "retryable", Fatal: "fatal", Abort: "abort", CleanupError: "cleanup"}
    if type(error) in kinds:
        return (kinds[type(error)], *error.args[:-1])  # without the serial number
    if isinstance(error, ActionTimeout):
        return ("timeout", error.action)
    if isinstance(error, HookError):
        return ("hook", *error.args[:-1])
    if isinstance(error, ParallelError):
        return (
            "group",
            tuple((i, describe(e)) for i, e in zip(error.indices, error.exceptions, strict=True)),
        )
    return ("unexpected", repr(error))
