"""Misuse: each gets a clear exception at the earliest point, naming the parameter and value."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator import Orchestrator, OutsideRunError, RetryPolicy, set_testing


async def noop() -> None:
    return None


def sync_noop() -> None:
    return None


def raises(kind: type[BaseException], *fragments: str) -> Any:
    """``pytest.raises(kind)`` whose message must contain every fragment, literally."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(kind, match=re.compile(pattern, re.DOTALL))


# --- actions -------------------------------------------------------------------------------


def test_non_callable_action_function_is_a_type_error() -> None:
    with raises(TypeError, "action function", "callable", "42", "int"):
        Orchestrator().action(42)  # type: ignore[call-overload]


def test_non_callable_action_function_via_decorator_is_a_type_error() -> None:
    decorate = Orchestrator().action(name="x")
    with raises(TypeError, "action function", "callable", "'text'"):
        decorate("text")  # type: ignore[arg-type]


def test_empty_name_is_a_value_error() -> None:
    with raises(ValueError, "name", "''"):
        Orchestrator().action(noop, name="")


def test_non_str_name_is_a_type_error() -> None:
    with raises(TypeError, "name", "str", "3"):
        Orchestrator().action(noop, name=3)  # type: ignore[arg-type]


def test_bad_name_in_decorator_options_fails_before_decoration() -> None:
    with raises(TypeError, "name", "3"):
        Orchestrator().action(name=3)  # type: ignore[call-overload]


def test_negative_retry_is_a_value_error() -> None:
    with raises(ValueError, "retry", "-1"):
        Orchestrator().action(noop, retry=-1)


def test_str_retry_is_a_type_error() -> None:
    with raises(TypeError, "retry", "'3'"):
        Orchestrator().action(noop, retry="3")  # type: ignore[arg-type]


def test_bool_retry_is_a_type_error() -> None:
    with raises(TypeError, "retry", "True"):
        Orchestrator().action(noop, retry=True)


def test_bad_retry_in_decorator_options_fails_before_decoration() -> None:
    with raises(ValueError, "retry", "-2"):
        Orchestrator().action(retry=-2)


# --- RetryPolicy ---------------------------------------------------------------------------


def test_policy_negative_retries_is_a_value_error() -> None:
    with raises(ValueError, "retries", "-1"):
        RetryPolicy(retries=-1)


def test_policy_non_int_retries_is_a_type_error() -> None:
    with raises(TypeError, "retries", "2.5"):
        RetryPolicy(retries=2.5)  # type: ignore[arg-type]


def test_policy_negative_delay_is_a_value_error() -> None:
    with raises(ValueError, "delay", "-1"):
        RetryPolicy(delay=-1)


def test_policy_nan_delay_is_a_value_error() -> None:
    with raises(ValueError, "delay", "nan"):
        RetryPolicy(delay=math.nan)


def test_policy_str_delay_is_a_type_error() -> None:
    with raises(TypeError, "delay", "'1'"):
        RetryPolicy(delay="1")  # type: ignore[arg-type]


def test_policy_backoff_below_one_is_a_value_error() -> None:
    with raises(ValueError, "backoff", "0.5"):
        RetryPolicy(backoff=0.5)


def test_policy_jitter_above_one_is_a_value_error() -> None:
    with raises(ValueError, "jitter", "1.5"):
        RetryPolicy(jitter=1.5)


def test_policy_negative_jitter_is_a_value_error() -> None:
    with raises(ValueError, "jitter", "-0.1"):
        RetryPolicy(jitter=-0.1)


def test_policy_infinite_max_delay_is_a_value_error() -> None:
    with raises(ValueError, "max_delay", "inf"):
        RetryPolicy(max_delay=math.inf)


def test_policy_zero_deadline_is_a_value_error() -> None:
    with raises(ValueError, "deadline", "0"):
        RetryPolicy(deadline=0)


