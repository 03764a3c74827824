"""The timeline of a run: the HTML Gantt chart and the Chrome trace drawn from its records.

The HTML is parsed with the standard library's ``html.parser`` into a small tree, and every
check reads that tree: the elements, their classes, attributes and text.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator._records import AttemptRecord, CallRecord, RunRecord
from orchestrator._timeline import SHORT_LENGTH, chrome_trace, render_html

T = 1_700_000_000.0
"""The run's start; offsets from it below are multiples of 1/8 s, exact in floating point."""

HOSTILE = (
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '" onmouseover="alert(1)" x=\'',
)

TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "span", "dl", "dt", "dd",
    "div", "i",
}  # fmt: skip
"""Every element the renderer writes; anything else in a page was injected."""

VOID = {"meta", "br", "img", "input", "link", "hr", "area", "base", "col", "embed", "source"}


# --- records ----------------------------------------------------------------------------------


def run_record(**fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "run_id": "r1",
        "body": "app:main",
        "status": "succeeded",
        "started": T,
        "ended": T + 10,
    }
    return RunRecord(**(values | fields))


def call(key: str, start: float, end: float | None, **fields: Any) -> CallRecord:
    """A call of run "r1" made in the call whose key leads ``key``, from T + start to T + end."""
    parent = key.rpartition(".")[0] or None
    values: dict[str, Any] = {
        "run_id": "r1",
        "call_key": key,
        "name": f"step_{key.replace('.', '_')}",
        "parent_key": parent,
        "status": "succeeded" if end is not None else "running",
        "started": T + start,
        "ended": None if end is None else T + end,
    }
    return CallRecord(**(values | fields))


def attempt(number: int, start: float, end: float | None, **fields: Any) -> AttemptRecord:
    return AttemptRecord(number, T + start, None if end is None else T + end, **fields)


def retried_call() -> CallRecord:
    """Call "1": attempt 1 fails at 2, waits until 3; attempt 2 fails at 5, waits; 3 succeeds."""
    return call(
        "1",
        0,
        8,
        attempts=(
            attempt(1, 0, 2, error="OSError: reset", delay=1),
            attempt(2, 3, 5, error="OSError: reset again", delay=2),
            attempt(3, 7, 8),
        ),
    )


# --- a parsed page ----------------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: list[tuple[str, str | None]]
    children: list[Node | str] = field(default_factory=list)

    def attr(self, name: str) -> str:
        values = [value for key, value in self.attrs if key == name]
        assert len(values) == 1, f"<{self.tag}> has {len(values)} {name!r} attributes"
        return values[0] or ""

    @property
    def classes(self) -> set[str]:
        return set(self.attr("class").split()) if self.has("class") else set()

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.attrs)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def all(self, *classes: str, tag: str | None = None) -> list[Node]:
        return [
            node
            for node in self.walk()
            if set(classes) <= node.classes and (tag is None or node.tag == tag)
        ]

    def one(self, *classes: str, tag: str | None = None) -> Node:
        found = self.all(*classes, tag=tag)
        assert len(found) == 1, f"{len(found)} elements with classes {classes} and tag {tag}"
        return found[0]

    def style(self) -> dict[str, str]:
        pairs = (item.split(":", 1) for item in self.attr("style").split(";") if item.strip())
        return {key.strip(): value.strip() for key, value in pairs}

    def percent(self, prop: str) -> float:
        value = self.style()[prop]
        assert value.endswith("%"), value
        return float(value[:-1])


