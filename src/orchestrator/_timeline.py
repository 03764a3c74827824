"""Pictures of a run: a self-contained HTML Gantt chart and a Chrome trace.

Both renderers are pure: a ``RunRecord`` and its ``CallRecord`` objects in, a string or a
JSON-ready dict out, with no clock and no I/O, so the same records always give the same picture.

How it is built:

- **Checked first.** A wrong type raises ``TypeError`` and an impossible value (an unknown
  status, a malformed or repeated call key, a call of another run) ``ValueError``, naming the
  field as ``calls[3].status``. An end before its start is drawn as zero length rather than
  refused: recorded wall-clock times can step back.
- **One layout for both outputs.** Calls are put in tree order: each under the call it was made
  from, siblings by numeric key so that "2.10" follows "2.9", explicit key parts (from
  ``action.keyed()``) after the positions, in text order. A call whose parent was not
  recorded hangs under the nearest recorded call its key descends from, since keys nest. The
  time frame runs from the earliest recorded instant to the latest; a call with no end lasts to
  the end of the frame and is drawn open-ended.
- **HTML and CSS, no script.** Bars are positioned in percent of the time axis, so the chart
  follows the window's width, and hover text is the ``title`` attribute. A
  Content-Security-Policy forbids scripts and network access as a second line of defence.
  Every string from outside is shortened, then escaped for HTML text or attribute; the style
  sheet and ``style`` attributes hold only numbers and the checked status words.
- **Chrome trace threads show nesting.** A trace viewer nests the complete events of one thread
  by time containment, so a call shares its parent's thread only when it lies inside the parent
  and after the siblings already there; otherwise (members of a group running side by side) it
  takes a thread that is free by then, or a new one. Any nesting a viewer shows is thus a real
  caller and callee.
"""

from __future__ import annotations

import heapq
import html
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import _checks
from ._records import AttemptRecord, CallRecord, RunRecord, key_order

SHORT_LENGTH = 200
"""The most characters of a value from outside shown at once, the ellipsis included."""

STATUSES = ("running", "succeeded", "failed", "cancelled")
"""The statuses a run or a call can have."""

# A key part is a position from 1, or an explicit part (``action.keyed()``): no dots, not all
# digits.
_PART = r"(?:[1-9][0-9]*|[^.]*[^.0-9][^.]*)"
_KEY = re.compile(rf"{_PART}(?:\.{_PART})*")
_MIN_SPAN = 1e-6
# The instants a datetime can show; a timestamp outside them is printed as a number.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_INSTANT = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH).total_seconds()
_LAST_INSTANT = (datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH).total_seconds()


# --- checks ---------------------------------------------------------------------------------


def _checked(run: object, calls: object) -> tuple[RunRecord, tuple[CallRecord, ...]]:
    """Return ``run`` and ``calls`` as a tuple once every field has been checked, or raise."""
    if not isinstance(run, RunRecord):
        raise TypeError(f"run must be a RunRecord, got {run!r}")
    _check_run(run)
    if isinstance(calls, str | bytes) or not isinstance(calls, Sequence):
        raise TypeError(f"calls must be a sequence of CallRecord, got {calls!r}")
    first_index: dict[str, int] = {}
    for index, call in enumerate(calls):
        where = f"calls[{index}]"
        if not isinstance(call, CallRecord):
            raise TypeError(f"{where} must be a CallRecord, got {call!r}")
        _check_call(where, call, run.run_id)
        if call.call_key in first_index:
            raise ValueError(
                f"{where}.call_key must be unique in the run, got {call.call_key!r}, "
                f"the key of calls[{first_index[call.call_key]}] too"
            )
        first_index[call.call_key] = index
    return run, tuple(calls)


def _check_run(run: RunRecord) -> None:
    _text("run.run_id", run.run_id)
    _text("run.body", run.body)
    _status("run.status", run.status)
    _instant("run.started", run.started)
    _instant("run.ended", run.ended, optional=True)
    _text("run.args", run.args)
    _text("run.result", run.result, optional=True)
    _text("run.error", run.error, optional=True)


