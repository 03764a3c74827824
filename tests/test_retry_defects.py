"""Retry edge cases: huge numbers, the arguments of wait(), jitter at the cap, RecursionError."""

from __future__ import annotations

import concurrent.futures
import random
import sys

import pytest

from orchestrator import Orchestrator, RetryPolicy, set_testing

HUGE = 10**400
"""An int that no float can hold."""


# Ints too large for a float ---------------------------------------------------------------


@pytest.mark.parametrize("field", ["delay", "max_delay", "deadline"])
def test_a_seconds_field_too_large_for_a_float_raises_value_error_naming_it(field: str) -> None:
    with pytest.raises(ValueError, match=rf"^RetryPolicy\.{field} must be a finite number") as info:
        RetryPolicy(**{field: HUGE})
    assert "an int of 1329 bits, too large for a float" in str(info.value)


def test_a_backoff_too_large_for_a_float_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^RetryPolicy\.backoff must be a finite number >= 1"):
        RetryPolicy(backoff=HUGE)


def test_an_action_timeout_too_large_for_a_float_raises_value_error_naming_it() -> None:
    orch = Orchestrator()

    async def fetch() -> None:
        return None

    with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds"):
        orch.action(fetch, timeout=HUGE)


def test_a_negative_int_too_large_for_a_float_is_refused_as_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"^RetryPolicy\.delay must be a finite number"):
        RetryPolicy(delay=-HUGE)


def test_a_jitter_of_an_int_too_large_to_print_names_its_size() -> None:
    # Python refuses the repr of an int past 4,300 digits: the message must still be made.
    with pytest.raises(ValueError, match=r"^RetryPolicy\.jitter must be from 0 to 1, got an int"):
        RetryPolicy(jitter=10**5000)


# RetryPolicy.wait(n) ------------------------------------------------------------------------


def test_wait_of_a_huge_retry_number_with_an_int_backoff_is_the_cap() -> None:
    policy = RetryPolicy(retries=5, delay=1, backoff=2, max_delay=3, jitter=0)
    assert policy.wait(sys.maxsize) == 3.0
    assert policy.wait(HUGE) == 3.0


def test_wait_of_a_huge_retry_number_with_a_backoff_of_one_is_the_delay() -> None:
    policy = RetryPolicy(delay=2, backoff=1, max_delay=3, jitter=0)
    assert policy.wait(HUGE) == 2.0


@pytest.mark.parametrize("retry", [0, -1])
def test_wait_refuses_a_retry_number_below_one(retry: int) -> None:
    with pytest.raises(ValueError, match=r"^RetryPolicy\.wait\(retry=\.\.\.\) must be 1 or more"):
        RetryPolicy().wait(retry)


@pytest.mark.parametrize("retry", [1.5, 2.0, True, "2"])
def test_wait_refuses_a_retry_number_that_is_not_an_int(retry: object) -> None:
    with pytest.raises(TypeError, match=r"^RetryPolicy\.wait\(retry=\.\.\.\) must be an int"):
        RetryPolicy().wait(retry)  # type: ignore[arg-type]


@pytest.mark.parametrize("rand", [-0.5, 1.5, float("nan")])
def test_wait_refuses_a_rand_outside_zero_to_one(rand: float) -> None:
    with pytest.raises(ValueError, match=r"^RetryPolicy\.wait\(rand=\.\.\.\) must be a number"):
        RetryPolicy().wait(1, rand=rand)


@pytest.mark.parametrize("rand", ["0.5", True])
def test_wait_refuses_a_rand_that_is_not_a_number(rand: object) -> None:
    with pytest.raises(TypeError, match=r"^RetryPolicy\.wait\(rand=\.\.\.\) must be a number"):
        RetryPolicy().wait(1, rand=rand)  # type: ignore[arg-type]


def test_wait_accepts_both_ends_of_rand() -> None:
    policy = RetryPolicy(delay=1.0, backoff=1.0, jitter=0.25, max_delay=100.0)
    assert policy.wait(1, rand=0) == pytest.approx(0.75)
    assert policy.wait(1, rand=1) == pytest.approx(1.25)


# Jitter at the cap --------------------------------------------------------------------------


def test_jittered_waits_at_the_cap_spread_below_it_instead_of_landing_on_it() -> None:
    policy = RetryPolicy(retries=20, delay=10.0, max_delay=10.0, jitter=0.25)
    draws = [i / 1000 for i in range(1000)]
    waits = [policy.wait(15, rand=r) for r in draws]
    assert all(7.5 <= wait <= 10.0 for wait in waits)
    assert waits.count(10.0) == 0
    # Even over [7.5, 10]: the draws keep their order and their spacing.
    assert waits == pytest.approx([7.5 + 2.5 * r for r in draws])


