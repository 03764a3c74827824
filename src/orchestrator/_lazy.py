"""Modules imported at their first use, so that ``import orchestrator`` stays as cheap as asyncio.

The journal needs sqlite3, hashlib, json and pickle, which together cost more to import than the
rest of the library: programs that never record a run should not pay for them.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def lazy_module(name: str) -> types.ModuleType:
    """The module ``name``, whose code runs at the first access to one of its attributes."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
