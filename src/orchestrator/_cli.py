"""The journal commands of ``python -m orchestrator``: ``runs``, ``show`` and ``prune``.

Each command opens the journal, writes plain text lines and returns an exit status. What could
make the output unreadable is dealt with here, once: recorded text may hold newlines or
terminal escape sequences (an error message, an argument), so control characters are written
as escapes; characters the output stream cannot encode are written as escapes too, and the tree
is drawn in ASCII on such a stream. Colour and fitting lines to the width are for a terminal
only, so piped output is plain and complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TextIO

from . import _timeline
from ._errors import JournalError
from ._journal import SQLiteJournal
from ._records import AttemptRecord, CallRecord, RunRecord, key_order

OK = 0
"""Exit status of a command that did what it was asked."""
FAILED = 1
"""Exit status of a command that could not: a missing journal, an unknown run, a bad file.

A command line that does not parse exits with argparse's status, 2."""

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
"""The units of an age such as ``30d``, in seconds."""

_AGE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([a-z]+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LONG = 200  # characters of a recorded value shown at most
_NAME = 40  # characters of a body or a call's arguments shown in a column
_MIN_LAST = 20  # characters the last column keeps when a line is fitted to a terminal
_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_COLORS = {"succeeded": "32", "failed": "31", "cancelled": "33", "running": "36", "replayed": "34"}


class CommandError(Exception):
    """A command that cannot do what it was asked; the message says why and what to do."""


class Age(NamedTuple):
    """An age as written on the command line, and its length."""

    text: str
    """As written: ``"30d"``."""
    seconds: float
    """How long it is, in seconds."""


def journal_path(text: str) -> str:
    """Return ``text``, the path of a journal file.

    Raises:
        ValueError: ``text`` is empty.

    """
    if not text:
        raise ValueError("expected the path of a journal file, got ''")
    return text


def parse_age(text: str) -> Age:
    """Return the age written as a number and a unit: ``30d``, ``12h``, ``1.5m``, ``0s``.

    Raises:
        ValueError: ``text`` is not such an age; the message says what is expected.

    """
    found = _AGE.fullmatch(text.strip())
    if found is None or found.group(2) not in UNITS:
        raise ValueError(
            f"expected a number followed by a unit, s, m, h or d (such as 30d or 12h), got {text!r}"
        )
    seconds = float(found.group(1)) * UNITS[found.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"expected an age of a finite number of seconds, got {text!r}")
    return Age(text.strip(), seconds)


# Opening ----------------------------------------------------------------------------------


def open_journal(path: str) -> SQLiteJournal:
    """Open the existing journal at ``path``.

    Raises:
        CommandError: There is no file at ``path``, or it is empty, or not a journal.

    """
    # SQLiteJournal creates a missing file; a command that only inspects must never do that.
    if not os.path.lexists(path):
        raise CommandError(
            f"there is no journal at {os.path.abspath(path)!r}: the file does not exist; give "
            "the path that was passed as Orchestrator(journal=...)"
        )
    # An empty file would be made a journal by opening it: a write, and most likely a wrong path.
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CommandError(
            f"the file {os.path.abspath(path)!r} is empty: no journal was ever recorded in it; "
            "give the path that was passed as Orchestrator(journal=...)"
        )
    try:
        return SQLiteJournal(path)
    except JournalError as exc:
        raise CommandError(str(exc)) from exc


def _find_run(journal: SQLiteJournal, run_id: str) -> RunRecord:
    runs = journal.list_runs()
    for run in runs:
        if run.run_id == run_id:
            return run
    ids = [run.run_id for run in runs]
    close = [other for other in ids if other.startswith(run_id)] if run_id else []
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if 0 < len(close) <= 3 else ""
    raise CommandError(
        f"the journal {journal.path!r} has no run {run_id!r}{hint}; "
        f"python -m orchestrator runs --journal {shlex.quote(journal.path)} lists its runs"
    )


def _check_output(path: str | None, what: str) -> None:
    # Checked before the journal is read, so that a typo costs nothing.
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CommandError(f"cannot write the {what} to {path!r}: it is a directory")
    if not os.path.isdir(folder):
        raise CommandError(
            f"cannot write the {what} to {path!r}: the directory {folder!r} does not exist"
        )


def _write_file(path: str, text: str, what: str) -> str:
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise CommandError(f"cannot write the {what} to {path!r}: {exc}") from exc
    return os.path.abspath(path)


# Commands ---------------------------------------------------------------------------------


def runs_command(journal_path: str, out: TextIO) -> int:
    """List the runs of a journal, oldest first, one line each."""
    style = Style.of(out)
    with _opened(journal_path) as journal:
        rows = [(run, journal.calls(run.run_id)) for run in journal.list_runs()]
        for line in runs_lines(journal.path, rows, style):
            out.write(line + "\n")
    return OK


def show_command(
    journal_path: str, run_id: str, out: TextIO, *, html: str | None, chrome: str | None
) -> int:
    """Print one run with its calls as a tree; write its HTML timeline or Chrome trace if asked."""
    _check_output(html, "HTML timeline")
    _check_output(chrome, "Chrome trace")
    style = Style.of(out)
    with _opened(journal_path) as journal:
        run = _find_run(journal, run_id)
        calls = journal.calls(run.run_id)
    for line in show_lines(run, calls, style):
        out.write(line + "\n")
    if html is not None:
        where = _write_file(html, _timeline.render_html(run, calls), "HTML timeline")
        out.write(style.clean(f"HTML timeline: {where}") + "\n")
    if chrome is not None:
        trace = json.dumps(_timeline.chrome_trace(run, calls))
        where = _write_file(chrome, trace, "Chrome trace")
        out.write(style.clean(f"Chrome trace: {where}") + "\n")
    return OK


def prune_command(journal_path: str, older_than: Age, out: TextIO) -> int:
    """Delete the finished runs of a journal that ended longer ago than ``older_than``."""
    style = Style.of(out)
    with _opened(journal_path) as journal:
        before = time.time() - older_than.seconds
        deleted = journal.prune(older_than.seconds)
        where = journal.path
    runs = "run" if deleted == 1 else "runs"
    out.write(
        style.clean(
            f"deleted {deleted} finished {runs} that ended more than {older_than.text} ago (before "
            f"{_utc(before, seconds=True)} UTC) from {where}"
        )
        + "\n"
    )
    return OK


@contextlib.contextmanager
def _opened(path: str) -> Iterator[SQLiteJournal]:
    """The journal at ``path``, closed at the end; its errors become the command's."""
    journal = open_journal(path)
    try:
        with contextlib.closing(journal):
            yield journal
    except JournalError as exc:
        raise CommandError(str(exc)) from exc


# Rendering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """How lines are made for one output stream."""

    encoding: str = "utf-8"
    """The stream's encoding: other characters are written as escapes."""
    width: int | None = None
    """The terminal's width, to fit lines in; None when the output is not a terminal."""
    color: bool = False
    """Whether statuses are coloured."""

    @classmethod
    def of(cls, stream: TextIO) -> Style:
        """The style for ``stream``: colour and width only for a terminal."""
        encoding = getattr(stream, "encoding", None) or "utf-8"
        isatty = getattr(stream, "isatty", None)
        if not (callable(isatty) and isatty()):
            return cls(encoding)
        width = shutil.get_terminal_size().columns
        # https://no-color.org: any non-empty NO_COLOR turns colour off.
        color = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        return cls(encoding, width, color)

    def clean(self, text: str) -> str:
        """``text`` with control characters and what the stream cannot encode as escapes."""
        text = _CONTROL.sub(lambda found: repr(found.group())[1:-1], text)
        return text.encode(self.encoding, "backslashreplace").decode(self.encoding)

    def paint(self, text: str, status: str) -> str:
        """``text`` in the colour of ``status``, on a terminal with colour."""
        code = _COLORS.get(status)
        if not self.color or code is None or not text:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"

    def tree(self) -> tuple[str, str, str, str]:
        """The guides of a tree: a branch, the last branch, a line past a branch, a blank."""
        drawn = ("├─ ", "└─ ", "│  ", "   ")
        try:
            "".join(drawn).encode(self.encoding)
        except (UnicodeEncodeError, LookupError):
            return ("|- ", "`- ", "|  ", "   ")
        return drawn


def runs_lines(
    path: str, runs: Sequence[tuple[RunRecord, Sequence[CallRecord]]], style: Style
) -> list[str]:
    """The lines of ``runs``: a header and a line per run, columns aligned."""
    if not runs:
        return [style.clean(f"no runs recorded in {path}")]
    header = ("RUN ID", "BODY", "STATUS", "STARTED (UTC)", "DURATION", "DONE", "FAILED")
    table = [
        (
            style.clean(run.run_id),
            _cut_middle(style.clean(run.body), _NAME),
            style.clean(run.status),
            _utc(run.started, seconds=True),
            _lasted(run.started, run.ended),
            str(sum(call.status == "succeeded" for call in calls)),
            str(sum(call.status in ("failed", "cancelled") for call in calls)),
            style.clean(_failing(run, calls)),
        )
        for run, calls in runs
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    numbers = {4, 5, 6}
    lines = [_fit_last(_columns(header, widths, numbers), "FAILING CALL", style)]
    for row in table:
        columns = _columns(row[:-1], widths, numbers, style=style, status=2)
        lines.append(_fit_last(columns, row[-1], style))
    return lines


def _columns(
    cells: Sequence[str],
    widths: Sequence[int],
    numbers: set[int],
    *,
    style: Style | None = None,
    status: int | None = None,
) -> str:
    parts = []
    for index, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        padded = cell.rjust(width) if index in numbers else cell.ljust(width)
        if style is not None and index == status:
            padded = style.paint(padded, cell)
        parts.append(padded)
    return "  ".join(parts)


def _fit_last(columns: str, last: str, style: Style) -> str:
    """``columns`` and ``last``, which is cut to what is left of a terminal's width."""
    if not last:
        return columns.rstrip()
    if style.width is not None:
        shown = len(_ESCAPE.sub("", columns)) + 2  # colour codes take no room
        last = _cut(last, max(style.width - 1 - shown, _MIN_LAST))
    return f"{columns}  {last}"


def _failing(run: RunRecord, calls: Sequence[CallRecord]) -> str:
    """Where a run that failed (or was cancelled) did: the first call to, or else the body."""
    if run.status not in ("failed", "cancelled"):
        return ""
    ended = [call for call in calls if call.status == run.status]
    # A call fails when a call it made fails: the one none of whose callees did is the cause.
    callers = {key for call in ended for key in _leading_keys(call.call_key)}
    causes = [call for call in ended if call.call_key not in callers]
    if not causes:
        return _cut(f"the body: {run.error or run.status}", _LONG)
    first = min(causes, key=lambda call: key_order(call.call_key))
    more = f" (and {len(causes) - 1} more)" if len(causes) > 1 else ""
    return _cut(f"{first.call_key} {first.name}: {first.error or run.status}", _LONG) + more


def _leading_keys(key: str) -> Iterator[str]:
    """The keys of the calls that ``key`` was made in: ``"3.2.1"`` gives ``"3.2"`` and ``"3"``."""
    while "." in key:
        key = key.rpartition(".")[0]
        yield key


def show_lines(run: RunRecord, calls: Sequence[CallRecord], style: Style) -> list[str]:
    """The lines of one run: its facts, then its calls as a tree with their outcomes."""
    clean = style.clean
    facts = [
        ("run", clean(run.run_id)),
        ("body", clean(_cut(f"{run.body}({run.args})", _LONG))),
        ("status", style.paint(clean(run.status), run.status) + _error_part(run.error, style)),
        ("started", f"{_utc(run.started)}, {_ended(run)}"),
    ]
    if run.result is not None:
        facts.append(("result", clean(_cut(run.result, _LONG))))
    facts.append(("calls", clean(_summary(calls))))
    lines = [f"{name:<8} {value}" for name, value in facts]
    lines.append("")
    if not calls:
        lines.append("no calls recorded")
        return lines
    rows = list(_tree_rows(calls, style))
    key_width = max(len("KEY"), *(len(clean(row.call.call_key)) for row in rows))
    label_width = max(len("CALL"), *(len(row.label) for row in rows))
    header = f"{'KEY':<{key_width}}  {'CALL':<{label_width}}  {'STATUS':<9}  TRIES  DURATION"
    lines.append(header)
    for row in rows:
        call = row.call
        status = style.paint(f"{clean(call.status):<9}", call.status)
        replayed = "  " + style.paint("replayed", "replayed") if call.replayed else ""
        lines.append(
            f"{clean(call.call_key):<{key_width}}  {row.label:<{label_width}}  {status}  "
            f"{len(call.attempts) or 1:>5}  {_lasted(call.started, call.ended):>8}{replayed}"
        )
        lines.extend(
            _fit(f"{'':<{key_width}}  {row.guide}{detail}", style)
            for detail in _details(call, style)
        )
    return lines


def _error_part(error: str | None, style: Style) -> str:
    return "" if error is None else ": " + style.clean(_cut(error, _LONG))


def _ended(run: RunRecord) -> str:
    if run.ended is not None:
        return f"lasted {_lasted(run.started, run.ended)}"
    if run.status == "running":
        return "not ended: still running, or its process died (it resumes under its run id)"
    return "no end recorded"


def _summary(calls: Sequence[CallRecord]) -> str:
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.status] = counts.get(call.status, 0) + 1
    parts = [f"{count} {status}" for status, count in counts.items()]
    retried = sum(len(call.attempts) > 1 for call in calls)
    replayed = sum(call.replayed for call in calls)
    parts += [f"{retried} retried"] if retried else []
    parts += [f"{replayed} replayed"] if replayed else []
    return f"{len(calls)}" + (f" ({', '.join(parts)})" if parts else "")


def _details(call: CallRecord, style: Style) -> Iterator[str]:
    """The lines under a call: each failed attempt that was retried, and the call's error."""
    for attempt in call.attempts[:-1]:
        if attempt.error is not None:
            yield f"attempt {attempt.number}: {style.clean(_attempt_text(attempt))}"
    if call.status in ("failed", "cancelled") and call.error is not None:
        yield f"error: {style.clean(_cut(call.error, _LONG))}"


def _attempt_text(attempt: AttemptRecord) -> str:
    text = _cut(attempt.error or "", _LONG)
    if attempt.delay is not None:
        text += f" (retried after {_duration(attempt.delay)})"
    return text


def _fit(line: str, style: Style) -> str:
    if style.width is None:
        return line
    return _cut(line, max(style.width - 1, _MIN_LAST))


@dataclass(frozen=True)
class _TreeRow:
    call: CallRecord
    label: str
    """The guides and the call as written: ``├─ name(args)``."""
    guide: str
    """The guides for the lines under the call."""


def _tree_rows(calls: Sequence[CallRecord], style: Style) -> Iterator[_TreeRow]:
    """The calls depth first, each under the call it was made from, siblings in key order."""
    branch, last, line, blank = style.tree()
    known = {call.call_key for call in calls}
    children: dict[str | None, list[CallRecord]] = {}
    for call in calls:
        children.setdefault(_drawn_parent(call, known), []).append(call)
    for siblings in children.values():
        siblings.sort(key=lambda call: key_order(call.call_key))
    # A stack rather than recursion: a chain of nested calls may be deeper than Python's limit.
    # Each entry: the call, the guides before it, whether it is its parent's last child.
    stack: list[tuple[CallRecord, str, bool, bool]] = []
    top = children.get(None, [])
    stack.extend((call, "", index == len(top) - 1, True) for index, call in _reversed(top))
    while stack:
        call, before, final, root = stack.pop()
        mine = children.get(call.call_key, [])
        name = _cut(f"{call.name}({call.args})", _NAME)
        own = "" if root else (last if final else branch)
        after = before if root else before + (blank if final else line)
        yield _TreeRow(call, before + own + style.clean(name), after + (line if mine else blank))
        stack.extend(
            (child, after, index == len(mine) - 1, False) for index, child in _reversed(mine)
        )


def _reversed(items: list[CallRecord]) -> Iterator[tuple[int, CallRecord]]:
    return reversed(list(enumerate(items)))


def _drawn_parent(call: CallRecord, known: set[str]) -> str | None:
    # Keys nest, so the nearest recorded call whose key leads the missing parent's is an ancestor.
    key = call.parent_key
    while key is not None and key not in known:
        key = key.rpartition(".")[0] or None
    return key


# Text -------------------------------------------------------------------------------------


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def _cut_middle(text: str, most: int) -> str:
    # A body's module and the end of its qualname say the most; the middle goes first.
    if len(text) <= most:
        return text
    head = (most - 3) // 3
    return text[:head] + "..." + text[len(text) - (most - 3 - head) :]


def _utc(timestamp: float, *, seconds: bool = False) -> str:
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp} (POSIX timestamp)"
    if seconds:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.isoformat(sep=" ", timespec="milliseconds").replace("+00:00", " UTC")


def _lasted(started: float, ended: float | None) -> str:
    return "-" if ended is None else _duration(max(ended - started, 0.0))


def _duration(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1e3:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    if seconds < 86400:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours} h {rest // 60} min"
    days, rest = divmod(round(seconds), 86400)
    return f"{days} d {rest // 3600} h"


def error(message: str, err: TextIO | None = None) -> int:
    """Write ``message`` as the command's error and return the status of a failed command."""
    stream = sys.stderr if err is None else err
    stream.write(Style.of(stream).clean(f"python -m orchestrator: error: {message}") + "\n")
    return FAILED
