"""docs/errors.md, the bad-input catalogue, is exact: each row raises what it says.

The test reads the catalogue itself: the ``python`` block under "## Setup" and every table row
(misuse, code, exception type, message). For each row it runs the setup in a fresh namespace
(as a module named ``example``, in ``sys.modules`` meanwhile, compiled without this file's
``__future__`` imports), runs the row's code, and asserts that exactly the listed type was raised
with exactly the listed message, after writing each hexadecimal address in the real message as
``0x...``, as the catalogue does. Each row runs in an empty temporary directory, made the current
directory meanwhile, whose path a message shows as ``.``.
"""

from __future__ import annotations

import builtins
import inspect
import os
import re
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import orchestrator
from orchestrator import set_testing

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

GROUPS = (
    "Actions",
    "Retry policy",
    "Timeouts",
    "Hooks",
    "State and context",
    "Runs",
    "Parallel and map",
    "Executors, interceptors and call keys",
    "Durable runs",
    "Testing helpers",
    "Observability",
)
"""The sections the catalogue must have, in this order."""

HEADER = ["Misuse", "Code", "Raises", "Message"]

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


class Row(NamedTuple):
    group: str
    line: int
    misuse: str
    code: str
    raises: str
    message: str


def _code_span(cell: str, line: int) -> str:
    """The text of a cell that is one Markdown code span (single or double backticks)."""
    cell = cell.replace("\\|", "|")
    if cell.startswith("`` ") and cell.endswith(" ``") and len(cell) > 6:
        return cell[3:-3]
    if cell.startswith("`") and cell.endswith("`") and not cell.startswith("``"):
        return cell[1:-1]
    raise AssertionError(f"errors.md line {line}: expected a code span, got {cell!r}")


def _parse(text: str) -> tuple[str, list[Row]]:
    setup = re.search(r"^## Setup\n.*?^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert setup is not None, "errors.md has no ```python block under '## Setup'"
    rows: list[Row] = []
    group = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.startswith("## "):
            group = raw[3:].strip()
            continue
        if not raw.startswith("|"):
            continue
        cells = [cell.strip() for cell in _CELL_SPLIT.split(raw.strip())[1:-1]]
        if cells == HEADER or all(set(cell) <= set("-: ") for cell in cells):
            continue
        assert len(cells) == 4, f"errors.md line {number}: expected 4 cells, got {cells!r}"
        rows.append(
            Row(
                group,
                number,
                cells[0],
                _code_span(cells[1], number),
                _code_span(cells[2], number),
                _code_span(cells[3], number),
            )
        )
    return setup.group(1), rows


SETUP, ROWS = _parse(CATALOGUE.read_text(encoding="utf-8"))


def _exception_type(name: str) -> type[BaseException]:
    found = getattr(orchestrator, name, None) or getattr(builtins, name, None)
    assert isinstance(found, type), f"{name!r} is neither an orchestrator nor a builtin name"
    assert issubclass(found, BaseException), f"{name!r} is not an exception type"
    return found


def _namespace(monkeypatch: pytest.MonkeyPatch, folder: Path) -> dict[str, Any]:
    # Journal files the setup and the rows make go to a directory of their own.
    monkeypatch.chdir(folder)
    # A real module in sys.modules, as dataclasses look their class's module up there.
    module = types.ModuleType("example")
    monkeypatch.setitem(sys.modules, "example", module)
    exec(compile(SETUP, f"{CATALOGUE}:Setup", "exec", dont_inherit=True), module.__dict__)
    return module.__dict__


def test_catalogue_lists_at_least_25_misuses_in_the_documented_groups() -> None:
    assert len(ROWS) >= 25
    groups = list(dict.fromkeys(row.group for row in ROWS))
    assert groups == list(GROUPS)


def test_every_catalogue_row_is_a_different_misuse() -> None:
    codes = [row.code for row in ROWS]
    assert len(set(codes)) == len(codes)
    assert all(row.misuse and row.message for row in ROWS)


def _close_journals(namespace: dict[str, Any]) -> None:
    for value in namespace.values():
        if isinstance(value, orchestrator.Orchestrator) and value.journal is not None:
            value.journal.close()
        elif isinstance(value, orchestrator.SQLiteJournal):
            value.close()


def test_catalogue_setup_itself_raises_nothing_and_defines_the_names_rows_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    namespace = _namespace(monkeypatch, tmp_path)
    try:
        for name in ("orch", "other", "act", "fetch_user_data", "flaky", "notify_team", "durable"):
            assert name in namespace
        assert isinstance(namespace["orch"], orchestrator.Orchestrator)
        assert isinstance(namespace["act"], orchestrator.Action)
        assert namespace["durable"].journal is not None
    finally:
        _close_journals(namespace)


@pytest.mark.parametrize("row", ROWS, ids=[f"line{row.line}:{row.code}" for row in ROWS])
def test_catalogued_misuse_raises_the_documented_exception_and_message(
    row: Row, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    expected = _exception_type(row.raises)
    namespace = _namespace(monkeypatch, tmp_path)
    try:
        # A row must never flip the process-wide testing switch; restore it whatever happens.
        with set_testing(False), pytest.raises(expected) as caught:
            exec(compile(row.code, f"{CATALOGUE}:{row.line}", "exec", dont_inherit=True), namespace)
    finally:
        _close_journals(namespace)
    for value in namespace.values():
        if inspect.iscoroutine(value):
            value.close()  # made on purpose by the row (`coro = ...`)
    # Exactly the type listed, not a subclass of it.
    assert type(caught.value) is expected, (
        f"line {row.line}: {row.code} raised {type(caught.value).__name__}: {caught.value}"
    )
    message = str(caught.value).replace(os.getcwd(), ".")
    assert _ADDRESS.sub("0x...", message) == row.message
