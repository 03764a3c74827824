"""The command line: ``python -m orchestrator demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ._demo import demo


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command it names; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Coordinate multi-step async work with hooks, retries and timeouts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the example scenarios and print every hook as it fires")
    parser.parse_args(argv)
    asyncio.run(demo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
