"""The default per-run context, and how a run's context is made."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, MutableMapping
from types import SimpleNamespace
from typing import Any


class State(SimpleNamespace):
    """A namespace of a run's shared values, read and written as attributes or items.

    ``ctx.request_count += 1`` and ``ctx["request_count"] += 1`` do the same. A missing key
    raises ``AttributeError`` (attribute access) or ``KeyError`` (item access), as usual.
    ``len()``, ``in`` and iteration go over the keys; a State is true even when empty.
    """

    def __getitem__(self, key: str) -> Any:
        try:
            return self.__dict__[key]
        except KeyError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.__dict__[key] = value

    def __delitem__(self, key: str) -> None:
        del self.__dict__[key]

    def __contains__(self, key: object) -> bool:
        return key in self.__dict__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def __bool__(self) -> bool:
        # A namespace, not a container: an empty context is still a context.
        return True


def assign(context: object, key: str, value: object) -> None:
    """Set ``key`` on a context: as an item on a mapping, else as an attribute."""
    if isinstance(context, MutableMapping):
        context[key] = value
    else:
        setattr(context, key, value)


def new_context(factory: Callable[[], Any], defaults: dict[str, Any]) -> Any:
    """Build a run's context: a fresh object from ``factory``, then a deep copy of each default."""
    context = factory()
    for key, value in defaults.items():
        assign(context, key, copy.deepcopy(value))
    return context