def _check_call(where: str, call: CallRecord, run_id: str) -> None:
    _text(f"{where}.run_id", call.run_id)
    if call.run_id != run_id:
        raise ValueError(f"{where}.run_id must be the run's id {run_id!r}, got {call.run_id!r}")
    _text(f"{where}.call_key", call.call_key)
    if not _KEY.fullmatch(call.call_key):
        raise ValueError(
            f"{where}.call_key must be dot-separated parts, each a position from 1 or an "
            "explicit part (no dots, not all digits), such as '3', '3.2.1' or '2.user42', "
            f"got {call.call_key!r}"
        )
    _parent_key(f"{where}.parent_key", call.parent_key, call.call_key)
    _text(f"{where}.name", call.name)
    _status(f"{where}.status", call.status)
    _instant(f"{where}.started", call.started)
    _instant(f"{where}.ended", call.ended, optional=True)
    attempts: object = call.attempts
    if isinstance(attempts, str | bytes) or not isinstance(attempts, Sequence):
        raise TypeError(f"{where}.attempts must be a tuple of AttemptRecord, got {attempts!r}")
    for index, attempt in enumerate(attempts):
        _check_attempt(f"{where}.attempts[{index}]", attempt)
    _text(f"{where}.args", call.args)
    _text(f"{where}.result", call.result, optional=True)
    _text(f"{where}.error", call.error, optional=True)
    _checks.flag(f"{where}.replayed", call.replayed)


def _check_attempt(where: str, attempt: object) -> None:
    if not isinstance(attempt, AttemptRecord):
        raise TypeError(f"{where} must be an AttemptRecord, got {attempt!r}")
    _checks.count(f"{where}.number", attempt.number, minimum=1)
    _instant(f"{where}.started", attempt.started)
    _instant(f"{where}.ended", attempt.ended, optional=True)
    _text(f"{where}.error", attempt.error, optional=True)
    _checks.seconds(f"{where}.delay", attempt.delay, allow_zero=True, allow_none=True)


