"""Side-by-side benchmarks of orchestrator and the tools a user would otherwise pick.

    python benchmarks/run.py            # the full run (about a minute and a half)
    python benchmarks/run.py --quick    # a short run, as CI does
    python benchmarks/run.py --json results.json
    python benchmarks/run.py --only journal     # one section (per-call, fan-out, pool, ...)

Per-call scenarios all run in this one process, interleaved round-robin: repeat 1 of every
scenario, then repeat 2, and so on. Each repeat's time per call is divided by the bare
``await coro()`` of the same repeat (or by the peer a target names), and the median of those
ratios is reported with their min and max. Fan-out scenarios run each in a fresh subprocess,
timed without tracemalloc and then measured with it for bytes per task. ``map()`` with a
concurrency limit is timed against a lean hand-written pool, alternating in one fresh
subprocess per round. Import and first-run costs are measured in fresh interpreters. A
CPU-bound ``map`` on a ProcessExecutor against threads runs in a fresh subprocess too; its
speedup depends on the idle cores, so it is reported with the core count and not judged.
Journaled calls (durable runs) run in this process, interleaved round-robin, on files in one
directory on disk: against a hand-written sqlite3 loop doing the same work, and DBOS's steps
when the ``dbos`` package is installed; their targets are also in microseconds. The machine is
noisy: judge the ratios, and the medians of same-repeat measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import stamina
import tenacity
from opentelemetry.sdk.trace import TracerProvider
from rich.console import Console

from orchestrator import Interceptor, Orchestrator, RetryPolicy, SQLiteJournal, otel
from orchestrator.executors import ProcessExecutor
from orchestrator.otel import instrument
from orchestrator.progress import progress

ROOT = Path(__file__).resolve().parent.parent
FANOUT_TASKS = 10_000
# map() with a limit against a hand-written pool. 1,000,000 items at concurrency 10,000 take
# about 40 s for three rounds; 200,000 items (still 20 per worker) take about 16 s and give
# ratios a little kinder to map, whose copy of the items weighs more as the list grows (1.2
# against 1.1 when it never suspends).
POOL_ITEMS = 200_000
POOL_CONCURRENCY = 10_000
POOL_REPEATS = 3


@dataclass
class Row:
    """One line of the report."""

    scenario: str
    unit: str  # what the figures are: "x bare await", "x <peer>", "ms"
    median: float
    low: float
    high: float
    target: float | None = None
    kind: str = "ours"  # "ours", "peer" or "baseline"
    samples: list[float] = field(default_factory=list)

    @property
    def met(self) -> str:
        if self.target is None:
            return ""
        return "yes" if self.median <= self.target else "NO"


def summarize(
    scenario: str, unit: str, samples: list[float], target: float | None = None, kind: str = "ours"
) -> Row:
    return Row(
        scenario,
        unit,
        statistics.median(samples),
        min(samples),
        max(samples),
        target,
        kind,
        samples,
    )


# Per-call scenarios -------------------------------------------------------------------------


async def trivial() -> int:
    return 1


def blocking() -> int:
    return 1


async def timed(calls: int, call: Callable[[], Awaitable[Any]]) -> float:
    """Seconds per call of ``await call()``; every scenario shares this loop."""
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls


def _hooked() -> Orchestrator[Any]:
    orchestrator = Orchestrator()
    orchestrator.on_task_begin(lambda event: None).on_task_completion(lambda event: None)
    return orchestrator


class _NoOp(Interceptor):
    """Wraps every call and does nothing else: the cost of the seam itself."""

    async def intercept_call(self, call: Any, proceed: Any) -> Any:
        return await proceed()


HAND_ATTRIBUTES = {
    otel.RUN_ID: "0123456789abcdef0123456789abcdef",
    otel.CALL_KEY: "1",
    otel.TASK_ID: 1,
    otel.FUNCTION: "__main__.trivial",
}


def per_call_scenarios() -> dict[str, tuple[int, Callable[[int], Awaitable[float]]]]:
    """Each scenario's calls per repeat, and how to measure seconds per call."""
    plain = Orchestrator()
    hooked = _hooked()
    intercepted = Orchestrator().add_interceptor(_NoOp())
    action = plain.action(trivial)
    intercepted_action = intercepted.action(trivial)
    hooked_action = hooked.action(trivial)
    retried = plain.action(trivial, retry=RetryPolicy(retries=3))
    limited = plain.action(trivial, timeout=10)
    threaded = plain.action(blocking)

    @stamina.retry(on=Exception, attempts=4)
    async def stamina_trivial() -> int:
        return 1

    @tenacity.retry(stop=tenacity.stop_after_attempt(4), reraise=True)
    async def tenacity_trivial() -> int:
        return 1

    async def asyncio_timeout() -> int:
        async with asyncio.timeout(10):
            return await trivial()

    async def inline_timeout(calls: int) -> float:
        # The baseline written out in the timing loop itself: no function of its own around it.
        started = time.perf_counter()
        for _ in range(calls):
            async with asyncio.timeout(10):
                await trivial()
        return (time.perf_counter() - started) / calls

    # OpenTelemetry. No global provider is ever set in this process, so the first orchestrator
    # traces into the API's no-op placeholder; the SDK provider has no processor, so that the
    # figures are of making spans, not of exporting them.
    otel_off = _hooked()
    instrument(otel_off)
    otel_off_action = otel_off.action(trivial)
    sdk = TracerProvider()
    tracer = sdk.get_tracer("benchmark")
    traced = Orchestrator()
    instrument(traced, sdk)
    traced_action = traced.action(trivial)

    async def by_hand() -> int:
        # The span instrument() makes, written by hand: the same six attributes.
        with tracer.start_as_current_span("trivial", attributes=HAND_ATTRIBUTES) as span:
            result = await action()
            span.set_attributes({otel.ATTEMPTS: 1, otel.REPLAYED: False})
            return result

    async def bare_span() -> int:
        with tracer.start_as_current_span("trivial"):
            return await action()

    shown = _hooked()
    shown_action = shown.action(trivial)
    terminal = open(os.devnull, "w")  # noqa: SIM115 - open for the whole benchmark

    def in_progress(calls: int) -> Awaitable[float]:
        async def measure() -> float:
            # Drawn as on a terminal, by rich's thread, the whole time the calls run.
            screen = Console(file=terminal, force_terminal=True, width=100)
            with progress(shown, console=screen, refresh_per_second=10):
                return await shown.run(timed, calls, shown_action)

        return measure()

    def in_run(orchestrator: Orchestrator[Any], call: Callable[[], Awaitable[Any]]) -> Any:
        async def measure(calls: int) -> float:
            return await orchestrator.run(timed, calls, call)

        return measure

    def bare(call: Callable[[], Awaitable[Any]]) -> Any:
        async def measure(calls: int) -> float:
            return await timed(calls, call)

        return measure

    return {
        "bare await coro()": (20_000, bare(trivial)),
        "action, no hooks": (20_000, in_run(plain, action)),
        "action, begin+completion hooks": (10_000, in_run(hooked, hooked_action)),
        "action, one no-op interceptor": (10_000, in_run(intercepted, intercepted_action)),
        "action, hooks + OTel, no SDK": (10_000, in_run(otel_off, otel_off_action)),
        "action, OTel with the SDK": (2_000, in_run(traced, traced_action)),
        "action in start_as_current_span by hand": (2_000, in_run(plain, by_hand)),
        "action in a span without attributes": (2_000, in_run(plain, bare_span)),
        "action, hooks + progress display": (10_000, in_progress),
        "action, RetryPolicy, no hooks": (20_000, in_run(plain, retried)),
        "action, timeout=10": (10_000, in_run(plain, limited)),
        "sync action (worker thread)": (1_000, in_run(plain, threaded)),
        "stamina async retry": (5_000, bare(stamina_trivial)),
        "tenacity async retry": (5_000, bare(tenacity_trivial)),
        "async with asyncio.timeout(10)": (10_000, bare(asyncio_timeout)),
        "asyncio.timeout(10) inline in the loop": (10_000, inline_timeout),
        "asyncio.wait_for(coro, 10)": (5_000, bare(lambda: asyncio.wait_for(trivial(), 10))),
        "asyncio.to_thread(fn)": (1_000, bare(lambda: asyncio.to_thread(blocking))),
    }


