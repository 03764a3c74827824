"""Coordinate multi-step async work: actions with hooks, retries, timeouts and a shared context."""

from ._action import Action
from ._errors import ActionTimeout, OutsideRunError, ParallelError
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
    "Orchestrator",
    "OutsideRunError",
    "Parallel",
    "ParallelError",
    "Proceed",
    "ProcessBeginEvent",
    "ProcessCompletionEvent",
    "ProcessErrorEvent",
    "RetryOn",
    "RetryPolicy",
    "Run",
    "State",
    "TaskBeginEvent",
    "TaskCompletionEvent",
    "TaskErrorEvent",
    "TaskRetryEvent",
    "set_testing",
]
