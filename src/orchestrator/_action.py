"""Action: the call path  begin -> attempts (timeout, retry) -> completion."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import time
import types
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, cast, overload

from . import _checks
from ._errors import ActionTimeout
from ._events import TaskBeginEvent, TaskCompletionEvent, TaskErrorEvent, TaskRetryEvent
from ._hooks import Hooks, fire, fire_all
from ._retry import RetryPolicy, as_policy, testing_mode
from ._run import Frame, Run, outside_run
from ._threads import WorkerPool

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")

# Events are named tuples; building them straight from a tuple skips the Python-level
# __new__ that NamedTuple generates, which costs as much as the rest of a hook call.
_new: Callable[..., Any] = tuple.__new__
_clock = time.perf_counter
_make = object.__new__

# What asyncio.iscoroutinefunction() looks for on an object that is not a function (its
# marker for objects whose call returns a coroutine); inspect has its own from Python 3.12.
_ASYNCIO_MARK = getattr(asyncio.coroutines, "_is_coroutine", None)
_mark_coroutine_function: Callable[[Any], Any] | None = getattr(
    inspect, "markcoroutinefunction", None
)


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
    if isinstance(fn, Action):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return inspect.iscoroutinefunction(fn)
    return inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class _Tally:
    """What the events of one observed call share, its attempt count included."""

    __slots__ = ("attempts", "run", "task_id")

    def __init__(self, run: Run[Any], task_id: int) -> None:
        self.run = run
        self.task_id = task_id
        self.attempts = 0


class Action(Generic[P, R]):
    """A function made into a step of a run: named, observed by hooks, retried and timed.

    Made by ``Orchestrator.action``. Calling it returns a coroutine of the function's result;
    await it inside a run of its orchestrator. Sync functions run in a worker thread unless
    the action is ``inline``. In a class body it binds like a function: read from an instance,
    it is a :class:`BoundAction` that passes the instance first. It pickles by reference.
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        frames: ContextVar[Frame],
        hooks: Hooks,
        pool: WorkerPool,
        name: str | None = None,
        retry: int | RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
    ) -> None:
        _checks.callable_("the action function", fn)
        binds = True
        if isinstance(fn, staticmethod):
            # @orch.action over @staticmethod: the function, never bound to an instance.
            fn, binds = fn.__func__, False
        if _is_async_generator(fn):
            raise TypeError(
                f"the action function must return its result, got the async generator "
                f"function {fn!r}; an action's call is awaited once for one result, so collect "
                "the items in an async function and return them"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if name == "":
            raise ValueError("name must be a non-empty str or None, got ''")
        self._policy = as_policy(retry)
        self._timeout = _checks.seconds("timeout", timeout, allow_zero=False, allow_none=True)
        _checks.flag("inline", inline)
        asynchronous = is_async(fn)
        if inline and asynchronous:
            raise ValueError(
                f"inline=True applies to sync functions only, and {fn!r} is async; drop inline"
            )
        if inline and (timeout is not None or (self._policy and self._policy.deadline)):
            what = "a timeout" if timeout is not None else "a retry deadline"
            raise ValueError(
                f"inline=True cannot be combined with {what}: an inline sync function blocks "
                "the event loop, so nothing could stop it; drop inline to run it in a thread"
            )
        self.name: str = name if name is not None else action_name(fn)
        """The name that events carry."""
        self._fn: Callable[..., Any] = fn
        self._frames = frames
        self._hooks = hooks
        self._pool = pool
        self._inline = inline
        self._start: Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]] = (
            self._start_async
            if asynchronous
            else (self._start_inline if inline else self._start_thread)
        )
        # An async function without a timeout is awaited as it is: with no retry either and no
        # task hook listening, the call returns the function's own coroutine.
        self._direct = asynchronous and self._timeout is None
        self._binds = binds
        # updated=() keeps the wrapped object's __dict__ (an Action's own state) out of ours.
        functools.update_wrapper(self, fn, updated=())
        # Calling an action, sync or async, returns a coroutine: frameworks that check before
        # calling must await it rather than drop it.
        if _ASYNCIO_MARK is not None:
            self._is_coroutine = _ASYNCIO_MARK
        if _mark_coroutine_function is not None:
            _mark_coroutine_function(self)
        _reach_through(fn)

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

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...
    @overload
    def __get__(
        self: Action[Concatenate[S, Q], T], instance: S, owner: type[Any] | None = None, /
    ) -> Action[Q, T]: ...
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """Bind the action to ``instance`` when it is read from one, as a function would be.

        The bound action is the same action (its name, options and hooks) with ``instance``
        passed first to the function; the events of its calls show it in ``args``.
        """
        if instance is None or not self._binds:
            return self
        bound: BoundAction[..., R] = _make(BoundAction)
        # One dict for both: a bound action is a view of this one, not a copy to keep in step.
        bound.__dict__ = self.__dict__
        bound.__func__ = cast("Action[Any, R]", self)
        bound.__self__ = instance
        return bound

    def __reduce__(self) -> str | tuple[Any, ...]:
        # By reference, as a function: the action found under its function's qualified name in
        # its module. It holds hooks, a context variable and a live policy: no copy of those.
        qualname = self.__dict__.get("__qualname__")
        if not isinstance(qualname, str):
            raise TypeError(
                f"cannot pickle {self!r}: an action pickles by reference, under the qualified "
                "name of its function, and this one's function has none; make the action from "
                "a function defined at module level"
            )
        return qualname

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[object, None, R]:
        """Return a coroutine that makes one call of the action, retries included.

        Each call is one task of the run in the events' sense (a ``task_id``); no asyncio task
        is created for it.

        The check for a run happens here, at the call, so that a misplaced call fails at once
        instead of leaving a coroutine that is never awaited.

        Raises:
            OutsideRunError: No run of this action's orchestrator is in progress here.
            ActionTimeout: (when awaited) The last attempt ran out of time.
            Exception: (when awaited) Whatever the last attempt or a hook raised, as it was.
        """
        frame = self._frames.get(None)
        if frame is None:
            raise outside_run(f"action {self.name!r}")
        # Task ids and the current-task variable only matter to events, so a call that no
        # task hook observes skips them: a nested call then reports the nearest observed
        # ancestor as its parent.
        if self._hooks.observes_tasks:
            return self._observed(frame, args, kwargs)
        if self._policy is not None:
            return self._attempts(None, args, kwargs)
        if self._direct:
            return self._fn(*args, **kwargs)  # type: ignore[no-any-return]
        return cast("Coroutine[object, None, R]", self._once(args, kwargs))

    async def _observed(self, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Every begin gets exactly one completion: it fires in the finally clause, so nothing
        # can skip it. On failure the error hooks run just before it. A hook that raises inside
        # the except or finally clause gets the work's exception as __context__ from Python.
        # Begin and completion hooks are called inline rather than through fire(): this is the
        # hot path.
        run = frame[0]
        hooks = self._hooks
        task_id = next(run.task_ids)
        token = self._frames.set((run, task_id))
        clock = _clock()
        started = clock + run.epoch
        tally = None if self._policy is None else _Tally(run, task_id)
        attempts = 0
        result: Any = None
        error: BaseException | None = None
        try:
            if hooks.task_begin:
                # A read-only view: the dict is the one the function receives.
                event = _new(
                    TaskBeginEvent,
                    (
                        run.run_id,
                        task_id,
                        frame[1],
                        self.name,
                        started,
                        args,
                        MappingProxyType(kwargs),
                        run.context,
                    ),
                )
                for hook in hooks.task_begin:
                    outcome = hook(event)
                    if outcome is not None and inspect.isawaitable(outcome):
                        await outcome
            if tally is not None:
                result = await self._attempts(tally, args, kwargs)
            else:
                attempts = 1
                if self._direct:
                    result = await self._fn(*args, **kwargs)
                else:
                    result = await self._once(args, kwargs)
            return result
        except BaseException as exc:
            error = exc
            if hooks.task_error:
                failed = _new(
                    TaskErrorEvent,
                    (
                        run.run_id,
                        task_id,
                        self.name,
                        exc,
                        tally.attempts if tally else attempts,
                        run.context,
                    ),
                )
                try:
                    await fire(hooks.task_error, failed)
                except BaseException as hook_exc:
                    error = hook_exc
                    raise
            raise
        finally:
            try:
                if hooks.task_completion:
                    ended = _clock()
                    done = _new(
                        TaskCompletionEvent,
                        (
                            run.run_id,
                            task_id,
                            frame[1],
                            self.name,
                            started,
                            ended + run.epoch,
                            (ended - clock) * 1000.0,
                            result if error is None else None,
                            error,
                            tally.attempts if tally else attempts,
                            run.context,
                        ),
                    )
                    called = 0
                    try:
                        for hook in hooks.task_completion:
                            called += 1
                            outcome = hook(done)
                            if outcome is not None and inspect.isawaitable(outcome):
                                await outcome
                    except BaseException:
                        # Cleanup lives in completion hooks: the later ones still run.
                        await fire_all(hooks.task_completion, done, called)
                        raise
            finally:
                self._frames.reset(token)
                # A raised exception's traceback keeps this frame alive: locals naming that
                # exception would make a reference cycle that only the garbage collector frees.
                error = failed = done = None

    def _once(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        if self._timeout is None:
            return self._start(args, kwargs)
        return self._limited(self._timeout, False, args, kwargs)

    async def _attempts(
        self, tally: _Tally | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        policy: RetryPolicy = self._policy  # type: ignore[assignment]
        timeout = self._timeout
        deadline = None
        if policy.deadline is not None:
            # The deadline runs on the event loop's clock, the one asyncio's timeouts use.
            clock = asyncio.get_running_loop().time
            deadline = clock() + policy.deadline
        attempt = 0
        last: Exception | None = None
        while True:
            limit, by_deadline = timeout, False
            if deadline is not None:
                left = deadline - clock()
                if last is not None and left <= 0:
                    # Slow retry hooks or a late wake-up used up the budget: no more attempts.
                    try:
                        raise last
                    finally:
                        del last  # no reference cycle through this frame, as below
                if limit is None or left < limit:
                    limit, by_deadline = left, True
            # Only the check above needs the last failure. Its traceback holds this frame, so
            # keeping it longer would make a reference cycle that only the collector frees.
            last = None
            attempt += 1
            if tally is not None:
                tally.attempts = attempt
            try:
                if limit is not None:
                    return await self._limited(limit, by_deadline, args, kwargs)  # type: ignore[no-any-return]
                if self._direct:  # the same as _start_async, one call cheaper on the hot path
                    return await self._fn(*args, **kwargs)  # type: ignore[no-any-return]
                return await self._start(args, kwargs)  # type: ignore[no-any-return]
            except Exception as exc:
                # No retry while the task is being cancelled, even when the attempt failed with
                # an ordinary exception (cleanup that raised while unwinding the cancellation).
                # The attempt's own timeout has withdrawn its cancellation by now.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                if isinstance(exc, TypeError) and not self._accepts(args, kwargs):
                    raise  # arguments the function cannot take fail every attempt alike
                # The testing switch is read only after a failure, keeping success cheap.
                testing, cap = testing_mode()
                most = policy.retries + 1
                if testing and cap is not None:
                    most = min(most, cap)
                if attempt >= most:
                    raise
                wait = policy.suggested_wait(exc)
                if wait is None:
                    raise
                if testing:
                    wait = 0.0
                elif wait < 0:
                    wait = policy.wait(attempt)
                if deadline is not None and clock() + wait >= deadline:
                    raise
                if tally is not None and self._hooks.task_retry:
                    run = tally.run
                    # Not kept in a local, which would hold exc in a cycle through its traceback.
                    await fire(
                        self._hooks.task_retry,
                        TaskRetryEvent(
                            run.run_id, tally.task_id, self.name, attempt, exc, wait, run.context
                        ),
                    )
                last = exc
            try:
                await asyncio.sleep(wait)
            except BaseException:
                del last  # no reference cycle through this frame, as above
                raise

    def _accepts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether the function's signature takes these arguments; asked after a TypeError."""
        try:
            signature = self._signature
        except AttributeError:
            try:
                signature = inspect.signature(self._fn)
            except (TypeError, ValueError):  # no signature to read: let the policy decide
                signature = None
            self._signature: inspect.Signature | None = signature
        if signature is None:
            return True
        try:
            signature.bind(*args, **kwargs)
        except TypeError:
            return False
        return True

    async def _limited(
        self, limit: float, by_deadline: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            async with asyncio.timeout(limit) as scope:
                return await self._start(args, kwargs)
        except TimeoutError as exc:
            if scope.expired():
                timeout = ActionTimeout(self.name, limit, deadline=by_deadline)
                # A group cut short names its members' failures in notes on the cancellation;
                # the chain is hidden below, so the notes move up to what the caller sees.
                for note in getattr(exc.__cause__, "__notes__", ()):
                    timeout.add_note(note)
                try:
                    raise timeout from None
                finally:
                    # The traceback keeps this frame alive: a local naming the exception
                    # would make a reference cycle that only the garbage collector frees.
                    del timeout
            raise

    def _start_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        return self._fn(*args, **kwargs)  # type: ignore[no-any-return]

    async def _start_thread(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = await self._pool.run(self._fn, args, kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _start_inline(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = self._fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


class BoundAction(Action[P, R]):
    """An action read from an instance: calls pass the instance first, like a bound method.

    Made by ``Action.__get__``; ``__func__`` is the action and ``__self__`` the instance.
    """

    __slots__ = ("__func__", "__self__")

    __func__: Action[Any, R]
    __self__: object

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[object, None, R]:
        """Call the action with the instance first, then ``args`` and ``kwargs``."""
        # Action.__call__ with the instance put first; written out, as one more call in
        # between would cost as much again as binding does.
        full = (self.__self__, *args)
        frame = self._frames.get(None)
        if frame is None:
            raise outside_run(f"action {self.name!r}")
        if self._hooks.observes_tasks:
            return self._observed(frame, full, kwargs)
        if self._policy is not None:
            return self._attempts(None, full, kwargs)
        if self._direct:
            return self._fn(*full, **kwargs)  # type: ignore[no-any-return]
        return cast("Coroutine[object, None, R]", self._once(full, kwargs))

    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        return self  # bound already, as a bound method is

    def __repr__(self) -> str:
        return f"<bound {Action.__repr__(self)[1:-1]} of {self.__self__!r}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundAction)
            and other.__func__ is self.__func__
            and other.__self__ is self.__self__
        )

    def __hash__(self) -> int:
        return hash((id(self.__func__), id(self.__self__)))

    def __reduce__(self) -> tuple[Any, ...]:
        # As a bound method pickles: the instance, and the attribute read from it again.
        return (getattr, (self.__self__, self.__dict__.get("__name__", self.name)))

    @property
    def __signature__(self) -> inspect.Signature:
        """The function's signature without its first parameter, which the instance fills."""
        signature = inspect.signature(self.__func__)
        return signature.replace(parameters=tuple(signature.parameters.values())[1:])


def _is_async_generator(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return inspect.isasyncgenfunction(fn)
    return inspect.isasyncgenfunction(getattr(fn, "__call__", None))  # noqa: B004


def _reach_through(fn: Callable[..., Any]) -> None:
    """Let ``action.__wrapped__`` pickle by reference, through the action.

    A function pickles as a reference to its qualified name in its module. Under a decorator
    that name holds the action, not the function, so the function itself would not pickle
    (pickle finds "not the same object") and no process pool could take it. When the function
    cannot be found under its name now, as under a decorator, its qualified name becomes the
    path through the action, ``name.__wrapped__``. A function that can be found, as in
    ``orch.action(f)`` after ``def f``, is left alone.
    """
    if not isinstance(fn, types.FunctionType):
        return
    qualname = fn.__qualname__
    if "<" in qualname:  # <locals>, <lambda>: never reachable by name
        return
    found: object = sys.modules.get(fn.__module__)
    try:
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        found = None
    if found is not fn:
        fn.__qualname__ = f"{qualname}.__wrapped__"