def test_policy_retry_on_keyboard_interrupt_is_a_value_error() -> None:
    with raises(ValueError, "retry_on", "KeyboardInterrupt"):
        RetryPolicy(retry_on=KeyboardInterrupt)  # type: ignore[arg-type]


def test_policy_retry_on_tuple_with_base_exception_is_a_value_error() -> None:
    with raises(ValueError, "retry_on", "SystemExit"):
        RetryPolicy(retry_on=(KeyError, SystemExit))  # type: ignore[arg-type]


def test_policy_retry_on_empty_tuple_is_a_value_error() -> None:
    with raises(ValueError, "retry_on", "empty tuple"):
        RetryPolicy(retry_on=())


def test_policy_retry_on_number_is_a_type_error() -> None:
    with raises(TypeError, "retry_on", "42"):
        RetryPolicy(retry_on=42)  # type: ignore[arg-type]


# --- timeout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "shown"),
    [
        (0, ValueError, "0"),
        (-1, ValueError, "-1"),
        (math.nan, ValueError, "nan"),
        (math.inf, ValueError, "inf"),
        ("5", TypeError, "'5'"),
        (True, TypeError, "True"),
    ],
    ids=["zero", "negative", "nan", "inf", "str", "bool"],
)
def test_bad_timeout_is_refused_at_definition(
    value: object, kind: type[Exception], shown: str
) -> None:
    with raises(kind, "timeout", shown):
        Orchestrator().action(noop, timeout=value)  # type: ignore[arg-type]


# --- inline --------------------------------------------------------------------------------


def test_inline_with_timeout_is_a_value_error_at_definition() -> None:
    with raises(ValueError, "inline", "timeout"):
        Orchestrator().action(sync_noop, inline=True, timeout=1.0)


def test_inline_with_timeout_in_decorator_options_fails_before_decoration() -> None:
    with raises(ValueError, "inline", "timeout"):
        Orchestrator().action(inline=True, timeout=1.0)


def test_inline_on_async_function_is_a_value_error() -> None:
    with raises(ValueError, "inline", "async", "noop"):
        Orchestrator().action(noop, inline=True)


def test_non_bool_inline_is_a_type_error() -> None:
    with raises(TypeError, "inline", "'yes'"):
        Orchestrator().action(sync_noop, inline="yes")  # type: ignore[arg-type]


# --- parallel and map ----------------------------------------------------------------------


def test_non_callable_parallel_member_is_a_type_error() -> None:
    orch = Orchestrator()
    with raises(TypeError, "actions[1]", "callable", "5"):
        orch.parallel([orch.action(noop), 5])  # type: ignore[list-item]


def test_non_iterable_parallel_actions_is_a_type_error() -> None:
    with raises(TypeError, "actions", "5"):
        Orchestrator().parallel(5)  # type: ignore[arg-type]


def test_str_parallel_actions_is_a_type_error() -> None:
    with raises(TypeError, "actions", "'ab'"):
        Orchestrator().parallel("ab")  # type: ignore[arg-type]


def test_wrong_argument_count_to_parallel_group_is_a_value_error() -> None:
    orch = Orchestrator()
    calls: list[object] = []

    async def first(x: object) -> None:
        calls.append(x)

    group = orch.parallel([orch.action(first), orch.action(first)])

    async def body() -> None:
        await group(1, 2, 3)

    with raises(ValueError, "2 members", "3 arguments"):
        orch.run_sync(body)
    assert calls == []


def test_one_argument_to_a_group_of_two_is_a_value_error() -> None:
    orch = Orchestrator()
    group = orch.parallel([orch.action(noop), orch.action(noop)])

    async def body() -> None:
        await group("only")

    with raises(ValueError, "2 members", "1 arguments"):
        orch.run_sync(body)


def test_map_with_non_iterable_items_is_a_type_error() -> None:
    orch = Orchestrator()

    async def double(x: int) -> int:
        return 2 * x

    async def body() -> None:
        await orch.map(orch.action(double), 5)  # type: ignore[call-overload]

    with raises(TypeError, "items", "iterable", "5"):
        orch.run_sync(body)


