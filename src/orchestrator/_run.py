"""One run: its id, its context, and the lifecycle that wraps its body."""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Generic, TypeAlias, TypeVar

from ._events import ProcessBeginEvent, ProcessCompletionEvent, ProcessErrorEvent
from ._hooks import Hooks, fire

C = TypeVar("C")


class Run(Generic[C]):
    """The record of one run, found through its orchestrator's context variable."""

    __slots__ = ("_ids", "context", "run_id")

    def __init__(self, run_id: str, context: C) -> None:
        self.run_id = run_id
        self.context = context
        self._ids = itertools.count(1)

    def next_task_id(self) -> int:
        """A task id not yet used in this run."""
        return next(self._ids)


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
    fires, then process completion, which fires last whatever happens. A raising error or
    completion hook replaces the run's outcome; Python keeps the earlier exception as its
    ``__context__``.
    """
    token = frames.set((run, None))
    started = time.time()
    clock = time.perf_counter()
    try:
        try:
            if hooks.process_begin:
                await fire(hooks.process_begin, ProcessBeginEvent(run.run_id, started, run.context))
            result = body(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            try:
                if hooks.process_error:
                    await fire(
                        hooks.process_error,
                        ProcessErrorEvent(
                            run.run_id, time.time(), _ms(clock), None, exc, run.context
                        ),
                    )
            except BaseException as hook_exc:
                await _complete(hooks, run, clock, None, hook_exc)
                raise
            await _complete(hooks, run, clock, None, exc)
            raise
        await _complete(hooks, run, clock, result, None)
        return result
    finally:
        frames.reset(token)


async def _complete(
    hooks: Hooks, run: Run[Any], clock: float, result: Any, error: BaseException | None
) -> None:
    if hooks.process_completion:
        event = ProcessCompletionEvent(
            run.run_id, time.time(), _ms(clock), result, error, run.context
        )
        await fire(hooks.process_completion, event)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
