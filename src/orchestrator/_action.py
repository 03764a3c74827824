"""Action: the call path  begin -> interceptors -> attempts (timeout, retry) -> completion.

An observed call (a task hook or an interceptor is registered) goes
``__call__ -> _begin -> _observed -> [call interceptors] -> _attempts -> [attempt
interceptors] -> _timed -> _invoke``, and ``_invoke`` is the one place the function is called,
on the event loop for an async function or through the action's executor for a sync one. An
unobserved call skips the first three, and an unobserved async function without timeout or
retry is called straight from ``__call__``: the caller awaits the function's own coroutine.
Which of these a call takes is decided in ``_choose()`` when the action is made and again when
hooks or interceptors are added, not on every call.
"""

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
from ._events import TaskBeginEvent, TaskCompletionEvent, TaskErrorEvent, TaskRetryEvent
from ._hooks import Hooks, fire, fire_all
from ._interceptors import CallInfo
from ._remote import UnnamedError
from ._retry import RetryPolicy, as_policy, testing_mode
from ._run import KEY, MADE, RUN, TASK_ID, Scope, next_key, outside_run, restart
from ._timeout import limited
from .executors import Executor, InlineExecutor

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")

# Events are named tuples; building them straight from a tuple skips the Python-level
# __new__ that NamedTuple generates, which costs as much as the rest of a hook call.
_new: Callable[..., Any] = tuple.__new__
_clock = time.perf_counter
_NO_KWARGS: MappingProxyType[str, Any] = MappingProxyType({})
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


