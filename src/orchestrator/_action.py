"""Action: the call path  begin -> attempts (timeout, retry) -> completion."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, TypeVar

from . import _checks, _threads
from ._errors import ActionTimeout, OutsideRunError
from ._events import TaskBeginEvent, TaskCompletionEvent, TaskErrorEvent, TaskRetryEvent
from ._hooks import Hooks, fire
from ._retry import RetryPolicy, as_policy, testing_mode
from ._run import Frame, Run

P = ParamSpec("P")
R = TypeVar("R")


def action_name(fn: Callable[..., Any]) -> str:
    """The name events give an action made from ``fn`` when no ``name=`` is passed.

    A function's ``__name__``; ``'anonymous'`` for a lambda; for a ``functools.partial``, the
    name of the function it wraps; for another callable object, its type's name.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        return type(fn).__name__
    return "anonymous" if name == "<lambda>" else name


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine, seen through partials and ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return inspect.iscoroutinefunction(fn)
    return inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class _Call:
    """What the events of one observed call share; made only when a task hook listens."""

    __slots__ = ("attempts", "run", "task_id")

    def __init__(self, run: Run[Any], task_id: int) -> None:
        self.run = run
        self.task_id = task_id
        self.attempts = 0


class Action(Generic[P, R]):
    """A function made into a step of a run: named, observed by hooks, retried and timed.

    Made by ``Orchestrator.action``. Calling it returns a coroutine of the function's result;
    await it inside a run of its orchestrator. Sync functions run in a worker thread unless
    the action is ``inline``.
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        frames: ContextVar[Frame],
        hooks: Hooks,
        name: str | None = None,
        retry: int | RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
    ) -> None:
        _checks.callable_("the action function", fn)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if name == "":
            raise ValueError("name must not be empty, got ''")
        self._policy = as_policy(retry)
        self._timeout = _checks.seconds("timeout", timeout, allow_zero=False, allow_none=True)
        _checks.flag("inline", inline)
        asynchronous = is_async(fn)
        if inline and asynchronous:
            raise ValueError(
                f"inline=True applies to sync functions only, and {fn!r} is async; drop inline"
            )
        if inline and timeout is not None:
            raise ValueError(
                "inline=True cannot be combined with a timeout: an inline sync function blocks "
                "the event loop, so nothing could stop it; drop inline to run it in a thread"
            )
        self.name: str = name if name is not None else action_name(fn)
        """The name that events carry."""
        self._fn: Callable[..., Any] = fn
        self._frames = frames
        self._hooks = hooks
        self._inline = inline
        self._invoke = (
            self._invoke_async
            if asynchronous
            else (self._invoke_inline if inline else self._invoke_thread)
        )
        # A plain async function with no retry and no timeout skips every layer below __call__.
        self._direct = asynchronous and self._policy is None and self._timeout is None
        # updated=() keeps the wrapped object's __dict__ (an Action's own state) out of ours.
        functools.update_wrapper(self, fn, updated=())

    @property
    def retry(self) -> RetryPolicy | None:
        """The retry policy, or None if the action is not retried."""
        return self._policy

    @property
    def timeout(self) -> float | None:
        """The time limit of each attempt in seconds, or None."""
        return self._timeout

    @property
    def inline(self) -> bool:
        """Whether a sync function runs on the event loop's thread instead of a worker."""
        return self._inline

    def __repr__(self) -> str:
        return (
            f"<Action {self.name!r} retry={self._policy!r} timeout={self._timeout!r}"
            f"{' inline' if self._inline else ''}>"
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Return a coroutine that runs the action once (with its retries) as a task of the run.

        The check for a run happens here, at the call, so that a misplaced call fails at once
        instead of leaving a coroutine that is never awaited.

        Raises:
            OutsideRunError: No run of this action's orchestrator is in progress here.
            ActionTimeout: (when awaited) The last attempt ran out of time.
            Exception: (when awaited) Whatever the last attempt or a hook raised, as it was.
        """
        frame = self._frames.get(None)
        if frame is None:
            raise OutsideRunError(
                f"action {self.name!r} was called outside a run of its orchestrator; "
                "call it from inside `await orchestrator.run(...)`"
            )
        return self._call(frame, args, kwargs)

    async def _call(self, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        run = frame[0]
        task_id = run.next_task_id()
        token = self._frames.set((run, task_id))
        try:
            if self._hooks.observes_tasks:
                return await self._observed(run, frame[1], task_id, args, kwargs)  # type: ignore[no-any-return]
            if self._direct:
                return await self._fn(*args, **kwargs)  # type: ignore[no-any-return]
            return await self._attempts(None, args, kwargs)  # type: ignore[no-any-return]
        finally:
            self._frames.reset(token)

    async def _observed(
        self,
        run: Run[Any],
        parent_id: int | None,
        task_id: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # Every begin gets exactly one completion; on failure the error hooks run just before it.
        hooks = self._hooks
        call = _Call(run, task_id)
        started = time.time()
        clock = time.perf_counter()
        try:
            if hooks.task_begin:
                await fire(
                    hooks.task_begin,
                    TaskBeginEvent(
                        run.run_id,
                        task_id,
                        parent_id,
                        self.name,
                        started,
                        args,
                        kwargs,
                        run.context,
                    ),
                )
            result = await self._attempts(call, args, kwargs)
        except BaseException as exc:
            try:
                if hooks.task_error:
                    await fire(
                        hooks.task_error,
                        TaskErrorEvent(
                            run.run_id, task_id, self.name, exc, call.attempts, run.context
                        ),
                    )
            except BaseException as hook_exc:
                await self._complete(call, parent_id, started, clock, None, hook_exc)
                raise
            await self._complete(call, parent_id, started, clock, None, exc)
            raise
        await self._complete(call, parent_id, started, clock, result, None)
        return result

    async def _complete(
        self,
        call: _Call,
        parent_id: int | None,
        started: float,
        clock: float,
        result: Any,
        error: BaseException | None,
    ) -> None:
        hooks = self._hooks.task_completion
        if hooks:
            run = call.run
            event = TaskCompletionEvent(
                run.run_id,
                call.task_id,
                parent_id,
                self.name,
                started,
                time.time(),
                (time.perf_counter() - clock) * 1000.0,
                result,
                error,
                call.attempts,
                run.context,
            )
            await fire(hooks, event)

    async def _attempts(
        self, call: _Call | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        policy = self._policy
        timeout = self._timeout
        if policy is None:
            if call is not None:
                call.attempts = 1
            if timeout is None:
                return await self._invoke(args, kwargs)
            return await self._limited(timeout, False, args, kwargs)
        testing, cap = testing_mode()
        most = policy.retries + 1 if not (testing and cap) else min(policy.retries + 1, cap)
        deadline = None if policy.deadline is None else time.monotonic() + policy.deadline
        attempt = 0
        while True:
            attempt += 1
            if call is not None:
                call.attempts = attempt
            limit, by_deadline = timeout, False
            if deadline is not None:
                left = deadline - time.monotonic()
                if limit is None or left < limit:
                    limit, by_deadline = left, True
            try:
                if limit is None:
                    return await self._invoke(args, kwargs)
                return await self._limited(limit, by_deadline, args, kwargs)
            except Exception as exc:
                if attempt >= most:
                    raise
                wait = policy.suggested_wait(exc)
                if wait is None:
                    raise
                if wait < 0:
                    wait = policy.wait(attempt)
                if testing:
                    wait = 0.0
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise
                if call is not None and self._hooks.task_retry:
                    run = call.run
                    await fire(
                        self._hooks.task_retry,
                        TaskRetryEvent(
                            run.run_id, call.task_id, self.name, attempt, exc, wait, run.context
                        ),
                    )
            await asyncio.sleep(wait)

    async def _limited(
        self, limit: float, by_deadline: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            async with asyncio.timeout(limit) as scope:
                return await self._invoke(args, kwargs)
        except TimeoutError:
            if scope.expired():
                raise ActionTimeout(self.name, limit, deadline=by_deadline) from None
            raise

    async def _invoke_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self._fn(*args, **kwargs)

    async def _invoke_thread(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = await _threads.pool().run(self._fn, args, kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _invoke_inline(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = self._fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
