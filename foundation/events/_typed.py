"""Typed events: a pydantic model per event type, versioned, with upcasters.

``register_type("order_placed", OrderPlacedV2, version=2, upcasters={1: v1_to_v2})``:

* at ``store``, the ``data`` of an event of that type (a dict or the model itself) is
  validated against the model; invalid data is an :class:`~foundation.errors.EventError`
  and nothing is written. The model's JSON dump is stored (its wire form: by alias,
  without computed fields, see :func:`_stored_data`), and the version in
  ``metadata["schema_version"]``. A dump that would not decode back is refused there too.
* on read, ``RecordedEvent.data`` stays exactly what the log holds (JSON, as an auditor or
  the tail cache sees it); ``events.decode(record)`` gives the model instance, after
  applying the upcasters from the stored version up to the registered one
  (``upcasters[1]`` turns version-1 data into version-2 data, and so on). Events stored
  before the type was registered (no ``schema_version``) count as version 1.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from foundation._frozen import thaw
from foundation._json import has_nan_or_infinity, same_json
from foundation._text import shown
from foundation.errors import EventError
from foundation.events._model import RecordedEvent, _as_mapping, valid_name

__all__ = ["SCHEMA_VERSION", "EventType", "TypeRegistry"]

SCHEMA_VERSION = "schema_version"


@dataclass(frozen=True)
class EventType:
    name: str
    model: type[pydantic.BaseModel]
    version: int
    upcasters: dict[int, Callable[[Any], Any]]
    # How the log holds the data: by alias unless a field's serialization alias is not a
    # name it validates from (then by field name, see ``_readable_by_alias``).
    by_alias: bool = True
    # The top-level keys of computed fields, dropped before decoding (events stored
    # before computed fields were left out of the log hold them).
    computed: frozenset[str] = frozenset()
    # The registered model's serializer: a subclass instance is stored as the model.
    adapter: pydantic.TypeAdapter[Any] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    # Whether the model may hold a set anywhere (its dump is then sorted: ``_sets_sorted``).
    has_sets: bool = True


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
                context={"type": name, "upcasters": shown(upcasters)},
            )
        ups = dict(upcasters or {})
        # Keys are compared as ints only: "1" would fail the range comparison with a raw
        # TypeError, and True or 1.0 would pass as 1 (equal and hashing alike).
        unexpected = [v for v in ups if type(v) is not int or not 1 <= v < version]
        # The first few missing only: a version of 2**62 would list them all (memory).
        missing = list(itertools.islice((v for v in range(1, version) if v not in ups), 20))
        if missing or unexpected:
            needs = {
                1: "takes no upcasters",
                2: "needs an upcaster for version 1",
            }.get(version, f"needs one upcaster for each of the versions 1 to {version - 1}")
            listed = ", ".join(shown(v) for v in unexpected)[:200]
            keyed = ", keyed by the version it upcasts from (an int)" if version > 1 else ""
            raise EventError(
                f"event type {name!r} at version {version} {needs}{keyed}"
                + (f"; unexpected keys: {listed}" if listed else ""),
                context={
                    "type": name,
                    "missing": missing,
                    "missing_count": version - 1 - (len(ups) - len(unexpected)),
                    "unexpected": [v if type(v) is int else shown(v, 50) for v in unexpected],
                },
            )
        not_callable = [v for v, fn in ups.items() if not callable(fn)]
        if not_callable:
            raise EventError(
                f"the upcasters of event type {name!r} must be functions; the one for "
                f"version {not_callable[0]} is not callable "
                f"({type(ups[not_callable[0]]).__name__})",
                context={"type": name, "not_callable": not_callable},
            )
        spec = EventType(
            name,
            model,
            version,
            ups,
            by_alias=_readable_by_alias(model),
            computed=frozenset(_computed_keys(model)),
            adapter=pydantic.TypeAdapter(model),
            has_sets=_may_hold_sets(model),
        )
        with self._lock:
            self._types = {**self._types, name: spec}

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
        if isinstance(event, pydantic.BaseModel) and isinstance(
            instance := _model_data(event), spec.model
        ):
            # An envelope holding the model's own instance, taken as a dict's would be:
            # its JSON form by field name may not validate again (a model read by alias,
            # a strict one).
            data = instance
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
        except Exception as exc:  # pydantic converts only ValueError and AssertionError
            raise EventError(
                f"validating event {spec.name!r} as {spec.model.__name__} "
                f"(version {spec.version}) failed: {_describe(exc)}",
                context={"type": spec.name},
            ) from exc
        metadata = fields.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            return event  # parse_event refuses it
        given = _version_number(metadata.get(SCHEMA_VERSION, spec.version))
        if type(given) is not int or given != spec.version:
            # The key says which version the data is: a value of the caller's own there
            # would be overwritten, or would decode the data as another version.
            raise EventError(
                f"metadata key {SCHEMA_VERSION!r} of typed event {spec.name!r} is "
                f"Foundation's (the version of its data, {spec.version}): use another key",
                context={"type": spec.name, "field": "metadata", "given": shown(given)},
            )
        return {
            **fields,
            "data": _stored_data(spec, model),
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
        stored = _version_number(record.metadata.get(SCHEMA_VERSION, 1) if record.metadata else 1)
        if type(stored) is not int or not 1 <= stored <= spec.version:
            raise EventError(
                f"event at position {record.position} has schema version {stored!r}, "
                f"but {record.type!r} is registered at version {spec.version}",
                context={"type": record.type, "position": record.position},
            )
        # A private copy: upcasters and "before" validators may change what they are given,
        # and record.data is read-only (shared with the tail cache).
        data = thaw(record.data)
        for version in range(stored, spec.version):
            try:
                data = spec.upcasters[version](data)
            except Exception as exc:  # the caller's upcaster: its traceback is the cause
                raise EventError(
                    f"the upcaster of {record.type!r} from version {version} failed on the "
                    f"event at position {record.position}: {type(exc).__name__}: {exc}",
                    context={"type": record.type, "position": record.position, "from": version},
                ) from exc
        context = {"type": record.type, "position": record.position, "version": stored}
        where = (
            f"event {record.type!r} at position {record.position} (stored at schema version "
            f"{stored}) does not decode as {spec.model.__name__} (version {spec.version})"
        )
        try:
            return _read(spec, data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "data"
            raise EventError(
                f"{where}: {field}: {first.get('msg')}", context={**context, "field": field}
            ) from None
        except Exception as exc:  # a validator's own error: its traceback is the cause
            raise EventError(f"{where}: {_describe(exc)}", context=context) from exc


def _read(spec: EventType, data: Any) -> pydantic.BaseModel:
    """Decode's validation, also used at store to prove the stored data decodes back.

    By alias *and* by name: the log holds one or the other (see ``_readable_by_alias``),
    and events stored by field name before aliases were honoured still decode. Lax, not
    the model's own strictness: the log holds JSON, where a datetime or a UUID is a string
    that a strict model refuses outside ``model_validate_json``.
    """
    if spec.computed and isinstance(data, Mapping) and not spec.computed.isdisjoint(data):
        data = {k: v for k, v in data.items() if k not in spec.computed}
    return spec.model.model_validate(data, strict=False, by_alias=True, by_name=True)


def _version_number(value: Any) -> Any:
    """A schema version as JSON has it: 2.0 is the number 2 (one JSON number, as the log
    compares them), written so by another hand; anything else as it is (refused)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _dump(spec: EventType, model: pydantic.BaseModel) -> Any:
    assert spec.adapter is not None
    options: dict[str, Any] = {
        "by_alias": spec.by_alias,
        # Computed fields are derived: decode computes them again, a stored copy would
        # freeze what an older release computed, and extra="forbid" refuses them.
        "exclude_computed_fields": True,
        "round_trip": True,  # e.g. a Json[...] field is dumped as the JSON text it validates
    }
    dumped = spec.adapter.dump_python(model, mode="json", **options)
    if not spec.has_sets:
        return dumped
    return _sets_sorted(dumped, spec.adapter.dump_python(model, **options))


