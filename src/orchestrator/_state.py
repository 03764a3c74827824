"""The default per-run context, and how a run's context is made."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, MutableMapping
from types import MemberDescriptorType, SimpleNamespace
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


def check_key(factory: Callable[[], Any], key: str) -> None:
    """Refuse a ``set_state()`` default that the contexts ``factory`` makes could not hold.

    Only what the class says for certain is checked: a class whose instances have no
    ``__dict__`` (one with ``__slots__``) holds only the attributes it declares. A mapping, a
    class with its own ``__setattr__`` and a factory function are taken on trust.

    Raises:
        ValueError: ``factory`` is such a class and ``key`` is not one of its attributes.

    """
    if not isinstance(factory, type) or issubclass(factory, MutableMapping):
        return
    if factory.__dictoffset__ or factory.__setattr__ is not object.__setattr__:
        return
    for klass in factory.__mro__:
        if key in vars(klass):
            found = vars(klass)[key]
            if hasattr(type(found), "__set__") and getattr(found, "fset", True) is not None:
                return
            break  # a plain class attribute, or a property without a setter: read-only
    slots = sorted(
        name
        for klass in factory.__mro__
        for name, value in vars(klass).items()
        if isinstance(value, MemberDescriptorType)
    )
    raise ValueError(
        f"key {key!r} cannot be set on the context {factory!r}: its instances have no "
        f"__dict__ and no attribute {key!r}; its attributes are {', '.join(slots) or 'none'}"
    )


def new_context(factory: Callable[[], Any], defaults: dict[str, Any]) -> Any:
    """Build a run's context: a fresh object from ``factory``, then a deep copy of each default."""
    context = factory()
    for key, value in defaults.items():
        assign(context, key, copy.deepcopy(value))
    return context
