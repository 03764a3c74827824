"""DaskExecutor against worker threads and against Dask used directly (``run.py`` calls this).

    python benchmarks/on_dask.py [--quick]    # prints the rows as JSON lines

Everything runs on one ``LocalCluster`` of two worker processes with one thread each, made in
this process (a child of ``run.py``, so that its threads disturb no other measurement).

- CPU-bound ``map``: 40 calls of about 50 ms of pure-Python work each, on worker threads (one
  core at a time under the GIL) and on the cluster, through ``orch.map`` and through
  ``client.map`` + ``gather``. Reported as the time on Dask over the time on threads: 0.625 is a
  1.6x speedup. Only a machine with two idle cores can reach it.
- Overhead of a call: sequential calls of a trivial function, an action on a ``DaskExecutor``
  against ``await client.submit(...)``, with an asynchronous client on the run's loop.
- Overhead of ``map``: ``orch.map`` over a ``DaskExecutor`` against ``client.map`` +
  ``gather``, with an asynchronous client, and (reported only) with a synchronous one.

Measurements alternate, repeat by repeat, and the median of the ratios is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from distributed import Client, LocalCluster

from orchestrator import Orchestrator
from orchestrator.dask import DaskExecutor

WORK_SECONDS = 0.05


def burn(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += i * i
    return total


def trivial(x: int) -> int:
    return x


def calibrate() -> int:
    """How many rounds of ``burn`` take about ``WORK_SECONDS`` here."""
    rounds = 100_000
    while True:
        started = time.perf_counter()
        burn(rounds)
        took = time.perf_counter() - started
        if took > 0.01:
            return max(1, int(rounds * WORK_SECONDS / took))
        rounds *= 4


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


def cpu_map(address: str, items: int, repeats: int) -> list[dict[str, Any]]:
    rounds = calibrate()
    inputs = [rounds] * items
    ours: list[float] = []
    raw: list[float] = []

    async def measure() -> None:
        threads = Orchestrator()
        on_threads = threads.action(burn)
        async with Client(address, asynchronous=True) as client:
            dask = Orchestrator(executor=DaskExecutor(client))
            on_dask = dask.action(burn)
            await dask.run(dask.map, on_dask, inputs[:2])  # the workers import what they need

            async def direct() -> list[int]:
                return await client.gather(client.map(burn, inputs, pure=False))  # type: ignore[no-any-return]

            for _ in range(repeats):
                baseline = await timed(lambda: threads.run(threads.map, on_threads, inputs))
                ours.append(await timed(lambda: dask.run(dask.map, on_dask, inputs)) / baseline)
                raw.append(await timed(direct) / baseline)

    asyncio.run(measure())
    what = f"CPU-bound map of {items} x {WORK_SECONDS * 1000:.0f} ms, 2 worker processes"
    return [
        row(f"{what}: orch.map on Dask vs threads", "x peer", ours, 0.625),
        row(f"{what}: client.map + gather vs threads", "x peer", raw, None, "peer"),
    ]


def overhead(address: str, calls: int, items: int, repeats: int) -> list[dict[str, Any]]:
    sequential: list[float] = []
    mapped: list[float] = []
    mapped_sync: list[float] = []

    async def measure() -> None:
        async with Client(address, asynchronous=True) as client:
            orch = Orchestrator(executor=DaskExecutor(client))
            act = orch.action(trivial)

            async def raw_calls() -> None:
                for i in range(calls):
                    await client.submit(trivial, i, pure=False)

            async def action_calls() -> None:
                for i in range(calls):
                    await act(i)

            async def raw_map() -> None:
                await client.gather(client.map(trivial, range(items), pure=False))

            await orch.run(orch.map, act, range(items))  # warm up both paths
            await raw_map()
            for _ in range(repeats):
                sequential.append(
                    await timed(lambda: orch.run(action_calls)) / await timed(raw_calls)
                )
                base = await timed(raw_map)
                mapped.append(await timed(lambda: orch.run(orch.map, act, range(items))) / base)

    asyncio.run(measure())

    # The same map with a synchronous client, whose event loop runs in a thread of its own.
    with Client(address) as client:
        orch = Orchestrator(executor=DaskExecutor(client))
        act = orch.action(trivial)
        orch.run_sync(orch.map, act, range(items))
        for _ in range(repeats):
            started = time.perf_counter()
            client.gather(client.map(trivial, range(items), pure=False))
            base = time.perf_counter() - started
            started = time.perf_counter()
            orch.run_sync(orch.map, act, range(items))
            mapped_sync.append((time.perf_counter() - started) / base)

    return [
        row(
            f"{calls} sequential calls: action on Dask vs await client.submit",
            "x peer",
            sequential,
            1.05,
        ),
        row(f"map of {items}: orch.map on Dask vs client.map + gather", "x peer", mapped, 1.3),
        row(
            f"map of {items}, synchronous client: orch.map on Dask vs client.map + gather",
            "x peer",
            mapped_sync,
            None,
        ),
    ]


def row(
    scenario: str, unit: str, samples: list[float], target: float | None, kind: str = "ours"
) -> dict[str, Any]:
    return {"scenario": scenario, "unit": unit, "samples": samples, "target": target, "kind": kind}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repeats, small sizes")
    args = parser.parse_args(argv)
    if args.quick:
        cpu_items, cpu_repeats, calls, items, repeats = 8, 1, 20, 50, 1
    else:
        cpu_items, cpu_repeats, calls, items, repeats = 40, 3, 200, 500, 5
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        address = cluster.scheduler_address
        rows = cpu_map(address, cpu_items, cpu_repeats)
        rows += overhead(address, calls, items, repeats)
    for found in rows:
        print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
