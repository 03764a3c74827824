"""Orchestrator: hooks, state defaults, and the action()/parallel()/map()/run() entry points."""

from __future__ import annotations

import asyncio
import copy
import inspect
import os
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    NoReturn,
    ParamSpec,
    Protocol,
    Self,
    SupportsIndex,
    TypeVar,
    cast,
    overload,
)

from . import _checks
from ._action import Action, is_async
from ._errors import JournalError, OutsideRunError
from ._events import (
    ProcessBeginEvent,
    ProcessCompletionEvent,
    ProcessErrorEvent,
    TaskBeginEvent,
    TaskCompletionEvent,
    TaskErrorEvent,
    TaskRetryEvent,
)
from ._hooks import Hooks
from ._interceptors import Interceptor
from ._parallel import Parallel, check_options, gather, member_scopes, require_run
from ._remote import remote_place
from ._retry import RetryPolicy
from ._run import RUN, Run, Scope, execute
from ._state import State, assign, check_key, new_context
from ._threads import DEFAULT_MAX_THREADS
from .executors import Executor, ThreadExecutor, as_executor

if TYPE_CHECKING:
    from ._journal import Journal

C = TypeVar("C")
E = TypeVar("E")
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

Hook = Callable[[E], object]
"""A hook: a sync or async callable taking one event. What it returns is ignored."""


