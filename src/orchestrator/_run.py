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
    """The record of one run, found through its orchestrator's context variable."""

    __slots__ = ("context", "epoch", "run_id", "task_ids")

    def __init__(self, run_id: str, context: C) -> None:
        self.run_id = run_id
        self.context = context
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


Frame: TypeAlias = tuple[Run[Any], int | None]
"""What an orchestrator's context variable holds: the current run and the current task id."""


async def execute(
    frames: ContextVar[Frame],
    hooks: Hooks,
    run: Run[Any],
    body: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``body`` as the run ``run``, firing the process hooks around it.

    Process begin fires first. If it or the body fails (cancellation included), process error
    fires, then process completion, which fires last whatever happens; every completion hook
    runs even if one raises. A raising error or completion hook replaces the run's outcome;
    Python keeps the earlier exception as its ``__context__``.
    """
    token = frames.set((run, None))
    clock = time.perf_counter()
    result: Any = None
    error: BaseException | None = None
    try:
        if hooks.process_begin:
            await fire(
                hooks.process_begin, ProcessBeginEvent(run.run_id, clock + run.epoch, run.context)
            )
        result = body(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
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
