"""The journal's file: what makes a file a journal, its schema, and which process holds a run.

Nothing here changes a file that is not a journal: an existing file is identified from its
header, read without a lock where it could be another application's, and only made a journal
if it is empty.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ._errors import JournalError
from ._lazy import lazy_module

if TYPE_CHECKING:
    import json
    import socket
    import sqlite3
else:
    json = lazy_module("json")
    socket = lazy_module("socket")
    sqlite3 = lazy_module("sqlite3")

T = TypeVar("T")

APPLICATION_ID = 0x4F524348
"""``PRAGMA application_id`` of a journal ("ORCH"): how a journal is told from other files."""
SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of a journal this version writes; it refuses newer ones."""

_MAGIC = b"SQLite format 3\x00"
_HAVE_PROC = os.path.isdir("/proc/self")

_SCHEMA = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        args,
        args_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL,
        result,
        error TEXT,
        owner TEXT
    ) WITHOUT ROWID""",
    """CREATE TABLE calls (
        run_id TEXT NOT NULL,
        call_key TEXT NOT NULL,
        name TEXT NOT NULL,
        parent_key TEXT,
        args_hash TEXT NOT NULL,
        args,
        status TEXT NOT NULL,
        attempts TEXT,
        started REAL NOT NULL,
        ended REAL,
        result,
        error TEXT,
        replayed INTEGER NOT NULL,
        PRIMARY KEY (run_id, call_key)
    ) WITHOUT ROWID""",
)


def in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Return ``work(conn)`` run in one transaction, committed, or rolled back if it raises."""
    # IMMEDIATE takes the write lock first, so that a busy file fails here, before any work.
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcome = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcome


def result_code(exc: sqlite3.Error) -> int:
    """The primary SQLite result code of ``exc``; 0 for an error SQLite did not report."""
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF


def prepare(path: str) -> None:
    """Check that ``path`` can be a journal; create it empty, owner-only, if it is missing."""
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise JournalError(
            f"the journal path {path!r} is a directory; give a file path, such as "
            f"{os.path.join(path, 'runs.db')!r}"
        )
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise JournalError(
            f"the journal path {path!r} is under {folder!r}, which is not a directory; give "
            "another path"
        )
    if not os.path.isdir(folder):
        raise JournalError(
            f"the journal path {path!r} is in a directory that does not exist, {folder!r}; "
            "create the directory first, or give another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise JournalError(
            f"the journal's directory {folder!r} is not writable, and SQLite keeps files next "
            f"to the journal {path!r}; make it writable, or give another path"
        )
    try:
        # Created here rather than by SQLite, so that results and arguments (personal data,
        # perhaps) are never readable by others, whatever the umask. The WAL files that
        # SQLite makes next to it take the same permissions.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _identify(path)
        return
    except OSError as exc:
        raise JournalError(f"cannot create the journal {path!r}: {exc}") from exc
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)


def _identify(path: str) -> None:
    """Raise unless the existing file ``path`` is a journal or empty, changing nothing in it."""
    if not os.path.isfile(path):
        raise JournalError(f"the journal path {path!r} is not a regular file; give another path")
    # A file with no write permission is read-only to its owner's intent, even for root.
    if not os.access(path, os.R_OK | os.W_OK) or not os.stat(path).st_mode & 0o222:
        raise JournalError(
            f"the journal file {path!r} is read-only; make it writable (chmod u+rw), or give "
            "another path"
        )
    with open(path, "rb") as file:
        header = file.read(100)
    if not header:
        return
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise JournalError(
            f"{path!r} is not a journal: it is not an SQLite database; it was left unchanged. "
            "Give the path of a journal, or of a file that does not exist yet"
        )
    if int.from_bytes(header[68:72], "big") == APPLICATION_ID:
        return
    # No application id: an empty database can become a journal; any other is someone's.
    # immutable=1 reads the file as it is, taking no lock and making no file next to it.
    from pathlib import Path  # here: only a file being checked needs it

    uri = Path(path).as_uri() + "?mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            empty = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.DatabaseError as exc:
        raise JournalError(
            f"{path!r} is not a journal: it cannot be read as an SQLite database ({exc}); it "
            "was left unchanged. Give the path of a journal, or of a file that does not exist yet"
        ) from exc
    if not empty:
        raise _foreign(path)


def unreadable(path: str, exc: sqlite3.Error) -> JournalError:
    """The error for an SQLite error met while opening or checking the journal ``path``."""
    if result_code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return _corrupted(path, str(exc))
    return JournalError(f"cannot open the journal {path!r}: {exc}")


def _corrupted(path: str, reason: str) -> JournalError:
    return JournalError(
        f"{path!r} is not a journal, or a corrupted one ({reason}); it was left unchanged. "
        "Restore it from a backup, or give the path of a file that does not exist yet"
    )


def _foreign(path: str) -> JournalError:
    return JournalError(
        f"{path!r} is not a journal: it is another application's SQLite database; it was left "
        "unchanged. Give the path of a journal, or of a file that does not exist yet"
    )


def initialize(conn: sqlite3.Connection, path: str) -> None:
    """Make an empty database a journal, or check that it is one; then switch it to WAL."""

    def check(conn: sqlite3.Connection) -> None:
        application = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        if application == 0 and version == 0 and not tables:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            return
        if application != APPLICATION_ID:
            raise _foreign(path)
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {path!r} was written by a newer version of orchestrator (schema "
                f"version {version}; this version reads up to {SCHEMA_VERSION}); upgrade "
                "orchestrator to use it"
            )
        if version < 1 or not {"runs", "calls"} <= tables:
            raise _corrupted(path, "its tables are missing")
        # Reading each table's first page finds a journal whose pages were overwritten.
        conn.execute("SELECT * FROM runs LIMIT 1").fetchall()
        conn.execute("SELECT * FROM calls LIMIT 1").fetchall()

    try:
        in_transaction(conn, check)
        conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error as exc:
        conn.close()
        raise unreadable(path, exc) from exc
    except BaseException:
        conn.close()
        raise


# Processes --------------------------------------------------------------------------------

_me: tuple[int, str] | None = None


def this_process() -> str:
    """What identifies this process in a run's ``owner``: host, pid and start time."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:  # computed again in a forked child
        stat = _process(pid)
        _me = (pid, json.dumps([socket.gethostname(), pid, stat and stat[1]]))
    return _me[1]


def _process(pid: int) -> tuple[str, str] | None:
    """The state and start time (clock ticks after boot) of process ``pid``, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: count fields after its end.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def holder_alive(owner: str) -> bool:
    """Whether the process recorded as ``owner`` of a run may still be running it."""
    host, pid, started = json.loads(owner)
    if host != socket.gethostname():
        return True  # another machine's processes cannot be seen from here
    if pid == os.getpid():
        # This process, or an earlier one with its pid: this process's registry of held runs
        # was checked first, so the run is not running here.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    if not _HAVE_PROC:
        return True
    stat = _process(pid)
    if stat is None:
        return False  # it exited just now
    state, now_started = stat
    # A zombie has died; another start time means the pid was reused by a new process.
    return state not in ("Z", "X") and (started is None or now_started == started)
