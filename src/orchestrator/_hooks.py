"""The hooks registered on an orchestrator, and how they are called."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import _checks

Hook = Callable[[Any], object]


class Hooks:
    """The hooks of one orchestrator, one tuple per lifecycle point, in registration order.

    Tuples are replaced, never changed in place, so a hook that registers another hook
    while hooks are firing does not disturb the firing in progress.
    """

    __slots__ = (
        "observes_tasks",
        "process_begin",
        "process_completion",
        "process_error",
        "task_begin",
        "task_completion",
        "task_error",
        "task_retry",
    )

    def __init__(self) -> None:
        self.process_begin: tuple[Hook, ...] = ()
        self.process_error: tuple[Hook, ...] = ()
        self.process_completion: tuple[Hook, ...] = ()
        self.task_begin: tuple[Hook, ...] = ()
        self.task_retry: tuple[Hook, ...] = ()
        self.task_error: tuple[Hook, ...] = ()
        self.task_completion: tuple[Hook, ...] = ()
        # Read on every action call: with no task hook at all, the call skips events entirely.
        self.observes_tasks = False

    def add(self, point: str, hook: object) -> None:
        """Append ``hook`` to the hooks of ``point`` (a slot name).

        Raises:
            TypeError: ``hook`` is not callable.

        """
        _checks.callable_(f"the on_{point} hook", hook)
        setattr(self, point, (*getattr(self, point), hook))
        self.observes_tasks = bool(
            self.task_begin or self.task_retry or self.task_error or self.task_completion
        )


async def fire(hooks: tuple[Hook, ...], event: object) -> None:
    """Call each hook with ``event`` in order, awaiting what an async hook returns.

    The first hook that raises stops the rest, and its exception propagates.
    """
    for hook in hooks:
        outcome = hook(event)
        if outcome is not None and inspect.isawaitable(outcome):
            await outcome


async def fire_all(hooks: tuple[Hook, ...], event: object, start: int = 0) -> None:
    """Call every hook from index ``start`` on, even when some of them raise.

    Completion hooks hold cleanup that must run whatever happened, a cancellation arriving
    meanwhile included. The exception of the last hook that raised propagates. Each later
    hook runs inside the ``except`` clause of the failure before it, so Python chains the
    earlier exceptions as ``__context__`` and none is lost.
    """
    for index in range(start, len(hooks)):
        try:
            outcome = hooks[index](event)
            if outcome is not None and inspect.isawaitable(outcome):
                await outcome
        except BaseException:
            await fire_all(hooks, event, index + 1)
            raise
