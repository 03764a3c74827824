"""Every exception the library raises of its own, each subclassing the closest builtin.

Misuse is reported with the builtin that fits (``TypeError`` for a wrong type, ``ValueError``
for a wrong value); the classes below exist where a caller needs to catch one situation apart.
"""

from __future__ import annotations

from collections.abc import Sequence


class ActionTimeout(TimeoutError):
    """An attempt of an action ran past its time limit and was cancelled.

    Raised by an action call when an attempt exceeds the action's ``timeout`` or what is left
    of its retry policy's ``deadline``. It counts as a failed attempt, so the retry policy may
    retry it; after the last attempt it reaches the caller. It subclasses the builtin
    ``TimeoutError``, so ``except TimeoutError`` catches it.
    """

    def __init__(self, action: str, seconds: float, *, deadline: bool = False) -> None:
        self.action = action
        """The name of the action that timed out."""
        self.seconds = seconds
        """The limit that was exceeded, in seconds."""
        self.deadline = deadline
        """True when the retry deadline's remaining budget, not ``timeout``, set the limit."""
        what = "the remaining retry deadline" if deadline else "its timeout"
        super().__init__(f"action {action!r} did not finish within {what} of {seconds:g} s")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_timeout, (self.action, self.seconds, self.deadline))


def _rebuild_timeout(action: str, seconds: float, deadline: bool) -> ActionTimeout:
    return ActionTimeout(action, seconds, deadline=deadline)


class OutsideRunError(RuntimeError):
    """Something that needs a run of its orchestrator was used outside one.

    Raised by an action call, ``parallel()`` and ``map()`` calls, and ``get_state()`` when the
    current task is not inside ``run()`` of the orchestrator they belong to.
    """


class ParallelError(ExceptionGroup[Exception]):
    """One or more members of a ``parallel()`` group or a ``map()`` failed.

    Raised by ``parallel()`` and ``map()`` when ``fail_fast`` is false and at least one member
    failed: it holds every failure, in the order of the members (or items), and is a group
    whatever their number, so ``except*`` works. ``indices`` gives the position of each.
    """

    indices: tuple[int, ...]
    """The position of each failed member, matching ``exceptions`` one to one."""

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], indices: Sequence[int] = ()
    ) -> ParallelError:
        # Without indices (a group built by hand), each exception's position is its index.
        self = super().__new__(cls, message, exceptions)
        self.indices = tuple(indices) if indices else tuple(range(len(exceptions)))
        return self

    def __init__(
        self, message: str, exceptions: Sequence[Exception], indices: Sequence[int] = ()
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> ParallelError:  # type: ignore[override]
        """Build the group that ``split()`` and ``subgroup()`` return, keeping the type."""
        position = {
            id(exc): index for exc, index in zip(self.exceptions, self.indices, strict=True)
        }
        return ParallelError(self.message, excs, [position.get(id(e), -1) for e in excs])


class JournalError(Exception):
    """A journal cannot be used, or cannot record what it was given.

    Raised by ``SQLiteJournal`` when it is made, if its file cannot be a journal: a path in a
    missing directory, a directory, a read-only file, a file that is not a journal (another
    format, another application's SQLite database, a corrupted journal) or one written by a
    newer version. Raised later when a run is held by another live process, when a result or
    an argument cannot be serialized (nothing is recorded for it), or when a record cannot be
    committed. The message names the file or the run, and says what to do.
    """


class JournalMismatchError(JournalError):
    """A run was started again under a run id the journal knows for other work.

    Raised by ``SQLiteJournal.open_run`` when the run id is recorded with another body or
    other arguments, and by an action call of a resumed run when its call key is recorded for
    another action or other arguments. The message names both; nothing in the journal is
    changed.
    """