def _may_hold_sets(model: type[pydantic.BaseModel]) -> bool:
    """From the model's JSON schema, where a set is an array of unique items (a model
    without one costs no second dump); True when the schema cannot be made."""
    try:
        schema = model.model_json_schema(mode="serialization")
    except Exception:  # e.g. arbitrary types: no schema, so assume the worst
        return True
    return '"uniqueItems": true' in json.dumps(schema)


def _sets_sorted(dumped: Any, python: Any) -> Any:
    """``dumped`` with each list that dumps a set sorted (by its items' JSON text).

    A set dumps in its iteration order, which follows the hash seed of the process: the
    same event would be stored as other data by another process (an idempotent retry
    refused as different content), and its round trip at store compared unequal. The
    Python dump (same shape, sets still sets) says where the sets are.
    """
    if isinstance(python, set | frozenset) and isinstance(dumped, list):
        return sorted(dumped, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(python, dict) and isinstance(dumped, dict):
        return {k: _sets_sorted(v, python[k]) if k in python else v for k, v in dumped.items()}
    if isinstance(python, list | tuple) and isinstance(dumped, list) and len(python) == len(dumped):
        return [_sets_sorted(d, p) for d, p in zip(dumped, python, strict=True)]
    return dumped


def _stored_data(spec: EventType, model: pydantic.BaseModel) -> Any:
    """What the log holds for a valid model: its wire form, proven to decode back.

    The wire form (by alias, as ``model_dump_json(by_alias=True)`` gives it and other
    services exchange the event) is what an auditor reading the log expects to see, and
    what the model validates from; dumping by field name stored ``{"order_id": 1}`` for
    ``Field(alias="orderId")``, which decode then refused. The dump is validated back as
    decode will, and dumped again: a custom serializer, an ``exclude=True`` field without
    a default, or a serialization alias that no validation alias matches in a nested
    model would otherwise store an event that never decodes (or decodes as other data).
    Such a model is refused here, before anything is written; the check costs one more
    validation and dump, small beside the write.
    """
    try:
        dumped = _dump(spec, model)
    except Exception as exc:  # a field serializer's error, or a value JSON cannot hold
        raise EventError(
            f"event {spec.name!r}: {spec.model.__name__} does not serialize to JSON: "
            f"{_describe(exc)}",
            context={"type": spec.name},
        ) from exc
    try:
        back = _dump(spec, _read(spec, dumped))
    except Exception as exc:
        problem = _describe(exc)
        cause: Exception | None = exc
    else:
        if same_json(back, dumped):
            return dumped
        problem = "it decodes back as different data"
        cause = None
    if has_nan_or_infinity(model.model_dump()):
        # pydantic dumps them as null, which the field then refuses: say what is wrong.
        raise EventError(
            f"event {spec.name!r} is not JSON: NaN and Infinity are not JSON",
            context={"type": spec.name},
        )
    raise EventError(
        f"event {spec.name!r} cannot be stored: the JSON dump of {spec.model.__name__} "
        f"would not decode back ({problem}); check its aliases and serializers",
        context={"type": spec.name},
    ) from cause


def _readable_by_alias(model: type[pydantic.BaseModel]) -> bool:
    """Whether each field's dump key (by alias) is a key the field validates from.

    ``Field(serialization_alias="X", validation_alias="x_in")`` dumps ``X`` but reads only
    ``x_in`` (or the name): there is no single wire form, so such a model is stored by
    field name, which decode always accepts. Decided per type, not per event, so the log
    holds one form per type. Nested models are left to the round-trip check at store.
    """
    for name, info in model.model_fields.items():
        key = info.serialization_alias or name
        if key != name and key not in _validation_keys(info):
            return False
    return True


def _validation_keys(info: Any) -> set[str]:
    alias = info.validation_alias
    choices = alias.choices if isinstance(alias, pydantic.AliasChoices) else [alias]
    keys: set[str] = set()
    for choice in choices:
        if isinstance(choice, str):
            keys.add(choice)
        elif isinstance(choice, pydantic.AliasPath) and len(choice.path) == 1:
            keys.add(str(choice.path[0]))
    return keys


def _computed_keys(model: type[pydantic.BaseModel]) -> set[str]:
    """Names and aliases of the computed fields that are not also input keys."""
    inputs = set(model.model_fields)
    for info in model.model_fields.values():
        inputs |= _validation_keys(info)
    keys = set()
    for name, computed in model.model_computed_fields.items():
        keys |= {name, computed.alias or name}
    return keys - inputs


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "data"
        return f"{where}: {first.get('msg')}"
    return f"{type(exc).__name__}: {exc}"[:500]


def _model_data(envelope: pydantic.BaseModel) -> Any:
    """The value of the envelope's ``data`` field (named or aliased so), else None."""
    named = [
        name
        for name, field in type(envelope).model_fields.items()
        if "data" in (name, field.alias, field.serialization_alias)
    ]
    return getattr(envelope, named[0], None) if len(named) == 1 else None


def _fields(event: Any) -> dict[str, Any] | None:
    if isinstance(event, Mapping):
        return dict(event)
    if isinstance(event, pydantic.BaseModel):
        # As store reads it: JSON values, by alias where the aliases name the fields.
        return dict(_as_mapping(event))
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return None
