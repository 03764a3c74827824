"""Crash trials: journaled runs killed with SIGKILL at random moments, then resumed.

Each trial starts ``tests/crash/worker.py`` in a subprocess on a fresh journal file: a run of
``STEPS`` steps, one after the other or through ``map(..., concurrency=8)``. The process is
killed with SIGKILL at a random moment (while it starts, during the steps, or after the last
one reported), one to three times, and started again after each kill with the same run id,
until a process finishes the run. Each step appends a line to a side-effect file naming the
process that ran it, and the worker prints ``done <step>`` once each call has returned.

After every kill, a copy of the journal (taken while no process runs) must pass
``PRAGMA integrity_check`` and hold a successful record, with the right result, of every step
any process reported done. After the trial:

- no step reported done ran again in a later process;
- a step ran more than once only if it was in flight in a killed process: it ran there and was
  not reported done there, and a killed process had at most as many such steps as it could run
  at once (1 sequentially, 8 with ``map``);
- every step ran; every record seen after a kill is still in the journal, unchanged; the
  journal holds one successful record per step, and the run as succeeded with the right result;
- the last process printed the right result, and no process wrote to stderr.

Which moments and how many kills are drawn from each trial's seed, so the trials are the same
on every run of the suite; where a kill lands within the process still depends on timing. For
the long run (see ``docs/reliability.md``), the environment sets:

- ``ORCHESTRATOR_CRASH_TRIALS``: trials per mode (default 16);
- ``ORCHESTRATOR_CRASH_STEPS``: steps per run (default 500);
- ``ORCHESTRATOR_CRASH_SEED``: the first trial's seed (default 0);
- ``ORCHESTRATOR_CRASH_STATS``: a file to write the figures of the trials to, as JSON.

One trial in five uses ``durability="fsync"``, the rest ``"normal"``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import orchestrator

WORKER = Path(__file__).parent / "crash" / "worker.py"
TRIALS = int(os.environ.get("ORCHESTRATOR_CRASH_TRIALS", "16"))
STEPS = int(os.environ.get("ORCHESTRATOR_CRASH_STEPS", "500"))
FIRST_SEED = int(os.environ.get("ORCHESTRATOR_CRASH_SEED", "0"))
STATS = os.environ.get("ORCHESTRATOR_CRASH_STATS")
IN_FLIGHT = {"sequential": 1, "map": 8}
"""How many calls a process of each mode can have in flight at once."""
HUNG = 120.0
"""Seconds after which a process that has not ended counts as hung, and is killed."""
RUN_ID = "trial"


def expected(step: int) -> dict[str, int]:
    """What the worker's step ``step`` returns (the worker's own ``expected``)."""
    return {"step": step, "value": step * step + 7}


@dataclass
class Kill:
    """When to kill a process: once it reported ``after`` steps done, ``delay`` s later."""

    phase: str
    after: int
    delay: float


@dataclass
class Process:
    """What one process of a trial did."""

    generation: int
    killed: bool
    done: list[int]
    result: Any = None
    returncode: int | None = None
    stderr: str = ""
    hung: bool = False
    plan: Kill | None = None


@dataclass
class Snapshot:
    """A copy of the journal read after a kill."""

    integrity: list[str]
    records: dict[int, tuple[str, str, Any]]  # step -> (call key, status, result)
    run_status: str | None
    problems: list[str] = field(default_factory=list)


def draw_kill(rng: random.Random) -> Kill:
    """A random moment: while the process starts, during its steps, or after the last one."""
    roll = rng.random()
    if roll < 0.1:
        return Kill("start", 0, rng.uniform(0.0, 0.15))
    if roll < 0.9:
        return Kill("steps", rng.randrange(1, STEPS + 1), rng.uniform(0.0, 0.0005))
    return Kill("end", STEPS, rng.uniform(0.0, 0.005))


def spawn(
    tmp: Path, mode: str, generation: int, durability: str
) -> tuple[subprocess.Popen[bytes], Path]:
    src = str(Path(orchestrator.__file__).parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    # The suite's asyncio debug mode would slow every step down several times over.
    env.pop("PYTHONASYNCIODEBUG", None)
    stderr = tmp / f"stderr-{generation}.txt"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-W",
                "error",
                str(WORKER),
                str(tmp / "journal.db"),
                str(tmp / "effects.txt"),
                mode,
                str(STEPS),
                str(generation),
                durability,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    return proc, stderr


def drive(proc: subprocess.Popen[bytes], plan: Kill | None) -> tuple[bool, list[bytes], bool]:
    """Run ``proc`` to its end, killing it as ``plan`` says; return (killed, lines, hung)."""
    hung = threading.Event()

    def watchdog() -> None:
        hung.set()
        proc.kill()

    timer = threading.Timer(HUNG, watchdog)
    timer.start()
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        if plan is not None:
            reported = 0
            while reported < plan.after:
                line = proc.stdout.readline()
                if not line:
                    break  # it ended before the moment came
                lines.append(line)
                reported += line.startswith(b"done ")
            if plan.delay:
                time.sleep(plan.delay)
            proc.send_signal(signal.SIGKILL)
        lines.extend(proc.stdout.readlines())
        proc.wait()
    finally:
        timer.cancel()
        proc.stdout.close()
    return proc.returncode == -signal.SIGKILL and not hung.is_set(), lines, hung.is_set()


def parse(process: Process, lines: list[bytes], problems: list[str]) -> None:
    for raw in lines:
        if not raw.endswith(b"\n"):
            # A line cut by the kill: the report was not made.
            if not process.killed:
                problems.append(f"process {process.generation} printed a partial line {raw!r}")
            continue
        text = raw.decode().rstrip("\n")
        if text.startswith("done "):
            process.done.append(int(text[5:]))
        elif text.startswith("result "):
            process.result = json.loads(text[7:])
        else:
            problems.append(f"process {process.generation} printed {text!r}")


def read_journal(path: Path, copy: Path) -> Snapshot:
    """Read a copy of the journal, so that the reading changes nothing the next process sees."""
    copy.mkdir()
    for suffix in ("", "-wal"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            shutil.copyfile(source, copy / (path.name + suffix))
    conn = sqlite3.connect(copy / path.name)
    try:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        run, rows = None, []
        # A process killed while it started may have left no journal, or an empty file.
        if tables:
            run = conn.execute("SELECT status FROM runs WHERE run_id = ?", (RUN_ID,)).fetchone()
            rows = conn.execute(
                "SELECT call_key, name, args, status, result FROM calls WHERE run_id = ?",
                (RUN_ID,),
            ).fetchall()
    finally:
        conn.close()
    snapshot = Snapshot(integrity, {}, None if run is None else run[0])
    for key, name, args, status, result in rows:
        (step,), kwargs = json.loads(args)
        if name != "step" or kwargs:
            snapshot.problems.append(f"call key {key} holds {name}({args})")
        if step in snapshot.records:
            snapshot.problems.append(f"step {step} recorded at two keys, {key} and another")
        value = None if result is None else json.loads(result)
        snapshot.records[step] = (key, status, value)
    return snapshot


@dataclass
class Trial:
    """A trial's processes, the journal after each kill, and the side effects."""

    seed: int
    mode: str
    durability: str
    processes: list[Process] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    final: Snapshot | None = None
    effects: dict[int, list[int]] = field(default_factory=dict)  # step -> generations
    problems: list[str] = field(default_factory=list)


