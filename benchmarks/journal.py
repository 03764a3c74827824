"""The journal store's cost per recorded call, against a hand-written sqlite3 loop.

    python benchmarks/journal.py            # 15 interleaved repeats
    python benchmarks/journal.py --quick    # 3 short repeats

Every scenario runs in this one process, on files in one temporary directory, interleaved
round-robin. Each call does the same work in every scenario: serialize the arguments to JSON
and hash them, serialize the result, and commit the call's record (WAL, synchronous=NORMAL,
or FULL in the fsync rows). The hand-written loops commit one transaction per call with the
sqlite3 module directly; each journal row is divided by the hand-written loop of its
durability, within a repeat. "sequential" awaits each record before the next call; "32 at
once" runs 32 workers, so that records finishing together share a commit. "commits in the
writer thread" is the design not chosen for durability="normal": every commit handed to the
journal's thread and back. Medians are reported with min and max. The machine is noisy:
judge the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

from orchestrator._journal import SQLiteJournal

WORKERS = 32
CALLS_TO_LOAD = 1_000


def result_of(i: int) -> dict[str, object]:
    return {"id": i, "status": "ok", "items": [1, 2, 3]}


def hand_written(path: str, synchronous: str) -> Callable[[int, int], float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(
        "CREATE TABLE calls (run_id TEXT NOT NULL, call_key TEXT NOT NULL, name TEXT NOT NULL,"
        " parent_key TEXT, args_hash TEXT NOT NULL, args, status TEXT NOT NULL, attempts TEXT,"
        " started REAL NOT NULL, ended REAL, result, error TEXT, replayed INTEGER NOT NULL,"
        " PRIMARY KEY (run_id, call_key)) WITHOUT ROWID"
    )
    insert = "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

    def measure(first: int, calls: int) -> float:
        started = time.perf_counter()
        for i in range(first, first + calls):
            args = json.dumps([[i], {}])
            digest = hashlib.blake2b(args.encode(), digest_size=16).hexdigest()
            now = time.time()
            row = ("run", str(i), "fetch", None, digest, args, "succeeded", None, now, now)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(insert, (*row, json.dumps(result_of(i)), None, False))
            conn.execute("COMMIT")
        return (time.perf_counter() - started) / calls

    return measure


async def one_call(journal: SQLiteJournal, i: int) -> None:
    data, digest = journal.call_args("fetch", str(i), (i,), {})
    now = time.time()
    await journal.record(
        "run",
        str(i),
        "fetch",
        parent_key=None,
        args=data,
        args_hash=digest,
        started=now,
        ended=now,
        result=result_of(i),
    )


def sequential(journal: SQLiteJournal) -> Callable[[int, int], Awaitable[float]]:
    async def measure(first: int, calls: int) -> float:
        started = time.perf_counter()
        for i in range(first, first + calls):
            await one_call(journal, i)
        return (time.perf_counter() - started) / calls

    return measure


def concurrent(journal: SQLiteJournal) -> Callable[[int, int], Awaitable[float]]:
    async def measure(first: int, calls: int) -> float:
        keys = iter(range(first, first + calls))

        async def worker() -> None:
            for i in keys:
                await one_call(journal, i)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        return (time.perf_counter() - started) / calls

    return measure


async def load_per_record(journal: SQLiteJournal, repeat: int) -> tuple[float, float]:
    """Seconds per record to claim a run of CALLS_TO_LOAD calls, and per replayed result."""
    run_id = f"load-{repeat}"
    await journal.open_run(run_id, "bench:body", (), {})
    data, digest = journal.call_args("fetch", "1", (1,), {})
    now = time.time()
    await asyncio.gather(
        *(
            journal.record(
                run_id,
                str(i),
                "fetch",
                parent_key=None,
                args=data,
                args_hash=digest,
                started=now,
                ended=now,
                result=result_of(i),
            )
            for i in range(1, CALLS_TO_LOAD + 1)
        )
    )
    await journal.end_run(run_id, error=RuntimeError("stopped"))
    started = time.perf_counter()
    opened = await journal.open_run(run_id, "bench:body", (), {})
    claimed = time.perf_counter()
    for key, (name, _, value) in opened.calls.items():
        journal.load(value, name, key)
    loaded = time.perf_counter()
    await journal.end_run(run_id)
    return (claimed - started) / CALLS_TO_LOAD, (loaded - claimed) / CALLS_TO_LOAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short repeats")
    options = parser.parse_args()
    repeats, calls = (3, 300) if options.quick else (15, 2_000)
    with tempfile.TemporaryDirectory(prefix="journal-bench-") as folder:
        report(measure_all(folder, repeats, calls), repeats, calls)


def measure_all(folder: str, repeats: int, calls: int) -> dict[str, list[float]]:
    hands = {
        "hand-written sqlite3 loop": hand_written(os.path.join(folder, "hand.db"), "NORMAL"),
        "hand-written sqlite3 loop, fsync": hand_written(os.path.join(folder, "f.db"), "FULL"),
    }
    normal = SQLiteJournal(os.path.join(folder, "normal.db"))
    fsync = SQLiteJournal(os.path.join(folder, "fsync.db"), durability="fsync")
    threaded = SQLiteJournal(os.path.join(folder, "threaded.db"))
    threaded._fast = None  # every commit goes to the writer thread, as with fsync
    scenarios: dict[str, Callable[[int, int], Awaitable[float]]] = {
        "journal, sequential": sequential(normal),
        "journal, 32 at once": concurrent(normal),
        "journal, commits in the writer thread": sequential(threaded),
        "journal fsync, sequential": sequential(fsync),
        "journal fsync, 32 at once": concurrent(fsync),
    }
    claim = f"claim a run, per record ({CALLS_TO_LOAD:,})"
    times: dict[str, list[float]] = {name: [] for name in [*hands, *scenarios, claim]}
    times["load a recorded result"] = []

    async def run() -> None:
        first = 0
        await scenarios["journal, sequential"](10**9, calls // 10)  # warm-up
        for repeat in range(repeats):
            for name, loop in hands.items():
                gc.collect()
                times[name].append(loop(first, calls))
            for name, measure in scenarios.items():
                gc.collect()
                times[name].append(await measure(first, calls))
            per_record, load = await load_per_record(normal, repeat)
            times[claim].append(per_record)
            times["load a recorded result"].append(load)
            first += calls

    try:
        asyncio.run(run())
    finally:
        for journal in (normal, fsync, threaded):
            journal.close()
    return times


def report(times: dict[str, list[float]], repeats: int, calls: int) -> None:
    print(f"{'scenario':<40} {'median us':>10} {'min':>8} {'max':>8}  {'x hand-written':>16}")
    for name, seconds in times.items():
        ratio = ""
        if name.startswith("journal"):
            hand = "hand-written sqlite3 loop" + (", fsync" if "fsync" in name else "")
            ratios = [s / h for s, h in zip(seconds, times[hand], strict=True)]
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        micro = [s * 1e6 for s in seconds]
        print(
            f"{name:<40} {statistics.median(micro):>10.1f} {min(micro):>8.1f} "
            f"{max(micro):>8.1f}  {ratio:>16}"
        )
    print(f"{repeats} interleaved repeats of {calls:,} calls each")


if __name__ == "__main__":
    main()
