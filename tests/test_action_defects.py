"""What users expect of a decorated function: methods, coroutine checks, arguments, pickling."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import multiprocessing
import pickle
import warnings
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from orchestrator import Action, Orchestrator, OutsideRunError, RetryPolicy, TaskBeginEvent
from orchestrator.testing import EventRecorder, set_testing

# Module level, so that pickle can find them by name (and a spawned process can import them).
orch = Orchestrator()


@orch.action
def square(x: int) -> int:
    return x * x


@orch.action(retry=2)
async def fetch(user_id: str) -> str:
    return user_id


def cube(x: int) -> int:
    return x**3


cubed = orch.action(cube)


class Shelf:
    def __init__(self, stock: dict[str, int]) -> None:
        self.stock = stock

    @orch.action
    async def count(self, sku: str) -> int:
        return self.stock.get(sku, 0)


def _asyncio_marks(fn: object) -> bool:
    # asyncio.iscoroutinefunction is deprecated from Python 3.14 on; frameworks still call it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.iscoroutinefunction(fn)


# Methods ------------------------------------------------------------------------------------


def test_an_async_method_action_binds_self() -> None:
    local = Orchestrator()

    class Inventory:
        def __init__(self, stock: int) -> None:
            self.stock = stock

        @local.action
        async def check(self, sku: str) -> tuple[str, int]:
            return sku, self.stock

    async def body() -> tuple[str, int]:
        return await Inventory(7).check("A")

    assert local.run_sync(body) == ("A", 7)


def test_a_sync_method_action_with_options_binds_self() -> None:
    local = Orchestrator()
    attempts: list[int] = []

    class Inventory:
        def __init__(self, stock: int) -> None:
            self.stock = stock

        @local.action(retry=2, name="restock")
        def restock(self, sku: str, amount: int = 1) -> tuple[str, int]:
            attempts.append(1)
            if len(attempts) < 2:
                raise ConnectionError("flaky")
            self.stock += amount
            return sku, self.stock

    inventory = Inventory(1)

    async def body() -> tuple[str, int]:
        return await inventory.restock("A", amount=4)

    with set_testing(True):
        assert local.run_sync(body) == ("A", 5)
    assert len(attempts) == 2


@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize("options", [{}, {"retry": 1}, {"timeout": 5}])
@pytest.mark.parametrize("hooked", [False, True])
def test_a_method_action_binds_self_on_every_call_path(
    sync: bool, options: dict[str, Any], hooked: bool
) -> None:
    local = Orchestrator()
    seen: list[tuple[Any, ...]] = []
    if hooked:
        local.on_task_begin(lambda event: seen.append(event.args))

    class Inventory:
        def __init__(self, stock: int) -> None:
            self.stock = stock

        def check(self, sku: str) -> tuple[str, int]:
            return sku, self.stock

        async def check_async(self, sku: str) -> tuple[str, int]:
            return sku, self.stock

        checked = local.action(check if sync else check_async, **options)

    inventory = Inventory(3)

    async def body() -> tuple[str, int]:
        return await inventory.checked("A")

    assert local.run_sync(body) == ("A", 3)
    assert seen == ([(inventory, "A")] if hooked else [])


def test_a_method_action_called_outside_a_run_raises_at_the_call() -> None:
    with pytest.raises(OutsideRunError, match="action 'count'"):
        Shelf({}).count("A")


def test_events_of_a_method_action_carry_its_name_and_self_in_args() -> None:
    local = Orchestrator()
    recorder = EventRecorder(local)

    class Inventory:
        @local.action
        async def check(self, sku: str, *, exact: bool = False) -> bool:
            return exact

    inventory = Inventory()

    async def body() -> bool:
        return await inventory.check("A", exact=True)

    assert local.run_sync(body) is True
    (begin,) = recorder.events("task_begin")
    assert isinstance(begin, TaskBeginEvent)
    assert begin.name == "check"
    assert begin.args == (inventory, "A")
    assert dict(begin.kwargs) == {"exact": True}


def test_a_method_action_read_from_an_instance_is_bound_to_it() -> None:
    first, second = Shelf({"A": 1}), Shelf({"A": 2})
    bound = first.count
    assert isinstance(bound, Action)
    assert bound.__self__ is first
    assert bound.__func__ is Shelf.count
    assert bound == first.count
    assert bound != second.count
    assert hash(bound) == hash(first.count)
    assert "bound" in repr(bound)


def test_a_method_action_read_from_the_class_is_the_action_itself() -> None:
    assert isinstance(Shelf.count, Action)
    assert Shelf.count is Shelf.__dict__["count"]

    async def body() -> int:
        return await Shelf.count(Shelf({"B": 3}), "B")

    assert orch.run_sync(body) == 3


def test_a_bound_action_shares_the_actions_name_and_options() -> None:
    local = Orchestrator()

    class Inventory:
        @local.action(retry=RetryPolicy(retries=5), timeout=3)
        async def check(self, sku: str) -> str:
            return sku

    bound = Inventory().check
    assert bound.name == "check"
    assert bound.retry is Inventory.check.retry
    assert bound.timeout == 3
    assert bound.__wrapped__ is Inventory.check.__wrapped__


def test_the_signature_of_a_bound_action_leaves_self_out() -> None:
    assert list(inspect.signature(Shelf({}).count).parameters) == ["sku"]
    assert list(inspect.signature(Shelf.count).parameters) == ["self", "sku"]


def test_static_and_class_methods_over_actions_keep_working() -> None:
    local = Orchestrator()

    class Inventory:
        @staticmethod
        @local.action
        async def static_outer(x: int) -> int:
            return x + 1

        @local.action
        @staticmethod
        async def static_inner(x: int) -> int:
            return x + 2

        @classmethod
        @local.action
        async def of_class(cls, x: int) -> tuple[str, int]:
            return cls.__name__, x

    async def body() -> list[Any]:
        inventory = Inventory()
        return [
            await inventory.static_outer(1),
            await Inventory.static_outer(1),
            await inventory.static_inner(1),
            await Inventory.static_inner(1),
            await inventory.of_class(5),
            await Inventory.of_class(5),
        ]

    assert local.run_sync(body) == [2, 2, 3, 3, ("Inventory", 5), ("Inventory", 5)]


def test_an_action_made_from_a_staticmethod_object_runs_async_on_the_loop() -> None:
    local = Orchestrator()

    async def plain(x: int) -> int:
        return x

    act = local.action(staticmethod(plain))
    assert act.__wrapped__ is plain
    assert local.run_sync(act, 4) == 4


# The coroutine-function checks of frameworks ---------------------------------------------


def test_asyncio_sees_async_and_sync_actions_as_coroutine_functions() -> None:
    assert _asyncio_marks(fetch)
    assert _asyncio_marks(square)  # a sync action's call returns a coroutine too
    assert _asyncio_marks(Shelf({}).count)


def test_inspect_sees_actions_as_coroutine_functions_where_python_lets_objects_be_marked() -> None:
    # inspect.markcoroutinefunction() exists from Python 3.12; before it, inspect only
    # recognises real coroutine functions, and the README says so.
    can_mark = hasattr(inspect, "markcoroutinefunction")
    assert inspect.iscoroutinefunction(fetch) is can_mark
    assert inspect.iscoroutinefunction(square) is can_mark
    assert inspect.iscoroutinefunction(Shelf({}).count) is can_mark


def test_a_framework_deciding_by_asyncio_awaits_the_action_and_gets_its_result() -> None:
    async def framework_call(handler: Any, *args: Any) -> Any:
        if _asyncio_marks(handler):
            return await handler(*args)
        return handler(*args)  # a sync handler: called, its result taken as it is

    async def body() -> list[Any]:
        return [await framework_call(fetch, "u1"), await framework_call(square, 3)]

    assert orch.run_sync(body) == ["u1", 9]


# Async generator functions ----------------------------------------------------------------


async def _stream() -> AsyncIterator[int]:
    yield 1


def test_an_async_generator_function_is_refused_when_the_action_is_made() -> None:
    local = Orchestrator()
    with pytest.raises(TypeError, match="got the async generator function") as info:
        local.action(_stream)
    assert "_stream" in str(info.value)
    assert str(info.value).startswith("the action function must return its result")


def test_an_async_generator_function_is_refused_by_the_decorator_with_options() -> None:
    local = Orchestrator()
    with pytest.raises(TypeError, match="async generator function"):

        @local.action(retry=1)
        async def stream() -> AsyncIterator[int]:
            yield 1


def test_a_partial_of_an_async_generator_function_is_refused() -> None:
    local = Orchestrator()

    async def numbers(start: int) -> AsyncIterator[int]:
        yield start

    with pytest.raises(TypeError, match="async generator function"):
        local.action(functools.partial(numbers, 1))


# Wrong arguments ----------------------------------------------------------------------------


def _call_and_count(local: Orchestrator[Any], call: Any) -> tuple[list[int], list[int]]:
    """Run ``call`` in a run of ``local``; return the retry attempts and the error attempts."""
    retried: list[int] = []
    failed: list[int] = []
    local.on_task_retry(lambda event: retried.append(event.attempt))
    local.on_task_error(lambda event: failed.append(event.attempts))

    async def body() -> None:
        await call()

    with set_testing(True), pytest.raises(TypeError):
        local.run_sync(body)
    return retried, failed


@pytest.mark.parametrize("sync", [False, True])
def test_a_call_with_arguments_the_function_cannot_take_is_not_retried(sync: bool) -> None:
    local = Orchestrator()
    calls: list[int] = []

    def lookup(sku: str) -> str:
        calls.append(1)
        return sku

    async def lookup_async(sku: str) -> str:
        return lookup(sku)

    act = local.action(lookup if sync else lookup_async, retry=3)
    retried, failed = _call_and_count(local, lambda: act("A", colour="red"))
    assert (retried, failed, calls) == ([], [1], [])


def test_a_call_with_too_few_arguments_is_not_retried_even_with_retry_on_type_error() -> None:
    local = Orchestrator()

    async def lookup(sku: str, amount: int) -> str:
        return sku * amount

    act = local.action(lookup, retry=RetryPolicy(retries=3, retry_on=TypeError), timeout=5)
    assert _call_and_count(local, lambda: act("A")) == ([], [1])


def test_a_call_that_cannot_bind_is_not_retried_without_task_hooks() -> None:
    local = Orchestrator()
    asked: list[BaseException] = []

    def retry_on(exc: Exception) -> bool:
        asked.append(exc)
        return True

    async def lookup(sku: str) -> str:
        return sku

    act = local.action(lookup, retry=RetryPolicy(retries=3, retry_on=retry_on))

    async def body() -> None:
        await act()  # type: ignore[call-arg]

    with set_testing(True), pytest.raises(TypeError, match="sku"):
        local.run_sync(body)
    assert asked == []


def test_a_method_action_called_with_wrong_arguments_is_not_retried() -> None:
    local = Orchestrator()

    class Inventory:
        @local.action(retry=3)
        async def check(self, sku: str) -> str:
            return sku

    inventory = Inventory()
    retried, failed = _call_and_count(local, lambda: inventory.check("A", "B"))
    assert (retried, failed) == ([], [1])


def test_a_type_error_raised_inside_the_function_is_still_retried() -> None:
    local = Orchestrator()

    async def lookup(sku: str) -> str:
        return sku + 1  # type: ignore[operator]

    act = local.action(lookup, retry=2)
    retried, failed = _call_and_count(local, lambda: act("A"))
    assert (retried, failed) == ([1, 2], [3])


# Pickling -----------------------------------------------------------------------------------


def test_a_module_level_action_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(square)) is square
    assert pickle.loads(pickle.dumps(fetch)) is fetch


def test_a_partial_of_an_action_and_a_structure_holding_it_pickle() -> None:
    again = pickle.loads(pickle.dumps(functools.partial(fetch, "u1")))
    assert again.func is fetch
    assert again.args == ("u1",)
    steps = pickle.loads(pickle.dumps({"steps": [square, fetch], "retries": 2}))
    assert steps["steps"][0] is square
    assert steps["steps"][1] is fetch


def test_copying_a_structure_that_holds_an_action_keeps_the_action() -> None:
    held = {"step": fetch}
    assert copy.deepcopy(held)["step"] is fetch
    assert copy.copy(fetch) is fetch


def test_the_function_of_a_decorated_action_pickles_by_reference() -> None:
    function = square.__wrapped__
    assert pickle.loads(pickle.dumps(function)) is function
    assert pickle.loads(pickle.dumps(Shelf.count.__wrapped__)) is Shelf.count.__wrapped__


def test_the_function_of_an_action_made_by_a_call_is_left_as_it_was() -> None:
    assert cube.__qualname__ == "cube"
    assert pickle.loads(pickle.dumps(cubed.__wrapped__)) is cube


def test_a_bound_action_pickles_as_its_instance_and_its_name() -> None:
    again = pickle.loads(pickle.dumps(Shelf({"A": 4}).count))
    assert again.__func__ is Shelf.count
    assert again.__self__.stock == {"A": 4}


def test_a_process_pool_runs_the_function_of_a_decorated_action() -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        direct = pool.submit(square.__wrapped__, 7)
        partial = pool.submit(functools.partial(square.__wrapped__, 3))
        assert (direct.result(timeout=60), partial.result(timeout=60)) == (49, 9)


def test_pickling_an_orchestrator_raises_type_error_saying_what_to_do() -> None:
    with pytest.raises(TypeError, match="cannot be pickled or copied") as info:
        pickle.dumps(orch)
    assert "context" in str(info.value)
    assert "get_state()" in str(info.value)
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        copy.deepcopy(Orchestrator())
