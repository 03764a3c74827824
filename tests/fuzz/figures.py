"""The randomized suite's figures: counts of what its examples drew, did and checked.

ORCHESTRATOR_FUZZ_STATS names a JSON file that receives them after the tests of each module,
those of every module run so far included.
"""

from __future__ import annotations

import json
import os
from collections import Counter

STATS: Counter[str] = Counter()


def write() -> None:
    """Write every figure so far to the file ORCHESTRATOR_FUZZ_STATS names, if it is set."""
    path = os.environ.get("ORCHESTRATOR_FUZZ_STATS")
    if path:
        with open(path, "w") as out:
            json.dump(dict(sorted(STATS.items())), out, indent=2)
