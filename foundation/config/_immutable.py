"""Read-only copies of typed config values, so the cache can hand them out as they are.

JSON containers become :mod:`foundation._frozen`'s read-only dicts and lists. A pydantic
model (as ``register("db", DB)`` validates to) becomes an instance of a frozen subclass of
its class, made once per class: ``isinstance(value, DB)`` holds, fields read as before,
``value == DB(...)`` compares the fields, and an assignment raises pydantic's "Instance is
frozen" error. Its list and dict fields are frozen too. ``value.model_copy()`` or
``DB.model_validate(value.model_dump())`` gives a private, mutable object.

The copy is made once, when the value enters the cache; ``get`` stays one dict lookup.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict

from foundation._frozen import FrozenDict, FrozenList

__all__ = ["freeze_value", "same_value"]

_frozen_classes: dict[type[BaseModel], type[BaseModel]] = {}
_lock = threading.Lock()


def _renew_lock_in_child() -> None:
    # Another thread of the parent may have held it at the fork: a child's config read of
    # a model would wait for it for ever.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_renew_lock_in_child)


def freeze_value(value: Any) -> Any:
    """A deep, read-only version of a config value (scalars are returned as they are)."""
    if isinstance(value, dict):
        return FrozenDict({k: freeze_value(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList(freeze_value(v) for v in value)
    if isinstance(value, BaseModel):
        return _freeze_model(value)
    return value


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same types throughout: 1, 1.0 and True are three values (``==``
    says one), and so are [1] and [True]. Watchers are told when a key turns from one to
    another, as its history records."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _freeze_model(model: BaseModel) -> BaseModel:
    cls = _frozen_class(type(model))
    if type(model) is cls:
        return model
    values = {name: freeze_value(v) for name, v in model.__dict__.items()}
    if model.__pydantic_extra__:
        values.update({k: freeze_value(v) for k, v in model.__pydantic_extra__.items()})
    return cls.model_construct(_fields_set=set(model.model_fields_set), **values)


def _frozen_class(cls: type[BaseModel]) -> type[BaseModel]:
    if getattr(cls, "__foundation_frozen__", False):
        return cls
    with _lock:
        frozen = _frozen_classes.get(cls)
        if frozen is None:
            base = cls

            def __eq__(self: BaseModel, other: object) -> bool:
                if isinstance(other, base):
                    return bool(
                        self.__dict__ == other.__dict__
                        and self.__pydantic_extra__ == other.__pydantic_extra__
                    )
                return NotImplemented

            frozen = type(
                cls.__name__,
                (cls,),
                {
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                    "__foundation_frozen__": True,
                    "model_config": ConfigDict(**{**cls.model_config, "frozen": True}),
                    "__eq__": __eq__,
                    "__hash__": None,
                },
            )
            _frozen_classes[cls] = frozen
        return frozen
