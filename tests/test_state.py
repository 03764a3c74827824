"""The per-run context: State, typed contexts, set_state defaults, get_state everywhere."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest

from orchestrator import Orchestrator, OutsideRunError, State
from orchestrator.testing import set_testing

# State ---------------------------------------------------------------------------------------


def test_default_context_is_fresh_state_per_run():
    orch = Orchestrator()
    seen = []

    async def body():
        ctx = orch.get_state()
        seen.append((ctx, "marker" in ctx))
        ctx.marker = True

    orch.run_sync(body)
    orch.run_sync(body)
    (first, first_had), (second, second_had) = seen
    assert type(first) is State
    assert type(second) is State
    assert first is not second
    assert (first_had, second_had) == (False, False)


def test_state_attribute_and_item_access_share_values():
    ctx = State()
    ctx.request_count = 0
    ctx.request_count += 1
    ctx["request_count"] += 1
    ctx["api_key"] = "secret"
    assert ctx["request_count"] == 2
    assert ctx.request_count == 2
    assert ctx.api_key == "secret"


def test_state_supports_in_len_and_iteration():
    ctx = State()
    ctx.a = 1
    ctx["b"] = 2
    assert "a" in ctx
    assert "b" in ctx
    assert "c" not in ctx
    assert len(ctx) == 2
    assert list(ctx) == ["a", "b"]


def test_state_repr_shows_class_and_values():
    ctx = State()
    ctx.a = 1
    assert repr(ctx) == "State(a=1)"
    ctx["b"] = "x"
    assert repr(ctx) == "State(a=1, b='x')"


def test_state_missing_attribute_raises_attribute_error():
    ctx = State()
    with pytest.raises(AttributeError, match="missing"):
        _ = ctx.missing


def test_state_missing_item_raises_key_error():
    ctx = State()
    with pytest.raises(KeyError, match="missing") as info:
        _ = ctx["missing"]
    assert info.value.args == ("missing",)


# Typed contexts ------------------------------------------------------------------------------


@dataclass
class ProcessContext:
    request_count: int = 0
    errors: list[str] = field(default_factory=list)


def test_dataclass_context_gives_fresh_instance_per_run():
    orch = Orchestrator(ProcessContext)
    seen = []

    async def body():
        ctx = orch.get_state()
        seen.append((ctx, ctx.request_count, list(ctx.errors)))
        ctx.request_count += 1
        ctx.errors.append("boom")

    orch.run_sync(body)
    orch.run_sync(body)
    (first, count1, errors1), (second, count2, errors2) = seen
    assert isinstance(first, ProcessContext)
    assert isinstance(second, ProcessContext)
    assert first is not second
    assert (count1, errors1, count2, errors2) == (0, [], 0, [])


def test_zero_argument_factory_context_gives_fresh_instance_per_run():
    made = []

    def factory():
        ctx = {"n": len(made)}
        made.append(ctx)
        return ctx

    orch = Orchestrator(factory)
    seen = []

    async def body():
        seen.append(orch.get_state())

    orch.run_sync(body)
    orch.run_sync(body)
    assert len(made) == 2
    assert seen[0] is made[0]
    assert seen[1] is made[1]
    assert [ctx["n"] for ctx in seen] == [0, 1]


def test_context_factory_needing_arguments_is_refused_at_construction():
    def needs_arg(x):
        return x

    class NeedsInit:
        def __init__(self, required):
            self.required = required

    with pytest.raises(TypeError, match="context"):
        Orchestrator(needs_arg)
    with pytest.raises(TypeError, match="context"):
        Orchestrator(NeedsInit)


# set_state -----------------------------------------------------------------------------------


def test_set_state_chains_outside_and_inside_run():
    orch = Orchestrator()
    assert orch.set_state("a", 1).set_state("b", 2) is orch
    inside = []

    async def body():
        inside.append(orch.set_state("c", 3).set_state("d", 4))
        ctx = orch.get_state()
        return (ctx.a, ctx.b, ctx.c, ctx.d)

    assert orch.run_sync(body) == (1, 2, 3, 4)
    assert inside == [orch]


def test_set_state_default_is_deep_copied_into_each_run():
    orch = Orchestrator()
    default_errors = []
    default_config = {"hosts": ["a"]}
    orch.set_state("errors", default_errors).set_state("config", default_config)
    seen = []

    async def body():
        ctx = orch.get_state()
        seen.append((ctx.errors, list(ctx.errors), list(ctx.config["hosts"])))
        ctx.errors.append("failure")
        ctx.config["hosts"].append("b")

    orch.run_sync(body)
    orch.run_sync(body)
    (errors1, before1, hosts1), (errors2, before2, hosts2) = seen
    assert errors1 is not errors2
    assert errors1 is not default_errors
    assert (before1, before2) == ([], [])
    assert (hosts1, hosts2) == (["a"], ["a"])
    assert default_errors == []
    assert default_config == {"hosts": ["a"]}


def test_set_state_default_that_cannot_be_deep_copied_raises_type_error_naming_key():
    orch = Orchestrator()
    with pytest.raises(TypeError, match="'guard'"):
        orch.set_state("guard", threading.Lock())
    seen = []

    async def body():
        seen.append("guard" in orch.get_state())

    orch.run_sync(body)
    assert seen == [False]


def test_set_state_inside_run_sets_key_on_that_run_only():
    orch = Orchestrator()
    orch.set_state("mode", "default")
    seen = []

    async def setter():
        orch.set_state("mode", "changed").set_state("extra", 1)
        ctx = orch.get_state()
        seen.append((ctx.mode, ctx.extra))

    async def reader():
        ctx = orch.get_state()
        seen.append((ctx.mode, "extra" in ctx))

    orch.run_sync(setter)
    orch.run_sync(reader)
    assert seen == [("changed", 1), ("default", False)]


def test_set_state_with_dict_context_uses_item_assignment():
    orch = Orchestrator(dict)
    orch.set_state("errors", [])
    seen = []

    async def body():
        orch.set_state("api_key", "k")
        ctx = orch.get_state()
        seen.append(ctx)
        ctx["errors"].append(1)

    orch.run_sync(body)
    orch.run_sync(body)
    first, second = seen
    assert type(first) is dict
    assert first == {"errors": [1], "api_key": "k"}
    assert second == {"errors": [1], "api_key": "k"}
    assert first["errors"] is not second["errors"]


@dataclass(slots=True)
class SlotsContext:
    api_key: str | None = None
    request_count: int = 0


def test_set_state_refuses_a_key_that_a_slots_context_cannot_hold() -> None:
    local = Orchestrator(SlotsContext)
    with pytest.raises(ValueError, match="'tpyo'") as info:
        local.set_state("tpyo", 1)
    assert "SlotsContext" in str(info.value)
    assert "api_key, request_count" in str(info.value)


def test_a_refused_key_leaves_later_runs_of_a_slots_context_working() -> None:
    local = Orchestrator(SlotsContext).set_state("api_key", "k")
    with pytest.raises(ValueError, match="tpyo"):
        local.set_state("tpyo", 1)

    async def body() -> str | None:
        return local.get_state().api_key

    assert local.run_sync(body) == "k"


def test_set_state_accepts_any_key_for_contexts_with_a_dict() -> None:
    @dataclass
    class Plain:
        api_key: str | None = None

    Orchestrator(Plain).set_state("extra", 1)
    Orchestrator(dict).set_state("extra", 1)
    Orchestrator(lambda: SlotsContext()).set_state("extra", 1)  # a factory: taken on trust


def test_set_state_refuses_a_read_only_class_attribute_of_a_slots_context() -> None:
    class Limits:
        __slots__ = ("count",)
        ceiling = 10

    with pytest.raises(ValueError, match="'ceiling'"):
        Orchestrator(Limits).set_state("ceiling", 20)
    Orchestrator(Limits).set_state("count", 1)


# get_state -----------------------------------------------------------------------------------


def test_get_state_in_body_returns_run_context():
    orch = Orchestrator()
    contexts = []
    orch.on_process_begin(lambda e: contexts.append(e.context))

    async def body():
        return orch.get_state()

    ctx = orch.run_sync(body)
    assert type(ctx) is State
    assert contexts == [ctx]


def test_get_state_in_every_kind_of_action_returns_run_context():
    orch = Orchestrator()

    @orch.action
    async def in_async():
        return orch.get_state(), threading.get_ident()

    @orch.action
    def in_thread():
        return orch.get_state(), threading.get_ident()

    @orch.action(inline=True)
    def in_inline():
        return orch.get_state(), threading.get_ident()

    async def body():
        return (
            orch.get_state(),
            threading.get_ident(),
            await in_async(),
            await in_thread(),
            (await in_inline()),
        )

    ctx, loop_thread, from_async, from_thread, from_inline = orch.run_sync(body)
    assert from_async == (ctx, loop_thread)
    assert from_thread[0] is ctx
    assert from_thread[1] != loop_thread
    assert from_inline == (ctx, loop_thread)


HOOK_POINTS = [
    "process_begin",
    "process_error",
    "process_completion",
    "task_begin",
    "task_retry",
    "task_error",
    "task_completion",
]


@pytest.mark.parametrize("point", HOOK_POINTS)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_get_state_in_hook_returns_run_context(point, kind):
    orch = Orchestrator()
    seen = []

    if kind == "sync":

        def hook(event):
            seen.append((orch.get_state(), event.context))
    else:

        async def hook(event):
            await asyncio.sleep(0)
            seen.append((orch.get_state(), event.context))

    getattr(orch, f"on_{point}")(hook)

    @orch.action(retry=1)
    async def always_fails():
        raise ValueError("no")

    async def body():
        ctx = orch.get_state()
        with pytest.raises(ValueError, match="no"):
            await always_fails()
        raise RuntimeError(ctx)

    with set_testing(True), pytest.raises(RuntimeError) as info:
        orch.run_sync(body)
    ctx = info.value.args[0]
    # One action call with two attempts in a failing run: every hook point fires exactly once.
    assert seen == [(ctx, ctx)]
    assert type(ctx) is State


def test_get_state_outside_run_raises_outside_run_error():
    orch = Orchestrator()
    other = Orchestrator()
    with pytest.raises(OutsideRunError, match="outside a run"):
        orch.get_state()

    async def body():
        with pytest.raises(OutsideRunError, match="outside a run"):
            orch.get_state()
        return "checked"

    assert other.run_sync(body) == "checked"

    async def own():
        return orch.get_state()

    orch.run_sync(own)
    with pytest.raises(OutsideRunError):
        orch.get_state()


# Concurrent runs -----------------------------------------------------------------------------


def test_concurrent_runs_never_see_each_others_context():
    orch = Orchestrator()
    hook_views = []

    def hook(event):
        ctx = orch.get_state()
        hook_views.append((event.run_id, ctx, event.context, getattr(ctx, "who", None)))

    for point in HOOK_POINTS:
        getattr(orch, f"on_{point}")(hook)

    @orch.action
    async def async_who():
        await asyncio.sleep(0)
        return orch.get_state().who

    @orch.action
    def thread_who():
        return orch.get_state().who

    @orch.action(retry=1)
    async def failing_who():
        raise LookupError(orch.get_state().who)

    events = {name: asyncio.Event() for name in ("a1", "a2", "b1", "b2")}

    async def meet(mine, theirs):
        events[mine].set()
        await events[theirs].wait()

    async def body(me, other):
        orch.set_state("who", me)
        ctx = orch.get_state()
        await meet(f"{me}1", f"{other}1")
        # Both runs are now in progress, each having set its own value.
        seen = [orch.get_state().who, await async_who(), await thread_who()]
        try:
            await failing_who()
        except LookupError as exc:
            seen.append(exc.args[0])
        await meet(f"{me}2", f"{other}2")
        seen.append(orch.get_state().who)
        assert orch.get_state() is ctx
        return seen, ctx

    async def main():
        return await asyncio.gather(
            orch.run(body, "a", "b", run_id="a"),
            orch.run(body, "b", "a", run_id="b"),
        )

    with set_testing(True):
        (seen_a, ctx_a), (seen_b, ctx_b) = asyncio.run(main())
    assert ctx_a is not ctx_b
    assert seen_a == ["a"] * 5
    assert seen_b == ["b"] * 5
    contexts = {"a": ctx_a, "b": ctx_b}
    for run_id, ctx in contexts.items():
        mine = [view for view in hook_views if view[0] == run_id]
        # process begin (before "who" is set), 3 task begins and completions, 1 retry,
        # 1 task error, process completion.
        assert len(mine) == 10
        assert all(view[1] is ctx and view[2] is ctx for view in mine)
        assert [view[3] for view in mine] == [None] + [run_id] * 9
    assert len(hook_views) == 20


def test_an_empty_state_is_truthy() -> None:
    assert bool(State()) is True
    orch = Orchestrator()

    async def body() -> tuple[bool, int, bool]:
        ctx = orch.get_state()
        # The usual `ctx or fallback` must keep the run's context even while it is empty.
        chosen = ctx or None
        return bool(ctx), len(ctx), chosen is ctx

    assert orch.run_sync(body) == (True, 0, True)
