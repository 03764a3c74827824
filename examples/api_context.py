"""An API integration: a typed context, authentication in a hook, a retry and a timeout."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

from orchestrator import (
    ActionTimeout,
    Orchestrator,
    ProcessBeginEvent,
    ProcessCompletionEvent,
    RetryPolicy,
    TaskBeginEvent,
)


@dataclass
class ProcessContext:
    request_count: int = 0
    errors: list[Exception] = field(default_factory=list)
    api_key: str | None = None
    session_data: dict[str, Any] | None = None


class FakeApi:
    """Fails the first request with a connection reset; hangs on every update."""

    def __init__(self) -> None:
        self.requests = 0

    async def get(self, path: str, token: str | None) -> dict[str, Any]:
        self.requests += 1
        if self.requests == 1:
            raise ConnectionError("connection reset by peer")
        return {"path": path, "name": "Alice", "token_seen": token is not None}

    async def put(self, path: str, data: dict[str, Any], token: str | None) -> None:
        await asyncio.sleep(3600)


api = FakeApi()
orchestrator = Orchestrator(ProcessContext)


async def authenticate(event: ProcessBeginEvent[ProcessContext]) -> None:
    await asyncio.sleep(0.01)  # stands in for a call to a secrets store
    event.context.api_key = "secret-key"


def count_request(event: TaskBeginEvent[ProcessContext]) -> None:
    event.context.request_count += 1
    print(f"starting {event.name}, request #{event.context.request_count}")


def report(event: ProcessCompletionEvent[ProcessContext]) -> None:
    context = event.context
    print(f"metrics: {context.request_count} requests, {len(context.errors)} errors")
    context.api_key = None


orchestrator.on_process_begin(authenticate).on_task_begin(count_request)
orchestrator.on_task_retry(lambda e: print(f"retrying {e.name} in {e.delay:.2f} s: {e.error}"))
orchestrator.on_process_completion(report)


@orchestrator.action(retry=RetryPolicy(retries=3, delay=0.05, retry_on=ConnectionError))
async def fetch_user_data(user_id: str) -> dict[str, Any]:
    context = orchestrator.get_state()
    try:
        return await api.get(f"/users/{user_id}", token=context.api_key)
    except ConnectionError as error:
        context.errors.append(error)
        raise


@orchestrator.action(timeout=0.1)
async def update_profile(user_id: str, data: dict[str, Any]) -> None:
    context = orchestrator.get_state()
    context.session_data = {"last_update": "now"}
    await api.put(f"/users/{user_id}", data, token=context.api_key)


async def main() -> int:
    try:
        user = await fetch_user_data("user123")
        await update_profile("user123", {**user, "last_login": "now"})
    except ActionTimeout as error:
        orchestrator.get_state().errors.append(error)
        print("operation failed:", error)
    return len(orchestrator.get_state().errors)


if __name__ == "__main__":
    print("errors recorded:", orchestrator.run_sync(main))
