"""One run: its id, its context, and the lifecycle that wraps its body."""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Generic, TypeAlias, TypeVar

from ._errors import OutsideRunError
from ._events import ProcessBeginEvent, ProcessCompletionEvent, ProcessErrorEvent
from ._hooks import Hooks, fire, fire_all

C = TypeVar("C")


class Run(Generic[C]):
    """One run of a body: its id, its context and what it was called with.

    Interceptors receive it (``intercept_run``, and ``CallInfo.run``); read it, do not change it.
    """

    __slots__ = (
        "args",
        "body",
        "context",
        "epoch",
        "kwargs",
        "run_id",
        "task_ids",
    )

    def __init__(
        self,
        run_id: str,
        context: C,
        body: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.run_id = run_id
        """The run's id, given to ``run(run_id=...)`` or generated."""
        self.context = context
        """The run's context, the object ``get_state()`` returns."""
        self.body = body
        """The body the run calls."""
        self.args = args
        """The body's positional arguments."""
        self.kwargs = kwargs
        """The body's keyword arguments."""
        self.task_ids = itertools.count(1)
        """Where each observed action call of the run takes its task id from."""
        self.epoch = time.time() - time.perf_counter()
        """Added to ``time.perf_counter()`` to give a POSIX timestamp.

        Every timestamp of a run comes from the one monotonic clock, anchored to the wall clock
        when the run starts: they never go backwards within a run, and reading one clock per
        instant instead of two keeps events cheap.
        """


def outside_run(what: str) -> OutsideRunError:
    """The error for ``what`` used where no run of its orchestrator is in progress."""
    return OutsideRunError(
        f"{what} was called outside a run of its orchestrator; "
        "call it from inside `await orchestrator.run(...)`"
    )


Scope: TypeAlias = list[Any]
"""Where calls are being made from: what an orchestrator's context variable holds.

The run body has a scope, and so has each observed action call and each member of a group whose
calls are observed. Calls made in a scope are numbered from 1 in the order they are made, and
their call keys extend the scope's key with that number. A scope is a list, indexed by the
constants below, because one is made for every observed call and a list is the cheapest object
with a counter that can go up.
"""

RUN = 0
"""Index of the run in a scope."""
TASK_ID = 1
"""Index of the task id of the observed call that calls are made from (None in the body)."""
KEY = 2
"""Index of the key under which calls made here sit: ``""`` in the body, ``"3.2"`` in the
call whose key is ``"3.2"``."""
MADE = 3
"""Index of how many calls were made here by position so far."""
PARTS = 4
"""Index of the explicit key parts used here so far (a set), or None before the first."""


def new_scope(run: Run[Any], task_id: int | None, key: str) -> Scope:
    """A scope in which no call was made yet."""
    return [run, task_id, key, 0, None]


def restart(scope: Scope) -> None:
    """Number the calls of ``scope`` from 1 again: a new attempt makes its calls afresh.

    Each attempt runs the function from its start, so its calls take the same keys as the
    calls of the attempt before it: a retry does not change keys.
    """
    scope[MADE] = 0
    scope[PARTS] = None


def next_key(scope: Scope, part: str | None = None) -> str:
    """The call key of the next call made in ``scope``: its position, or an explicit part.

    Raises:
        ValueError: The explicit ``part`` was already used in this scope.
    """
    if part is None:
        scope[MADE] += 1
        return f"{scope[KEY]}.{scope[MADE]}" if scope[KEY] else str(scope[MADE])
    key = f"{scope[KEY]}.{part}" if scope[KEY] else part
    used: set[str] | None = scope[PARTS]
    if used is None:
        scope[PARTS] = {part}
    elif part in used:
        raise ValueError(
            f"the call key {key!r} of run {scope[RUN].run_id!r} was already used; give each "
            "call made from one place its own key part"
        )
    else:
        used.add(part)
    return key


async def execute(frames: ContextVar[Scope], hooks: Hooks, run: Run[Any]) -> Any:
    """Run the body of ``run``, firing the process hooks and interceptors around it.

    Process begin fires first. If it or the body fails (cancellation included), process error
    fires, then process completion, which fires last whatever happens; every completion hook
    runs even if one raises. A raising error or completion hook replaces the run's outcome;
    Python keeps the earlier exception as its ``__context__``.
    """
    token = frames.set(new_scope(run, None, ""))
    clock = time.perf_counter()
    result: Any = None
    error: BaseException | None = None
    try:
        if hooks.process_begin:
            await fire(
                hooks.process_begin, ProcessBeginEvent(run.run_id, clock + run.epoch, run.context)
            )
        if hooks.intercept_run:
            result = await hooks.intercept_run(run, lambda: _call_body(run))
        else:
            result = await _call_body(run)
        return result
    except BaseException as exc:
        error = exc
        if hooks.process_error:
            now = time.perf_counter()
            try:
                await fire(
                    hooks.process_error,
                    ProcessErrorEvent(
                        run.run_id, now + run.epoch, (now - clock) * 1000.0, None, exc, run.context
                    ),
                )
            except BaseException as hook_exc:
                error = hook_exc
                raise
        raise
    finally:
        # Completion fires here so that nothing can skip it.
        try:
            if hooks.process_completion:
                now = time.perf_counter()
                await fire_all(
                    hooks.process_completion,
                    ProcessCompletionEvent(
                        run.run_id,
                        now + run.epoch,
                        (now - clock) * 1000.0,
                        result if error is None else None,
                        error,
                        run.context,
                    ),
                )
        finally:
            frames.reset(token)
            # A raised exception's traceback keeps this frame alive: a local naming that
            # exception (the events above are not kept in locals) would make a reference
            # cycle that only the garbage collector frees.
            error = None


async def _call_body(run: Run[Any]) -> Any:
    result = run.body(*run.args, **run.kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