def _text(where: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        expected = "a string or None" if optional else "a string"
        raise TypeError(f"{where} must be {expected}, got {value!r}")


def _status(where: str, value: object) -> None:
    _text(where, value)
    if value not in STATUSES:
        raise ValueError(
            f"{where} must be 'running', 'succeeded', 'failed' or 'cancelled', got {value!r}"
        )


def _instant(where: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a POSIX timestamp or None" if optional else "a POSIX timestamp"
        raise TypeError(f"{where} must be {expected}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be a finite POSIX timestamp, got {value!r}")


def _parent_key(where: str, value: object, call_key: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string or None, got {value!r}")
    if not (_KEY.fullmatch(value) and call_key.startswith(value + ".")):
        raise ValueError(
            f"{where} must be None or the key of a call that {call_key!r} was made in, "
            f"a leading part of that key, got {value!r}"
        )


# --- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    """A call in tree order, with its depth and the key of the call it is drawn under."""

    call: CallRecord
    depth: int
    parent: str | None


@dataclass(frozen=True, slots=True)
class _Frame:
    """The time axis: from the earliest recorded instant to the latest."""

    origin: float
    end: float

    @property
    def span(self) -> float:
        """The length of the axis in seconds, never zero."""
        return max(self.end - self.origin, _MIN_SPAN)

    def fraction(self, instant: float) -> float:
        """Where ``instant`` falls on the axis, from 0 to 1."""
        return min(max((instant - self.origin) / self.span, 0.0), 1.0)

    def close(self, started: float, ended: float | None) -> float:
        """The end to draw for an interval: the axis' end when open, never before its start."""
        return self.end if ended is None else max(ended, started)


def _frame(run: RunRecord, calls: Sequence[CallRecord]) -> _Frame:
    instants = list(_instants(run, calls))
    return _Frame(min(instants), max(instants))


def _instants(run: RunRecord, calls: Sequence[CallRecord]) -> Iterator[float]:
    records: list[RunRecord | CallRecord] = [run, *calls]
    for record in records:
        yield record.started
        if record.ended is not None:
            yield record.ended
    for call in calls:
        for attempt in call.attempts:
            yield attempt.started
            if attempt.ended is not None:
                yield attempt.ended


def _tree(calls: Sequence[CallRecord]) -> list[_Row]:
    """The calls depth first, each under its parent, siblings in key order (see key_order)."""
    known = {call.call_key for call in calls}
    children: dict[str | None, list[CallRecord]] = {}
    for call in calls:
        children.setdefault(_drawn_parent(call, known), []).append(call)
    for siblings in children.values():
        siblings.sort(key=lambda call: key_order(call.call_key))
    rows: list[_Row] = []
    # A stack rather than recursion: a chain of nested calls may be deeper than Python's limit.
    stack = [_Row(call, 0, None) for call in reversed(children.get(None, []))]
    while stack:
        row = stack.pop()
        rows.append(row)
        key = row.call.call_key
        stack.extend(_Row(child, row.depth + 1, key) for child in reversed(children.get(key, [])))
    return rows


def _drawn_parent(call: CallRecord, known: set[str]) -> str | None:
    # Keys nest, so the nearest recorded call whose key leads the missing parent's is an ancestor.
    key = call.parent_key
    while key is not None and key not in known:
        key = key.rpartition(".")[0] or None
    return key


# --- text -----------------------------------------------------------------------------------


def _short(text: str) -> str:
    """``text`` cut to ``SHORT_LENGTH`` characters with an ellipsis, and encodable as UTF-8."""
    # A lone surrogate (from a decoded byte string) would fail when the page is written.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= SHORT_LENGTH else text[: SHORT_LENGTH - 1] + "…"


def _html(text: str) -> str:
    """``text`` shortened and escaped for HTML text or a quoted attribute value."""
    return _attr(_short(text))


def _attr(text: str) -> str:
    """``text`` escaped for a quoted attribute value; line breaks kept for hover text."""
    return html.escape(text, quote=True).replace("\n", "&#10;")


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60} min"


def _offset(frame: _Frame, instant: float) -> str:
    offset = instant - frame.origin
    return f"-{_duration(-offset)}" if offset < 0 else f"+{_duration(offset)}"


def _utc(timestamp: float) -> str:
    if not _FIRST_INSTANT <= timestamp <= _LAST_INSTANT:
        return f"{timestamp} (POSIX timestamp)"
    moment = _EPOCH + timedelta(seconds=timestamp)
    return moment.isoformat(sep=" ", timespec="milliseconds").replace("+00:00", " UTC")


def _lasted(frame: _Frame, started: float, ended: float | None) -> str:
    if ended is not None:
        return _duration(max(ended - started, 0.0))
    return f"≥ {_duration(max(frame.end - started, 0.0))}"


def _lasted_why(frame: _Frame, started: float, ended: float | None, run: RunRecord) -> str:
    """How long an interval lasted, saying why when it has no end."""
    if ended is not None:
        return _lasted(frame, started, ended)
    still = "still running" if run.status == "running" else "no end recorded"
    return f"{_lasted(frame, started, ended)} ({still})"


def _status_label(status: str, run: RunRecord) -> str:
    # A call left "running" in a run that has ended never finished: its process stopped.
    return "unfinished" if status == "running" and run.status != "running" else status


def _call_details(call: CallRecord, frame: _Frame, run: RunRecord) -> str:
    lines = [
        f"{_short(call.name)} · call {call.call_key}",
        f"status: {_status_label(call.status, run)}"
        + (" (replayed from the journal)" if call.replayed else ""),
        f"made in: {'call ' + call.parent_key if call.parent_key else 'the run body'}",
        f"started: {_offset(frame, call.started)}",
        f"duration: {_lasted_why(frame, call.started, call.ended, run)}",
        f"attempts: {len(call.attempts)}",
        *(_attempt_line(attempt, frame, run) for attempt in call.attempts),
        *_outcome_lines(call),
    ]
    return "\n".join(lines)


def _attempt_line(attempt: AttemptRecord, frame: _Frame, run: RunRecord) -> str:
    line = f"  #{attempt.number} at {_offset(frame, attempt.started)}"
    line += f", {_lasted_why(frame, attempt.started, attempt.ended, run)}"
    if attempt.error is not None:
        line += f", {_short(attempt.error)}"
    if attempt.delay is not None:
        line += f", then a {_duration(attempt.delay)} wait"
    return line


def _run_details(run: RunRecord, frame: _Frame) -> str:
    lines = [
        f"run {_short(run.run_id)}",
        f"body: {_short(run.body)}",
        f"status: {run.status}",
        f"started: {_utc(run.started)}",
        f"duration: {_lasted_why(frame, run.started, run.ended, run)}",
        *_outcome_lines(run),
    ]
    return "\n".join(lines)


def _outcome_lines(record: RunRecord | CallRecord) -> Iterator[str]:
    yield f"args: {_short(record.args) or '(none)'}"
    if record.result is not None:
        yield f"result: {_short(record.result)}"
    if record.error is not None:
        yield f"error: {_short(record.error)}"


# --- HTML -----------------------------------------------------------------------------------

_STYLE = """
:root {
  --ok: #2e9a57; --ok-tint: #d3efdd; --failed: #d1423f; --failed-tint: #f9d9d8;
  --cancelled: #c4870c; --cancelled-tint: #f7e8c8; --running: #3477d4; --running-tint: #d8e6f9;
  --replayed: #7b5bc4; --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --grid: #e6eaef;
}
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px; color: var(--ink); background: #fff;
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 18px; font-weight: 600; margin: 0 0 8px; }
.run-id, .facts dd, .key { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0 0 12px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 0 0 10px; color: var(--muted); }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.legend .swatch { position: relative; top: auto; bottom: auto; display: inline-block;
  width: 26px; min-width: 0; height: 12px; border-radius: 3px; }
.chart { border: 1px solid var(--line); border-radius: 6px; }
.row { display: grid; height: 22px; align-items: center; border-bottom: 1px solid #f0f2f4;
  grid-template-columns: minmax(10rem, 22rem) 6.5rem 3.2rem 6.5rem minmax(0, 1fr);
  content-visibility: auto; contain-intrinsic-size: auto 22px; }
.row > div { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; padding: 0 6px; }
.rows .row:nth-child(even) { background: #fafbfc; }
.rows .row:hover { background: #eef3fa; }
.axis { position: sticky; top: 0; z-index: 2; height: 30px; background: #f6f8fa;
  border-bottom: 1px solid var(--line); font-weight: 600; color: var(--muted);
  content-visibility: visible; }
.row.run { font-weight: 600; border-bottom: 1px solid var(--line); }
.label { padding-left: calc(min(var(--depth), 14) * 14px + 6px) !important; }
.key { margin-left: 8px; color: var(--muted); font-size: 11px; font-weight: 400; }
.tag { margin-left: 6px; padding: 0 5px; border-radius: 7px; font-size: 10px; line-height: 14px;
  color: var(--replayed); border: 1px solid var(--replayed); }
.tries, .dur { text-align: right; color: var(--muted); font-variant-numeric: tabular-nums; }
.empty { padding: 10px; color: var(--muted); }
.badge { display: inline-block; padding: 0 7px; border-radius: 8px; font-size: 11px;
  line-height: 16px; font-weight: 500; }
.badge.succeeded { color: var(--ok); background: var(--ok-tint); }
.badge.failed { color: #fff; background: var(--failed); }
.badge.cancelled { color: #fff; background: var(--cancelled); }
.badge.running { color: var(--running); background: var(--running-tint); }
.track { position: relative; height: 100%; margin-right: 28px; padding: 0 !important;
  overflow: visible !important;
  background: repeating-linear-gradient(to right, var(--grid) 0 1px, transparent 1px var(--tick)); }
.axis .track { background: none; }
.tick { position: absolute; bottom: 4px; transform: translateX(-50%); font-size: 11px;
  font-weight: 500; }
.tick::after { content: ""; position: absolute; left: 50%; bottom: -4px; height: 4px;
  border-left: 1px solid var(--muted); }
.tick:first-child { transform: none; }
.tick:first-child::after { left: 0; }
.bar { position: absolute; top: 4px; bottom: 4px; min-width: 2px; border-radius: 3px;
  overflow: hidden; }
.bar.succeeded { background: var(--ok); }
.bar.failed { background: var(--failed); }
.bar.cancelled { background: var(--cancelled); }
.bar.running { background: var(--running); }
.bar.split.succeeded { background: var(--ok-tint); }
.bar.split.failed { background: var(--failed-tint); }
.bar.split.cancelled { background: var(--cancelled-tint); }
.bar.split.running { background: var(--running-tint); }
.bar.replayed { background: repeating-linear-gradient(135deg, var(--ok-tint) 0 4px, #fff 4px 7px);
  outline: 1px dashed var(--replayed); outline-offset: -1px; }
.bar.open { min-width: 30px; border-radius: 3px 0 0 3px;
  -webkit-mask-image: linear-gradient(to right, #000 calc(100% - 30px), transparent);
  mask-image: linear-gradient(to right, #000 calc(100% - 30px), transparent); }
.seg { position: absolute; top: 0; bottom: 0; min-width: 1px; }
.seg.attempt + .seg.attempt { border-left: 1px solid #fff; }
.seg.succeeded { background: var(--ok); }
.seg.failed { background: var(--failed); }
.seg.cancelled { background: var(--cancelled); }
.seg.running { background: var(--running); }
.seg.wait { background: repeating-linear-gradient(135deg, #8c959f 0 2px, transparent 2px 5px); }
.note { position: absolute; top: 3px; line-height: 16px; font-size: 11px; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; padding: 0 6px; }
.note.failed { color: var(--failed); }
.note.cancelled { color: var(--cancelled); }
.note.inside { background: rgba(255, 255, 255, 0.88); border-radius: 3px; margin-left: 4px; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{header}
{legend}
<div class="chart" style="--tick: {tick}">
<div class="row axis"><div class="label" style="--depth: 0">call</div><div class="state">status\
</div><div class="tries">tries</div><div class="dur">duration</div><div class="track">{ticks}\
</div></div>
<div class="rows">
{rows}
</div>
</div>
</body>
</html>
"""

_LEGEND = (
    '<div class="legend">'
    '<span><i class="swatch seg succeeded"></i>succeeded</span>'
    '<span><i class="swatch seg failed"></i>failed (attempt or call)</span>'
    '<span><i class="swatch seg wait"></i>wait before a retry</span>'
    '<span><i class="swatch seg cancelled"></i>cancelled</span>'
    '<span><i class="swatch bar running open"></i>running or unfinished</span>'
    '<span><i class="swatch bar replayed"></i>replayed from the journal</span>'
    "<span>hover a row or a segment for details</span>"
    "</div>"
)

_ROW = (
    '<div class="row {classes}"{data} title="{title}">'
    '<div class="label" style="--depth: {indent}"><span class="name">{name}</span>'
    '<span class="key">{key}</span>{tag}</div>'
    '<div class="state"><span class="badge {status}">{status_label}</span></div>'
    '<div class="tries">{tries}</div><div class="dur">{duration}</div>'
    '<div class="track">{bar}</div></div>'
)

_TAG_REPLAYED = '<span class="tag">replayed</span>'
_NO_CALLS = '<div class="empty">No action calls were recorded in this run.</div>'


def render_html(run: RunRecord, calls: Sequence[CallRecord]) -> str:
    """Render a run as one self-contained HTML page: a Gantt chart of its action calls.

    The page has a time axis with ticks and one row per call, under the call it was made from
    and in key order (positions numerically, then explicit parts). Each bar shows the call's
    attempts as segments with the waits between them hatched; failures and cancellations are
    coloured and labelled, replayed calls marked, calls without an end drawn open-ended.
    Hovering a row shows the call's details.
    Every value from the records is shortened and escaped; the page loads nothing and runs
    no script.

    Args:
        run: The run to draw.
        calls: Its action calls, in any order.

    Returns:
        The HTML document.

    Raises:
        TypeError: ``run``, ``calls`` or one of their fields has the wrong type.
        ValueError: A field has an impossible value: an unknown status, a malformed or repeated
            call key, a parent key that does not lead the call's key, a non-finite timestamp,
            or a call of another run.

    """
    run, records = _checked(run, calls)
    frame = _frame(run, records)
    unit, step = _tick_step(frame.span)
    rows = [_call_row(row, frame, run) for row in _tree(records)] or [_NO_CALLS]
    return _PAGE.format(
        title=_html(f"Run {run.run_id} · timeline"),
        style=_STYLE,
        header=_header(run, records, frame),
        legend=_LEGEND,
        tick=_percent(step / frame.span),
        ticks=_ticks(frame, unit, step),
        rows="\n".join([_run_row(run, frame), *rows]),
    )


def _header(run: RunRecord, calls: Sequence[CallRecord], frame: _Frame) -> str:
    facts = [
        ("body", run.body),
        ("started", _utc(run.started)),
        ("duration", _lasted_why(frame, run.started, run.ended, run)),
        ("calls", _summary(calls, run)),
        ("arguments", run.args or "(none)"),
    ]
    if run.result is not None:
        facts.append(("result", run.result))
    if run.error is not None:
        facts.append(("error", run.error))
    listed = "".join(f"<dt>{name}</dt><dd>{_html(value)}</dd>" for name, value in facts)
    return (
        f'<header><h1>Run <span class="run-id">{_html(run.run_id)}</span> '
        f'<span class="badge {run.status}">{run.status}</span></h1>'
        f'<dl class="facts">{listed}</dl></header>'
    )


def _summary(calls: Sequence[CallRecord], run: RunRecord) -> str:
    counts: dict[str, int] = {}
    for call in calls:
        label = _status_label(call.status, run)
        counts[label] = counts.get(label, 0) + 1
    counts["retried"] = sum(len(call.attempts) > 1 for call in calls)
    counts["replayed"] = sum(call.replayed for call in calls)
    parts = [f"{count} {label}" for label, count in counts.items() if count]
    return f"{len(calls)}" + (f" ({', '.join(parts)})" if parts else "")


_UNITS = (("µs", 1e-6, 1e-3), ("ms", 1e-3, 1.0), ("s", 1.0, 120.0), ("min", 60.0, 7200.0))


def _tick_step(span: float) -> tuple[tuple[str, float], float]:
    """The unit (name, seconds) to label ticks in, and a step of 1, 2 or 5 times a power of 10.

    The step is the smallest such that makes at most 9 ticks; there are at least 4.
    """
    unit = next(((name, size) for name, size, below in _UNITS if span < below), ("h", 3600.0))
    rough = span / unit[1] / 8
    power = 10 ** math.floor(math.log10(rough))
    factor = next(f for f in (1, 2, 5, 10) if f * power >= rough * (1 - 1e-9))
    return unit, factor * power * unit[1]


def _ticks(frame: _Frame, unit: tuple[str, float], step: float) -> str:
    count = math.floor(frame.span / step * (1 + 1e-9)) + 1
    return "".join(
        f'<span class="tick" style="left: {_percent(index * step / frame.span)}">'
        f"{round(index * step / unit[1], 9):g} {unit[0]}</span>"
        for index in range(count)
    )


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3f}%"


def _run_row(run: RunRecord, frame: _Frame) -> str:
    return _ROW.format(
        classes=f"run {run.status}",
        data="",
        title=_attr(_run_details(run, frame)),
        indent=0,
        name=_html(run.body),
        key="run",
        tag="",
        status=run.status,
        status_label=run.status,
        tries="",
        duration=_lasted(frame, run.started, run.ended),
        bar=_bar(run, run.status, frame),
    )


def _call_row(row: _Row, frame: _Frame, run: RunRecord) -> str:
    call = row.call
    classes = call.status + (" replayed" if call.replayed else "")
    return _ROW.format(
        classes=f"call {classes}",
        data=f' data-key="{_attr(call.call_key)}" data-depth="{row.depth}"',
        title=_attr(_call_details(call, frame, run)),
        indent=row.depth + 1,
        name=_html(call.name),
        key=_attr(call.call_key),
        tag=_TAG_REPLAYED if call.replayed else "",
        status=call.status,
        status_label=_status_label(call.status, run),
        tries=len(call.attempts) if len(call.attempts) > 1 else "",
        duration=_lasted(frame, call.started, call.ended),
        bar=_bar(
            call,
            classes + (" split" if call.attempts else ""),
            frame,
            segments=_segments(call, frame, run),
        ),
    )


def _bar(record: RunRecord | CallRecord, classes: str, frame: _Frame, *, segments: str = "") -> str:
    left = frame.fraction(record.started)
    right = frame.fraction(frame.close(record.started, record.ended))
    opened = " open" if record.ended is None else ""
    bar = (
        f'<div class="bar {classes}{opened}" '
        f'style="left: {_percent(left)}; width: {_percent(right - left)}">{segments}</div>'
    )
    return bar + _note(record, left, right)


def _note(record: RunRecord | CallRecord, left: float, right: float) -> str:
    """The label beside a failed or cancelled bar: the error, or the status when there is none."""
    if record.status not in ("failed", "cancelled"):
        return ""
    # After the bar when there is room, before it otherwise, and over it when it fills the axis.
    if right <= 0.7:
        where = f"left: {_percent(right)}; max-width: {_percent(1 - right)}"
        side = ""
    elif left >= 0.3:
        where = f"right: {_percent(1 - left)}; max-width: {_percent(left)}"
        side = ""
    else:
        where = f"left: {_percent(left)}; max-width: {_percent(right - left)}"
        side = " inside"
    text = _html(record.error or record.status)
    return f'<span class="note {record.status}{side}" style="{where}">{text}</span>'


def _segments(call: CallRecord, frame: _Frame, run: RunRecord) -> str:
    """One segment per attempt and one per scheduled wait, positioned within the call's bar."""
    start = call.started
    length = frame.close(start, call.ended) - start
    total = len(call.attempts)
    parts: list[str] = []
    for index, attempt in enumerate(call.attempts):
        ended = frame.close(attempt.started, attempt.ended)
        kind = _attempt_kind(call, attempt, last=index == total - 1)
        title = _attempt_title(call, attempt, total, frame, run)
        parts.append(_segment(f"attempt {kind}", attempt.started, ended, start, length, title))
        if attempt.delay is not None and attempt.ended is not None:
            until = call.attempts[index + 1].started if index + 1 < total else start + length
            title = _wait_title(call, attempt.number, attempt.delay, until - attempt.ended)
            parts.append(_segment("wait", attempt.ended, until, start, length, title))
    return "".join(parts)


def _segment(kind: str, begin: float, end: float, start: float, length: float, title: str) -> str:
    def at(instant: float) -> float:
        return min(max((instant - start) / length, 0.0), 1.0) if length > 0 else 0.0

    left, right = at(begin), at(max(end, begin))
    return (
        f'<div class="seg {kind}" title="{_attr(title)}" '
        f'style="left: {_percent(left)}; width: {_percent(right - left)}"></div>'
    )


def _attempt_kind(call: CallRecord, attempt: AttemptRecord, *, last: bool) -> str:
    if attempt.ended is None:
        return "running"
    if last and call.status in ("failed", "cancelled"):
        return call.status
    return "failed" if attempt.error is not None else "succeeded"


def _attempt_title(
    call: CallRecord, attempt: AttemptRecord, total: int, frame: _Frame, run: RunRecord
) -> str:
    lines = [
        f"{_short(call.name)} · call {call.call_key} · attempt {attempt.number} of {total}",
        f"started: {_offset(frame, attempt.started)}",
        f"duration: {_lasted_why(frame, attempt.started, attempt.ended, run)}",
    ]
    if attempt.error is not None:
        lines.append(f"error: {_short(attempt.error)}")
    return "\n".join(lines)


def _wait_title(call: CallRecord, number: int, delay: float, waited: float) -> str:
    return (
        f"{_short(call.name)} · call {call.call_key} · wait after attempt {number}\n"
        f"scheduled: {_duration(delay)}\n"
        f"waited: {_duration(max(waited, 0.0))}"
    )


# --- Chrome trace ---------------------------------------------------------------------------

_PID = 1
_RUN_THREAD = 1


def chrome_trace(run: RunRecord, calls: Sequence[CallRecord]) -> dict[str, Any]:
    """Export a run in the Trace Event Format, for Perfetto and ``chrome://tracing``.

    The run and each call are complete events (``"ph": "X"``) with ``ts`` and ``dur`` in
    microseconds from the run's earliest recorded instant; a call without an end lasts to the
    latest one. Threads are chosen so that a call drawn inside another is one made from it.
    Each failed attempt is also an instant event at its end. The details of each call are in
    its ``args``, values from the records shortened as in the HTML timeline.

    Args:
        run: The run to export.
        calls: Its action calls, in any order.

    Returns:
        A dict ready for ``json.dump``.

    Raises:
        TypeError: ``run``, ``calls`` or one of their fields has the wrong type.
        ValueError: A field has an impossible value, as for ``render_html``.

    """
    run, records = _checked(run, calls)
    frame = _frame(run, records)
    rows = _tree(records)
    threads = _threads(run, rows, frame)
    events: list[dict[str, Any]] = [_run_event(run, frame)]
    for row in rows:
        thread = threads[row.call.call_key]
        events.append(_call_event(row, frame, thread))
        events.extend(_retry_events(row.call, frame, thread))
    return {
        "traceEvents": [*_thread_names(run, max(threads.values())), *events],
        "displayTimeUnit": "ms",
        "otherData": {"run_id": _short(run.run_id), "time_origin": _utc(frame.origin)},
    }


def _us(frame: _Frame, instant: float) -> float:
    return round((instant - frame.origin) * 1e6, 3)


def _interval(frame: _Frame, started: float, ended: float | None) -> tuple[float, float]:
    return _us(frame, started), _us(frame, frame.close(started, ended))


def _threads(run: RunRecord, rows: Sequence[_Row], frame: _Frame) -> dict[str | None, int]:
    """The thread of the run (under key None) and of each call: see the module docstring."""
    spans: dict[str | None, tuple[float, float]] = {None: _interval(frame, run.started, run.ended)}
    threads: dict[str | None, int] = {None: _RUN_THREAD}
    # Each thread with the end of its latest outermost event, soonest free first.
    free = [(spans[None][1], _RUN_THREAD)]
    children_end: dict[str | None, float] = {}
    for row in rows:
        key = row.call.call_key
        start, end = spans[key] = _interval(frame, row.call.started, row.call.ended)
        parent_start, parent_end = spans[row.parent]
        after = children_end.get(row.parent, parent_start)
        if parent_start <= start and end <= parent_end and after <= start:
            threads[key] = threads[row.parent]
            children_end[row.parent] = end
        else:
            threads[key] = _free_thread(free, start, end)
    return threads


def _free_thread(free: list[tuple[float, int]], start: float, end: float) -> int:
    """The thread free soonest if it is free by ``start``, else a new one; booked until ``end``."""
    free_at, thread = free[0]
    if free_at <= start:
        heapq.heapreplace(free, (end, thread))
        return thread
    thread = len(free) + 1
    heapq.heappush(free, (end, thread))
    return thread


def _thread_names(run: RunRecord, count: int) -> Iterator[dict[str, Any]]:
    base = {"ph": "M", "pid": _PID}
    yield {**base, "tid": _RUN_THREAD, "name": "process_name", "args": {"name": _run_name(run)}}
    for thread in range(1, count + 1):
        name = "run body" if thread == _RUN_THREAD else f"side by side {thread - 1}"
        yield {**base, "tid": thread, "name": "thread_name", "args": {"name": name}}
        yield {**base, "tid": thread, "name": "thread_sort_index", "args": {"sort_index": thread}}


def _run_name(run: RunRecord) -> str:
    return _short(f"run {run.run_id}")


def _run_event(run: RunRecord, frame: _Frame) -> dict[str, Any]:
    start, end = _interval(frame, run.started, run.ended)
    return {
        "name": _short(run.body),
        "cat": "run",
        "ph": "X",
        "ts": start,
        "dur": round(end - start, 3),
        "pid": _PID,
        "tid": _RUN_THREAD,
        "args": {
            "run_id": _short(run.run_id),
            "status": run.status,
            "started": run.started,
            "ended": run.ended,
            "args": _short(run.args),
            "result": _maybe_short(run.result),
            "error": _maybe_short(run.error),
        },
    }


def _call_event(row: _Row, frame: _Frame, thread: int) -> dict[str, Any]:
    call = row.call
    start, end = _interval(frame, call.started, call.ended)
    return {
        "name": _short(call.name),
        "cat": call.status,
        "ph": "X",
        "ts": start,
        "dur": round(end - start, 3),
        "pid": _PID,
        "tid": thread,
        "args": {
            "call_key": call.call_key,
            "parent_key": call.parent_key,
            "status": call.status,
            "started": call.started,
            "ended": call.ended,
            "attempts": [_attempt_args(attempt) for attempt in call.attempts],
            "args": _short(call.args),
            "result": _maybe_short(call.result),
            "error": _maybe_short(call.error),
            "replayed": call.replayed,
        },
    }


def _attempt_args(attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started": attempt.started,
        "ended": attempt.ended,
        "error": _maybe_short(attempt.error),
        "delay": attempt.delay,
    }


def _retry_events(call: CallRecord, frame: _Frame, thread: int) -> Iterator[dict[str, Any]]:
    for attempt in call.attempts:
        if attempt.error is None or attempt.ended is None:
            continue
        yield {
            "name": f"attempt {attempt.number} failed",
            "cat": "attempt",
            "ph": "i",
            "s": "t",
            "ts": _us(frame, attempt.ended),
            "pid": _PID,
            "tid": thread,
            "args": {
                "call_key": call.call_key,
                "error": _short(attempt.error),
                "delay": attempt.delay,
            },
        }


def _maybe_short(text: str | None) -> str | None:
    return None if text is None else _short(text)