def test_map_with_non_callable_action_is_a_type_error() -> None:
    orch = Orchestrator()

    async def body() -> None:
        await orch.map(7, [1, 2])  # type: ignore[arg-type]

    with raises(TypeError, "action", "callable", "7"):
        orch.run_sync(body)


# --- hooks ---------------------------------------------------------------------------------

HOOK_METHODS = [
    "on_process_begin",
    "on_process_error",
    "on_process_completion",
    "on_task_begin",
    "on_task_retry",
    "on_task_error",
    "on_task_completion",
]


@pytest.mark.parametrize("method", HOOK_METHODS)
def test_non_callable_hook_is_a_type_error(method: str) -> None:
    orch = Orchestrator()
    with raises(TypeError, method, "hook", "callable", "'not a hook'"):
        getattr(orch, method)("not a hook")


# --- outside a run -------------------------------------------------------------------------


def test_get_state_outside_a_run_is_an_outside_run_error() -> None:
    with raises(OutsideRunError, "get_state()", "outside a run"):
        Orchestrator().get_state()
    assert issubclass(OutsideRunError, RuntimeError)


def test_action_call_outside_a_run_is_an_outside_run_error() -> None:
    calls: list[int] = []
    orch = Orchestrator()

    @orch.action
    async def check_inventory() -> None:
        calls.append(1)

    with raises(OutsideRunError, "check_inventory", "outside a run"):
        asyncio.run(check_inventory())
    assert calls == []


def test_action_call_inside_another_orchestrators_run_is_an_outside_run_error() -> None:
    mine = Orchestrator()
    other = Orchestrator()

    @mine.action
    async def notify_team() -> None:
        return None

    with raises(OutsideRunError, "notify_team", "outside a run"):
        other.run_sync(notify_team)


def test_run_sync_inside_a_running_loop_is_a_runtime_error() -> None:
    orch = Orchestrator()
    calls: list[int] = []

    def body() -> None:
        calls.append(1)

    async def main() -> None:
        orch.run_sync(body)

    with raises(RuntimeError, "run_sync()", "running event loop"):
        asyncio.run(main())
    assert calls == []


# --- run() arguments -----------------------------------------------------------------------


def test_non_callable_run_body_is_a_type_error() -> None:
    with raises(TypeError, "body", "callable", "5"):
        asyncio.run(Orchestrator().run(5))  # type: ignore[arg-type]


def test_non_callable_run_sync_body_is_a_type_error() -> None:
    with raises(TypeError, "body", "callable", "5"):
        Orchestrator().run_sync(5)  # type: ignore[arg-type]


def test_non_str_run_id_is_a_type_error() -> None:
    with raises(TypeError, "run_id", "5"):
        Orchestrator().run_sync(noop, run_id=5)  # type: ignore[arg-type]


def test_empty_run_id_is_a_value_error() -> None:
    with raises(ValueError, "run_id", "empty"):
        Orchestrator().run_sync(noop, run_id="")


def test_bad_run_arguments_fire_no_hooks() -> None:
    orch = Orchestrator()
    fired: list[object] = []
    orch.on_process_begin(fired.append).on_process_completion(fired.append)
    with pytest.raises(TypeError):
        orch.run_sync(noop, run_id=5)  # type: ignore[arg-type]
    assert fired == []


# --- state and context ---------------------------------------------------------------------


def test_non_str_state_key_is_a_type_error() -> None:
    with raises(TypeError, "key", "str", "5"):
        Orchestrator().set_state(5, "x")  # type: ignore[arg-type]


def test_non_callable_context_is_a_type_error() -> None:
    with raises(TypeError, "context", "callable", "5"):
        Orchestrator(context=5)  # type: ignore[call-overload]


