"""The live progress display: counts per action name, output on and off a terminal, cleanup."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from rich.console import Console

import orchestrator.progress as progress_module
from orchestrator import Orchestrator, RetryPolicy, set_testing
from orchestrator.progress import Counts, progress


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=80), out


def busy_orchestrator() -> tuple[Orchestrator[Any], Any]:
    """An orchestrator whose body maps over 6 items: 1 retried once, 1 fails, the rest succeed."""
    orch: Orchestrator[Any] = Orchestrator()
    failed_once = False

    @orch.action(retry=RetryPolicy(retries=1, retry_on=ConnectionError))
    async def fetch(item: int) -> int:
        nonlocal failed_once
        if item == 2 and not failed_once:
            failed_once = True
            raise ConnectionError("reset")
        if item == 5:
            raise ValueError("bad item")
        return item

    @orch.action
    async def fetch_all() -> None:
        await orch.map(fetch, range(6))

    return orch, fetch_all


def test_counts_are_kept_per_action_name() -> None:
    orch, body = busy_orchestrator()
    screen, _ = console(False)
    with (
        set_testing(True),
        progress(orch, console=screen) as display,
        pytest.raises(Exception, match="1 of 6 map items failed"),
    ):
        orch.run_sync(body)
    assert display.counts() == {
        "fetch_all": Counts(done=0, running=0, failed=1, retried=0),
        "fetch": Counts(done=5, running=0, failed=1, retried=1),
    }


def test_a_thousand_calls_of_one_action_make_one_row() -> None:
    orch: Orchestrator[Any] = Orchestrator()

    @orch.action
    async def fetch(item: int) -> int:
        return item

    async def main() -> None:
        # Workers rather than a task per item: asyncio's debug mode makes creating a thousand
        # tasks in one step slow enough to be reported.
        await orch.map(fetch, range(1000), concurrency=10)

    screen, _ = console(False)
    with progress(orch, console=screen) as display:
        orch.run_sync(main)
    assert display.counts() == {"fetch": Counts(done=1000, running=0, failed=0, retried=0)}
    assert display.render().row_count == 1


def test_calls_in_progress_are_counted_running() -> None:
    orch: Orchestrator[Any] = Orchestrator()
    screen, _ = console(False)
    seen: list[Counts] = []

    with progress(orch, console=screen) as display:

        @orch.action
        async def inner() -> None:
            seen.append(display.counts()["outer"])

        @orch.action
        async def outer() -> None:
            await inner()

        orch.run_sync(outer)
    assert seen == [Counts(done=0, running=1, failed=0, retried=0)]


def test_a_cancelled_call_is_counted_failed() -> None:
    orch: Orchestrator[Any] = Orchestrator()

    @orch.action
    async def slow() -> None:
        await asyncio.Event().wait()

    @orch.action
    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    screen, _ = console(False)
    with progress(orch, console=screen) as display, pytest.raises(ValueError, match="bad"):
        orch.run_sync(orch.parallel([slow, broken], fail_fast=True))
    assert display.counts()["slow"] == Counts(done=0, running=0, failed=1, retried=0)


def test_off_a_terminal_the_final_table_is_printed_once_without_control_codes() -> None:
    orch, body = busy_orchestrator()
    screen, out = console(False)
    with (
        set_testing(True),
        progress(orch, console=screen, refresh_per_second=100),
        pytest.raises(Exception, match="map items failed"),
    ):
        orch.run_sync(body)
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.count("runs: 0 running, 1 ended") == 1
    lines = [line.split() for line in text.splitlines()]
    assert ["│", "fetch", "│", "5", "│", "0", "│", "1", "│", "1", "│"] in lines
    assert ["│", "fetch_all", "│", "0", "│", "0", "│", "1", "│", "0", "│"] in lines


def test_on_a_terminal_the_display_is_redrawn_in_place_and_ends_with_the_final_table() -> None:
    orch, body = busy_orchestrator()
    screen, out = console(True)
    with (
        set_testing(True),
        progress(orch, console=screen),
        pytest.raises(Exception, match="map items failed"),
    ):
        orch.run_sync(body)
    text = out.getvalue()
    assert "\x1b[?25l" in text  # the cursor is hidden while the display is live...
    assert text.endswith("\x1b[?25h")  # ...and shown again at the end
    assert "\x1b[1A" in text  # earlier drawings are overwritten, not appended
    final = text[text.rindex("runs: ") :]
    assert "runs: 0 running, 1 ended" in final
    assert "fetch_all" in final


def test_the_title_shows_the_elapsed_time_of_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    now = iter([100.0, 102.5])
    monkeypatch.setattr(progress_module, "_clock", lambda: next(now))
    orch: Orchestrator[Any] = Orchestrator()
    screen, out = console(False)
    with progress(orch, console=screen) as display:
        orch.run_sync(lambda: None)
    assert display.elapsed() == 2.5
    assert "runs: 0 running, 1 ended · 2.5 s" in out.getvalue()


def test_leaving_the_block_removes_the_hooks() -> None:
    orch: Orchestrator[Any] = Orchestrator()
    step = orch.action(lambda: None, name="step", inline=True)
    screen, _ = console(False)
    with progress(orch, console=screen) as display:
        orch.run_sync(step)
    orch.run_sync(step)
    assert display.counts() == {"step": Counts(done=1, running=0, failed=0, retried=0)}

    # No task hook is left: an async action called with wrong arguments raises at the call.
    @orch.action
    async def plain() -> None:
        return None

    async def body() -> str:
        try:
            coro = plain(1)  # type: ignore[call-arg]
        except TypeError:
            return "at the call"
        coro.close()
        return "later"

    assert orch.run_sync(body) == "at the call"


def test_a_call_that_began_before_the_display_is_not_counted_below_zero() -> None:
    orch: Orchestrator[Any] = Orchestrator().on_task_begin(lambda event: None)
    screen, _ = console(False)
    display = progress(orch, console=screen)

    @orch.action
    async def step() -> None:
        display.__enter__()

    orch.run_sync(step)
    display.__exit__(None, None, None)
    assert display.counts() == {"step": Counts(done=1, running=0, failed=0, retried=0)}


def test_a_display_cannot_be_shown_twice_at_once() -> None:
    screen, _ = console(False)
    display = progress(Orchestrator(), console=screen)
    with display, pytest.raises(RuntimeError, match="already shown"):
        display.__enter__()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"console": "stdout"}, TypeError, "console must be a rich Console or None, got 'stdout'"),
        ({"refresh_per_second": "4"}, TypeError, "refresh_per_second must be a number, got '4'"),
        (
            {"refresh_per_second": 0},
            ValueError,
            "refresh_per_second must be a finite number above zero, got 0",
        ),
    ],
)
def test_bad_options_are_refused(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{message}$"):
        progress(Orchestrator(), **kwargs)


def test_something_else_than_an_orchestrator_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^orchestrator must be an Orchestrator, got 5$"):
        progress(5)  # type: ignore[arg-type]