def run_trial(tmp: Path, mode: str, seed: int) -> Trial:
    rng = random.Random(seed)
    durability = "fsync" if rng.random() < 0.2 else "normal"
    trial = Trial(seed, mode, durability)
    kills = rng.randint(1, 3)
    plans = [draw_kill(rng) for _ in range(kills)]
    journal = tmp / "journal.db"
    generation = 0
    while True:
        plan = plans[generation] if generation < len(plans) else None
        proc, stderr = spawn(tmp, mode, generation, durability)
        killed, lines, hung = drive(proc, plan)
        process = Process(generation, killed, [], plan=plan, hung=hung)
        process.returncode = proc.returncode
        process.stderr = stderr.read_text(errors="replace")
        parse(process, lines, trial.problems)
        trial.processes.append(process)
        if hung:
            trial.problems.append(f"process {generation} hung; killed after {HUNG:g} s")
            break
        if not killed:
            break
        trial.snapshots.append(read_journal(journal, tmp / f"copy-{generation}"))
        check_after_kill(trial)
        generation += 1
    trial.final = read_journal(journal, tmp / "copy-final")
    trial.effects = read_effects(tmp / "effects.txt", trial.problems)
    check_trial(trial)
    return trial


def read_effects(path: Path, problems: list[str]) -> dict[int, list[int]]:
    effects: dict[int, list[int]] = {}
    if not path.exists():
        return effects
    for line in path.read_text().splitlines():
        try:
            generation, step = map(int, line.split())
        except ValueError:
            problems.append(f"side-effect file holds {line!r}")
            continue
        effects.setdefault(step, []).append(generation)
    return effects


