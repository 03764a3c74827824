"""Checked by mypy --strict in CI and never run: the public API keeps the types users wrote."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, assert_type

from orchestrator import (
    Action,
    CallInfo,
    Interceptor,
    Orchestrator,
    Proceed,
    ProcessBeginEvent,
    RetryPolicy,
    State,
    TaskBeginEvent,
    TaskCompletionEvent,
)
from orchestrator.executors import ProcessExecutor, ThreadExecutor


@dataclass
class ProcessContext:
    request_count: int = 0
    errors: list[Exception] = field(default_factory=list)
    api_key: str | None = None


plain = Orchestrator()
assert_type(plain, Orchestrator[State])

typed = Orchestrator(ProcessContext)
assert_type(typed, Orchestrator[ProcessContext])

assert_type(Orchestrator(max_threads=8), Orchestrator[State])
assert_type(Orchestrator(ProcessContext, max_threads=8), Orchestrator[ProcessContext])
Orchestrator(max_threads="8")  # type: ignore[call-overload]


@typed.action
async def fetch_user_data(user_id: str) -> dict[str, str]:
    return {"id": user_id}


@typed.action(retry=RetryPolicy(retries=2), timeout=5)
async def update_profile(user_id: str, data: dict[str, str]) -> bool:
    return bool(user_id and data)


def count_words(text: str, *, lower: bool = False) -> int:
    return len((text.lower() if lower else text).split())


counted = typed.action(count_words, retry=1)
assert isinstance(fetch_user_data, Action)


def on_begin(event: TaskBeginEvent[ProcessContext]) -> None:
    assert_type(event.context, ProcessContext)
    event.context.request_count += 1


async def on_done(event: TaskCompletionEvent[ProcessContext]) -> None:
    assert_type(event.duration, float)


typed.on_task_begin(on_begin).on_task_completion(on_done)
typed.on_process_begin(lambda event: assert_type(event, ProcessBeginEvent[ProcessContext]))


async def body() -> int:
    user = await fetch_user_data("user123")
    assert_type(user, dict[str, str])
    assert_type(await update_profile("user123", user), bool)
    assert_type(await counted("a b c", lower=True), int)
    state = typed.get_state()
    assert_type(state, ProcessContext)
    results = await typed.map(fetch_user_data, ["a", "b"])
    assert_type(results, list[dict[str, str]])
    return state.request_count


async def main() -> None:
    assert_type(await typed.run(body), int)


def script() -> None:
    assert_type(typed.run_sync(body), int)


async def gathered() -> None:
    # Calls of different actions keep their result types through asyncio.gather.
    pair = await asyncio.gather(fetch_user_data("user123"), counted("a b"))
    assert_type(pair, tuple[dict[str, str], int])
    trio = await asyncio.gather(counted("a"), update_profile("u", {}), typed.run(body))
    assert_type(trio, tuple[int, bool, int])


class Inventory:
    def __init__(self, stock: int) -> None:
        self.stock = stock

    @typed.action
    async def check(self, sku: str) -> bool:
        return self.stock > 0 and bool(sku)

    @typed.action(retry=1)
    def restock(self, sku: str, amount: int = 1) -> int:
        self.stock += amount
        return self.stock


async def methods() -> None:
    inventory = Inventory(3)
    bound: Action[[str], bool] = inventory.check  # self is bound: only sku is left
    unbound: Action[[Inventory, str], bool] = Inventory.check
    assert_type(await bound("A"), bool)
    assert_type(await unbound(inventory, "A"), bool)
    assert_type(await inventory.check("A"), bool)
    assert_type(await inventory.restock("A", amount=2), int)
    assert_type(await Inventory.check(inventory, "A"), bool)
    await inventory.check(42)  # type: ignore[arg-type]
    await inventory.restock("A", colour="red")  # type: ignore[call-arg]


async def wrong_arguments() -> None:
    await fetch_user_data(42)  # type: ignore[arg-type]
    await update_profile("user123")  # type: ignore[call-arg]
    await counted("text", upper=True)  # type: ignore[call-arg]


async def keyed_and_intercepted() -> None:
    # An explicit key part keeps the action's signature and result type.
    assert_type(await fetch_user_data.keyed("alice")("alice"), dict[str, str])
    await fetch_user_data.keyed("bob")(42)  # type: ignore[arg-type]


class Timing(Interceptor):
    async def intercept_call(self, call: CallInfo[Any], proceed: Proceed) -> Any:
        assert_type(call.call_key, str)
        return await proceed()


executed = Orchestrator(executor=ThreadExecutor(max_threads=8)).add_interceptor(Timing())
assert_type(executed, Orchestrator[State])

# ProcessExecutor loads lazily at run time; to the type checker it is the class itself.
on_processes = ProcessExecutor(max_workers=2, start_method="spawn")
assert_type(on_processes.max_workers, int)
assert_type(Orchestrator(executor=on_processes), Orchestrator[State])
ProcessExecutor(max_workers="2")  # type: ignore[arg-type]