class ActionDecorator(Protocol):
    """What ``Orchestrator.action(name=..., ...)`` returns: apply it to a function."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Action[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Action[P, R]: ...


class Orchestrator(Generic[C]):
    """Coordinates the actions, hooks and shared context of runs.

    ``Orchestrator()`` gives each run a fresh :class:`State`. ``Orchestrator(ProcessContext)``
    takes a class or zero-argument factory and gives each run a fresh instance of it instead;
    type checkers then see ``Orchestrator[ProcessContext]``.

    Args:
        context: The class or factory of each run's context; None for :class:`State`.
        executor: Where the functions of sync actions run: an
            :class:`~orchestrator.executors.Executor` or a ``concurrent.futures.Executor``.
            None means worker threads of this orchestrator's own
            (:class:`~orchestrator.executors.ThreadExecutor`).
        max_threads: How many sync actions of this orchestrator run at once in those worker
            threads; further calls wait for a thread. None means 100, sized for blocking I/O
            such as HTTP requests. Threads of abandoned calls (timed out or cancelled while
            running) stop counting, but all threads together never number more than twice
            ``max_threads``. Not together with ``executor``.
        journal: Where runs are recorded, so that a failed or interrupted run can be resumed
            under its ``run_id``: a path (an SQLite file, made if missing) or a journal such
            as :class:`~orchestrator.SQLiteJournal`. None records nothing.

    Raises:
        TypeError: ``context`` is not callable, or cannot be called without arguments;
            ``executor`` is not an executor; ``max_threads`` is not an int.
        ValueError: ``max_threads`` is below 1, or given together with ``executor``.
        JournalError: ``journal`` names a file that cannot be a journal (see
            :class:`~orchestrator.SQLiteJournal`).

    """

    @overload
    def __init__(
        self: Orchestrator[State],
        context: None = None,
        *,
        executor: object = None,
        max_threads: int | None = None,
        journal: str | os.PathLike[str] | Journal | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        context: Callable[[], C],
        *,
        executor: object = None,
        max_threads: int | None = None,
        journal: str | os.PathLike[str] | Journal | None = None,
    ) -> None: ...
    def __init__(
        self,
        context: Callable[[], Any] | None = None,
        *,
        executor: object = None,
        max_threads: int | None = None,
        journal: str | os.PathLike[str] | Journal | None = None,
    ) -> None:
        if context is None:
            context = State
        else:
            _checks.callable_("context", context)
            _require_zero_arguments(context)
        if executor is None:
            self._executor: Executor = ThreadExecutor(
                DEFAULT_MAX_THREADS if max_threads is None else max_threads
            )
        elif max_threads is not None:
            raise ValueError(
                f"max_threads={max_threads!r} sizes the orchestrator's own worker threads, and "
                f"executor={executor!r} replaces them; pass one of the two"
            )
        else:
            self._executor = as_executor("executor", executor)
        self._factory: Callable[[], Any] = context
        self._defaults: dict[str, Any] = {}
        self._hooks = Hooks()
        # Each action decides its call path when it is made; they are told when hooks or
        # interceptors change, so that no call re-decides it.
        self._actions: weakref.WeakSet[Action[Any, Any]] = weakref.WeakSet()
        # One variable per orchestrator, so that runs of different orchestrators nest freely.
        self._frames: ContextVar[Scope] = ContextVar(f"orchestrator-{id(self):x}")
        self.journal: Journal | None = None
        """The journal that records this orchestrator's runs, or None."""
        if journal is not None:
            # Imported here: a program that records nothing never loads the journal.
            from ._durable import JournalInterceptor
            from ._journal import as_journal

            self.journal = as_journal(journal)
            self._hooks.set_journal(JournalInterceptor(self.journal))

    def __repr__(self) -> str:
        return f"<Orchestrator context={getattr(self._factory, '__name__', self._factory)!s}>"

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        # Pickled, an orchestrator would arrive with no run in progress and its hooks cut off
        # from the events of the process that runs the run.
        raise TypeError(
            "an Orchestrator cannot be pickled or copied: its hooks and each run's context live "
            "in the process running the run; send other processes plain values (read with "
            "get_state() in that process) or actions, which pickle by reference"
        )

    # Hooks -------------------------------------------------------------------------------

    def on_process_begin(self, hook: Hook[ProcessBeginEvent[C]]) -> Self:
        """Call ``hook`` when a run starts, before its body. Returns the orchestrator.

        If the hook raises, the body is not called and the run fails with that exception.
        """
        self._add("process_begin", hook)
        return self

    def on_process_error(self, hook: Hook[ProcessErrorEvent[C]]) -> Self:
        """Call ``hook`` when a run fails, just before process completion."""
        self._add("process_error", hook)
        return self

    def on_process_completion(self, hook: Hook[ProcessCompletionEvent[C]]) -> Self:
        """Call ``hook`` last in every run, whether it succeeded, failed or was cancelled."""
        self._add("process_completion", hook)
        return self

    def on_task_begin(self, hook: Hook[TaskBeginEvent[C]]) -> Self:
        """Call ``hook`` when an action call starts, before its first attempt.

        If the hook raises, no attempt is made and the call fails with that exception.
        """
        self._add("task_begin", hook)
        return self

    def on_task_retry(self, hook: Hook[TaskRetryEvent[C]]) -> Self:
        """Call ``hook`` when an attempt failed and a retry is scheduled, before the wait."""
        self._add("task_retry", hook)
        return self

    def on_task_error(self, hook: Hook[TaskErrorEvent[C]]) -> Self:
        """Call ``hook`` when an action call fails, just before task completion."""
        self._add("task_error", hook)
        return self

    def on_task_completion(self, hook: Hook[TaskCompletionEvent[C]]) -> Self:
        """Call ``hook`` once at the end of every action call that began, however it ended."""
        self._add("task_completion", hook)
        return self

    def add_interceptor(self, interceptor: Interceptor) -> Self:
        """Wrap every later run, action call and attempt in ``interceptor``; returns self.

        Interceptors nest in registration order: the first registered is the outermost.

        Raises:
            TypeError: ``interceptor`` is not an instance of an ``Interceptor`` subclass.

        """
        self._hooks.add_interceptor(interceptor)
        self._rechoose()
        return self

    def remove_hook(self, hook: Hook[Any]) -> Self:
        """Take ``hook`` off every lifecycle point it was registered on; returns self.

        A call or run in progress does not call it for the events it has yet to fire, so a
        hook that saw a begin may miss the matching completion.

        Raises:
            ValueError: ``hook`` is not registered on this orchestrator.

        """
        if not self._hooks.remove(hook):
            raise ValueError(f"the hook {hook!r} is not registered on this orchestrator")
        self._rechoose()
        return self

    def remove_interceptor(self, interceptor: Interceptor) -> Self:
        """Stop wrapping later runs, calls and attempts in ``interceptor``; returns self.

        A run or call already wrapped stays wrapped until it ends; attempts that start after
        this are not.

        Raises:
            ValueError: ``interceptor`` is not registered on this orchestrator.

        """
        if not self._hooks.remove_interceptor(interceptor):
            raise ValueError(
                f"the interceptor {interceptor!r} is not registered on this orchestrator"
            )
        self._rechoose()
        return self

    def _add(self, point: str, hook: object) -> None:
        self._hooks.add(point, hook)
        self._rechoose()

    def _rechoose(self) -> None:
        for action in list(self._actions):
            action._choose()

    # State -------------------------------------------------------------------------------

    def set_state(self, key: str, value: Any) -> Self:
        """Set ``key`` to ``value`` in the context. Returns the orchestrator.

        Inside a run, it sets the key on that run's context. Outside, it sets a default that
        each later run's context receives as a deep copy of ``value``, so that a mutable value
        such as ``[]`` is never shared between runs.

        Raises:
            TypeError: ``key`` is not a str, or (outside a run) ``value`` cannot be deep-copied.
            ValueError: (outside a run) The context is of a class with ``__slots__`` that has
                no attribute ``key``, so that every run would fail to set it.

        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {key!r}")
        frame = self._frames.get(None)
        if frame is not None:
            assign(frame[RUN].context, key, value)
            return self
        check_key(self._factory, key)
        try:
            copy.deepcopy(value)
        except Exception as exc:
            raise TypeError(
                f"the default for {key!r}, {value!r}, cannot be deep-copied ({exc}); each run "
                "needs its own copy, so create such a value in an on_process_begin hook instead"
            ) from exc
        self._defaults[key] = value
        return self

    def get_state(self) -> C:
        """The context of the current run, from its body, its actions or its hooks.

        Raises:
            OutsideRunError: No run of this orchestrator is in progress here.

        """
        frame = self._frames.get(None)
        if frame is None:
            where = remote_place()
            if where is not None:
                raise OutsideRunError(
                    f"get_state() was called in a function running in {where}, and the context "
                    "lives in the process running the run; pass the function what it needs "
                    "from the context as arguments"
                )
            raise OutsideRunError(
                "get_state() was called outside a run of this orchestrator; call it from the "
                "run body, an action or a hook"
            )
        return cast(C, frame[RUN].context)

    # Actions -----------------------------------------------------------------------------

    @overload
    def action(
        self,
        fn: Callable[P, Awaitable[R]],
        /,
        *,
        name: str | None = None,
        retry: int | RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        executor: object = None,
        journal: bool = True,
    ) -> Action[P, R]: ...
    @overload
    def action(
        self,
        fn: Callable[P, R],
        /,
        *,
        name: str | None = None,
        retry: int | RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        executor: object = None,
        journal: bool = True,
    ) -> Action[P, R]: ...
    @overload
    def action(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: int | RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        executor: object = None,
        journal: bool = True,
    ) -> ActionDecorator: ...
    def action(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retry: int | RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        executor: object = None,
        journal: bool = True,
    ) -> Action[Any, Any] | ActionDecorator:
        """Make ``fn`` an action of this orchestrator; also a decorator, with or without options.

        Args:
            fn: A sync or async function (or any callable).
            name: The name events carry; by default the function's ``__name__``.
            retry: A number of retries after the first attempt, a :class:`RetryPolicy`, or None.
            timeout: The time limit of each attempt in seconds, or None for none.
            inline: Run a sync function on the event loop's thread instead of a worker thread.
            executor: Where a sync function runs, instead of the orchestrator's executor: an
                ``Executor`` or a ``concurrent.futures.Executor``. An async function runs on
                the event loop, unless this is an executor that runs coroutines
                (``runs_coroutines``, such as :class:`~orchestrator.dask.DaskExecutor`).
            journal: False to keep the action's calls out of the orchestrator's journal: they
                are never recorded, and run again on every resume (a token fetched, a cheap
                read).

        Raises:
            TypeError: ``fn`` is not callable, or an option has the wrong type.
            ValueError: An option is out of range, ``inline`` is combined with a timeout, an
                executor or an async function, or ``executor`` is given for an async function
                and does not run coroutines.

        """
        options: dict[str, Any] = {
            "name": name,
            "retry": retry,
            "timeout": timeout,
            "inline": inline,
            "executor": executor,
            "journal": journal,
        }
        if fn is None:
            # Validate the options now, where the decorator is written, not when it is applied.
            self._make(_placeholder, options)
            return cast(ActionDecorator, lambda f: self.action(f, **options))
        return self._make(fn, options)

    def _make(self, fn: Callable[..., Any], options: dict[str, Any]) -> Action[Any, Any]:
        executor = options["executor"]
        if executor is not None:
            if options["inline"]:
                raise ValueError(
                    f"inline=True and executor={executor!r} both say where the function runs; "
                    "pass one of them"
                )
            executor = as_executor("executor", executor)
            if is_async(fn) and not getattr(executor, "runs_coroutines", False):
                raise ValueError(
                    f"executor={executor!r} cannot run {fn!r}, which is async: async actions "
                    "run on the event loop, or on an executor that runs coroutines (such as "
                    "orchestrator.dask.DaskExecutor); drop executor="
                )
        action = Action(
            fn,
            frames=self._frames,
            hooks=self._hooks,
            name=options["name"],
            retry=options["retry"],
            timeout=options["timeout"],
            inline=options["inline"],
            executor=self._executor if executor is None else executor,
            journal=options["journal"],
            # Only an action's own executor= takes an async function off the event loop.
            async_on_executor=executor is not None,
        )
        self._actions.add(action)
        return action

    # Running -----------------------------------------------------------------------------

    @overload
    def run(
        self,
        body: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> Coroutine[object, None, R]: ...
    @overload
    def run(
        self, body: Callable[..., R], /, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Coroutine[object, None, R]: ...
    def run(
        self, body: Callable[..., Any], /, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Return a coroutine that runs ``body(*args, **kwargs)`` as one run.

        The run gets a fresh context and fires the process hooks around the body. ``body`` may
        be an async function, an action, or a sync function (called inline); if calling it
        returns an awaitable, that is awaited. The coroutine returns what it returns and raises
        what it raises, after the completion hooks ran. The arguments are checked and the
        context is made here, at the call.

        With a journal, the run is recorded under ``run_id`` (a random id if None). Run again
        under a recorded id, a run that succeeded returns its recorded result without calling
        ``body``, and any other resumes: recorded successful calls return their results
        without running, the rest run live.

        Raises:
            TypeError: ``body`` is not callable or ``run_id`` not a str.
            ValueError: ``run_id`` is empty.
            JournalError: (when awaited, before the body) The run is in progress elsewhere, or
                its arguments cannot be recorded; ``JournalMismatchError`` if ``run_id`` is
                recorded for another body or other arguments.

        """
        _checks.callable_("body", body)
        if run_id is None:
            run_id = os.urandom(16).hex()
        elif not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str or None, got {run_id!r}")
        elif not run_id:
            raise ValueError("run_id must be a non-empty str or None, got ''")
        run = Run(run_id, new_context(self._factory, self._defaults), body, args, kwargs)
        return execute(self._frames, self._hooks, run)

    @overload
    def run_sync(
        self,
        body: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> R: ...
    @overload
    def run_sync(
        self, body: Callable[..., R], /, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> R: ...
    def run_sync(
        self, body: Callable[..., Any], /, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Any:
        """Like :meth:`run`, from synchronous code: start an event loop, run, and close it.

        As the loop closes, the worker threads left idle by the run's sync actions exit.

        Raises:
            RuntimeError: Called where an event loop is already running; use
                ``await orchestrator.run(...)`` there.

        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "run_sync() was called inside a running event loop; "
                "use `await orchestrator.run(...)` there instead"
            )
        try:
            return asyncio.run(self.run(body, *args, run_id=run_id, **kwargs))
        finally:
            # As asyncio.run shuts its own executor down: no thread lingers idle after the run.
            if isinstance(self._executor, ThreadExecutor):
                self._executor.retire_idle()

    async def recover(self) -> list[str]:
        """Resume every unfinished run of the journal, one after the other.

        A run that failed, was cancelled, or whose process died is run again under its run id,
        with its recorded body and arguments: its recorded successful calls are replayed and
        the rest run live. Runs held by a live process, and runs whose body cannot be imported
        from its recorded ``module:qualname``, are skipped. Call it on the orchestrator whose
        actions the bodies call.

        Returns:
            One line per unfinished run, saying what became of it: ``"<run id>: resumed and
            finished"``, ``"<run id>: failed again, <error>"`` or ``"<run id>: skipped,
            <reason>"``.

        Raises:
            RuntimeError: The orchestrator has no journal.

        """
        journal = self.journal
        if journal is None:
            raise RuntimeError(
                "recover() resumes the runs of a journal, and this orchestrator has none; "
                "make it with Orchestrator(journal=...)"
            )
        from ._durable import refusals  # the journal is loaded once an orchestrator has one

        outcomes = []
        for run_id, reference in journal.unfinished():
            try:
                body = _import(reference)
            except Exception as exc:
                outcomes.append(f"{run_id}: skipped, body {reference} cannot be imported ({exc})")
                continue
            try:
                args, kwargs = journal.arguments(run_id)
            except JournalError as exc:
                outcomes.append(f"{run_id}: skipped, {exc}")
                continue
            with refusals() as refused:
                try:
                    await self.run(body, *args, run_id=run_id, **kwargs)
                except Exception as exc:
                    if run_id in refused:
                        outcomes.append(f"{run_id}: skipped, {exc}")
                    else:
                        outcomes.append(f"{run_id}: failed again, {type(exc).__name__}: {exc}")
                else:
                    outcomes.append(f"{run_id}: resumed and finished")
        return outcomes

    # Many at once ------------------------------------------------------------------------

    def parallel(
        self,
        actions: Iterable[Callable[..., Any]],
        /,
        *,
        fail_fast: bool = False,
        concurrency: int | None = None,
    ) -> Parallel:
        """Group ``actions`` to run at the same time; await the returned group to run them.

        Members are actions or other callables (called, and awaited if they return an
        awaitable). See :class:`Parallel` for how arguments are handed out.

        Raises:
            TypeError: ``actions`` is not iterable, a member is not callable, or an option has
                the wrong type.
            ValueError: ``concurrency`` is below 1.

        """
        if isinstance(actions, str | bytes) or not isinstance(actions, Iterable):
            raise TypeError(f"actions must be an iterable of actions, got {actions!r}")
        members = list(actions)
        for index, member in enumerate(members):
            _checks.callable_(f"actions[{index}]", member)
        limit = check_options(fail_fast, concurrency)
        return Parallel(self._frames, self._hooks, members, fail_fast=fail_fast, concurrency=limit)

    def map(
        self,
        action: Callable[[T], Awaitable[R]],
        items: Iterable[T],
        /,
        *,
        concurrency: int | None = None,
        fail_fast: bool = False,
    ) -> Coroutine[object, None, list[R]]:
        """Return a coroutine that calls ``action(item)`` for every item, at the same time.

        Results come in the items' order. Failures follow the rules of :meth:`parallel`. With
        ``concurrency``, items start in order as earlier ones finish; with ``fail_fast``, items
        not yet started never start. The arguments and the run are checked, and ``items`` is
        read into a list, here at the call.

        Raises:
            TypeError: ``action`` is not callable, ``items`` not iterable, or an option has the
                wrong type.
            ValueError: ``concurrency`` is below 1.
            OutsideRunError: No run of this orchestrator is in progress here.

        """
        _checks.callable_("action", action)
        if not isinstance(items, Iterable):
            raise TypeError(f"items must be iterable, got {items!r}")
        limit = check_options(fail_fast, concurrency)
        require_run(self._frames, "map()")
        values = list(items)
        scopes = member_scopes(self._frames, self._hooks)
        return gather(action, values, fail_fast, limit, "map items", scopes)


def _placeholder() -> None:
    """Stands in for the function when ``action()`` options are checked before decoration."""


def _require_zero_arguments(factory: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # Some builtins have no signature to check; calling them will tell.
    try:
        signature.bind()
    except TypeError:
        raise TypeError(
            f"context must be a class or factory callable without arguments, got {factory!r} "
            f"with signature {signature}"
        ) from None


def _import(reference: str) -> Callable[..., Any]:
    """The object that ``body_reference()`` named ``"module:qualname"``."""
    import importlib

    from ._durable import body_reference

    module_name, _, qualname = reference.partition(":")
    if "<" in qualname:
        raise ValueError("it is local to a function or a lambda")
    found: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        found = getattr(found, part)
    if body_reference(found) != reference:
        raise ValueError(f"{module_name}.{qualname} is now {found!r}")
    return cast(Callable[..., Any], found)
