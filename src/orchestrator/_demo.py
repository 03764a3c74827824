"""The scenarios behind ``python -m orchestrator demo``, against in-process fake services."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import reprlib
import tempfile
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ._cli import Style, show_lines
from ._errors import ActionTimeout
from ._events import (
    ProcessBeginEvent,
    ProcessCompletionEvent,
    ProcessErrorEvent,
    TaskBeginEvent,
    TaskCompletionEvent,
    TaskErrorEvent,
    TaskRetryEvent,
)
from ._journal import SQLiteJournal
from ._orchestrator import Orchestrator
from ._retry import RetryPolicy
from .timeline import Timeline

C = TypeVar("C")
Write = Callable[[str], None]


# The timelines of the scenarios' orchestrators, while demo() runs.
_timelines: ContextVar[list[Timeline] | None] = ContextVar("demo-timelines", default=None)

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 40


def _short(value: object) -> str:
    return _repr.repr(value)


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return f"{type(error).__name__}: {error}"


def show_hooks(orchestrator: Orchestrator[C], write: Write) -> Orchestrator[C]:
    """Register hooks that print every lifecycle event as it fires (and record a timeline)."""
    timelines = _timelines.get()
    if timelines is not None:
        timelines.append(Timeline(orchestrator))

    def call(event: TaskBeginEvent[C]) -> str:
        args = ", ".join(
            [*map(_short, event.args), *(f"{k}={_short(v)}" for k, v in event.kwargs.items())]
        )
        return f"{event.name}({args})"

    def process_begin(event: ProcessBeginEvent[C]) -> None:
        # A generated run id is 32 hex digits: its start tells runs apart well enough here.
        run_id = event.run_id if len(event.run_id) <= 16 else event.run_id[:8]
        write(f"  {'process begin':18} run {run_id} at {event.time:%H:%M:%S.%f} UTC")

    def task_begin(event: TaskBeginEvent[C]) -> None:
        parent = "" if event.parent_id is None else f" (inside #{event.parent_id})"
        write(f"  {'task begin':18} #{event.task_id} {call(event)}{parent}")

    def task_retry(event: TaskRetryEvent[C]) -> None:
        write(
            f"  {'task retry':18} #{event.task_id} {event.name}: attempt {event.attempt} failed "
            f"({_describe(event.error)}); next in {event.delay:.2f} s"
        )

    def task_error(event: TaskErrorEvent[C]) -> None:
        write(f"  {'task error':18} #{event.task_id} {event.name}: {_describe(event.error)}")

    def task_completion(event: TaskCompletionEvent[C]) -> None:
        outcome = f"-> {_short(event.result)}" if event.error is None else _describe(event.error)
        how = "replayed from the journal" if event.replayed else f"{event.attempts} attempt(s)"
        write(
            f"  {'task completion':18} #{event.task_id} {event.name} {outcome} "
            f"[{how}, {event.duration:.1f} ms]"
        )

    def process_error(event: ProcessErrorEvent[C]) -> None:
        write(f"  {'process error':18} {_describe(event.error)}")

    def process_completion(event: ProcessCompletionEvent[C]) -> None:
        outcome = "ok" if event.error is None else "failed"
        write(f"  {'process completion':18} {outcome} in {event.total_duration:.1f} ms")

    return (
        orchestrator.on_process_begin(process_begin)
        .on_task_begin(task_begin)
        .on_task_retry(task_retry)
        .on_task_error(task_error)
        .on_task_completion(task_completion)
        .on_process_error(process_error)
        .on_process_completion(process_completion)
    )


async def inventory(write: Write) -> None:
    """Check stock for a SKU and notify the team when it is low."""
    stock = {"ABC123": 0, "XYZ789": 12}
    orchestrator = show_hooks(Orchestrator(), write)

    @orchestrator.action
    async def check_inventory(sku: str) -> dict[str, Any]:
        await asyncio.sleep(0.02)  # the stock database
        return {"sku": sku, "in_stock": stock[sku] > 0}

    @orchestrator.action
    def notify_team(sku: str) -> bool:
        time.sleep(0.02)  # a blocking chat client: runs in a worker thread
        write(f"    (team notified about low stock of {sku})")
        return True

    async def main(sku: str) -> None:
        result = await check_inventory(sku)
        if not result["in_stock"]:
            await notify_team(sku)

    await orchestrator.run(main, "ABC123")


async def profile_and_shipping(write: Write) -> None:
    """Fetch a profile and shipping options at the same time, then again with a failure."""
    orchestrator = show_hooks(Orchestrator(), write)
    shipping_down = False

    @orchestrator.action
    async def get_user_profile(user_id: str) -> dict[str, str]:
        await asyncio.sleep(0.15)  # the user service
        return {"user_id": user_id, "name": "Alice"}

    @orchestrator.action
    async def get_shipping_options(destination: str) -> list[str]:
        await asyncio.sleep(0.05)  # the shipping provider
        if shipping_down:
            raise ConnectionError(f"shipping provider has no route to {destination}")
        return ["Standard", "Express", "Overnight"]

    both = orchestrator.parallel([get_user_profile, get_shipping_options])
    profile, methods = await orchestrator.run(both, "user42", "USA")
    write(f"    results: {profile} {methods}")

    write("  ...and again with the shipping provider down, under fail_fast=True:")
    shipping_down = True
    fail_fast = orchestrator.parallel([get_user_profile, get_shipping_options], fail_fast=True)
    try:
        await orchestrator.run(fail_fast, "user42", "USA")
    except ConnectionError as exc:
        write(
            f"    the run raised {_describe(exc)}; "
            "the profile fetch was cancelled and had ended before"
        )


@dataclass
class ProcessContext:
    """The typed context of the API scenario."""

    request_count: int = 0
    errors: list[Exception] = field(default_factory=list)
    api_key: str | None = None
    session_data: dict[str, Any] | None = None


async def api_integration(write: Write) -> None:
    """Authenticate, fetch with a flaky service that a retry rescues, update with a timeout."""
    orchestrator = show_hooks(Orchestrator(ProcessContext), write)
    flaky = itertools.count(1)

    async def fetch_api_key() -> str:
        await asyncio.sleep(0.01)
        return "key-7f3a"

    async def begin(event: ProcessBeginEvent[ProcessContext]) -> None:
        event.context.api_key = await fetch_api_key()
        write("    (API key fetched)")

    def count_request(event: TaskBeginEvent[ProcessContext]) -> None:
        event.context.request_count += 1

    def log_metrics(event: ProcessCompletionEvent[ProcessContext]) -> None:
        context = event.context
        write(f"    (metrics: {context.request_count} requests, {len(context.errors)} errors)")
        context.api_key = None  # the key never outlives the run
        write("    (API key cleared)")

    orchestrator.on_process_begin(begin).on_task_begin(count_request)
    orchestrator.on_process_completion(log_metrics)

    @orchestrator.action(retry=RetryPolicy(retries=3, delay=0.1, jitter=0.1))
    async def fetch_user_data(user_id: str) -> dict[str, Any]:
        context = orchestrator.get_state()
        await asyncio.sleep(0.02)
        if next(flaky) == 1:
            error = ConnectionError("user service reset the connection")
            context.errors.append(error)
            raise error
        return {"user_id": user_id, "name": "Alice", "authorized_with": context.api_key}

    @orchestrator.action(timeout=0.2)
    async def update_profile(user_id: str, data: dict[str, Any]) -> int:
        orchestrator.get_state().session_data = {"last_update": time.time()}
        await asyncio.sleep(10)  # the profile service hangs
        return 200

    async def main() -> None:
        try:
            user = await fetch_user_data("user123")
            await update_profile("user123", {**user, "last_login": "now"})
        except ActionTimeout as exc:
            orchestrator.get_state().errors.append(exc)
            write(f"    the body caught {_describe(exc)}")
        write(f"    the run ends with {len(orchestrator.get_state().errors)} errors recorded")

    await orchestrator.run(main)


async def durable_order(write: Write, store: SQLiteJournal) -> None:
    """Fail a journaled run halfway on a flaky carrier, then resume it under the same run id.

    Args:
        write: Where the lines go.
        store: The journal to record the run in.

    """
    orchestrator = show_hooks(Orchestrator(journal=store), write)
    carrier_up = False
    charged: list[str] = []

    @orchestrator.action
    async def reserve_stock(order_id: str) -> str:
        await asyncio.sleep(0.01)  # the warehouse
        write(f"    (2 units reserved for {order_id})")
        return f"reservation-{order_id}"

    @orchestrator.action
    async def charge_card(order_id: str, amount: float) -> str:
        await asyncio.sleep(0.01)  # the payment provider
        charged.append(order_id)
        write(f"    (card charged {amount:.2f} for {order_id})")
        return f"payment-{order_id}"

    @orchestrator.action(retry=RetryPolicy(retries=1, delay=0.05, jitter=0))
    async def book_shipping(order_id: str) -> str:
        await asyncio.sleep(0.01)  # the carrier
        if not carrier_up:
            raise ConnectionError("the carrier's booking service is down")
        return f"label-{order_id}"

    @orchestrator.action
    async def send_confirmation(order_id: str, label: str) -> bool:
        await asyncio.sleep(0.01)  # the mail service
        write(f"    (confirmation mailed for {order_id}, shipping label {label})")
        return True

    async def place_order(order_id: str, amount: float) -> str:
        await reserve_stock(order_id)
        await charge_card(order_id, amount)
        label = await book_shipping(order_id)
        await send_confirmation(order_id, label)
        return label

    # A run id of its own each time, so that a kept journal can record the demo again.
    run_id = f"order-{os.urandom(4).hex()}"
    try:
        await orchestrator.run(place_order, run_id, 42.0, run_id=run_id)
    except ConnectionError as exc:
        write(f"    the run failed halfway: {_describe(exc)}; what succeeded is recorded")
    write(f"  ...later, with the carrier back, run {run_id} again:")
    carrier_up = True
    label = await orchestrator.run(place_order, run_id, 42.0, run_id=run_id)
    write(
        f"    the run finished with {label!r}; the card was charged {len(charged)} time(s) "
        "in all, as the payment was replayed, not made again"
    )
    await asyncio.to_thread(_report, store, run_id, write)


def _report(journal: SQLiteJournal, run_id: str, write: Write) -> None:
    """What the demo shows of a finished run: its calls as ``python -m orchestrator show`` does."""
    run = next(run for run in journal.list_runs() if run.run_id == run_id)
    write("  the run, as python -m orchestrator show prints it:")
    for line in show_lines(run, journal.calls(run_id), Style()):
        write(f"    {line}" if line else "")


SCENARIOS = (
    ("Inventory check and team notification", inventory),
    ("Profile and shipping options in parallel", profile_and_shipping),
    ("API integration with a typed context, a retry and a timeout", api_integration),
)
"""Each scenario's title and coroutine function, in the order the demo runs them, before the
durable run."""

DURABLE = "A durable run: a flaky carrier fails it halfway, and it resumes later"
"""The title of the last scenario, ``durable_order``."""


async def demo(
    write: Write = print, *, journal: str | None = None, timeline_dir: Path | None = None
) -> None:
    """Run every scenario, printing the hooks as they fire; then write each run's timeline.

    Args:
        write: Where the lines go.
        journal: The journal file of the durable run, kept afterwards; None for a temporary
            file, deleted at the end.
        timeline_dir: Where the HTML timeline of each run goes; None for a new temporary
            directory.

    Raises:
        JournalError: ``journal`` cannot be a journal; raised before any scenario runs.

    """
    timelines: list[Timeline] = []
    token = _timelines.set(timelines)
    try:
        async with contextlib.AsyncExitStack() as files:
            path = journal
            if path is None:
                folder = files.enter_context(
                    tempfile.TemporaryDirectory(prefix="orchestrator-demo-")
                )
                path = os.path.join(folder, "runs.db")
            # Opening and closing a journal wait for the disk: not on the event loop's thread.
            store = await asyncio.to_thread(SQLiteJournal, path)
            files.push_async_callback(asyncio.to_thread, store.close)
            for number, (title, scenario) in enumerate(SCENARIOS, 1):
                write(f"\n== {number}. {title}")
                await scenario(write)
            write(f"\n== {len(SCENARIOS) + 1}. {DURABLE}")
            await durable_order(write, store)
            if journal is not None:
                write(f"  the journal is kept: python -m orchestrator runs --journal {store.path}")
    finally:
        _timelines.reset(token)
    if timeline_dir is None:
        timeline_dir = Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    timeline_dir.mkdir(parents=True, exist_ok=True)
    write(f"\n== Timelines of the runs, one HTML page each, in {timeline_dir}")
    count = itertools.count(1)
    for timeline in timelines:
        timeline.close()
        for run_id in timeline.run_ids():
            page = timeline.to_html(timeline_dir / f"run-{next(count)}-{run_id[:8]}.html", run_id)
            write(f"  {page}")
