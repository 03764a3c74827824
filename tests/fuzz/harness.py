"""Run a scenario for real, on a virtual-time loop, and record everything that happened."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from clock import VirtualClock, VirtualLoop
from model import Group, Scenario, Step

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


class Deadlock(AssertionError):
    """The scenario did not finish within the real-time watchdog."""


_serials = itertools.count(1)
# (call serial, attempt number) of the attempt under way in this task: set by the harness's
# begin and retry hooks, carried into worker threads with the context.
_attempt: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("attempt")


class Token:
    """The argument of one call: says which site it is, in which run."""

    __slots__ = ("run_id", "serial", "site")

    def __init__(self, site: int, run_id: str) -> None:
        self.site = site
        self.run_id = run_id
        self.serial = next(_serials)

    def __repr__(self) -> str:
        return f"<call of s{self.site}>"


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


def execute(scenario: Scenario) -> Observation:
    """Run every run of ``scenario`` concurrently on one orchestrator, and observe.

    The orchestrator runs many sync actions at once: the virtual clock stands still while a
    job waits for a worker thread, so every parked thread needs one.
    """
    orchestrator = Orchestrator(max_threads=MAX_THREADS)
    pool = orchestrator._pool
    clock = VirtualClock(pool)
    loop = VirtualLoop(clock)
    seen = Observation()
    try:
        _instrument(orchestrator, scenario, clock, loop, seen)
        actions = _actions(orchestrator, scenario, clock, seen)
        loop.run_until_complete(_main(orchestrator, scenario, actions, loop, seen))
        seen.pending_tasks = [repr(task) for task in asyncio.all_tasks(loop)]
        # Threads still parked now must all work for abandoned attempts, which the pool no
        # longer counts: any job it still counts was left behind by the library.
        seen.busy_after = _settled_busy(pool)
    finally:
        clock.release_all()
        _settled_busy(pool)
        loop.close()
    return seen


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
            error = HookError(token.site, point)
            seen.raised.append((error, False))
            seen.faults["raising hook"] += 1
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
    error = (Retryable if kind in ("retryable", "stubborn") else Fatal)(site, attempt)
    seen.faults[kind] += 1
    # Only an attempt abandoned before it raised may have its error dropped.
    with clock.lock:
        abandoned = key in clock.abandoned
    seen.raised.append((error, abandoned))
    raise error


def _sync_function(
    scenario: Scenario, orchestrator: Orchestrator[State], clock: VirtualClock, seen: Observation
) -> Any:
    def work(token: Token) -> int:
        spec = scenario.sites[token.site]
        key = _attempt.get()
        attempt = key[1]
        if orchestrator.get_state().run != token.run_id:  # in the worker thread
            seen.context_violations.append(f"s{spec.site} in {token.run_id}")
        outcome = spec.outcomes[attempt - 1]
        if outcome.kind == "hang":
            seen.faults["hang (thread)"] += 1
        clock.park(math.inf if outcome.kind == "hang" else outcome.duration, key)
        if outcome.kind == "ok":
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
    async def work(token: Token) -> int:
        spec = scenario.sites[token.site]
        key = _attempt.get()
        attempt = key[1]
        if orchestrator.get_state().run != token.run_id:
            seen.context_violations.append(f"s{spec.site} in {token.run_id}")
        for step in spec.inner:
            await run_step(orchestrator, actions, step, token.run_id)
        outcome = spec.outcomes[attempt - 1]
        if outcome.kind == "hang":
            seen.faults["hang (async)"] += 1
            await asyncio.Event().wait()
        elif outcome.kind == "stubborn":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                _fail("stubborn", spec.site, attempt, key, clock, seen)
        await asyncio.sleep(outcome.duration)
        if outcome.kind == "ok":
            return spec.site * 1000 + attempt
        _fail(outcome.kind, spec.site, attempt, key, clock, seen)
        raise AssertionError("unreachable")

    return work


async def run_step(
    orchestrator: Orchestrator[State], actions: dict[str, Any], step: Step, run_id: str
) -> Any:
    """Execute one step of a workflow inside a run."""
    if isinstance(step, Group):
        tokens = [Token(member.site, run_id) for member in step.members]
        if step.kind == "map":
            return await orchestrator.map(
                actions[step.members[0].action],
                tokens,
                concurrency=step.concurrency,
                fail_fast=step.fail_fast,
            )
        group = orchestrator.parallel(
            [actions[member.action] for member in step.members],
            fail_fast=step.fail_fast,
            concurrency=step.concurrency,
        )
        return await group(*tokens)
    return await actions[step.action](Token(step.site, run_id))


async def _main(
    orchestrator: Orchestrator[State],
    scenario: Scenario,
    actions: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
    seen: Observation,
) -> None:
    async def body(run_id: str, steps: tuple[Step, ...]) -> list[Any]:
        return [await run_step(orchestrator, actions, step, run_id) for step in steps]

    tasks = []
    for index, spec in enumerate(scenario.runs):
        run_id = f"r{index}"
        task = asyncio.ensure_future(orchestrator.run(body, run_id, spec.steps, run_id=run_id))
        if spec.cancel_at is not None:
            loop.call_at(spec.cancel_at, task.cancel)
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


def _cancel_all(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        loop.call_soon_threadsafe(task.cancel)


def describe(error: BaseException) -> Any:
    """The oracle's description of an exception that a run raised."""
    if isinstance(error, asyncio.CancelledError):
        return ("cancel",)
    if isinstance(error, Retryable):
        return ("retryable", *error.args)
    if isinstance(error, Fatal):
        return ("fatal", *error.args)
    if isinstance(error, ActionTimeout):
        return ("timeout", error.action)
    if isinstance(error, HookError):
        return ("hook", *error.args)
    if isinstance(error, ParallelError):
        return (
            "group",
            tuple((i, describe(e)) for i, e in zip(error.indices, error.exceptions, strict=True)),
        )
    return ("unexpected", repr(error))
