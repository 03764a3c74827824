"""The hooks registered on an orchestrator, and how they are called."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
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


def call_hooks(hooks: tuple[Hook, ...], event: object) -> Awaitable[None] | None:
    """Call each hook with ``event`` in order, each finished before the next starts.

    Returns None when every hook finished synchronously. When a hook returns an awaitable,
    returns an awaitable that awaits it and then calls the remaining hooks: the caller must
    await it. Sync hooks, the common case, so cost no coroutine. The first hook that raises
    stops the rest, and its exception propagates.
    """
    for index, hook in enumerate(hooks):
        outcome = hook(event)
        if outcome is not None and inspect.isawaitable(outcome):
            return _finish(outcome, hooks[index + 1 :], event)
    return None


async def _finish(pending: Awaitable[object], rest: tuple[Hook, ...], event: object) -> None:
    await pending
    for hook in rest:
        outcome = hook(event)
        if outcome is not None and inspect.isawaitable(outcome):
            await outcome


async def fire(hooks: tuple[Hook, ...], event: object) -> None:
    """Call the hooks like ``call_hooks`` and await whatever is left: for paths off the hot one."""
    pending = call_hooks(hooks, event)
    if pending is not None:
        await pending
