"""Coordinate multi-step async work: actions with hooks, retries, timeouts and a shared context."""

from ._action import Action
from ._errors import (
    ActionTimeout,
    JournalError,
    JournalMismatchError,
    OutsideRunError,
    ParallelError,
)
from ._events import (
    ProcessBeginEvent,
    ProcessCompletionEvent,
    ProcessErrorEvent,
    TaskBeginEvent,
    TaskCompletionEvent,
    TaskErrorEvent,
    TaskRetryEvent,
)
from ._interceptors import CallInfo, Interceptor, Proceed
from ._journal import PickleSerializer, SQLiteJournal
from ._orchestrator import ActionDecorator, Hook, Orchestrator
from ._parallel import Parallel
from ._retry import RetryOn, RetryPolicy, set_testing
from ._run import Run
from ._state import State

__all__ = [
    "Action",
    "ActionDecorator",
    "ActionTimeout",
    "CallInfo",
    "Hook",
    "Interceptor",
    "JournalError",
    "JournalMismatchError",
    "Orchestrator",
    "OutsideRunError",
    "Parallel",
    "ParallelError",
    "PickleSerializer",
    "Proceed",
    "ProcessBeginEvent",
    "ProcessCompletionEvent",
    "ProcessErrorEvent",
    "RetryOn",
    "RetryPolicy",
    "Run",
    "SQLiteJournal",
    "State",
    "TaskBeginEvent",
    "TaskCompletionEvent",
    "TaskErrorEvent",
    "TaskRetryEvent",
    "set_testing",
]
