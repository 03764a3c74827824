"""The journal store: an SQLite file recording every run and every action call's outcome.

A run is claimed by one live process at a time (``open_run``); each call's outcome is then
recorded (``record``), and the run ended (``end_run``). Reopened under the same run id, a run
gives back its recorded successful calls, loaded once, so that they can be replayed.

Where commits run, measured on a 2-core Linux machine (``benchmarks/journal.py``): handing each
commit to a thread and back made a sequential call 1.7 to 2 times as slow, so with
``durability="normal"`` a batch is committed on the event loop's thread, on a connection that
never waits for a lock. When another process holds the file's write lock, the batch goes to the
journal's writer thread, whose connection waits, and the loop runs on. The loop's connection
leaves WAL checkpoints, which sync the files, to the writer thread too. With
``durability="fsync"`` every commit syncs the disk and runs in the writer thread.

Records made in the same event-loop iteration share one transaction, and the writer commits
everything queued meanwhile together: calls that finish together share one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol, TypeVar

from . import _checks
from ._errors import JournalError, JournalMismatchError
from ._lazy import lazy_module
from ._threads import set_exception, set_result

if TYPE_CHECKING:
    import hashlib
    import json
    import pickle
    import sqlite3

    from . import _journal_file, _records
    from ._records import AttemptRecord, CallRecord, RunRecord
else:
    hashlib = lazy_module("hashlib")
    json = lazy_module("json")
    pickle = lazy_module("pickle")
    sqlite3 = lazy_module("sqlite3")
    _journal_file = lazy_module("orchestrator._journal_file")
    _records = lazy_module("orchestrator._records")

T = TypeVar("T")

_BUSY_SECONDS = 30.0  # how long the writer waits for another process's write lock
_CHECKPOINT_EVERY = 256  # commits on the loop's connection between two WAL checkpoints
_SHOWN = 60  # characters of each argument list in a mismatch message
_RECORD_CALL = "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_END_RUN = (
    "UPDATE runs SET status = ?, ended = ?, result = ?, error = ?, owner = NULL WHERE run_id = ?"
)

_HELD: set[tuple[tuple[int, int], str]] = set()
"""(journal file, run id) of every run claimed in this process and not yet ended."""
_HELD_LOCK = threading.Lock()


class Serializer(Protocol):
    """What ``SQLiteJournal(serializer=...)`` accepts: turns values into data and back."""

    def dumps(self, value: Any) -> str | bytes:
        """Return ``value`` as data, or raise if it cannot be."""
        ...

    def loads(self, data: str | bytes) -> Any:
        """Return the value ``data`` was made from."""
        ...


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def _check_json(value: Any) -> None:
    # The json module writes a tuple as a list and an int dict key as a str: what came back
    # would be something else, so only the types that come back as they were are accepted.
    kind = type(value)
    if kind in _JSON_SCALARS:
        return
    if kind is list:
        items = value
    elif kind is dict:
        for key in value:
            if type(key) is not str:
                raise TypeError(f"the dict key {key!r} is not a str")
        items = value.values()
    else:
        raise TypeError(f"{kind.__qualname__} is not a JSON type")
    for item in items:
        if type(item) not in _JSON_SCALARS:  # a call less per scalar: this is the hot path
            _check_json(item)


class JsonSerializer:
    """The default serializer: JSON, for str, int, float, bool, None, lists and str-keyed dicts.

    Any other type, a subclass included, is refused rather than stored as something else (a
    tuple would come back as a list), and so are NaN and the infinities.
    """

    def dumps(self, value: Any) -> str:
        """Return ``value`` as JSON text.

        Raises:
            TypeError: ``value`` holds something other than the JSON types above.
            ValueError: ``value`` holds NaN or an infinity.

        """
        _check_json(value)
        return _json_codec()[0](value)

    def loads(self, data: str | bytes) -> Any:
        """Return the value of JSON text."""
        if type(data) is str:
            try:
                value, end = _json_codec()[1](data)
            except ValueError:
                pass
            else:
                if end == len(data):
                    return value
        # Whitespace around the value, bytes, or not JSON: the json module's own way and errors.
        return json.loads(data)


@functools.cache
def _json_codec() -> tuple[Callable[[Any], str], Callable[[str], tuple[Any, int]]]:
    """The JSON encoder and decoder of the journal, made at the first use of a journal."""
    # ASCII escapes keep a lone surrogate, which no UTF-8 text column can hold, a valid value.
    encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
    decode = json.JSONDecoder().raw_decode
    # JSONEncoder.encode() builds a new C encoder on every call, which costs more than the
    # encoding of a small value: build it once. No check for cycles, as _check_json() has
    # been through the value first; json's Python encoder where the C one is missing.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode, decode
    try:
        encode = make(
            None,
            encoder.default,
            json.encoder.encode_basestring_ascii,
            None,
            ":",
            ",",
            False,
            False,
            False,
        )
    except TypeError:  # another signature than CPython's of 3.11 to 3.13
        return encoder.encode, decode
    return (lambda value: "".join(encode(value, 0))), decode


class PickleSerializer:
    """Pickle, for values JSON cannot hold; never used unless passed explicitly.

    Loading a pickle can run any code, so a journal written with it must be trusted as much as
    the program itself: use it only for a file that no one else can write.
    """

    def dumps(self, value: Any) -> bytes:
        """Return ``value`` pickled."""
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def loads(self, data: str | bytes) -> Any:
        """Return the value ``data`` was pickled from."""
        if isinstance(data, str):
            raise TypeError("pickled data is bytes, and this was written as text")
        return pickle.loads(data)


class OpenedRun(NamedTuple):
    """What ``open_run`` found: how the run stood, and what a resumed run replays."""

    previous: str | None
    """The status recorded before: None for a new run, ``"running"`` if its process died,
    ``"failed"``, ``"cancelled"``, or ``"succeeded"`` (then the run is not claimed)."""
    result: Any
    """The recorded result of a run that succeeded; None otherwise."""
    calls: dict[str, tuple[str, str, str | bytes]]
    """Each recorded successful call: ``call_key -> (action name, args hash, result data)``;
    ``load()`` gives the result."""
    results: dict[str, Any] | None = None
    """The results of ``calls``, loaded once as the run was opened: ``call_key -> value``.
    Each serves one replay, taken out as it is used; a result missing here (never loaded, or
    already used) is loaded from ``calls``."""


class Journal(Protocol):
    """What runs need of a journal: claim a run, record its calls, end it; and inspect runs."""

    async def open_run(
        self,
        run_id: str,
        body: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        started: float | None = None,
    ) -> OpenedRun:
        """Claim the run ``run_id`` for this process, creating it if new."""
        ...

    def call_args(
        self, action: str, call_key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str | bytes, str]:
        """Return a call's arguments serialized, and their hash."""
        ...

    def record(
        self,
        run_id: str,
        call_key: str,
        name: str,
        *,
        parent_key: str | None,
        args: str | bytes,
        args_hash: str,
        started: float,
        ended: float,
        result: Any = None,
        error: BaseException | None = None,
        attempts: Sequence[AttemptRecord] = (),
        replayed: bool = False,
    ) -> Awaitable[None]:
        """Record a call's outcome; the awaitable completes once it is committed."""
        ...

    def mark_replayed(self, run_id: str, call_keys: Sequence[str]) -> Awaitable[None]:
        """Mark the records of ``call_keys`` as replayed by the latest resume of the run."""
        ...

    def load(self, data: str | bytes, action: str, call_key: str) -> Any:
        """Return a recorded result."""
        ...

    async def end_run(
        self,
        run_id: str,
        *,
        result: Any = None,
        error: BaseException | None = None,
        ended: float | None = None,
    ) -> None:
        """Record a run's outcome and release it."""
        ...

    def list_runs(self) -> list[RunRecord]:
        """Return every run."""
        ...

    def calls(self, run_id: str) -> list[CallRecord]:
        """Return the recorded calls of a run."""
        ...

    def arguments(self, run_id: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Return the arguments a run's body was recorded with."""
        ...

    def unfinished(self) -> list[tuple[str, str]]:
        """Return ``(run id, body)`` of every run that has not succeeded, oldest first."""
        ...

    def prune(self, older_than_seconds: float) -> int:
        """Delete finished runs that ended long enough ago."""
        ...

    def close(self) -> None:
        """Close the journal."""
        ...


_QUEUED, _HANDED, _DONE = 0, 1, 2  # where a batch is: see _Batch.state


class _Batch:
    """The statements one event loop queued in one iteration, committed together.

    Awaiting it (what ``record`` returns) returns once the batch is committed, or raises.
    """

    __slots__ = ("error", "futures", "loop", "state", "statements")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.statements: list[tuple[str, tuple[Any, ...]]] = []
        self.state = _QUEUED
        """_QUEUED until its flush on ``loop``, _HANDED while in the writer thread, _DONE."""
        self.error: Callable[[], BaseException] | None = None
        """Once done: None if committed, else what makes each record's error."""
        self.futures: list[asyncio.Future[None]] = []
        """One per record awaited while the batch is in the writer thread."""

    def finish(self, error: Callable[[], BaseException] | None) -> None:
        """Settle the batch, on its loop: committed if ``error`` is None."""
        self.state = _DONE
        self.error = error
        for future in self.futures:
            if not future.done():  # its caller was cancelled
                future.set_result(None)
        self.futures.clear()

    def __await__(self) -> Generator[Any, None, None]:
        if self.state == _QUEUED:
            # A bare yield resumes the task in the next loop iteration, after the batch's
            # flush, which was queued before this: one round trip, where a future takes two.
            # A task cancelled here cancels only itself; its record is committed all the same.
            yield
        if self.state != _DONE:
            # In the writer thread: each caller waits on a future of its own, so that a
            # cancelled one leaves the others waiting.
            future = self.loop.create_future()
            self.futures.append(future)
            yield from future.__await__()
        if self.error is not None:
            raise self.error()


class _Call(NamedTuple):
    """Work for the writer thread; its outcome goes to ``future`` on ``loop``, if given."""

    work: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | None = None
    transaction: bool = True


class SQLiteJournal:
    """A journal in an SQLite file, shared by the runs of this process and of other processes.

    Args:
        path: The journal file. A missing file is created, readable and writable by its owner
            only; an existing one must be a journal, and nothing else is ever changed.
        durability: ``"normal"``: records survive a killed process, but a power loss or an
            OS crash may lose the newest ones (WAL, synchronous=NORMAL). ``"fsync"``: each
            commit is synced to the disk (synchronous=FULL), in a thread of the journal.
        serializer: How results and arguments are stored: JSON by default, or an object with
            ``dumps(value) -> str | bytes`` and ``loads(data) -> value``, such as
            :class:`PickleSerializer`.

    Raises:
        TypeError: ``path``, ``durability`` or ``serializer`` has the wrong type.
        ValueError: ``path`` is empty, or ``durability`` is another str.
        JournalError: The file cannot be a journal: see the message for what to do.

    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "normal",
        serializer: Serializer | None = None,
    ) -> None:
        text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
        if not isinstance(text, str):
            raise TypeError(f"path must be a str or an os.PathLike path, got {path!r}")
        if not text:
            raise ValueError("path must be a non-empty path, got ''")
        if not isinstance(durability, str):
            raise TypeError(f"durability must be 'normal' or 'fsync', got {durability!r}")
        if durability not in ("normal", "fsync"):
            raise ValueError(f"durability must be 'normal' or 'fsync', got {durability!r}")
        if serializer is None:
            serializer = JsonSerializer()
        elif not (
            callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))
        ):
            raise TypeError(
                f"serializer must have dumps(value) and loads(data) methods, got {serializer!r}"
            )
        self.path = os.path.abspath(text)
        """The journal file's absolute path."""
        self.durability = durability
        """``"normal"`` or ``"fsync"``."""
        self._serializer = serializer
        self._dumps: Callable[[Any], str | bytes] = serializer.dumps
        if not isinstance(serializer, JsonSerializer):
            self._dumps = _checked(serializer.dumps)
        self._loads = serializer.loads
        self._default_json = type(serializer) is JsonSerializer
        _journal_file.prepare(self.path)
        info = os.stat(self.path)
        self._key = (info.st_dev, info.st_ino)  # the file, under whatever name it is opened
        self._slow = self._connect(_BUSY_SECONDS)
        self._fast: sqlite3.Connection | None = None
        try:
            _journal_file.initialize(self._slow, self.path)
            if durability == "normal":
                self._fast = self._connect(0.0)
                # Its checkpoints sync the files: the writer thread makes them instead.
                self._fast.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            self._slow.close()
            raise
        self._slow_lock = threading.Lock()
        self._fast_lock = threading.Lock()
        self._batches: dict[asyncio.AbstractEventLoop, _Batch] = {}
        self._writer: _Writer | None = None
        self._writer_lock = threading.Lock()
        self._commits = 0
        self._open: dict[str, str] = {}  # run id -> body, for the runs claimed through self
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteJournal {self.path!r} durability={self.durability!r}>"

    def __enter__(self) -> SQLiteJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Runs -----------------------------------------------------------------------------------

    async def open_run(
        self,
        run_id: str,
        body: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        started: float | None = None,
    ) -> OpenedRun:
        """Claim the run ``run_id`` for this process, creating it if the journal has none.

        A run that succeeded is not claimed: its recorded result comes back. Any other run is
        claimed, and its recorded successful calls come back, read in this one transaction,
        with their results loaded (``OpenedRun.results``).

        Args:
            run_id: The run's id, the key of the journal.
            body: ``"module:qualname"`` of the run's body.
            args: The body's positional arguments.
            kwargs: The body's keyword arguments.
            started: When the run starts, as a POSIX timestamp; now by default.

        Raises:
            TypeError: ``run_id`` or ``body`` is not a str.
            ValueError: ``run_id`` or ``body`` is empty.
            JournalMismatchError: The run is recorded with another body or other arguments.
            JournalError: The run is in progress in a live process; or the arguments cannot
                be serialized; or the journal is closed or cannot be read.

        """
        for name, value in (("run_id", run_id), ("body", body)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {value!r}")
            if not value:
                raise ValueError(f"{name} must be a non-empty str, got ''")
        self._check_open()
        try:
            data = self._args_data(args, kwargs)
        except Exception as exc:
            self._args_refused(args, kwargs, f"run {run_id!r} (body {body!r})", exc)
        args_hash = _hash(data)
        when = time.time() if started is None else started
        held = (self._key, run_id)
        with _HELD_LOCK:
            if held in _HELD:
                raise JournalError(
                    f"run {run_id!r} is already in progress in this process; wait for it to "
                    "end before starting it again"
                )
            _HELD.add(held)
        try:
            opened = await self._transact(
                lambda conn: self._claim(conn, run_id, body, data, args_hash, when, args, kwargs)
            )
        except BaseException:
            with _HELD_LOCK:
                _HELD.discard(held)
            raise
        if opened.previous == "succeeded":
            with _HELD_LOCK:
                _HELD.discard(held)
            return opened._replace(
                result=self._load(opened.result, f"the result of run {run_id!r}")
            )
        self._open[run_id] = body
        if not opened.calls:
            return opened
        # Loaded here, once, so that a replayed call only looks its result up. One that cannot
        # be loaded is left to load() at its call, to fail that call as it would have.
        results = {}
        loads = self._loads
        for key, (_, _, recorded) in opened.calls.items():
            try:
                results[key] = loads(recorded)
            except Exception:
                continue
        return opened._replace(results=results)

    def _claim(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        body: str,
        data: str | bytes,
        args_hash: str,
        started: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> OpenedRun:
        row = conn.execute(
            "SELECT body, args, args_hash, status, result, owner FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO runs (run_id, body, args, args_hash, status, started, owner)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?)",
                (run_id, body, data, args_hash, started, _journal_file.this_process()),
            )
            return OpenedRun(None, None, {})
        recorded_body, recorded_args, recorded_hash, status, result, owner = row
        if recorded_body != body:
            raise JournalMismatchError(
                f"run {run_id!r} is recorded for the body {recorded_body!r}, not {body!r}; "
                "a run id names one piece of work: use another run_id for this one"
            )
        if recorded_hash != args_hash:
            before, after = _differing(self._show_args(recorded_args, run_id), _show(args, kwargs))
            raise JournalMismatchError(
                f"run {run_id!r} of {body!r} is recorded with the arguments ({before}), "
                f"not ({after}); pass the recorded arguments to resume it, or use another "
                "run_id for new work"
            )
        if status == "succeeded":
            return OpenedRun(status, result, {})
        if status == "running" and owner is not None and _journal_file.holder_alive(owner):
            host, pid, _ = json.loads(owner)
            raise JournalError(
                f"run {run_id!r} is in progress in another process (pid {pid} on {host}); "
                "wait for it to end, or stop that process, then start the run again"
            )
        conn.execute(
            "UPDATE runs SET status = 'running', ended = NULL, result = NULL, error = NULL,"
            " owner = ? WHERE run_id = ?",
            (_journal_file.this_process(), run_id),
        )
        calls = {
            key: (name, call_hash, value)
            for key, name, call_hash, value in conn.execute(
                "SELECT call_key, name, args_hash, result FROM calls"
                " WHERE run_id = ? AND status = 'succeeded'",
                (run_id,),
            )
        }
        return OpenedRun(status, None, calls)

    async def end_run(
        self,
        run_id: str,
        *,
        result: Any = None,
        error: BaseException | None = None,
        ended: float | None = None,
    ) -> None:
        """Record the outcome of a run claimed by ``open_run``, and release it.

        The run succeeded if ``error`` is None, was cancelled if it is a ``CancelledError``,
        and failed otherwise. Returns once the record is committed.

        Raises:
            ValueError: The run is not open in this journal.
            JournalError: The journal is closed; the result cannot be serialized (the run stays
                open, so that it can be ended with that error); or the record cannot be
                committed.

        """
        self._check_open()
        body = self._open.get(run_id)
        if body is None:
            raise ValueError(f"run {run_id!r} is not open in this journal; open_run() it first")
        status, text = _outcome(error)
        data = None
        if error is None:
            data = self._encode(result, f"the result of run {run_id!r} (body {body!r})")
        when = time.time() if ended is None else ended
        del self._open[run_id]
        try:
            await self._submit(_END_RUN, (status, when, data, text, run_id))
        finally:
            with _HELD_LOCK:
                _HELD.discard((self._key, run_id))

    # Calls ----------------------------------------------------------------------------------

    def call_args(
        self, action: str, call_key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str | bytes, str]:
        """Return a call's arguments serialized, and their hash: the call's identity with its key.

        Raises:
            JournalError: An argument cannot be serialized; the message names it, its type,
                the action and the key.

        """
        try:
            data = self._args_data(args, kwargs)
        except Exception as exc:
            # The message is made only on this failure path: every call has its arguments
            # encoded, a replayed one too.
            self._args_refused(args, kwargs, f"action {action!r} at call key {call_key!r}", exc)
        return data, _hash(data)

    def record(
        self,
        run_id: str,
        call_key: str,
        name: str,
        *,
        parent_key: str | None,
        args: str | bytes,
        args_hash: str,
        started: float,
        ended: float,
        result: Any = None,
        error: BaseException | None = None,
        attempts: Sequence[AttemptRecord] = (),
        replayed: bool = False,
    ) -> Awaitable[None]:
        """Record the outcome of one call; await the result to know it is committed.

        The call succeeded if ``error`` is None, was cancelled if it is a ``CancelledError``,
        and failed otherwise. Records made in the same event-loop iteration share one commit.

        Args:
            run_id: The run the call belongs to.
            call_key: The call's key within the run.
            name: The action's name.
            parent_key: The key of the call this one was made from, or None.
            args: The call's arguments, as ``call_args()`` serialized them.
            args_hash: Their hash, from ``call_args()``.
            started: When the call started, as a POSIX timestamp.
            ended: When it ended.
            result: What the call returned, if it succeeded.
            error: What it raised, if it failed.
            attempts: Each attempt; none given means one attempt spanning the call.
            replayed: Whether the result came from the journal.

        Raises:
            JournalError: The result cannot be serialized; nothing is recorded. (When awaited)
                the record could not be committed, or the journal was closed first.

        """
        if error is None:
            try:
                data = self._dumps(result)
            except Exception as exc:
                what = f"the result of action {name!r} at call key {call_key!r}"
                raise self._unserializable(what, "the result", result, exc) from exc
            text = None
            status = "succeeded"
        else:
            data = None
            status, text = _outcome(error)
        tried = None
        if attempts:
            tried = json.dumps([[a.number, a.started, a.ended, a.error, a.delay] for a in attempts])
        return self._submit(
            _RECORD_CALL,
            (
                run_id,
                call_key,
                name,
                parent_key,
                args_hash,
                args,
                status,
                tried,
                started,
                ended,
                data,
                text,
                replayed,
            ),
        )

    def mark_replayed(self, run_id: str, call_keys: Sequence[str]) -> Awaitable[None]:
        """Mark the records at ``call_keys`` as replayed by the latest resume of run ``run_id``.

        Only that flag changes: the recorded outcome stays as it was. Await the result to know
        it is committed.
        """
        return self._submit(
            "UPDATE calls SET replayed = 1 WHERE run_id = ? AND call_key IN"
            " (SELECT value FROM json_each(?))",
            (run_id, json.dumps(list(call_keys))),
        )

    def load(self, data: str | bytes, action: str, call_key: str) -> Any:
        """Return a recorded result, loaded by the serializer.

        Raises:
            JournalError: The serializer cannot load it; the message names the action and key.

        """
        try:
            return self._loads(data)
        except Exception as exc:
            # The message is made only on this failure path: a replayed call loads its result.
            what = f"the result of action {action!r} at call key {call_key!r}"
            raise self._load_error(what, exc) from exc

    # Inspection -----------------------------------------------------------------------------

    def list_runs(self) -> list[RunRecord]:
        """Return every run of the journal, oldest first.

        Raises:
            JournalError: The journal is closed or cannot be read.

        """
        rows = self._read(
            "SELECT run_id, body, status, started, ended, args, result, error FROM runs"
            " ORDER BY started, run_id",
            (),
        )
        return [
            _records.RunRecord(
                run_id,
                body,
                status,
                started,
                ended,
                self._show_args(args, run_id),
                None
                if result is None
                else repr(self._load(result, f"the result of run {run_id!r}")),
                error,
            )
            for run_id, body, status, started, ended, args, result, error in rows
        ]

    def calls(self, run_id: str) -> list[CallRecord]:
        """Return the recorded calls of the run ``run_id`` in key order; none for an unknown run.

        Only outcomes are recorded, so no call is ``"running"``. A call recorded without
        attempts has one, spanning the call.

        Raises:
            JournalError: The journal is closed or cannot be read.

        """
        rows = self._read(
            "SELECT call_key, name, parent_key, status, started, ended, attempts, args,"
            " result, error, replayed FROM calls WHERE run_id = ?",
            (run_id,),
        )
        records = []
        for key, name, parent, status, started, ended, attempts, args, result, error, again in rows:
            if attempts is None:
                tried: tuple[AttemptRecord, ...] = (
                    _records.AttemptRecord(1, started, ended, error),
                )
            else:
                tried = tuple(_records.AttemptRecord(*attempt) for attempt in json.loads(attempts))
            records.append(
                _records.CallRecord(
                    run_id,
                    key,
                    name,
                    parent,
                    status,
                    started,
                    ended,
                    tried,
                    self._show_args(args, run_id),
                    None if result is None else repr(self.load(result, name, key)),
                    error,
                    bool(again),
                )
            )
        records.sort(key=lambda record: _records.key_order(record.call_key))
        return records

    def arguments(self, run_id: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Return the positional and keyword arguments the body of run ``run_id`` was given.

        Raises:
            KeyError: The journal has no run ``run_id``.
            JournalError: The journal is closed or cannot be read, or the serializer cannot
                load the arguments.

        """
        rows = self._read("SELECT args FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise KeyError(run_id)
        args, kwargs = self._load(rows[0][0], f"the arguments of run {run_id!r}")
        return tuple(args), dict(kwargs)

    def unfinished(self) -> list[tuple[str, str]]:
        """Return ``(run id, body)`` of every run that has not succeeded, oldest first.

        Nothing is loaded by the serializer, so a value it cannot load any more (in this run
        or another) does not keep the others from being listed.

        Raises:
            JournalError: The journal is closed or cannot be read.

        """
        rows = self._read(
            "SELECT run_id, body FROM runs WHERE status != 'succeeded' ORDER BY started, run_id",
            (),
        )
        return [(run_id, body) for run_id, body in rows]

    def prune(self, older_than_seconds: float) -> int:
        """Delete the runs that ended more than ``older_than_seconds`` ago, with their calls.

        Runs that have not ended (in progress, or whose process died) are kept.

        Returns:
            How many runs were deleted.

        Raises:
            TypeError: ``older_than_seconds`` is not a number.
            ValueError: It is negative, NaN or infinite.
            JournalError: The journal is closed or cannot be written.

        """
        seconds = _checks.seconds("older_than_seconds", older_than_seconds, allow_zero=True)
        cutoff = time.time() - (seconds or 0.0)
        finished = "SELECT run_id FROM runs WHERE status != 'running' AND ended < ?"

        def delete(conn: sqlite3.Connection) -> int:
            conn.execute(f"DELETE FROM calls WHERE run_id IN ({finished})", (cutoff,))
            return conn.execute(
                f"DELETE FROM runs WHERE run_id IN ({finished})", (cutoff,)
            ).rowcount

        with self._slow_lock:
            self._check_open()
            return self._guard(lambda: _journal_file.in_transaction(self._slow, delete))

    def close(self) -> None:
        """Close the journal, once the runs using it have ended; closing twice does nothing.

        Records already handed to the writer thread are committed first. Records still waiting
        for their event loop's next iteration, and any made later, fail with ``JournalError``.
        Runs still open stay recorded as running, to be resumed.

        Raises:
            JournalError: A WAL checkpoint in the writer thread failed; every record had been
                committed before it.

        """
        with self._writer_lock:
            if self._closed:
                return
            self._closed = True
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.put(None)
        if writer is not None:
            writer.join()
        with self._fast_lock:
            if self._fast is not None:
                self._fast.close()
        with self._slow_lock:
            self._slow.close()
        with _HELD_LOCK:
            _HELD.difference_update((self._key, run_id) for run_id in self._open)
        self._open.clear()
        if writer is not None and writer.checkpoint_error is not None:
            raise JournalError(
                f"a WAL checkpoint of the journal {self.path!r} failed (every record was "
                f"committed before it): {writer.checkpoint_error}"
            ) from writer.checkpoint_error

    # Writing --------------------------------------------------------------------------------

    def _submit(self, sql: str, params: tuple[Any, ...]) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            self._check_open()
            batch = self._batches[loop] = _Batch(loop)
            loop.call_soon(self._flush, batch)
        batch.statements.append((sql, params))
        return batch

    def _flush(self, batch: _Batch) -> None:
        del self._batches[batch.loop]
        if self._fast is None:
            self._hand_over(batch)
            return
        with self._fast_lock:
            if self._closed:
                batch.finish(self._closed_error)
                return
            try:
                _commit(self._fast, batch.statements)
            except Exception as exc:
                if isinstance(exc, sqlite3.Error) and _busy(exc):
                    self._hand_over(batch)
                else:
                    batch.finish(_failing(self, exc))
                return
            self._commits += 1
            checkpoint = self._commits % _CHECKPOINT_EVERY == 0
        batch.finish(None)
        if checkpoint:
            # Outside a transaction: SQLite refuses to checkpoint inside one.
            self._enqueue(_Call(_checkpoint, transaction=False))

    def _hand_over(self, batch: _Batch) -> None:
        batch.state = _HANDED
        if not self._enqueue(batch):
            batch.finish(self._closed_error)

    async def _transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a transaction: here if no lock is in the way, else in the writer."""
        if self._fast is not None:
            with self._fast_lock:
                self._check_open()
                try:
                    return _journal_file.in_transaction(self._fast, work)
                except sqlite3.Error as exc:
                    if not _busy(exc):
                        raise self._failure(exc) from exc
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._enqueue(_Call(work, loop, future)):
            raise self._closed_error()
        return await future

    def _enqueue(self, job: _Batch | _Call) -> bool:
        """Hand ``job`` to the writer thread, started on first use; False once closed."""
        with self._writer_lock:
            if self._closed:
                return False
            if self._writer is None:
                self._writer = _Writer(self)
            self._writer.put(job)
            return True

    def _connect(self, busy: float) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy, isolation_level=None, check_same_thread=False
            )
            sync = "FULL" if self.durability == "fsync" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
        except sqlite3.Error as exc:
            raise _journal_file.unreadable(self.path, exc) from exc
        return conn

    # Helpers --------------------------------------------------------------------------------

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._slow_lock:
            self._check_open()
            return self._guard(lambda: self._slow.execute(sql, params).fetchall())

    def _guard(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> JournalError:
        return JournalError(f"the journal {self.path!r} is closed; open it again to use it")

    def _failure(self, exc: Exception) -> JournalError:
        if isinstance(exc, sqlite3.Error) and _busy(exc):
            return JournalError(
                f"the journal {self.path!r} stayed locked by another process for more than "
                f"{_BUSY_SECONDS:g} s; nothing was recorded: {exc}"
            )
        return JournalError(f"the journal {self.path!r} cannot be used: {exc}")

    def _encode(self, value: Any, what: str) -> str | bytes:
        try:
            return self._dumps(value)
        except Exception as exc:
            raise self._unserializable(what, "the value", value, exc) from exc

    def _args_data(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | bytes:
        if len(kwargs) > 1:
            # Keyword order does not change a call, so it must not change its identity.
            kwargs = dict(sorted(kwargs.items()))
        if self._default_json:
            # The list and the dict around the arguments are made here: only the arguments
            # themselves need checking. Every call, a replayed one too, comes this way.
            for value in args:
                if type(value) not in _JSON_SCALARS:
                    _check_json(value)
            if kwargs:
                _check_json(kwargs)
            return _json_codec()[0]([list(args), kwargs])
        return self._dumps([list(args), kwargs])

    def _args_refused(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], whose: str, exc: Exception
    ) -> NoReturn:
        """Raise the error for arguments ``_args_data`` refused, naming the one at fault."""
        named = [(f"argument {i}", value) for i, value in enumerate(args)]
        named += [(f"argument {key!r}", value) for key, value in sorted(kwargs.items())]
        for part, value in named:
            try:
                self._dumps(value)
            except Exception as inner:
                what = f"the arguments of {whose}"
                raise self._unserializable(what, part, value, inner) from inner
        raise self._unserializable(f"the arguments of {whose}", "they", args, exc) from exc

    def _unserializable(self, what: str, part: str, value: Any, exc: Exception) -> JournalError:
        if isinstance(self._serializer, JsonSerializer):
            advice = (
                "use JSON data (str, int, float, bool, None, lists, dicts with str keys), or "
                "give the journal a serializer for this type"
            )
        else:
            advice = f"make it a value that {self._serializer!r} can serialize"
        return JournalError(
            f"cannot record {what}: {part}, of type {type(value).__qualname__}, cannot be "
            f"serialized ({type(exc).__name__}: {exc}); nothing was recorded. To record it, "
            + advice
        )

    def _load(self, data: str | bytes, what: str) -> Any:
        try:
            return self._loads(data)
        except Exception as exc:
            raise self._load_error(what, exc) from exc

    def _load_error(self, what: str, exc: Exception) -> JournalError:
        return JournalError(
            f"{what} in {self.path!r} cannot be loaded by the journal's serializer "
            f"({type(exc).__name__}: {exc}); open the journal with the serializer that wrote it"
        )

    def _show_args(self, data: str | bytes | None, run_id: str) -> str:
        if data is None:
            return ""
        args, kwargs = self._load(data, f"recorded arguments in run {run_id!r}")
        return _show(args, kwargs)


class _Writer:
    """The thread that commits on the journal's waiting connection, off every event loop."""

    def __init__(self, journal: SQLiteJournal) -> None:
        self._journal = journal
        self._jobs: queue.SimpleQueue[_Batch | _Call | None] = queue.SimpleQueue()
        self.checkpoint_error: Exception | None = None
        """Why the last WAL checkpoint failed, if it did."""
        self._thread = threading.Thread(target=self._work, name="orchestrator-journal")
        self._thread.daemon = True
        self._thread.start()

    def put(self, job: _Batch | _Call | None) -> None:
        """Queue ``job``; None ends the thread once the jobs queued before it are done."""
        self._jobs.put(job)

    def join(self) -> None:
        """Wait for the thread to end."""
        self._thread.join()

    def _work(self) -> None:
        journal = self._journal
        while True:
            jobs = [self._jobs.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    jobs.append(self._jobs.get_nowait())
            for kind, group in itertools.groupby(jobs, type):
                if kind is _Batch:
                    # Everything queued meanwhile shares one commit: one fsync for them all.
                    batches: list[_Batch] = list(group)  # type: ignore[arg-type]
                    statements = [s for batch in batches for s in batch.statements]
                    error = None
                    with journal._slow_lock:
                        try:
                            _commit(journal._slow, statements)
                        except Exception as exc:
                            error = exc
                    for batch in batches:
                        fail = None if error is None else _failing(journal, error)
                        _deliver(batch.loop, batch.finish, fail)
                elif kind is _Call:
                    for call in group:
                        self._run(call)  # type: ignore[arg-type]
                else:
                    return

    def _run(self, call: _Call) -> None:
        journal = self._journal
        with journal._slow_lock:
            try:
                if call.transaction:
                    outcome = _journal_file.in_transaction(journal._slow, call.work)
                else:
                    outcome = call.work(journal._slow)
            except Exception as exc:
                if call.loop is None or call.future is None:
                    # A checkpoint: the records were committed before it; close() reports it.
                    self.checkpoint_error = exc
                    return
                error = exc if isinstance(exc, JournalError) else journal._failure(exc)
                _deliver(call.loop, set_exception, call.future, error)
                return
        if call.loop is not None:
            _deliver(call.loop, set_result, call.future, outcome)


def _checked(dumps: Callable[[Any], Any]) -> Callable[[Any], str | bytes]:
    # SQLite would refuse anything else only at the commit, failing the records it shares.
    def checked(value: Any) -> str | bytes:
        data: object = dumps(value)
        if isinstance(data, str):
            data.encode()  # raises for a lone surrogate, which SQLite cannot store as text
            return data
        if isinstance(data, bytes):
            return data
        kind = type(data).__name__
        raise TypeError(f"the serializer's dumps() returned {kind}, not str or bytes")

    return checked


def _checkpoint(conn: sqlite3.Connection) -> None:
    # Passive: it copies what no reader still needs, and waits for nobody.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _failing(journal: SQLiteJournal, error: Exception) -> Callable[[], BaseException]:
    return lambda: journal._failure(error)


def _deliver(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    # RuntimeError: the loop was closed meanwhile, so nobody is left waiting.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _commit(conn: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    if len(statements) == 1:
        # One statement is a transaction of its own: two round trips fewer for a lone call.
        conn.execute(*statements[0])
        return

    def run(conn: sqlite3.Connection) -> None:
        for sql, params in statements:
            conn.execute(sql, params)

    _journal_file.in_transaction(conn, run)


def _busy(exc: sqlite3.Error) -> bool:
    return _journal_file.result_code(exc) == sqlite3.SQLITE_BUSY


def _hash(data: str | bytes) -> str:
    return hashlib.blake2b(
        data.encode() if isinstance(data, str) else data, digest_size=16
    ).hexdigest()


def _outcome(error: BaseException | None) -> tuple[str, str | None]:
    from . import _describe  # here: only a recorded outcome needs it, not the import

    text = None if error is None else _describe.describe(error, limit=None)
    return _describe.status(error), text


def _show(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """Arguments as they would be written in a call, without the parentheses."""
    return ", ".join([*map(repr, args), *(f"{key}={value!r}" for key, value in kwargs.items())])


def _differing(first: str, second: str) -> tuple[str, str]:
    """Both texts, each cut to about ``_SHOWN`` characters around where they first differ."""
    if len(first) <= _SHOWN and len(second) <= _SHOWN:
        return first, second
    pairs = enumerate(zip(first, second, strict=False))
    same = next((i for i, (a, b) in pairs if a != b), min(len(first), len(second)))
    start = max(0, same - _SHOWN // 3)

    def cut(text: str) -> str:
        end = start + _SHOWN
        return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")

    return cut(first), cut(second)


def as_journal(value: object) -> Journal:
    """Accept a journal, or a path for an :class:`SQLiteJournal`, as ``journal=``.

    Raises:
        TypeError: ``value`` is neither.
        JournalError: The path cannot be a journal.

    """
    if isinstance(value, str | os.PathLike):
        return SQLiteJournal(value)
    if all(callable(getattr(value, name, None)) for name in ("open_run", "record", "end_run")):
        return value  # type: ignore[return-value]
    raise TypeError(
        f"journal must be a path (a str or os.PathLike) or a journal such as SQLiteJournal, "
        f"got {value!r}"
    )
