"""Interceptors: code that wraps every run, action call and attempt of an orchestrator.

An interceptor sees the work before it starts and its outcome after it ends, may replace the
outcome without doing the work, and runs in the work's own context, so that a value it makes
current (a tracing span, a log context) is current for everything the work does: nested calls,
group members, sync actions in worker threads. Several interceptors nest in registration order,
the first registered outermost. Hooks observe; interceptors wrap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ._action import Action
    from ._run import Run

C = TypeVar("C")

Proceed = Callable[[], Awaitable[Any]]
"""What an interceptor calls to go on with the work: it returns the work's awaitable outcome."""


class CallInfo(Generic[C]):
    """One action call, as interceptors see it.

    The same object is passed to ``intercept_call`` and to every ``intercept_attempt`` of the
    call; ``attempts`` counts the attempts started so far.
    """

    __slots__ = (
        "action",
        "args",
        "attempts",
        "call_key",
        "kwargs",
        "parent_id",
        "replayed",
        "run",
        "task_id",
    )

    def __init__(
        self,
        action: Action[..., Any],
        run: Run[C],
        call_key: str,
        task_id: int,
        parent_id: int | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.action = action
        """The action being called."""
        self.run = run
        """The run the call belongs to."""
        self.call_key = call_key
        """The call's stable position in its run, such as ``"3.2.1"``."""
        self.task_id = task_id
        """The call's task id, as in its events."""
        self.parent_id = parent_id
        """The task id of the call this one was made from, or None."""
        self.args = args
        """The positional arguments of the call."""
        self.kwargs = kwargs
        """The keyword arguments of the call."""
        self.attempts = 0
        """How many attempts have started."""
        self.replayed = False
        """Set to True by an interceptor that hands back a recorded outcome instead of calling
        ``proceed()``; the call's completion event carries it."""

    @property
    def name(self) -> str:
        """The action's name."""
        return self.action.name

    def __repr__(self) -> str:
        return (
            f"<CallInfo {self.name!r} key={self.call_key!r} run={self.run.run_id!r} "
            f"attempts={self.attempts}>"
        )


class Interceptor:
    """Base class of interceptors; override the methods you need.

    Each method receives what is being done and ``proceed``, a function that does it and
    returns an awaitable of its outcome. Return an awaitable of the outcome you want the caller
    to see: usually ``proceed()``'s, awaited inside ``try``/``finally`` or a ``with`` block that
    must span the work; or a value of your own without calling ``proceed`` (the work is then not
    done: no attempt is made and the function is not called). An exception raised here is the
    work's failure, as if the work had raised it. The default of each method only proceeds.

    Register with ``Orchestrator.add_interceptor``. Example::

        class Timer(Interceptor):
            async def intercept_call(self, call, proceed):
                started = time.perf_counter()
                try:
                    return await proceed()
                finally:
                    print(call.name, call.call_key, time.perf_counter() - started)
    """

    def intercept_run(self, run: Run[Any], proceed: Proceed) -> Awaitable[Any]:
        """Wrap a run's body, inside its process begin and completion hooks."""
        return proceed()

    def intercept_call(self, call: CallInfo[Any], proceed: Proceed) -> Awaitable[Any]:
        """Wrap an action call, its attempts and retry waits, inside its task hooks."""
        return proceed()

    def intercept_attempt(self, call: CallInfo[Any], proceed: Proceed) -> Awaitable[Any]:
        """Wrap one attempt of a call (``call.attempts`` is its number), its timeout included."""
        return proceed()


Intercept = Callable[[Any, Proceed], Awaitable[Any]]
"""One interceptor method, or several chained: ``intercept(subject, proceed)``."""


def chain(interceptors: tuple[Interceptor, ...], method: str) -> Intercept | None:
    """The interceptors that override ``method``, chained into one callable, the first outermost.

    None when none overrides it, so that a point nobody intercepts costs nothing; the bound
    method itself when one does, so that a single interceptor costs one call.
    """
    default = getattr(Interceptor, method)
    bound = [getattr(i, method) for i in interceptors if getattr(type(i), method) is not default]
    if not bound:
        return None
    if len(bound) == 1:
        return bound[0]  # type: ignore[no-any-return]
    outermost, inner = bound[0], bound[:0:-1]

    def chained(subject: Any, core: Proceed) -> Awaitable[Any]:
        proceed = core
        for intercept in inner:
            proceed = _link(intercept, subject, proceed)
        return outermost(subject, proceed)  # type: ignore[no-any-return]

    return chained


def _link(intercept: Intercept, subject: Any, inner: Proceed) -> Proceed:
    return lambda: intercept(subject, inner)