def check_after_kill(trial: Trial) -> None:
    """The journal a killed process left: sound, and holding every call reported done."""
    snapshot = trial.snapshots[-1]
    process = trial.processes[-1]
    where = f"after killing process {process.generation}"
    trial.problems += [f"{where}: {problem}" for problem in snapshot.problems]
    if snapshot.integrity != ["ok"]:
        trial.problems.append(f"{where}: integrity check says {snapshot.integrity}")
    for earlier in trial.processes:
        for step in earlier.done:
            record = snapshot.records.get(step)
            if record is None or record[1:] != ("succeeded", expected(step)):
                trial.problems.append(
                    f"{where}: step {step}, reported done by process {earlier.generation}, "
                    f"is recorded as {record}"
                )


def check_trial(trial: Trial) -> None:
    problems = trial.problems
    processes = trial.processes
    last = processes[-1]
    for process in processes:
        if process.stderr:
            problems.append(f"process {process.generation} wrote to stderr:\n{process.stderr}")
    if last.returncode != 0:
        problems.append(f"the last process, {last.generation}, exited with {last.returncode}")
    result = [expected(step) for step in range(STEPS)]
    if last.result != result:
        problems.append(f"the last process returned {str(last.result)[:200]}")
    for process, snapshot in zip(processes, trial.snapshots, strict=False):
        # A result is printed once the run's end is committed; a kill may come after that.
        if process.result is not None and snapshot.run_status != "succeeded":
            problems.append(
                f"process {process.generation} printed the result, and after it was killed "
                f"the run is recorded as {snapshot.run_status}"
            )
    # A process that ran the body reports every step; one that found the run finished, none.
    if sorted(last.done) != list(range(STEPS)):
        finished = bool(trial.snapshots) and trial.snapshots[-1].run_status == "succeeded"
        if last.done or not finished:
            problems.append(f"the last process reported {len(last.done)} of {STEPS} steps done")

    # The side effects against the reports.
    done_by = {p.generation: set(p.done) for p in processes}
    killed = {p.generation for p in processes if p.killed}
    for step in range(STEPS):
        runs = trial.effects.get(step, [])
        if not runs:
            problems.append(f"step {step} never ran")
        if len(set(runs)) != len(runs):
            problems.append(f"step {step} ran twice in one process: {runs}")
        for generation in runs[:-1]:
            if generation not in killed or step in done_by[generation]:
                problems.append(
                    f"step {step} ran again after process {generation}, which was not killed "
                    "with it in flight"
                )
        reported = [g for g, steps in done_by.items() if step in steps]
        if reported and runs and max(runs) > min(reported):
            problems.append(
                f"step {step} was reported done by process {min(reported)}, then ran in "
                f"process {max(runs)}"
            )
    for process in processes:
        ran = {step for step, runs in trial.effects.items() if process.generation in runs}
        unreported = ran - done_by[process.generation]
        if not process.killed and unreported:
            problems.append(f"process {process.generation} ran {sorted(unreported)} unreported")
        if len(unreported) > IN_FLIGHT[trial.mode]:
            problems.append(
                f"process {process.generation} was killed with {len(unreported)} calls in "
                f"flight: {sorted(unreported)}"
            )

    # The journal at the end: every record seen after a kill is still there, unchanged.
    final = trial.final
    assert final is not None
    problems += [f"at the end: {problem}" for problem in final.problems]
    if final.integrity != ["ok"]:
        problems.append(f"at the end, integrity check says {final.integrity}")
    if final.run_status != "succeeded":
        problems.append(f"at the end, the run is recorded as {final.run_status}")
    for index, snapshot in enumerate(trial.snapshots):
        for step, record in snapshot.records.items():
            if record[1] == "succeeded" and final.records.get(step) != record:
                problems.append(
                    f"step {step}'s record {record} after kill {index + 1} became "
                    f"{final.records.get(step)}"
                )
    wrong = [
        step
        for step in range(STEPS)
        if final.records.get(step, (None,))[1:] != ("succeeded", expected(step))
    ]
    if wrong or len(final.records) != STEPS:
        problems.append(
            f"at the end, {len(final.records)} records; steps without a right one: {wrong[:20]}"
        )


