"""Read-only dicts and lists for values that an in-process cache shares with callers.

``config.get`` hands out the cached value itself (a copy would cost microseconds per
call); these subclasses keep it safe. They are real ``dict`` / ``list`` instances for
every reading purpose (equality, iteration, ``json.dumps``, ``isinstance``); a mutation
raises ``TypeError`` saying how to get a private copy. ``copy.copy``/``deepcopy`` give
ordinary, mutable containers.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn

__all__ = ["FrozenDict", "FrozenList", "freeze", "thaw"]


def _refuse(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        f"this {type(self).__mro__[1].__name__} is shared by Foundation's cache and is "
        "read-only; take a copy to change it (copy.deepcopy(value))"
    )


class FrozenDict(dict[str, Any]):
    __slots__ = ()
    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: thaw(v) for k, v in self.items()}

    def __reduce__(self) -> Any:
        return (dict, (thaw(self),))


class FrozenList(list[Any]):
    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [thaw(v) for v in self]

    def __reduce__(self) -> Any:
        return (list, (thaw(self),))


_EMPTY = FrozenDict()


def freeze(value: Any) -> Any:
    """A deep, read-only version of a JSON value (other values are returned as they are),
    with decoded JSON's plain dicts and lists short-cut: a cache freezes all it takes in."""
    kind = type(value)
    if kind is dict:
        if not value:
            return _EMPTY
        return FrozenDict(
            {k: freeze(v) if type(v) in (dict, list) else v for k, v in value.items()}
        )
    if kind is list:
        return FrozenList(freeze(v) if type(v) in (dict, list) else v for v in value)
    if isinstance(value, FrozenDict | FrozenList):
        return value
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A deep, mutable copy of a frozen value."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return copy.deepcopy(value)
