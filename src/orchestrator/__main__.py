"""The command line: ``python -m orchestrator demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ._demo import demo


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command it names; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Coordinate multi-step async work with hooks, retries and timeouts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_command = commands.add_parser(
        "demo", help="run the example scenarios and print every hook as it fires"
    )
    demo_command.add_argument(
        "--timeline",
        metavar="DIR",
        type=Path,
        help="where to write the HTML timeline of each run (default: a new temporary directory)",
    )
    args = parser.parse_args(argv)
    asyncio.run(demo(timeline_dir=args.timeline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