# scenario -> (reference scenario, target ratio); the reference None means bare await.
PER_CALL_TARGETS: dict[str, list[tuple[str | None, float | None]]] = {
    "action, no hooks": [(None, 5.0)],
    "action, begin+completion hooks": [(None, 20.0)],
    "action, one no-op interceptor": [(None, 20.0)],
    "action, RetryPolicy, no hooks": [(None, 6.0), ("stamina async retry", 0.05)],
    "action, timeout=10": [
        ("async with asyncio.timeout(10)", 1.2),
        ("asyncio.timeout(10) inline in the loop", 1.2),
    ],
    "sync action (worker thread)": [("asyncio.to_thread(fn)", 1.15)],
    "action, OTel with the SDK": [
        ("action in start_as_current_span by hand", 1.2),
        ("action in a span without attributes", None),
    ],
}

# scenario -> (reference scenario, target): microseconds per call over the reference.
PER_CALL_EXTRA_US: dict[str, tuple[str, float]] = {
    "action, hooks + OTel, no SDK": ("action, begin+completion hooks", 2.0),
    "action, hooks + progress display": ("action, begin+completion hooks", 5.0),
}


def run_per_call(repeats: int, scale: float) -> list[Row]:
    scenarios = per_call_scenarios()
    times: dict[str, list[float]] = {name: [] for name in scenarios}

    async def main() -> None:
        for calls, measure in scenarios.values():  # warm-up
            await measure(max(1, calls // 20))
        for _ in range(repeats):
            for name, (calls, measure) in scenarios.items():
                gc.collect()
                times[name].append(await measure(max(1, int(calls * scale))))

    asyncio.run(main())
    bare = times["bare await coro()"]
    rows: list[Row] = []
    for name, seconds in times.items():
        ratios = [s / b for s, b in zip(seconds, bare, strict=True)]
        targets = PER_CALL_TARGETS.get(name, [])
        bare_target = next((t for ref, t in targets if ref is None), None)
        ours = targets or name in PER_CALL_EXTRA_US
        kind = "baseline" if name == "bare await coro()" else ("ours" if ours else "peer")
        rows.append(summarize(name, "x bare await", ratios, bare_target, kind))
        for reference, target in targets:
            if reference is not None:
                relative = [s / r for s, r in zip(seconds, times[reference], strict=True)]
                rows.append(summarize(f"{name} vs {reference}", "x peer", relative, target))
        if name in PER_CALL_EXTRA_US:
            reference, target = PER_CALL_EXTRA_US[name]
            extra = [(s - r) * 1e6 for s, r in zip(seconds, times[reference], strict=True)]
            rows.append(summarize(f"{name} over {reference}", "µs/call", extra, target))
    return rows


# Fan-out scenarios, each in a fresh subprocess ----------------------------------------------


def fanout_child(scenario: str, tasks: int, memory: bool) -> float:
    """In a subprocess: seconds per task, or (with ``memory``) peak bytes per task."""
    import tracemalloc

    orchestrator = Orchestrator()

    @orchestrator.action
    async def action(item: int) -> int:
        return item

    async def taskgroup() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(tasks):
                group.create_task(trivial())

    async def gather() -> None:
        await asyncio.gather(*(trivial() for _ in range(tasks)))

    async def semaphore_gather() -> None:
        semaphore = asyncio.Semaphore(100)

        async def limited() -> int:
            async with semaphore:
                return await trivial()

        await asyncio.gather(*(limited() for _ in range(tasks)))

    async def ours_map() -> None:
        await orchestrator.run(orchestrator.map, action, range(tasks))

    @orchestrator.action
    async def member() -> int:
        return 1

    group = orchestrator.parallel([member] * tasks)  # defined once, like a module-level group

    async def ours_parallel() -> None:
        await orchestrator.run(group)

    async def ours_map_limited() -> None:
        await orchestrator.run(orchestrator.map, action, range(tasks), concurrency=100)

    bodies: dict[str, Callable[[], Awaitable[None]]] = {
        "TaskGroup": taskgroup,
        "gather": gather,
        "Semaphore(100)+gather": semaphore_gather,
        "map": ours_map,
        "parallel": ours_parallel,
        "map, concurrency=100": ours_map_limited,
    }
    body = bodies[scenario]

    async def main() -> float:
        await body()  # warm-up: first-use costs are not per-task costs
        gc.collect()
        if memory:
            tracemalloc.start()
            await body()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return peak / tasks
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            await body()
            runs.append((time.perf_counter() - started) / tasks)
        return statistics.median(runs)

    return asyncio.run(main())


def _child(*args: str) -> float:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


FANOUT = ("TaskGroup", "gather", "Semaphore(100)+gather", "map", "parallel", "map, concurrency=100")
FANOUT_TARGETS = {
    "map": ("TaskGroup", 1.2, 1.3),
    "parallel": ("TaskGroup", 1.2, 1.3),
    "map, concurrency=100": ("Semaphore(100)+gather", 1.2, None),
}


def run_fanout(repeats: int, tasks: int) -> list[Row]:
    seconds: dict[str, list[float]] = {name: [] for name in FANOUT}
    memory: dict[str, list[float]] = {name: [] for name in FANOUT}
    for _ in range(repeats):
        for name in FANOUT:
            seconds[name].append(_child("--fanout", name, str(tasks)))
            memory[name].append(_child("--fanout", name, str(tasks), "--memory"))
    rows = []
    baseline = seconds["TaskGroup"]
    for name in FANOUT:
        kind = "ours" if name in FANOUT_TARGETS else ("baseline" if name == "TaskGroup" else "peer")
        ratios = [s / b for s, b in zip(seconds[name], baseline, strict=True)]
        rows.append(
            summarize(f"fan-out {tasks:,}: {name}, time/task", "x TaskGroup", ratios, None, kind)
        )
        if name in FANOUT_TARGETS:
            reference, time_target, bytes_target = FANOUT_TARGETS[name]
            relative = [s / r for s, r in zip(seconds[name], seconds[reference], strict=True)]
            rows.append(
                summarize(
                    f"fan-out {tasks:,}: {name} vs {reference}, time/task",
                    "x peer",
                    relative,
                    time_target,
                )
            )
            if bytes_target is not None:
                mem = [m / r for m, r in zip(memory[name], memory[reference], strict=True)]
                rows.append(
                    summarize(
                        f"fan-out {tasks:,}: {name} vs {reference}, bytes/task",
                        "x peer",
                        mem,
                        bytes_target,
                    )
                )
        rows.append(
            summarize(f"fan-out {tasks:,}: {name}, bytes/task", "bytes", memory[name], None, kind)
        )
    return rows


# map() with a limit against a hand-written pool, each in a fresh subprocess ------------------


async def item_at_once(item: int) -> int:
    return item


async def item_after_sleep(item: int) -> int:
    await asyncio.sleep(0)
    return item


async def lean_pool(
    call: Callable[[int], Awaitable[int]], items: list[int], concurrency: int
) -> list[Any]:
    """The optimum by hand: ``concurrency`` worker tasks pulling from one shared iterator."""
    results: list[Any] = [None] * len(items)
    pending = enumerate(items)

    async def worker() -> None:
        for index, item in pending:
            results[index] = await call(item)

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return results


POOL_CALLS: dict[str, Callable[[int], Awaitable[int]]] = {
    "never suspends": item_at_once,
    "awaits sleep(0)": item_after_sleep,
}


def pool_child(call_name: str, items: int, concurrency: int) -> tuple[float, float]:
    """In a subprocess: the pool's seconds per item, and ``map``'s time over the pool's.

    The two alternate, five runs each after a warm-up, so that both meet the same state of
    the machine; the median of the five ratios is returned.
    """
    orchestrator = Orchestrator()
    call = POOL_CALLS[call_name]
    values = list(range(items))

    async def measure(body: Callable[[], Awaitable[list[Any]]]) -> float:
        gc.collect()
        started = time.perf_counter()
        results = await body()
        elapsed = time.perf_counter() - started
        assert results[-1] == items - 1
        return elapsed

    async def main() -> tuple[float, float]:
        def ours() -> Awaitable[list[Any]]:
            return orchestrator.map(call, values, concurrency=concurrency)

        def pool() -> Awaitable[list[Any]]:
            return lean_pool(call, values, concurrency)

        await measure(ours)  # warm-up
        await measure(pool)
        pools, ratios = [], []
        for _ in range(5):
            pooled = await measure(pool)
            pools.append(pooled / items)
            ratios.append(await measure(ours) / pooled)
        return statistics.median(pools), statistics.median(ratios)

    return orchestrator.run_sync(main)


def run_pool(repeats: int, items: int, concurrency: int) -> list[Row]:
    rows = []
    for call_name in POOL_CALLS:
        pools, ratios = [], []
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, __file__, "--pool", call_name, str(items), str(concurrency)],
                capture_output=True,
                text=True,
                check=True,
            )
            pooled, ratio = map(float, done.stdout.split())
            pools.append(pooled * 1e6)
            ratios.append(ratio)
        prefix = f"map, {items:,} items, concurrency {concurrency:,}, a call that {call_name}"
        rows.append(summarize(f"{prefix}: hand-written pool", "us/item", pools, None, "baseline"))
        rows.append(summarize(f"{prefix}: map vs hand-written pool", "x peer", ratios, 1.3))
    return rows


