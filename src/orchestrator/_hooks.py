"""The hooks and interceptors registered on an orchestrator, and how hooks are called."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import _checks
from ._interceptors import Intercept, Interceptor, chain

Hook = Callable[[Any], object]

_POINTS = (
    "process_begin",
    "process_error",
    "process_completion",
    "task_begin",
    "task_retry",
    "task_error",
    "task_completion",
)


class Hooks:
    """The hooks and interceptors of one orchestrator, each kind in registration order.

    Hooks come in one tuple per lifecycle point; interceptors as one chained callable per point
    they can wrap, None where none overrides it. Tuples are replaced, never changed in place, so a
    hook that registers another hook while hooks are firing does not disturb the firing in
    progress.
    """

    __slots__ = (
        "intercept_attempt",
        "intercept_call",
        "intercept_run",
        "interceptors",
        "journal",
        "observes_calls",
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
        self.interceptors: tuple[Interceptor, ...] = ()
        self.journal: Interceptor | None = None
        """The interceptor of the orchestrator's journal: always the innermost."""
        self.intercept_run: Intercept | None = None
        self.intercept_call: Intercept | None = None
        self.intercept_attempt: Intercept | None = None
        self.observes_tasks = False
        """Whether a task hook is registered: only then are task events built."""
        self.observes_calls = False
        """Whether a task hook or a call or attempt interceptor is registered: only then does a
        call get a task id and a call key."""

    def add(self, point: str, hook: object) -> None:
        """Append ``hook`` to the hooks of ``point`` (a slot name).

        Raises:
            TypeError: ``hook`` is not callable.

        """
        _checks.callable_(f"the on_{point} hook", hook)
        setattr(self, point, (*getattr(self, point), hook))
        self._update()

    def add_interceptor(self, interceptor: object) -> None:
        """Append ``interceptor``, innermost so far.

        Raises:
            TypeError: ``interceptor`` is not an ``Interceptor``.

        """
        if not isinstance(interceptor, Interceptor):
            raise TypeError(
                f"interceptor must be an instance of an Interceptor subclass, got {interceptor!r}"
            )
        self.interceptors = (*self.interceptors, interceptor)
        self._rechain()

    def set_journal(self, interceptor: Interceptor) -> None:
        """Make ``interceptor`` the journal's: inside every other interceptor, at every point."""
        self.journal = interceptor
        self._rechain()

    def _rechain(self) -> None:
        every = self.interceptors if self.journal is None else (*self.interceptors, self.journal)
        for point in ("intercept_run", "intercept_call", "intercept_attempt"):
            setattr(self, point, chain(every, point))
        self._update()

    def remove(self, hook: object) -> bool:
        """Take every registration of ``hook`` off every point; return whether there was one.

        Registrations are found by equality, so a bound method obtained again (a new object
        each time) still finds the one that was registered.
        """
        found = False
        for point in _POINTS:
            hooks = getattr(self, point)
            kept = tuple(h for h in hooks if h != hook)
            if len(kept) != len(hooks):
                setattr(self, point, kept)
                found = True
        if found:
            self._update()
        return found

    def remove_interceptor(self, interceptor: object) -> bool:
        """Take every registration of ``interceptor`` off; return whether there was one."""
        kept = tuple(i for i in self.interceptors if i is not interceptor)
        if len(kept) == len(self.interceptors):
            return False
        self.interceptors = kept
        self._rechain()
        return True

    def _update(self) -> None:
        self.observes_tasks = bool(
            self.task_begin or self.task_retry or self.task_error or self.task_completion
        )
        self.observes_calls = bool(
            self.observes_tasks or self.intercept_call or self.intercept_attempt
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
