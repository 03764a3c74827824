"""The command line: ``python -m orchestrator demo | runs | show | prune``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ._cli import (
    FAILED,
    UNITS,
    CommandError,
    error,
    journal_path,
    parse_age,
    prune_command,
    runs_command,
    show_command,
)
from ._demo import demo
from ._errors import JournalError

T = TypeVar("T")

_JOURNAL_HELP = "the journal file, as passed to Orchestrator(journal=...); it must exist"


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type: its ValueError becomes a usage error naming the option."""

    def checked(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return checked


_journal = _checked(journal_path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Coordinate multi-step async work with hooks, retries and timeouts.",
        epilog="Exit status: 0 done, 1 the command could not be done, 2 a bad command line.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_command = commands.add_parser(
        "demo", help="run the example scenarios and print every hook as it fires"
    )
    demo_command.add_argument(
        "--journal",
        type=_journal,
        metavar="PATH",
        help="record the durable scenario in this journal file and keep it (default: a "
        "temporary file, deleted at the end)",
    )
    demo_command.add_argument(
        "--timeline",
        metavar="DIR",
        type=Path,
        help="where to write the HTML timeline of each run (default: a new temporary directory)",
    )
    runs = commands.add_parser("runs", help="list the runs of a journal")
    runs.add_argument("--journal", required=True, type=_journal, metavar="PATH", help=_JOURNAL_HELP)
    show = commands.add_parser("show", help="print one run's calls as a tree")
    show.add_argument("run_id", metavar="RUN_ID", help="the run's id, as the runs command lists it")
    show.add_argument("--journal", required=True, type=_journal, metavar="PATH", help=_JOURNAL_HELP)
    show.add_argument("--html", metavar="FILE", help="also write the run's HTML timeline to FILE")
    show.add_argument(
        "--chrome",
        metavar="FILE",
        help="also write the run's Chrome trace (for Perfetto or chrome://tracing) to FILE",
    )
    prune = commands.add_parser("prune", help="delete the finished runs older than an age")
    prune.add_argument(
        "--journal", required=True, type=_journal, metavar="PATH", help=_JOURNAL_HELP
    )
    prune.add_argument(
        "--older-than",
        required=True,
        type=_checked(parse_age),
        metavar="AGE",
        help=f"delete the runs that ended longer ago than AGE, a number and a unit "
        f"({', '.join(UNITS)}): 30d, 12h, 90m. Runs not ended are kept",
    )
    return parser


def _demo(journal: str | None, timeline_dir: Path | None) -> int:
    try:
        asyncio.run(demo(journal=journal, timeline_dir=timeline_dir))
    except JournalError as exc:  # the journal file given cannot be one
        return error(str(exc))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command it names; return the exit status.

    Args:
        argv: The arguments after ``python -m orchestrator``; ``sys.argv[1:]`` if None.

    Returns:
        0 when the command did what it was asked, 1 when it could not (the message says why,
        on stderr). A command line that does not parse exits with status 2 (``SystemExit``).

    """
    options = _parser().parse_args(argv)
    out = sys.stdout
    try:
        if options.command == "demo":
            return _demo(options.journal, options.timeline)
        if options.command == "runs":
            return runs_command(options.journal, out)
        if options.command == "show":
            return show_command(
                options.journal, options.run_id, out, html=options.html, chrome=options.chrome
            )
        return prune_command(options.journal, options.older_than, out)
    except CommandError as exc:
        return error(str(exc))


if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): the output was not wanted further, which is no error
        # worth a traceback. Python flushes stdout again at exit, so it is pointed elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = FAILED
    sys.exit(status)
