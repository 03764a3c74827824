"""Print each lifecycle event of a run with one sync and one async step."""

import asyncio

from orchestrator import Orchestrator

orchestrator = Orchestrator()
(
    orchestrator.on_process_begin(lambda e: print(f"process begin at {e.time:%H:%M:%S}"))
    .on_task_begin(lambda e: print(f"  task {e.name} begins"))
    .on_task_completion(lambda e: print(f"  task {e.name} completed in {e.duration:.1f} ms"))
    .on_process_completion(lambda e: print(f"process completed in {e.total_duration:.1f} ms"))
)


@orchestrator.action
def step_a() -> str:
    return "sync work done in a worker thread"


@orchestrator.action
async def step_b() -> str:
    await asyncio.sleep(0.01)
    return "async work done on the event loop"


async def main() -> list[str]:
    return [await step_a(), await step_b()]


if __name__ == "__main__":
    print(orchestrator.run_sync(main))