class TreeBuilder(HTMLParser):
    """Builds a Node tree, and fails on an end tag that does not close the open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", [])
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, attrs)
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def page(run: RunRecord, calls: Sequence[CallRecord]) -> Node:
    builder = TreeBuilder()
    builder.feed(render_html(run, calls))
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def rows(root: Node) -> list[Node]:
    return root.all("row", "call")


def row_of(root: Node, key: str) -> Node:
    [found] = [row for row in rows(root) if row.attr("data-key") == key]
    return found


def bar_of(row: Node) -> Node:
    return row.one("bar")


def every_text_and_attribute(root: Node) -> Iterator[str]:
    for node in root.walk():
        yield from (c for c in node.children if isinstance(c, str))
        yield from (value for _, value in node.attrs if value is not None)


# --- HTML: bars, labels, order ----------------------------------------------------------------


def test_html_has_one_bar_per_call() -> None:
    calls = [call("1", 0, 1), call("2", 1, 3), call("2.1", 1, 2), call("3", 3, 4)]
    root = page(run_record(), calls)
    assert len(rows(root)) == 4
    assert all(len(row.all("bar")) == 1 for row in rows(root))


def test_html_labels_each_bar_with_the_call_name_and_key() -> None:
    calls = [call("1", 0, 1, name="fetch_user"), call("1.1", 0, 1, name="decode")]
    root = page(run_record(), calls)
    labels = [(row.one("name").text, row.one("key").text) for row in rows(root)]
    assert labels == [("fetch_user", "1"), ("decode", "1.1")]


def test_html_orders_sibling_calls_by_numeric_key() -> None:
    keys = ["10", "9", "2.10", "2", "2.9", "1", "2.1"]
    root = page(run_record(), [call(key, 0, 1) for key in keys])
    shown = [row.attr("data-key") for row in rows(root)]
    assert shown == ["1", "2", "2.1", "2.9", "2.10", "9", "10"]


def test_html_draws_calls_whose_keys_have_explicit_parts_after_their_positional_siblings() -> None:
    calls = [
        call("2", 0, 4),
        call("2.b", 1, 2, name="fetch_b"),
        call("2.a", 2, 3, name="fetch_a"),
        call("2.1", 3, 4),
        call("user42", 4, 5, name="fetch_user"),
    ]
    root = page(run_record(), calls)
    shown = [(row.attr("data-key"), row.attr("data-depth")) for row in rows(root)]
    assert shown == [("2", "0"), ("2.1", "1"), ("2.a", "1"), ("2.b", "1"), ("user42", "0")]


def test_chrome_trace_exports_calls_whose_keys_have_explicit_parts() -> None:
    trace = chrome_trace(run_record(), [call("1", 0, 2), call("1.user42", 0.5, 1)])
    keys = [e["args"]["call_key"] for e in trace["traceEvents"] if e.get("cat") == "succeeded"]
    assert keys == ["1", "1.user42"]


def test_html_indents_each_call_one_level_below_its_parent() -> None:
    calls = [call("1", 0, 4), call("1.1", 0, 2), call("1.1.1", 0, 1), call("2", 4, 5)]
    root = page(run_record(), calls)
    depths = {row.attr("data-key"): int(row.attr("data-depth")) for row in rows(root)}
    indents = {row.attr("data-key"): row.one("label").style()["--depth"] for row in rows(root)}
    assert depths == {"1": 0, "1.1": 1, "1.1.1": 2, "2": 0}
    assert indents == {"1": "1", "1.1": "2", "1.1.1": "3", "2": "1"}


def test_html_puts_a_group_member_call_made_in_the_run_body_at_the_top_level() -> None:
    calls = [call("1", 0, 1), call("2.1.1", 1, 2, parent_key=None), call("2.2.1", 1, 2)]
    calls[2] = replace(calls[2], parent_key=None)
    root = page(run_record(), calls)
    assert [int(row.attr("data-depth")) for row in rows(root)] == [0, 0, 0]


def test_html_hangs_a_call_whose_parent_was_not_recorded_under_its_nearest_recorded_ancestor() -> (
    None
):
    calls = [call("1", 0, 4), call("1.2.3", 1, 2), call("2", 4, 5)]
    root = page(run_record(), calls)
    order = [(row.attr("data-key"), row.attr("data-depth")) for row in rows(root)]
    assert order == [("1", "0"), ("1.2.3", "1"), ("2", "0")]


def test_html_handles_nesting_deeper_than_the_recursion_limit() -> None:
    depth = sys.getrecursionlimit() + 100
    keys = [".".join(["1"] * level) for level in range(1, depth + 1)]
    root = page(run_record(), [call(key, 0, 1) for key in keys])
    assert int(rows(root)[-1].attr("data-depth")) == depth - 1


def test_html_draws_two_thousand_calls_one_bar_each() -> None:
    calls = [call(f"1.{index}", index / 1000, index / 1000 + 1) for index in range(1, 2001)]
    root = page(run_record(), [call("1", 0, 3), *calls])
    assert len(rows(root)) == 2001
    assert len(root.one("rows").all("bar")) == 2002  # and the run's


# --- HTML: time axis and positions ------------------------------------------------------------


def test_html_time_axis_ticks_from_zero_in_steady_steps() -> None:
    root = page(run_record(ended=T + 10), [])
    ticks = root.one("axis").all("tick")
    assert [tick.text for tick in ticks] == [f"{n} s" for n in range(0, 11, 2)]
    assert [tick.percent("left") for tick in ticks] == pytest.approx([0, 20, 40, 60, 80, 100])


def test_html_time_axis_labels_short_runs_in_milliseconds() -> None:
    root = page(run_record(ended=T + 0.25), [])
    ticks = [tick.text for tick in root.one("axis").all("tick")]
    assert ticks[:3] == ["0 ms", "50 ms", "100 ms"]


def test_html_places_each_bar_at_its_call_times() -> None:
    root = page(run_record(ended=T + 8), [call("1", 2, 6)])
    bar = bar_of(row_of(root, "1"))
    assert bar.percent("left") == pytest.approx(25)
    assert bar.percent("width") == pytest.approx(50)


def test_html_draws_a_call_that_ended_before_it_started_with_no_length() -> None:
    root = page(run_record(ended=T + 8), [call("1", 4, 2)])
    bar = bar_of(row_of(root, "1"))
    assert bar.percent("left") == pytest.approx(50)
    assert bar.percent("width") == 0


# --- HTML: statuses, attempts, replays --------------------------------------------------------


def test_html_colours_and_labels_each_status() -> None:
    calls = [
        call("1", 0, 1),
        call("2", 1, 2, status="failed", error="ValueError: bad"),
        call("3", 2, 3, status="cancelled"),
        call("4", 3, None),
    ]
    root = page(run_record(status="running", ended=None), calls)
    for key, status in [("1", "succeeded"), ("2", "failed"), ("3", "cancelled"), ("4", "running")]:
        row = row_of(root, key)
        assert status in row.classes
        assert status in bar_of(row).classes
        assert row.one("badge").text == status
        assert status in row.one("badge").classes


def test_html_labels_a_failed_bar_with_its_error() -> None:
    calls = [call("1", 0, 1, status="failed", error="ValueError: bad input")]
    note = row_of(page(run_record(), calls), "1").one("note")
    assert note.text == "ValueError: bad input"
    assert "failed" in note.classes


def test_html_labels_a_cancelled_bar_cancelled() -> None:
    note = row_of(page(run_record(), [call("1", 0, 1, status="cancelled")]), "1").one("note")
    assert note.text == "cancelled"
    assert "cancelled" in note.classes


def test_html_draws_one_segment_per_attempt_and_one_per_wait_in_order() -> None:
    bar = bar_of(row_of(page(run_record(), [retried_call()]), "1"))
    kinds = [("attempt" in seg.classes, seg.classes - {"seg", "attempt"}) for seg in bar.all("seg")]
    assert kinds == [
        (True, {"failed"}),
        (False, {"wait"}),
        (True, {"failed"}),
        (False, {"wait"}),
        (True, {"succeeded"}),
    ]


def test_html_places_attempt_and_wait_segments_at_their_times_within_the_bar() -> None:
    bar = bar_of(row_of(page(run_record(), [retried_call()]), "1"))
    spans = [(seg.percent("left"), seg.percent("width")) for seg in bar.all("seg")]
    expected = [(0, 25), (25, 12.5), (37.5, 25), (62.5, 25), (87.5, 12.5)]
    assert spans == [pytest.approx(span) for span in expected]


def test_html_shows_the_number_of_attempts_of_a_retried_call() -> None:
    root = page(run_record(), [retried_call(), call("2", 8, 9, attempts=(attempt(1, 8, 9),))])
    assert row_of(root, "1").one("tries").text == "3"
    assert row_of(root, "2").one("tries").text == ""


def test_html_colours_the_last_attempt_of_a_cancelled_call_cancelled() -> None:
    attempts = (attempt(1, 0, 1, error="OSError: x", delay=1), attempt(2, 2, 3))
    calls = [call("1", 0, 3, status="cancelled", attempts=attempts)]
    segments = bar_of(row_of(page(run_record(), calls), "1")).all("seg", "attempt")
    assert ["failed" in segments[0].classes, "cancelled" in segments[1].classes] == [True, True]


def test_html_draws_a_wait_cut_short_up_to_the_end_of_the_call() -> None:
    attempts = (attempt(1, 0, 2, error="OSError: x", delay=5),)
    calls = [call("1", 0, 4, status="cancelled", attempts=attempts)]
    wait = bar_of(row_of(page(run_record(), calls), "1")).one("wait")
    assert (wait.percent("left"), wait.percent("width")) == pytest.approx((50, 50))
    assert "scheduled: 5.00 s\nwaited: 2.00 s" in wait.attr("title")


def test_html_draws_a_call_without_end_open_to_the_last_recorded_instant() -> None:
    calls = [call("1", 0, 2), call("2", 2, None, attempts=(attempt(1, 2, None),)), call("3", 4, 6)]
    root = page(run_record(status="running", ended=None), calls)
    bar = bar_of(row_of(root, "2"))
    assert "open" in bar.classes
    assert bar.percent("left") + bar.percent("width") == pytest.approx(100)
    assert "running" in bar.one("seg").classes
    assert row_of(root, "2").one("dur").text == "≥ 4.00 s"
    assert "open" not in bar_of(row_of(root, "3")).classes


def test_html_calls_a_running_call_of_an_ended_run_unfinished() -> None:
    root = page(run_record(status="failed"), [call("1", 0, None)])
    row = row_of(root, "1")
    assert row.one("badge").text == "unfinished"
    assert "duration: ≥ 10.00 s (no end recorded)" in row.attr("title")


def test_html_marks_a_replayed_call() -> None:
    root = page(run_record(), [call("1", 0, 1, replayed=True), call("2", 1, 2)])
    assert "replayed" in row_of(root, "1").classes
    assert "replayed" in bar_of(row_of(root, "1")).classes
    assert row_of(root, "1").one("tag").text == "replayed"
    assert row_of(root, "2").all("tag") == []
    assert "(replayed from the journal)" in row_of(root, "1").attr("title")


# --- HTML: hover text, escaping, shortening -------------------------------------------------


def test_html_hover_text_of_a_call_holds_its_details() -> None:
    failing = replace(
        retried_call(), status="failed", args="(42, retries=2)", error="OSError: gave up"
    )
    calls = [call("1", 0, 8), replace(failing, call_key="1.1", parent_key="1", name="fetch")]
    title = row_of(page(run_record(), calls), "1.1").attr("title")
    assert title.splitlines() == [
        "fetch · call 1.1",
        "status: failed",
        "made in: call 1",
        "started: +0 µs",
        "duration: 8.00 s",
        "attempts: 3",
        "  #1 at +0 µs, 2.00 s, OSError: reset, then a 1.00 s wait",
        "  #2 at +3.00 s, 2.00 s, OSError: reset again, then a 2.00 s wait",
        "  #3 at +7.00 s, 1.00 s",
        "args: (42, retries=2)",
        "error: OSError: gave up",
    ]


def test_html_hover_text_shows_the_result_of_a_call() -> None:
    title = row_of(page(run_record(), [call("1", 0, 1, result="{'id': 7}")]), "1").attr("title")
    assert "result: {'id': 7}" in title.splitlines()


def test_html_hover_text_of_an_attempt_holds_its_details() -> None:
    segment = bar_of(row_of(page(run_record(), [retried_call()]), "1")).all("attempt")[1]
    assert segment.attr("title").splitlines() == [
        "step_1 · call 1 · attempt 2 of 3",
        "started: +3.00 s",
        "duration: 2.00 s",
        "error: OSError: reset again",
    ]


def test_html_header_describes_the_run() -> None:
    run = run_record(run_id="nightly-7", status="failed", args="('x',)", error="KeyError: 'k'")
    calls = [
        call("1", 0, 1, run_id="nightly-7"),
        call("2", 1, 2, run_id="nightly-7", status="failed"),
    ]
    root = page(run, calls)
    facts = zip(root.all(tag="dt"), root.all(tag="dd"), strict=True)
    described = {term.text: value.text for term, value in facts}
    assert root.one("run-id").text == "nightly-7"
    assert described == {
        "body": "app:main",
        "started": "2023-11-14 22:13:20.000 UTC",
        "duration": "10.00 s",
        "calls": "2 (1 succeeded, 1 failed)",
        "arguments": "('x',)",
        "error": "KeyError: 'k'",
    }


HOSTILE_PLACES: dict[str, Callable[[str], tuple[RunRecord, list[CallRecord]]]] = {
    "run id": lambda v: (run_record(run_id=v), [call("1", 0, 1, run_id=v)]),
    "run body": lambda v: (run_record(body=v), []),
    "run args": lambda v: (run_record(args=v), []),
    "run result": lambda v: (run_record(result=v), []),
    "run error": lambda v: (run_record(status="failed", error=v), []),
    "call name": lambda v: (run_record(), [call("1", 0, 1, name=v)]),
    "call args": lambda v: (run_record(), [call("1", 0, 1, args=v)]),
    "call result": lambda v: (run_record(), [call("1", 0, 1, result=v)]),
    "call error": lambda v: (run_record(), [call("1", 0, 1, status="failed", error=v)]),
    "attempt error": lambda v: (
        run_record(),
        [call("1", 0, 2, attempts=(attempt(1, 0, 1, error=v, delay=1), attempt(2, 1, 2)))],
    ),
}


@pytest.mark.parametrize("value", HOSTILE, ids=["script", "img", "attribute"])
@pytest.mark.parametrize("place", HOSTILE_PLACES)
def test_html_shows_a_hostile_value_as_text_and_injects_nothing(place: str, value: str) -> None:
    root = page(*HOSTILE_PLACES[place](value))
    elements = list(root.walk())[1:]
    assert {node.tag for node in elements} <= TAGS
    assert [name for node in elements for name, _ in node.attrs if name.startswith("on")] == []
    assert any(value in text for text in every_text_and_attribute(root))


@pytest.mark.parametrize("value", HOSTILE, ids=["script", "img", "attribute"])
def test_html_shows_a_hostile_call_name_literally_in_its_label(value: str) -> None:
    root = page(run_record(), [call("1", 0, 1, name=value)])
    assert rows(root)[0].one("name").text == value


@pytest.mark.parametrize("value", HOSTILE, ids=["script", "img", "attribute"])
def test_html_shows_a_hostile_run_id_literally_in_the_heading_and_title(value: str) -> None:
    root = page(run_record(run_id=value), [])
    assert root.one("run-id").text == value
    assert root.one(tag="title").text == f"Run {value} · timeline"


def test_html_shortens_a_long_name_in_its_label() -> None:
    name = "n" * 500
    label = rows(page(run_record(), [call("1", 0, 1, name=name)]))[0].one("name").text
    assert label == "n" * (SHORT_LENGTH - 1) + "…"


def test_html_shortens_long_values_in_hover_text() -> None:
    long = {"args": "a" * 500, "result": "r" * 500, "error": "e" * 500}
    title = row_of(page(run_record(), [call("1", 0, 1, **long)]), "1").attr("title")
    lines = title.splitlines()
    for name, value in long.items():
        assert f"{name}: {value[: SHORT_LENGTH - 1]}…" in lines
    assert all(len(line) <= SHORT_LENGTH + len("result: ") for line in lines)


def test_html_shortens_long_values_everywhere_on_the_page() -> None:
    long = "x" * 1000
    run = run_record(run_id=long, body=long, args=long, status="failed", error=long)
    calls = [call("1", 0, 1, run_id=long, name=long, args=long, status="failed", error=long)]
    root = page(run, calls)
    assert max(len(text) for text in every_text_and_attribute(root) if "x" * 10 in text) < 2000
    assert not any("x" * SHORT_LENGTH in text for text in every_text_and_attribute(root))


def test_html_with_a_lone_surrogate_can_be_written_as_utf_8() -> None:
    text = render_html(run_record(), [call("1", 0, 1, args="b'\\xff' -> \udcff")])
    assert "\\udcff" in text
    text.encode("utf-8")


def test_html_loads_nothing_and_runs_no_script() -> None:
    root = page(run_record(), [retried_call(), call("2", 8, None, replayed=True)])
    assert root.all(tag="script") == []
    assert root.all(tag="link") == []
    assert not any(node.has("src") or node.has("href") for node in root.walk())
    style = root.one(tag="style").text
    assert "url(" not in style
    assert "@import" not in style
    csp = [node for node in root.all(tag="meta") if node.has("http-equiv")]
    assert [node.attr("content") for node in csp] == [
        "default-src 'none'; style-src 'unsafe-inline'"
    ]


def test_html_of_a_run_without_calls_has_the_run_row_and_says_so() -> None:
    root = page(run_record(ended=T), [])
    assert rows(root) == []
    assert root.one("row", "run").one("name").text == "app:main"
    assert root.one("empty").text == "No action calls were recorded in this run."


# --- Chrome trace -----------------------------------------------------------------------------


def complete_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [event for event in trace["traceEvents"] if event["ph"] == "X"]


def call_events(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["args"]["call_key"]: e for e in complete_events(trace) if e["cat"] != "run"}


def test_chrome_trace_survives_a_strict_json_round_trip() -> None:
    calls = [retried_call(), call("2", 8, None, replayed=True, result="'ok'")]
    trace = chrome_trace(run_record(status="running", ended=None), calls)
    assert json.loads(json.dumps(trace, allow_nan=False)) == trace


def test_chrome_trace_has_one_complete_event_per_call_in_microseconds() -> None:
    calls = [call("1", 0.5, 2), call("1.1", 0.75, 1.25), call("2", 2, 9.875)]
    events = call_events(chrome_trace(run_record(), calls))
    timing = {key: (event["ts"], event["dur"]) for key, event in events.items()}
    assert timing == {
        "1": (500_000, 1_500_000),
        "1.1": (750_000, 500_000),
        "2": (2_000_000, 7_875_000),
    }


def test_chrome_trace_has_the_run_as_the_outermost_event_of_the_first_thread() -> None:
    trace = chrome_trace(run_record(), [call("1", 0, 1)])
    [run] = [event for event in complete_events(trace) if event["cat"] == "run"]
    assert (run["name"], run["ts"], run["dur"], run["tid"]) == ("app:main", 0, 10_000_000, 1)


def test_chrome_trace_keeps_sequential_calls_on_the_thread_of_their_parent() -> None:
    calls = [call("1", 0, 4), call("1.1", 0, 2), call("1.2", 2, 4), call("2", 4, 5)]
    events = call_events(chrome_trace(run_record(), calls))
    assert {key: event["tid"] for key, event in events.items()} == dict.fromkeys(events, 1)


def test_chrome_trace_puts_calls_running_side_by_side_on_separate_threads() -> None:
    calls = [call("1", 0, 5), call("1.1.1", 0, 4), call("1.2.1", 0, 5), call("1.3.1", 1, 3)]
    events = call_events(chrome_trace(run_record(), calls))
    threads = {key: event["tid"] for key, event in events.items()}
    assert threads["1.1.1"] == threads["1"] == 1
    assert len({threads["1.1.1"], threads["1.2.1"], threads["1.3.1"]}) == 3


def test_chrome_trace_reuses_a_thread_once_it_is_free() -> None:
    calls = [call("1.1", 0, 2), call("1.2", 0, 2), call("2.1", 3, 4), call("2.2", 3, 4)]
    calls = [replace(c, parent_key=None) for c in calls]
    events = call_events(chrome_trace(run_record(ended=T + 4), calls))
    threads = {key: event["tid"] for key, event in events.items()}
    assert threads == {"1.1": 1, "1.2": 2, "2.1": 1, "2.2": 2}


def test_chrome_trace_names_its_process_and_threads() -> None:
    calls = [call(key, 0, 2, parent_key=None, run_id="nightly") for key in ("1.1", "1.2")]
    trace = chrome_trace(run_record(run_id="nightly"), calls)
    names = {
        (event["name"], event["tid"]): event["args"]["name"]
        for event in trace["traceEvents"]
        if event["ph"] == "M" and event["name"] != "thread_sort_index"
    }
    assert names == {
        ("process_name", 1): "run nightly",
        ("thread_name", 1): "run body",
        ("thread_name", 2): "side by side 1",
    }


def test_chrome_trace_args_hold_the_call_details() -> None:
    failing = replace(retried_call(), status="failed", args="(1,)", error="OSError: gave up")
    args = call_events(chrome_trace(run_record(), [failing]))["1"]["args"]
    assert args == {
        "call_key": "1",
        "parent_key": None,
        "status": "failed",
        "started": T,
        "ended": T + 8,
        "attempts": [
            {"number": 1, "started": T, "ended": T + 2, "error": "OSError: reset", "delay": 1},
            {"number": 2, "started": T + 3, "ended": T + 5, "error": "OSError: reset again",
             "delay": 2},
            {"number": 3, "started": T + 7, "ended": T + 8, "error": None, "delay": None},
        ],
        "args": "(1,)",
        "result": None,
        "error": "OSError: gave up",
        "replayed": False,
    }  # fmt: skip


def test_chrome_trace_marks_each_failed_attempt_with_an_instant_event() -> None:
    trace = chrome_trace(run_record(), [retried_call()])
    instants = [event for event in trace["traceEvents"] if event["ph"] == "i"]
    assert [(event["name"], event["ts"], event["tid"]) for event in instants] == [
        ("attempt 1 failed", 2_000_000, 1),
        ("attempt 2 failed", 5_000_000, 1),
    ]


def test_chrome_trace_lets_a_call_without_end_last_to_the_last_recorded_instant() -> None:
    calls = [call("1", 1, None), call("2", 1, 6)]
    events = call_events(chrome_trace(run_record(status="running", ended=None), calls))
    assert (events["1"]["ts"], events["1"]["dur"]) == (1_000_000, 5_000_000)
    assert events["1"]["args"]["ended"] is None


def test_chrome_trace_shortens_long_values() -> None:
    event = call_events(chrome_trace(run_record(), [call("1", 0, 1, args="a" * 500)]))["1"]
    assert event["args"]["args"] == "a" * (SHORT_LENGTH - 1) + "…"


def test_chrome_trace_of_a_run_without_calls_has_just_the_run() -> None:
    trace = chrome_trace(run_record(ended=None, status="running"), [])
    assert [(event["cat"], event["ts"], event["dur"]) for event in complete_events(trace)] == [
        ("run", 0, 0)
    ]


@st.composite
def call_trees(draw: st.DrawFn) -> list[CallRecord]:
    """Calls under random parents, at random times: inside their parent or not, ended or not."""
    calls: list[CallRecord] = []
    children: dict[str | None, int] = {}
    for _ in range(draw(st.integers(0, 30))):
        parent = draw(st.sampled_from([None, *(c.call_key for c in calls)]))
        children[parent] = children.get(parent, 0) + 1
        key = f"{parent}.{children[parent]}" if parent else str(children[parent])
        base = 0.0 if parent is None else next(c.started - T for c in calls if c.call_key == parent)
        start = base + draw(st.integers(-2, 16)) / 8
        end = (
            None
            if draw(st.booleans()) and draw(st.booleans())
            else start + draw(st.integers(0, 24)) / 8
        )
        calls.append(call(key, start, end, parent_key=parent))
    return calls


def ancestors(key: str | None, parents: dict[str, str | None]) -> Iterator[str | None]:
    while key is not None:
        key = parents[key]
        yield key


@settings(max_examples=300, deadline=None, derandomize=True)
@given(call_trees())
def test_chrome_trace_nests_events_on_a_thread_only_as_caller_and_callee(
    calls: list[CallRecord],
) -> None:
    events = complete_events(chrome_trace(run_record(ended=T + 3), calls))
    parents = {c.call_key: c.parent_key for c in calls}
    spans = [(e["tid"], e["ts"], e["ts"] + e["dur"], e["args"].get("call_key")) for e in events]
    assert len(spans) == len(calls) + 1
    for index, (tid, start, end, key) in enumerate(spans):
        for other_tid, other_start, other_end, other_key in spans[index + 1 :]:
            if tid != other_tid or end <= other_start or other_end <= start:
                continue
            # Overlapping on one thread: the earlier event holds the later one and made it.
            assert start <= other_start
            assert other_end <= end
            assert key in ancestors(other_key, parents)


# --- bad input --------------------------------------------------------------------------------

RENDERERS = pytest.mark.parametrize("render", [render_html, chrome_trace])


@RENDERERS
def test_a_run_that_is_not_a_run_record_is_refused(render: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match=r"^run must be a RunRecord, got 'r1'$"):
        render("r1", [])


@RENDERERS
def test_calls_that_are_not_a_sequence_are_refused(render: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match=r"^calls must be a sequence of CallRecord, got None$"):
        render(run_record(), None)


@RENDERERS
def test_a_call_that_is_not_a_call_record_is_refused(render: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match=r"^calls\[1\] must be a CallRecord, got 'x'$"):
        render(run_record(), [call("1", 0, 1), "x"])


@RENDERERS
def test_a_call_of_another_run_is_refused(render: Callable[..., object]) -> None:
    message = r"^calls\[0\]\.run_id must be the run's id 'r1', got 'r2'$"
    with pytest.raises(ValueError, match=message):
        render(run_record(), [call("1", 0, 1, run_id="r2")])


@RENDERERS
def test_a_repeated_call_key_is_refused(render: Callable[..., object]) -> None:
    message = (
        r"^calls\[2\]\.call_key must be unique in the run, got '2', the key of calls\[1\] too$"
    )
    with pytest.raises(ValueError, match=message):
        render(run_record(), [call("1", 0, 1), call("2", 1, 2), call("2", 2, 3)])


@RENDERERS
@pytest.mark.parametrize("key", ["", "0", "1.0", "01", "1.", ".1", "1..2", "2.007"])
def test_a_malformed_call_key_is_refused(render: Callable[..., object], key: str) -> None:
    message = (
        r"^calls\[0\]\.call_key must be dot-separated parts, each a position from 1 or an "
        r"explicit part \(no dots, not all digits\), such as '3', '3\.2\.1' or '2\.user42', "
        rf"got {re.escape(repr(key))}$"
    )
    with pytest.raises(ValueError, match=message):
        render(run_record(), [call("1", 0, 1, call_key=key, parent_key=None)])


@RENDERERS
@pytest.mark.parametrize("parent", ["2", "1.2", "1.2.3", "", "1."])
def test_a_parent_key_that_does_not_lead_the_call_key_is_refused(
    render: Callable[..., object], parent: str
) -> None:
    message = (
        r"^calls\[0\]\.parent_key must be None or the key of a call that '1\.2' was made in, "
        rf"a leading part of that key, got {re.escape(repr(parent))}$"
    )
    with pytest.raises(ValueError, match=message):
        render(run_record(), [call("1.2", 0, 1, parent_key=parent)])


@RENDERERS
def test_an_unknown_status_is_refused(render: Callable[..., object]) -> None:
    message = (
        r"^calls\[0\]\.status must be 'running', 'succeeded', 'failed' or 'cancelled', "
        r"got 'done'$"
    )
    with pytest.raises(ValueError, match=message):
        render(run_record(), [call("1", 0, 1, status="done")])


@RENDERERS
def test_an_unknown_run_status_is_refused(render: Callable[..., object]) -> None:
    with pytest.raises(ValueError, match=r"^run\.status must be 'running', .* got 'ok'$"):
        render(run_record(status="ok"), [])


@RENDERERS
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_timestamp_that_is_not_finite_is_refused(
    render: Callable[..., object], value: float
) -> None:
    message = rf"^calls\[0\]\.ended must be a finite POSIX timestamp, got {value!r}$"
    with pytest.raises(ValueError, match=message):
        render(run_record(), [replace(call("1", 0, 1), ended=value)])


@RENDERERS
@pytest.mark.parametrize("value", ["0", True, None])
def test_a_timestamp_that_is_not_a_number_is_refused(
    render: Callable[..., object], value: object
) -> None:
    message = rf"^run\.started must be a POSIX timestamp, got {re.escape(repr(value))}$"
    with pytest.raises(TypeError, match=message):
        render(run_record(started=value), [])


@RENDERERS
def test_a_text_field_that_is_not_a_string_is_refused(render: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match=r"^calls\[0\]\.args must be a string, got \(1,\)$"):
        render(run_record(), [call("1", 0, 1, args=(1,))])


@RENDERERS
def test_an_optional_text_field_that_is_not_a_string_is_refused(
    render: Callable[..., object],
) -> None:
    message = r"^run\.result must be a string or None, got 42$"
    with pytest.raises(TypeError, match=message):
        render(run_record(result=42), [])


@RENDERERS
def test_attempts_that_are_not_attempt_records_are_refused(render: Callable[..., object]) -> None:
    message = r"^calls\[0\]\.attempts\[0\] must be an AttemptRecord, got 1$"
    with pytest.raises(TypeError, match=message):
        render(run_record(), [call("1", 0, 1, attempts=(1,))])


@RENDERERS
def test_attempts_that_are_not_a_sequence_are_refused(render: Callable[..., object]) -> None:
    message = r"^calls\[0\]\.attempts must be a tuple of AttemptRecord, got None$"
    with pytest.raises(TypeError, match=message):
        render(run_record(), [call("1", 0, 1, attempts=None)])


@RENDERERS
def test_an_attempt_number_below_one_is_refused(render: Callable[..., object]) -> None:
    message = r"^calls\[0\]\.attempts\[0\]\.number must be 1 or more, got 0$"
    with pytest.raises(ValueError, match=message):
        render(run_record(), [call("1", 0, 1, attempts=(attempt(0, 0, 1),))])


@RENDERERS
def test_a_negative_wait_is_refused(render: Callable[..., object]) -> None:
    message = r"^calls\[0\]\.attempts\[0\]\.delay must be zero or more seconds, got -1$"
    with pytest.raises(ValueError, match=message):
        render(run_record(), [call("1", 0, 1, attempts=(attempt(1, 0, 1, delay=-1),))])


@RENDERERS
def test_a_replayed_flag_that_is_not_a_bool_is_refused(render: Callable[..., object]) -> None:
    message = r"^calls\[0\]\.replayed must be True or False, got 1$"
    with pytest.raises(TypeError, match=message):
        render(run_record(), [call("1", 0, 1, replayed=1)])
