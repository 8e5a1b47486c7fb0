"""Typed events: a pydantic model per event type, versioned, with upcasters.

``register_type("order_placed", OrderPlacedV2, version=2, upcasters={1: v1_to_v2})``:

* at ``store``, the ``data`` of an event of that type (a dict or the model itself) is
  validated against the model; invalid data is an :class:`~foundation.errors.EventError`
  and nothing is written. The model's JSON dump is stored, and the version in
  ``metadata["schema_version"]``.
* on read, ``RecordedEvent.data`` stays exactly what the log holds (JSON, as an auditor or
  the tail cache sees it); ``events.decode(record)`` gives the model instance, after
  applying the upcasters from the stored version up to the registered one
  (``upcasters[1]`` turns version-1 data into version-2 data, and so on). Events stored
  before the type was registered (no ``schema_version``) count as version 1.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from foundation._frozen import thaw
from foundation.errors import EventError
from foundation.events._model import RecordedEvent, valid_name

__all__ = ["SCHEMA_VERSION", "EventType", "TypeRegistry"]

SCHEMA_VERSION = "schema_version"


@dataclass(frozen=True)
class EventType:
    name: str
    model: type[pydantic.BaseModel]
    version: int
    upcasters: dict[int, Callable[[Any], Any]]


class TypeRegistry:
    def __init__(self) -> None:
        self._types: dict[str, EventType] = {}
        self._lock = threading.Lock()

    def register(
        self,
        name: str,
        model: type[pydantic.BaseModel],
        version: int = 1,
        upcasters: Mapping[int, Callable[[Any], Any]] | None = None,
    ) -> None:
        checked = valid_name(name, "type", required=True)  # what store() takes as a type
        assert checked is not None
        name = checked
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise EventError("register_type takes a pydantic model class", context={"type": name})
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise EventError("version must be an int >= 1", context={"type": name})
        if upcasters is not None and not isinstance(upcasters, Mapping):
            raise EventError(
                "upcasters must be a dict of {version: function}",
                context={"type": name, "upcasters": repr(upcasters)[:200]},
            )
        ups = dict(upcasters or {})
        missing = [v for v in range(1, version) if v not in ups]
        bad = [v for v in ups if not callable(ups[v]) or not 1 <= v < version]
        if missing or bad:
            raise EventError(
                f"event type {name!r} at version {version} needs one upcaster for each "
                f"version 1 to {version - 1}",
                context={"type": name, "missing": missing, "unexpected": bad},
            )
        with self._lock:
            self._types = {**self._types, name: EventType(name, model, version, ups)}

    def get(self, name: str) -> EventType | None:
        return self._types.get(name)

    def prepare(self, event: Any) -> Any:
        """The event with validated, dumped data and its schema version (if typed)."""
        if not self._types:
            return event
        fields = _fields(event)
        if fields is None:
            return event  # parse_event reports what is wrong with it
        type_name = fields.get("type")
        if not isinstance(type_name, str):
            return event  # parse_event reports it
        spec = self._types.get(type_name)
        if spec is None:
            return event
        data = fields.get("data")
        try:
            model = data if isinstance(data, spec.model) else spec.model.model_validate(data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "data"
            raise EventError(
                f"event {spec.name!r} does not match {spec.model.__name__} "
                f"(version {spec.version}): {where}: {first.get('msg')}",
                context={"type": spec.name, "field": where, "errors": exc.error_count()},
            ) from None
        metadata = fields.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            return event  # parse_event refuses it
        return {
            **fields,
            "data": model.model_dump(mode="json"),
            "metadata": {**metadata, SCHEMA_VERSION: spec.version},
        }

    def decode(self, record: RecordedEvent) -> pydantic.BaseModel:
        if not isinstance(record, RecordedEvent):
            raise EventError(
                "decode takes a RecordedEvent (what store and get return)",
                context={"type": type(record).__name__},
            )
        spec = self._types.get(record.type)
        if spec is None:
            raise EventError(
                f"event type {record.type!r} has no registered model",
                context={"type": record.type, "position": record.position},
            )
        stored = record.metadata.get(SCHEMA_VERSION, 1) if record.metadata else 1
        if not isinstance(stored, int) or not 1 <= stored <= spec.version:
            raise EventError(
                f"event at position {record.position} has schema version {stored!r}, "
                f"but {record.type!r} is registered at version {spec.version}",
                context={"type": record.type, "position": record.position},
            )
        data = thaw(record.data) if stored < spec.version else record.data
        for version in range(stored, spec.version):
            try:
                data = spec.upcasters[version](data)
            except Exception as exc:  # the caller's upcaster: its traceback is the cause
                raise EventError(
                    f"the upcaster of {record.type!r} from version {version} failed on the "
                    f"event at position {record.position}: {type(exc).__name__}: {exc}",
                    context={"type": record.type, "position": record.position, "from": version},
                ) from exc
        try:
            return spec.model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise EventError(
                f"event at position {record.position} does not decode as "
                f"{spec.model.__name__}: {exc.errors()[0].get('msg')}",
                context={"type": record.type, "position": record.position},
            ) from None


def _fields(event: Any) -> dict[str, Any] | None:
    if isinstance(event, Mapping):
        return dict(event)
    if isinstance(event, pydantic.BaseModel):
        return {name: getattr(event, name) for name in type(event).model_fields}
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return None
