"""One process of a crash trial: run (or resume) a journaled run of many steps.

Usage: ``python worker.py JOURNAL EFFECTS MODE STEPS GENERATION DURABILITY``

Each step is an action call that appends ``"<generation> <step>"`` to the side-effect file
``EFFECTS`` (one ``write`` on a file opened for appending, so that the line is in the file as
soon as the call has made it, whatever happens to the process next) and returns a value
computed from the step. After each call returns, the process prints ``done <step>``; at the
end, ``result <the run's result as JSON>``. ``MODE`` is ``sequential`` (one step after the
other) or ``map`` (``orch.map(..., concurrency=8)``). ``GENERATION`` numbers the processes of
one trial, so that the side-effect file tells which process ran which step. The run id is
always the same: a second process resumes what the first left unfinished.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from orchestrator import Orchestrator, SQLiteJournal

RUN_ID = "trial"
CONCURRENCY = 8


def expected(step: int) -> dict[str, int]:
    """What step ``step`` returns: the trial checks every result against this."""
    return {"step": step, "value": step * step + 7}


def main() -> None:
    journal, effects, mode, steps, generation, durability = sys.argv[1:]
    orch = Orchestrator(journal=SQLiteJournal(journal, durability=durability))
    out = os.open(effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    mark = f"{generation} ".encode()

    @orch.action
    async def step(i: int) -> dict[str, int]:
        os.write(out, mark + b"%d\n" % i)
        # Other calls of the group get to run between the effect and the return.
        await asyncio.sleep(0)
        return expected(i)

    async def reported(i: int) -> dict[str, int]:
        value = await step(i)
        # One write per line, so that a kill never leaves half a report.
        sys.stdout.write(f"done {i}\n")
        sys.stdout.flush()
        return value

    async def body(count: int) -> list[Any]:
        if mode == "map":
            return await orch.map(reported, range(count), concurrency=CONCURRENCY)
        return [await reported(i) for i in range(count)]

    result = orch.run_sync(body, int(steps), run_id=RUN_ID)
    sys.stdout.write(f"result {json.dumps(result)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