def test_jittered_waits_just_below_the_cap_spread_up_to_it_without_piling_on_it() -> None:
    policy = RetryPolicy(delay=8.0, backoff=2.0, max_delay=10.0, jitter=0.5)
    rng = random.Random(20240611)
    waits = [policy.wait(1, rand=rng.random()) for _ in range(2000)]
    assert all(4.0 <= wait <= 10.0 for wait in waits)
    assert waits.count(10.0) == 0
    # Each half of [4, 10] gets about half of the draws.
    assert 900 < sum(wait < 7.0 for wait in waits) < 1100


def test_random_jittered_waits_at_the_cap_are_all_different() -> None:
    policy = RetryPolicy(retries=20, delay=1.0, backoff=2.0, max_delay=5.0, jitter=0.25)
    waits = [policy.wait(12) for _ in range(200)]
    assert all(3.75 <= wait <= 5.0 for wait in waits)
    assert len(set(waits)) == len(waits)


def test_jitter_below_the_cap_keeps_its_interval_around_the_schedule() -> None:
    policy = RetryPolicy(delay=1.0, backoff=2.0, max_delay=100.0, jitter=0.25)
    assert policy.wait(3, rand=0.0) == pytest.approx(3.0)
    assert policy.wait(3, rand=0.5) == pytest.approx(4.0)
    assert policy.wait(3, rand=1.0) == pytest.approx(5.0)


# RecursionError -----------------------------------------------------------------------------


def _attempts_until_failure(orch: Orchestrator, policy: RetryPolicy, error: Exception) -> int:
    calls: list[int] = []

    @orch.action(retry=policy)
    async def failing() -> None:
        calls.append(1)
        raise error

    with set_testing(True), pytest.raises(type(error)):
        orch.run_sync(failing)
    return len(calls)


def test_recursion_error_is_not_retried_by_the_default_retry_on() -> None:
    attempts = _attempts_until_failure(
        Orchestrator(), RetryPolicy(retries=3), RecursionError("too deep")
    )
    assert attempts == 1


def test_recursion_error_is_not_retried_by_a_broader_type() -> None:
    policy = RetryPolicy(retries=3, retry_on=(RuntimeError, ConnectionError))
    assert _attempts_until_failure(Orchestrator(), policy, RecursionError("too deep")) == 1


def test_recursion_error_is_retried_when_retry_on_names_it() -> None:
    policy = RetryPolicy(retries=3, retry_on=(ConnectionError, RecursionError))
    assert _attempts_until_failure(Orchestrator(), policy, RecursionError("too deep")) == 4


def test_recursion_error_is_retried_when_a_predicate_accepts_it() -> None:
    policy = RetryPolicy(retries=2, retry_on=lambda exc: isinstance(exc, RecursionError))
    assert _attempts_until_failure(Orchestrator(), policy, RecursionError("too deep")) == 3


def test_a_recursion_error_in_nested_retried_actions_runs_each_level_once() -> None:
    orch = Orchestrator()
    calls: list[str] = []

    @orch.action(retry=3)
    async def inner() -> None:
        calls.append("inner")
        raise RecursionError("maximum recursion depth exceeded")

    @orch.action(retry=3)
    async def outer() -> None:
        calls.append("outer")
        await inner()

    with set_testing(True), pytest.raises(RecursionError):
        orch.run_sync(outer)
    assert calls == ["outer", "inner"]


def test_runtime_error_is_still_retried_by_the_default_retry_on() -> None:
    attempts = _attempts_until_failure(Orchestrator(), RetryPolicy(retries=2), RuntimeError("x"))
    assert attempts == 3


# Work cancelled where it ran ----------------------------------------------------------------


def test_work_cancelled_where_it_ran_is_not_retried_by_the_default_retry_on() -> None:
    # What an executor's future raises when its owner cancelled the work (Dask's
    # FutureCancelledError is one).
    cancelled = concurrent.futures.CancelledError("cancelled by its owner")
    assert _attempts_until_failure(Orchestrator(), RetryPolicy(retries=3), cancelled) == 1


def test_work_cancelled_where_it_ran_is_retried_when_retry_on_names_it() -> None:
    policy = RetryPolicy(retries=2, retry_on=concurrent.futures.CancelledError)
    cancelled = concurrent.futures.CancelledError("cancelled by its owner")
    assert _attempts_until_failure(Orchestrator(), policy, cancelled) == 3