def test_context_class_needing_arguments_is_a_type_error() -> None:
    class NeedsArgs:
        def __init__(self, api_key: str) -> None:
            self.api_key = api_key

    with raises(TypeError, "context", "without arguments", "NeedsArgs", "api_key"):
        Orchestrator(context=NeedsArgs)  # type: ignore[arg-type]


def test_context_factory_needing_arguments_is_a_type_error() -> None:
    def make(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    factory: Callable[..., Any] = make
    with raises(TypeError, "context", "without arguments", "make"):
        Orchestrator(context=factory)


# --- the testing switch --------------------------------------------------------------------


def test_set_testing_max_attempts_zero_is_a_value_error() -> None:
    with raises(ValueError, "max_attempts", "0"):
        set_testing(max_attempts=0)


def test_set_testing_non_bool_enabled_is_a_type_error() -> None:
    with raises(TypeError, "enabled", "'yes'"):
        set_testing("yes")  # type: ignore[arg-type]


def test_refused_set_testing_leaves_the_switch_unchanged() -> None:
    orch = Orchestrator()
    calls: list[int] = []

    @orch.action(retry=2)
    async def failing() -> None:
        calls.append(1)
        raise KeyError("k")

    with set_testing(True, max_attempts=1):
        with pytest.raises(ValueError, match="max_attempts"):
            set_testing(True, max_attempts=0)
        with pytest.raises(KeyError):
            orch.run_sync(failing)
    assert calls == [1]


# --- more misuses, and errors raised at the call ---------------------------------------------


def test_inline_with_a_retry_deadline_is_a_value_error_at_definition() -> None:
    with raises(ValueError, "inline", "deadline"):
        Orchestrator().action(sync_noop, inline=True, retry=RetryPolicy(retries=2, deadline=0.1))


def test_inline_with_a_retry_deadline_in_decorator_options_fails_before_decoration() -> None:
    with raises(ValueError, "inline", "deadline"):
        Orchestrator().action(inline=True, retry=RetryPolicy(deadline=1.0))


def test_set_testing_off_with_max_attempts_is_a_value_error() -> None:
    # The outer switch restores the previous setting, whatever the inner call does.
    with set_testing(False):
        with raises(ValueError, "max_attempts"):
            set_testing(False, max_attempts=2)
        with raises(ValueError, "max_attempts"):
            set_testing(enabled=False, max_attempts=1)


def raises_at_the_call(call: Callable[[], object], kind: type[Exception], *fragments: str) -> None:
    """``call()`` itself raises; no coroutine is left behind to warn that it was never awaited."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with raises(kind, *fragments):
            call()  # no await: the error comes from the call itself
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_run_with_a_non_callable_body_raises_at_the_call() -> None:
    orch = Orchestrator()
    raises_at_the_call(lambda: orch.run(5), TypeError, "body", "callable", "5")  # type: ignore[call-overload]
    raises_at_the_call(lambda: orch.run(noop, run_id=3), TypeError, "run_id", "3")
    raises_at_the_call(lambda: orch.run(noop, run_id=""), ValueError, "run_id")


def test_parallel_group_call_with_a_wrong_count_raises_at_the_call() -> None:
    orch = Orchestrator()
    group = orch.parallel([noop, noop])
    raises_at_the_call(lambda: group(1, 2, 3), ValueError, "2 members", "3 arguments")

    async def body() -> None:
        raises_at_the_call(lambda: group(1), ValueError, "2 members", "1 arguments")

    orch.run_sync(body)


def test_parallel_group_call_outside_a_run_raises_at_the_call() -> None:
    orch = Orchestrator()
    group = orch.parallel([noop])
    raises_at_the_call(group, OutsideRunError, "parallel group", "outside a run")


def test_map_outside_a_run_raises_at_the_call() -> None:
    orch = Orchestrator()
    act = orch.action(noop)
    raises_at_the_call(lambda: orch.map(act, [1, 2]), OutsideRunError, "map()", "outside a run")
    raises_at_the_call(lambda: orch.map(act, 5), TypeError, "items", "5")  # type: ignore[arg-type]