FIGURES: dict[str, Counter[str]] = {}


def count(trial: Trial) -> None:
    """Add a trial's figures to those of its mode, for ``ORCHESTRATOR_CRASH_STATS``."""
    figures = FIGURES.setdefault(trial.mode, Counter())
    figures["trials"] += 1
    figures[f"trials with durability={trial.durability}"] += 1
    figures["processes"] += len(trial.processes)
    figures["integrity checks"] += len(trial.snapshots) + 1
    figures["failed trials"] += bool(trial.problems)
    for process, snapshot in zip(trial.processes, trial.snapshots, strict=False):
        figures["kills"] += 1
        ran = {s for s, runs in trial.effects.items() if process.generation in runs}
        if not ran and not process.done:
            figures["kills before any step ran"] += 1
        elif len(process.done) == STEPS:
            figures["kills after every step was reported done"] += 1
        else:
            figures["kills during the steps"] += 1
        in_flight = ran - set(process.done)
        figures["calls in flight at a kill"] += len(in_flight)
        committed = {s for s in in_flight if snapshot.records.get(s, ("", ""))[1] == "succeeded"}
        figures["of which committed before the kill (replayed later)"] += len(committed)
        figures["records checked after a kill"] += len(snapshot.records)
    for runs in trial.effects.values():
        figures["calls run again after a kill"] += len(runs) - 1
    figures["calls reported done"] += sum(len(process.done) for process in trial.processes)


@pytest.fixture(scope="module", autouse=True)
def figures() -> Any:
    yield
    if STATS:
        Path(STATS).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def summary(process: Process) -> str:
    plan = process.plan
    when = "no kill planned" if plan is None else f"kill planned {plan}"
    return (
        f"process {process.generation}: {when}, killed {process.killed}, exit code "
        f"{process.returncode}, {len(process.done)} steps reported done"
    )


def run_trials(tmp_path: Path, mode: str) -> None:
    failures = []
    for index in range(TRIALS):
        seed = FIRST_SEED + index
        tmp = tmp_path / f"trial-{seed}"
        tmp.mkdir()
        trial = run_trial(tmp, mode, seed)
        count(trial)
        if trial.problems:
            failures.append(f"seed {seed} ({trial.durability}, files in {tmp}):")
            failures += [f"  {problem}" for problem in trial.problems[:20]]
            failures += [f"  {summary(process)}" for process in trial.processes]
        else:
            shutil.rmtree(tmp)
    assert not failures, "\n".join(failures)


def test_sequential_runs_killed_at_random_resume_to_the_right_result_redoing_only_calls_in_flight(
    tmp_path: Path,
) -> None:
    run_trials(tmp_path, "sequential")


def test_mapped_runs_killed_at_random_resume_to_the_right_result_redoing_only_calls_in_flight(
    tmp_path: Path,
) -> None:
    run_trials(tmp_path, "map")