# CPU-bound map: worker processes against threads, in a fresh subprocess ---------------------

PROCESS_WORKERS = 2


def burn(loops: int) -> int:
    """CPU-bound work that holds the GIL throughout: pure-Python arithmetic."""
    total = 0
    for index in range(loops):
        total = (total + index * index) % 1_000_003
    return total


def loops_for(milliseconds: float) -> int:
    """How many loops of ``burn`` take about ``milliseconds`` on this machine."""
    loops = 100_000
    started = time.perf_counter()
    burn(loops)
    elapsed = time.perf_counter() - started
    return max(1, round(loops * milliseconds / 1000 / elapsed))


def process_map_child(items: int, milliseconds: float) -> tuple[float, float]:
    """In a subprocess: seconds of the same CPU-bound ``map`` on threads and on processes."""
    loops = [loops_for(milliseconds)] * items
    threads = Orchestrator()
    on_threads = threads.action(burn)
    with ProcessExecutor(max_workers=PROCESS_WORKERS) as executor:
        processes = Orchestrator(executor=executor)
        on_processes = processes.action(burn)

        def timed_map(orchestrator: Orchestrator[Any], action: Any) -> float:
            async def body() -> float:
                started = time.perf_counter()
                await orchestrator.map(action, loops)
                return time.perf_counter() - started

            return orchestrator.run_sync(body)

        # The workers start at the first call: not part of what is measured.
        processes.run_sync(lambda: processes.map(on_processes, loops[:PROCESS_WORKERS]))
        return timed_map(threads, on_threads), timed_map(processes, on_processes)