class Action(Generic[P, R]):
    """A function made into a step of a run: named, observed by hooks, retried and timed.

    Made by ``Orchestrator.action``. Calling it returns a coroutine of the function's result;
    await it inside a run of its orchestrator. Sync functions run on the action's executor (by
    default the orchestrator's worker threads). In a class body it binds like a function: read
    from an instance, it is a :class:`BoundAction` that passes the instance first. It pickles by
    reference.
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        frames: ContextVar[Scope],
        hooks: Hooks,
        executor: Executor,
        name: str | None = None,
        retry: int | RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        journal: bool = True,
        async_on_executor: bool = False,
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
        self.journaled: bool = _checks.flag("journal", journal)
        """Whether the orchestrator's journal records this action's calls (``journal=``)."""
        asynchronous = is_async(fn)
        if asynchronous and inline:
            raise ValueError(
                f"inline=True applies to sync functions only, and {fn!r} is async; drop inline"
            )
        if (inline or isinstance(executor, InlineExecutor)) and (
            timeout is not None or (self._policy and self._policy.deadline)
        ):
            what = "a timeout" if timeout is not None else "a retry deadline"
            if inline:
                raise ValueError(
                    f"inline=True cannot be combined with {what}: an inline sync function blocks "
                    "the event loop, so nothing could stop it; drop inline to run it in a thread"
                )
            raise ValueError(
                f"an InlineExecutor cannot be combined with {what}: it runs the function on the "
                "event loop's thread, so nothing could stop it; use another executor"
            )
        if inline:
            executor = InlineExecutor()
        self.name: str = name if name is not None else action_name(fn)
        """The name that events carry."""
        self._fn: Callable[..., Any] = fn
        self._frames = frames
        self._hooks = hooks
        # Async functions run on the event loop, unless their action was given an executor
        # that runs coroutines; the executor is for the others.
        on_loop = asynchronous and not async_on_executor
        self._on_loop = on_loop
        self._executor: Executor | None = None if on_loop else executor
        self._direct = False
        self._observing = False
        self._tracked = False
        # What calls the function: the function itself if on the loop, else its executor's run.
        self._start: Callable[..., Coroutine[Any, Any, Any]] = fn if on_loop else self._submit  # type: ignore[assignment]
        self._binds = binds
        self._choose()
        # updated=() keeps the wrapped object's __dict__ (an Action's own state) out of ours.
        functools.update_wrapper(self, fn, updated=())
        # Calling an action, sync or async, returns a coroutine: frameworks that check before
        # calling must await it rather than drop it.
        if _ASYNCIO_MARK is not None:
            self._is_coroutine = _ASYNCIO_MARK
        if _mark_coroutine_function is not None:
            _mark_coroutine_function(self)
        _reach_through(fn)

    def _choose(self) -> None:
        """Decide the path of every later call; run again whenever hooks or interceptors change.

        Nothing observing calls: an async function without timeout or retry is called straight
        from ``__call__`` and the caller awaits its own coroutine; any other function goes to
        its attempts at once. Something observing: every call takes the full path.
        """
        observed = self._hooks.observes_calls
        self._direct = (
            self._on_loop and not observed and self._timeout is None and self._policy is None
        )
        self._observing = observed
        # An observed call needs a record of its attempts only when it can make more than one
        # or an interceptor looks at it; otherwise it makes exactly one.
        self._tracked = self._policy is not None or bool(
            self._hooks.intercept_call or self._hooks.intercept_attempt
        )

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
        return isinstance(self._executor, InlineExecutor)

    @property
    def executor(self) -> Executor | None:
        """Where the function runs: an executor, or None for an async one on the event loop."""
        return self._executor

    def __repr__(self) -> str:
        return (
            f"<Action {self.name!r} retry={self._policy!r} timeout={self._timeout!r}"
            f"{' inline' if self.inline else ''}>"
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
        is created for it. Its call key is taken here, in the order calls are made.

        The check for a run happens here, at the call, so that a misplaced call fails at once
        instead of leaving a coroutine that is never awaited.

        Raises:
            OutsideRunError: No run of this action's orchestrator is in progress here.
            ActionTimeout: (when awaited) The last attempt ran out of time.
            Exception: (when awaited) Whatever the last attempt or a hook raised, as it was.
        """
        scope = self._frames.get(None)
        if scope is None:
            raise outside_run(f"action {self.name!r}")
        if self._direct:
            return self._fn(*args, **kwargs)  # type: ignore[no-any-return]
        if self._observing:
            # next_key() written out: this is the hot path of every observed call.
            made = scope[MADE] = scope[MADE] + 1
            key = f"{scope[KEY]}.{made}" if scope[KEY] else str(made)
            return self._observed(scope, key, args, kwargs)
        return self._unobserved(args, kwargs)

    def keyed(self, part: str) -> Callable[P, Coroutine[object, None, R]]:
        """This action, with ``part`` in its next call's key instead of the call's position.

        ``await fetch.keyed(user_id)(user_id)`` gives the call the key ``"<scope>.<part>"``
        wherever it falls in the order of calls: for calls made in an order that differs from
        run to run (say, as responses arrive). A part is a non-empty str without dots that is
        not all digits (digits are positions); one part is used once per scope of a run.

        Raises:
            TypeError: ``part`` is not a str.
            ValueError: ``part`` is empty, holds a dot, or is all digits; (at the call) it was
                already used in the same scope of the run.
        """
        _checks.key_part(part)
        return _Keyed(self, part)

    def _keyed_call(
        self, part: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[object, None, R]:
        scope = self._frames.get(None)
        if scope is None:
            raise outside_run(f"action {self.name!r}")
        if self._direct:
            return self._fn(*args, **kwargs)  # type: ignore[no-any-return]
        if self._observing:
            return self._observed(scope, next_key(scope, part), args, kwargs)
        return self._unobserved(args, kwargs)

    def _unobserved(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        if self._policy is not None:
            return self._attempts(None, args, kwargs)
        return self._timed(self._timeout, False, args, kwargs)

    async def _observed(
        self, scope: Scope, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # Every begin gets exactly one completion: it fires in the finally clause, so nothing
        # can skip it. On failure the error hooks run just before it. A hook that raises inside
        # the except or finally clause gets the work's exception as __context__ from Python.
        # Begin and completion hooks are called inline rather than through fire(): this is the
        # hot path.
        run = scope[RUN]
        parent_id = scope[TASK_ID]
        hooks = self._hooks
        task_id = next(run.task_ids)
        token = self._frames.set([run, task_id, key, 0, None])  # new_scope(), written out
        clock = _clock()
        started = clock + run.epoch
        call = CallInfo(self, run, key, task_id, parent_id, args, kwargs) if self._tracked else None
        attempts = 0
        result: Any = None
        error: BaseException | None = None
        try:
            if hooks.task_begin:
                # A read-only view: the dict is the one the function receives. Most calls have
                # no keyword arguments, and one shared view of nothing serves them all.
                event = _new(
                    TaskBeginEvent,
                    (
                        run.run_id,
                        task_id,
                        parent_id,
                        key,
                        self.name,
                        started,
                        args,
                        MappingProxyType(kwargs) if kwargs else _NO_KWARGS,
                        run.context,
                    ),
                )
                for hook in hooks.task_begin:
                    outcome = hook(event)
                    if outcome is not None and inspect.isawaitable(outcome):
                        await outcome
            if call is None:
                attempts = 1
                if self._timeout is None:
                    result = await self._start(*args, **kwargs)
                else:
                    result = await self._timed(self._timeout, False, args, kwargs)
            elif hooks.intercept_call:
                result = await hooks.intercept_call(call, self._proceed(call, args, kwargs))
            else:
                result = await self._attempts(call, args, kwargs)
            return result
        except BaseException as exc:
            error = exc
            if hooks.task_error:
                failed = _new(
                    TaskErrorEvent,
                    (
                        run.run_id,
                        task_id,
                        key,
                        self.name,
                        exc,
                        call.attempts if call else attempts,
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
                            parent_id,
                            key,
                            self.name,
                            started,
                            ended + run.epoch,
                            (ended - clock) * 1000.0,
                            result if error is None else None,
                            error,
                            call.attempts if call else attempts,
                            call is not None and call.replayed,
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

    def _proceed(
        self, call: CallInfo[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Awaitable[Any]]:
        """What call interceptors proceed to: the attempts, or the one attempt there can be."""
        if self._policy is not None or self._hooks.intercept_attempt:
            return functools.partial(self._attempts, call, args, kwargs)

        # No retry and nothing around each attempt: no loop to go through.
        def attempt() -> Awaitable[Any]:
            call.attempts = 1
            return self._timed(self._timeout, False, args, kwargs)

        return attempt

    async def _attempts(
        self, call: CallInfo[Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        policy: RetryPolicy = self._policy  # type: ignore[assignment]
        timeout = self._timeout
        deadline = None
        if policy is not None and policy.deadline is not None:
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
            try:
                if call is None:
                    return await self._timed(limit, by_deadline, args, kwargs)  # type: ignore[no-any-return]
                call.attempts = attempt
                if attempt > 1:
                    restart(self._frames.get())  # the scope _observed set for this call
                if self._hooks.intercept_attempt:
                    return await self._hooks.intercept_attempt(  # type: ignore[no-any-return]
                        call, functools.partial(self._timed, limit, by_deadline, args, kwargs)
                    )
                return await self._timed(limit, by_deadline, args, kwargs)  # type: ignore[no-any-return]
            except Exception as exc:
                if policy is None:
                    raise
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
                if call is not None and self._hooks.task_retry:
                    run = call.run
                    # Not kept in a local, which would hold exc in a cycle through its traceback.
                    await fire(
                        self._hooks.task_retry,
                        TaskRetryEvent(
                            run.run_id,
                            call.task_id,
                            call.call_key,
                            self.name,
                            attempt,
                            exc,
                            wait,
                            run.context,
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

    def _timed(
        self, limit: float | None, by_deadline: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """One attempt, within ``limit`` seconds if one is set.

        The one place where the function is called (the direct path of ``__call__`` aside): on
        the event loop for an async function, through the executor for a sync one.
        """
        if limit is None:
            return self._start(*args, **kwargs)
        return limited(self._start(*args, **kwargs), limit, self.name, by_deadline)

    async def _submit(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await self._executor.run(self._fn, args, kwargs)  # type: ignore[union-attr]
        except UnnamedError as exc:
            # The executor knows the function, not the action: its message gets the name here.
            raise exc.named(self.name) from exc.__cause__
        if inspect.isawaitable(result):
            # A sync function may return an awaitable (made by a factory, say): await it.
            result = await result
        return result


class _Keyed(Generic[P, R]):
    """An action whose next call takes an explicit key part: what ``Action.keyed`` returns."""

    __slots__ = ("_action", "_part")

    def __init__(self, action: Action[P, R], part: str) -> None:
        self._action = action
        self._part = part

    def __repr__(self) -> str:
        return f"<{self._action.name!r} keyed {self._part!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[object, None, R]:
        return self._action._keyed_call(self._part, args, kwargs)


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
        scope = self._frames.get(None)
        if scope is None:
            raise outside_run(f"action {self.name!r}")
        if self._direct:
            return self._fn(*full, **kwargs)  # type: ignore[no-any-return]
        if self._observing:
            made = scope[MADE] = scope[MADE] + 1
            key = f"{scope[KEY]}.{made}" if scope[KEY] else str(made)
            return self._observed(scope, key, full, kwargs)
        return self._unobserved(full, kwargs)

    def _keyed_call(
        self, part: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[object, None, R]:
        return Action._keyed_call(self, part, (self.__self__, *args), kwargs)

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