def run_process_map(repeats: int, items: int, milliseconds: float) -> list[Row]:
    speedups = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--process-map", str(items), str(milliseconds)],
            capture_output=True,
            text=True,
            check=True,
        )
        threaded, processed = map(float, done.stdout.split())
        speedups.append(threaded / processed)
    return [
        summarize(
            # Expected >= 1.6 with 2 workers on 2 idle cores; the core count says what to expect.
            f"CPU-bound map {items} x {milliseconds:g} ms: ProcessExecutor({PROCESS_WORKERS}) "
            f"speedup over threads, {os.cpu_count()} cores",
            "x threads",
            speedups,
        )
    ]


# Fresh interpreters -------------------------------------------------------------------------


def _wall(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


FIRST_RUN = """
import time
from orchestrator import Orchestrator
orchestrator = Orchestrator()
@orchestrator.action
async def step():
    return 1
async def body():
    return await step()
started = time.perf_counter()
orchestrator.run_sync(body)
print((time.perf_counter() - started) * 1000)
"""


def run_fresh(repeats: int) -> list[Row]:
    # An installed package has its bytecode compiled at install time; compile ours the same
    # way, or the import would be timed compiling source (PYTHONDONTWRITEBYTECODE may be set).
    import compileall

    import orchestrator

    compileall.compile_dir(Path(orchestrator.__file__).parent, quiet=1)
    ratios: list[float] = []
    first: list[float] = []
    for _ in range(repeats):
        baseline = _wall("import asyncio")
        ratios.append(_wall("import orchestrator") / baseline)
        done = subprocess.run(
            [sys.executable, "-c", FIRST_RUN], capture_output=True, text=True, check=True
        )
        first.append(float(done.stdout.strip()))
    return [
        summarize("import orchestrator vs import asyncio", "x peer", ratios, 1.2),
        summarize("first run_sync of a one-action body", "ms", first, 5.0),
    ]


# Durable runs: journaled calls against a hand-written sqlite3 loop, in this process ----------

JOURNAL_CALLS = 2_000  # sequential journaled calls per repeat
JOURNAL_MAP = 1_000
JOURNAL_MAP_CONCURRENCY = 32
JOURNAL_REPLAYED = 1_000
FSYNC_CALLS = 100  # each commit syncs the disk: about half a millisecond here
DBOS_STEPS = 50  # a DBOS step costs milliseconds
_CALLS_TABLE = (
    "CREATE TABLE calls (run_id TEXT NOT NULL, call_key TEXT NOT NULL, name TEXT NOT NULL,"
    " parent_key TEXT, args_hash TEXT NOT NULL, args, status TEXT NOT NULL, attempts TEXT,"
    " started REAL NOT NULL, ended REAL, result, error TEXT, replayed INTEGER NOT NULL,"
    " PRIMARY KEY (run_id, call_key)) WITHOUT ROWID"
)
_INSERT_CALL = "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def order_of(item: int) -> dict[str, Any]:
    """What every journaled scenario's call returns: a small JSON document."""
    return {"id": item, "status": "ok", "items": [1, 2, 3]}


async def fetch_order(item: int) -> dict[str, Any]:
    return order_of(item)


class _Stop(Exception):
    """Ends the first pass of a run that is then resumed."""


def hand_written_journal(path: str, synchronous: str) -> Callable[[int], Awaitable[float]]:
    """The same work as a journaled call, by hand: the call, its record, one commit per call.

    The arguments as JSON and their hash, the result as JSON, and the record in a table like
    the journal's, each committed in a transaction of its own (WAL, ``synchronous``).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(_CALLS_TABLE)
    runs = itertools.count()

    async def measure(calls: int) -> float:
        run_id = f"run-{next(runs)}"
        started = time.perf_counter()
        for item in range(calls):
            args = json.dumps([[item], {}])
            digest = hashlib.blake2b(args.encode(), digest_size=16).hexdigest()
            began = time.time()
            result = await fetch_order(item)
            record = (run_id, str(item + 1), "fetch_order", None, digest, args, "succeeded")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                _INSERT_CALL, (*record, None, began, time.time(), json.dumps(result), None, 0)
            )
            conn.execute("COMMIT")
        return (time.perf_counter() - started) / calls

    return measure


def journaled(orchestrator: Orchestrator[Any]) -> dict[str, Callable[[int], Awaitable[Any]]]:
    """The journaled scenarios of one orchestrator: each runs a fresh run of its own."""
    fetch = orchestrator.action(fetch_order)
    runs = itertools.count()
    replay = {"first pass": True, "entered": 0.0}

    async def sequential(calls: int) -> float:
        started = time.perf_counter()
        for item in range(calls):
            await fetch(item)
        return (time.perf_counter() - started) / calls

    async def mapped(calls: int) -> float:
        started = time.perf_counter()
        await orchestrator.map(fetch, range(calls), concurrency=JOURNAL_MAP_CONCURRENCY)
        return (time.perf_counter() - started) / calls

    async def resumed(calls: int) -> float:
        replay["entered"] = started = time.perf_counter()
        for item in range(calls):
            await fetch(item)
        elapsed = time.perf_counter() - started
        if replay["first pass"]:
            raise _Stop
        return elapsed / calls

    def in_run(body: Callable[[int], Awaitable[float]]) -> Callable[[int], Awaitable[float]]:
        async def measure(calls: int) -> float:
            return await orchestrator.run(body, calls, run_id=f"{body.__name__}-{next(runs)}")

        return measure

    async def replayed(calls: int) -> tuple[float, float]:
        """Seconds per replayed call, and per record to resume the run before its body."""
        run_id = f"resumed-{next(runs)}"
        replay["first pass"] = True
        with contextlib.suppress(_Stop):
            await orchestrator.run(resumed, calls, run_id=run_id)
        replay["first pass"] = False
        gc.collect()
        started = time.perf_counter()
        per_call = await orchestrator.run(resumed, calls, run_id=run_id)
        return per_call, (replay["entered"] - started) / calls

    return {"sequential": in_run(sequential), "map": in_run(mapped), "replayed": replayed}


def dbos_steps(folder: str) -> tuple[Callable[[int], Awaitable[float]], Callable[[], None]] | None:
    """A DBOS workflow of ``calls`` sequential steps doing the same work, on SQLite; or None."""
    try:
        from dbos import DBOS
    except ImportError:
        return None
    database = os.path.join(folder, "dbos.sqlite")
    DBOS(
        config={
            "name": "orchestrator-bench",
            "system_database_url": f"sqlite:///{database}",
            "log_level": "WARNING",
        }
    )

    @DBOS.step()
    async def dbos_fetch(item: int) -> dict[str, Any]:
        return order_of(item)

    @DBOS.workflow()
    async def dbos_body(calls: int) -> float:
        started = time.perf_counter()
        for item in range(calls):
            await dbos_fetch(item)
        return (time.perf_counter() - started) / calls

    DBOS.launch()
    return dbos_body, DBOS.destroy


def journal_folder() -> str:
    # On a disk, as the rows promise: /tmp is a memory file system on many machines.
    return "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()


def run_journal(repeats: int, scale: float) -> list[Row]:
    """Journaled calls, interleaved round-robin in this process, on files in one directory."""
    calls = max(20, int(JOURNAL_CALLS * scale))
    fsync_calls = max(20, int(FSYNC_CALLS * scale))
    dbos_calls = max(10, int(DBOS_STEPS * scale))
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-", dir=journal_folder()) as folder:
        normal = Orchestrator(journal=os.path.join(folder, "normal.db"))
        synced = Orchestrator(
            journal=SQLiteJournal(os.path.join(folder, "fsync.db"), durability="fsync")
        )
        ours, ours_fsync = journaled(normal), journaled(synced)
        dbos = dbos_steps(folder)
        scenarios: dict[str, tuple[int, Callable[[int], Awaitable[Any]]]] = {
            "hand": (calls, hand_written_journal(os.path.join(folder, "hand.db"), "NORMAL")),
            "sequential": (calls, ours["sequential"]),
            "map": (JOURNAL_MAP, ours["map"]),
            "replayed": (JOURNAL_REPLAYED, ours["replayed"]),
            "hand fsync": (
                fsync_calls,
                hand_written_journal(os.path.join(folder, "hand-fsync.db"), "FULL"),
            ),
            "fsync": (fsync_calls, ours_fsync["sequential"]),
            "fsync map": (JOURNAL_MAP, ours_fsync["map"]),
        }
        if dbos is not None:
            scenarios["dbos"] = (dbos_calls, dbos[0])
        times: dict[str, list[float]] = {name: [] for name in [*scenarios, "resume"]}
        # CPU time of the process, all threads: the journal's checkpoints run in its writer
        # thread, the hand-written loop's in the loop's, and wall-clock time hides the former.
        cpu: dict[str, list[float]] = {name: [] for name in scenarios}

        async def main() -> None:
            for calls, measure in scenarios.values():  # warm-up
                await measure(max(10, calls // 20))
            for _ in range(repeats):
                for name, (calls, measure) in scenarios.items():
                    gc.collect()
                    cpu_started = time.process_time()
                    outcome = await measure(calls)
                    cpu[name].append((time.process_time() - cpu_started) / calls)
                    if name == "replayed":
                        outcome, resume = outcome
                        times["resume"].append(resume)
                    times[name].append(outcome)

        try:
            asyncio.run(main())
        finally:
            if dbos is not None:
                dbos[1]()
            for orchestrator in (normal, synced):
                assert orchestrator.journal is not None
                orchestrator.journal.close()

    def micro(name: str) -> list[float]:
        return [seconds * 1e6 for seconds in times[name]]

    def ratio(name: str, reference: str) -> list[float]:
        return [s / r for s, r in zip(times[name], times[reference], strict=True)]

    hand = "hand-written sqlite3 loop"
    hand_fsync = "hand-written sqlite3 loop, synchronous=FULL"
    rows = [
        summarize(f"journal: {hand}", "us/call", micro("hand"), None, "baseline"),
        summarize("journal: journaled call, sequential", "us/call", micro("sequential"), 50.0),
        summarize(
            f"journal: journaled call, sequential vs {hand}",
            "x peer",
            ratio("sequential", "hand"),
            1.3,
        ),
        summarize(
            f"journal: journaled call, sequential vs {hand}, in CPU time",
            "x peer",
            [s / r for s, r in zip(cpu["sequential"], cpu["hand"], strict=True)],
        ),
        summarize(
            f"journal: map of {JOURNAL_MAP:,} journaled calls, "
            f"concurrency={JOURNAL_MAP_CONCURRENCY}",
            "us/call",
            micro("map"),
            35.0,
        ),
        summarize("journal: replayed call on resume", "us/call", micro("replayed"), 5.0),
        summarize(
            "journal: resuming a run, before its body, per record", "us/record", micro("resume")
        ),
        summarize(f"journal: {hand_fsync}", "us/call", micro("hand fsync"), None, "baseline"),
        summarize('journal: journaled call, durability="fsync"', "us/call", micro("fsync")),
        summarize(
            f'journal: journaled call, durability="fsync" vs {hand_fsync}',
            "x peer",
            ratio("fsync", "hand fsync"),
        ),
        summarize(
            f"journal: map of {JOURNAL_MAP:,} journaled calls, "
            f'concurrency={JOURNAL_MAP_CONCURRENCY}, durability="fsync"',
            "us/call",
            micro("fsync map"),
        ),
    ]
    if dbos is not None:
        # DBOS's SQLite database keeps SQLite's defaults: a rollback journal, synchronous=FULL.
        rows += [
            summarize("journal: DBOS step (SQLite)", "us/call", micro("dbos"), None, "peer"),
            summarize(
                "journal: journaled call, sequential vs DBOS step",
                "x peer",
                ratio("sequential", "dbos"),
            ),
            summarize(
                'journal: journaled call, durability="fsync" vs DBOS step',
                "x peer",
                ratio("fsync", "dbos"),
            ),
        ]
    return rows


# Dask ------------------------------------------------------------------------------------------


def run_dask(quick: bool) -> list[Row]:
    """The rows of ``on_dask.py``, run in a child process; none without the dask extra."""
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        return []
    script = Path(__file__).with_name("on_dask.py")
    done = subprocess.run(
        [sys.executable, str(script), *(["--quick"] if quick else [])],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stdout.splitlines():
        found = json.loads(line)
        rows.append(
            summarize(
                found["scenario"], found["unit"], found["samples"], found["target"], found["kind"]
            )
        )
    return rows


# Report --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def table(rows: list[Row]) -> str:
    head = ("scenario", "unit", "median", "min", "max", "target", "met")
    lines = [head]
    for row in rows:
        target = "" if row.target is None else f"<= {row.target:g}"
        lines.append(
            (
                row.scenario,
                row.unit,
                f"{row.median:.3g}",
                f"{row.low:.3g}",
                f"{row.high:.3g}",
                target,
                row.met,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for index, line in enumerate(lines):
        out.append(
            "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        )
        if index == 0:
            out.append("| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repeats, small sizes (a smoke test)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--only",
        action="append",
        choices=("per-call", "fan-out", "pool", "processes", "fresh", "journal", "dask"),
        help="run only this section (may be repeated)",
    )
    parser.add_argument("--fanout", nargs=2, metavar=("SCENARIO", "TASKS"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--process-map", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fanout:
        print(fanout_child(args.fanout[0], int(args.fanout[1]), args.memory))
        return 0
    if args.pool:
        print(*pool_child(args.pool[0], int(args.pool[1]), int(args.pool[2])))
        return 0
    if args.process_map:
        print(*process_map_child(int(args.process_map[0]), float(args.process_map[1])))
        return 0
    if args.quick:
        per_call_repeats, scale, fanout_repeats, tasks, fresh_repeats = 3, 0.1, 1, 2_000, 3
        pool_items, pool_concurrency, pool_repeats = 20_000, 1_000, 1
        process_items, process_ms, process_repeats = 8, 10.0, 1
    else:
        per_call_repeats, scale, fanout_repeats, tasks, fresh_repeats = 15, 1.0, 5, FANOUT_TASKS, 20
        pool_items, pool_concurrency, pool_repeats = POOL_ITEMS, POOL_CONCURRENCY, POOL_REPEATS
        process_items, process_ms, process_repeats = 40, 50.0, 3
    sections: dict[str, Callable[[], list[Row]]] = {
        "per-call": lambda: run_per_call(per_call_repeats, scale),
        "fan-out": lambda: run_fanout(fanout_repeats, tasks),
        "pool": lambda: run_pool(pool_repeats, pool_items, pool_concurrency),
        "processes": lambda: run_process_map(process_repeats, process_items, process_ms),
        "fresh": lambda: run_fresh(fresh_repeats),
        "journal": lambda: run_journal(per_call_repeats, scale),
        "dask": lambda: run_dask(args.quick),
    }
    started = time.perf_counter()
    rows = []
    for name, section in sections.items():
        if args.only is None or name in args.only:
            rows += section()
    about = machine()
    print(
        f"{about['system']} {about['machine']}, {about['cpus']} CPUs, "
        f"{about['implementation']} {about['python']}\n"
    )
    print(table(rows))
    missed = [row.scenario for row in rows if row.met == "NO"]
    elapsed = time.perf_counter() - started
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; targets missed: {len(missed)}")
    for name in missed:
        print(f"  missed: {name}")
    if args.json:
        payload = {"machine": machine(), "quick": args.quick, "rows": [asdict(row) for row in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
