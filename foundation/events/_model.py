"""Event input, the recorded event, and query criteria: validation only, no I/O.

Everything a caller hands in is checked here before any statement runs, so bad input is
an :class:`~foundation.errors.EventError` naming the field and nothing is written.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pydantic

from foundation._json import encode_json, has_nan_or_infinity, normalize_json, same_json
from foundation._text import is_utf8, name_text, shown, text_of
from foundation.correlation import current_correlation_id
from foundation.errors import EventError

__all__ = [
    "Criteria",
    "ExpectedVersion",
    "NewEvent",
    "RecordedEvent",
    "parse_criteria",
    "parse_event",
    "uuid7",
]

_UNKNOWN_SAFETY = uuid.SafeUUID.unknown  # an Enum member looked up once, not per UUID

ExpectedVersion = int | Literal["any", "no_stream", "exists"]
MAX_NAME = 255
MAX_VERSION = 2**63 - 1  # BIGINT: positions and stream versions on both databases
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_TYPES = 100

_CONFIG_CHANGED = "foundation.config.changed"
# Room in a config change's data beside its old and new values: the key (1,024
# characters at most, each up to 6 bytes escaped), the operation, the node and revision.
_CONFIG_EVENT_ROOM = 64 * 1024


def _data_limit(type_: str, max_bytes: int) -> int:
    """The most JSON an event's data may hold: ``max_bytes``, but for the config changes
    the log records itself (migration 0005's trigger), whose data holds a config value's
    old and new, each up to ``max_bytes``: one the log holds must store again as it is
    (``foundation events import`` of an export)."""
    return 2 * max_bytes + _CONFIG_EVENT_ROOM if type_ == _CONFIG_CHANGED else max_bytes


_EVENT_KEYS = frozenset(
    {
        "type",
        "data",
        "id",
        "stream_id",
        "expected_version",
        "metadata",
        "correlation_id",
        "causation_id",
    }
)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One event as the log holds it."""

    id: uuid.UUID
    position: int
    stream_id: str | None
    stream_version: int | None
    type: str
    data: Any
    metadata: dict[str, Any]
    correlation_id: str | None
    causation_id: str | None
    recorded_at: datetime


@dataclass(slots=True)
class NewEvent:
    """A validated event about to be stored (JSON already encoded once).

    Internal and never changed after ``parse_event``; not frozen, because a frozen
    dataclass sets each of its fields through ``object.__setattr__`` (a store's cost).
    """

    id: uuid.UUID
    id_text: str
    id_given: bool
    type: str
    data: Any
    data_text: str
    metadata: dict[str, Any]
    metadata_text: str
    stream_id: str | None
    expected_version: ExpectedVersion
    correlation_id: str | None
    causation_id: str | None
    # Given by the caller, not None: an id taken from the context may differ on a retry
    # (so may one left out, which a dataclass or a model with the field cannot do). A
    # causation id has no context: it is compared as given, None included.
    correlation_given: bool

    def differences(self, recorded: RecordedEvent) -> list[str]:
        """The fields in which a retry with this id differs from the event recorded."""
        fields = []
        if recorded.type != self.type:
            fields.append("type")
        if recorded.stream_id != self.stream_id:
            fields.append("stream_id")
        if not same_json(recorded.data, self.data):
            fields.append("data")
        if not same_json(recorded.metadata, self.metadata):
            fields.append("metadata")
        if self.correlation_given and recorded.correlation_id != self.correlation_id:
            fields.append("correlation_id")
        if recorded.causation_id != self.causation_id:
            fields.append("causation_id")
        return fields


# -- UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits --------------------

_uuid_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_entropy = b""  # os.urandom drawn 4 KiB at a time: one system call per ~450 ids
_used = 0


def _random_bytes(count: int) -> int:
    # Under _uuid_lock.
    global _entropy, _used
    if _used + count > len(_entropy):
        _entropy, _used = os.urandom(4096), 0
    value = int.from_bytes(_entropy[_used : _used + count], "big")
    _used += count
    return value


def _forget_entropy() -> None:
    # A forked child must not reuse its parent's unread random bytes (same ids); and the
    # lock, which another thread of the parent may have held at the fork, is made anew.
    global _entropy, _used, _uuid_lock
    _entropy, _used = b"", 0
    _uuid_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_entropy)


def uuid7() -> uuid.UUID:
    """A time-ordered UUID; increasing within this process even inside one millisecond."""
    global _last_ms, _last_rand
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same (or a stepped-back) clock: keep the timestamp, count up the random part.
            ms = _last_ms
            rand = _last_rand + 1 + _random_bytes(2)
        else:
            rand = _random_bytes(9) >> 2  # 70 random bits
        _last_ms, _last_rand = ms, rand
    rand &= (1 << 74) - 1
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 62) << 64  # 12 bits of rand_a
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)
    return uuid_of(value)  # uuid.UUID(int=...) would re-validate a value built well formed


def uuid_of(value: int) -> uuid.UUID:
    """A UUID from its 128-bit value, without ``uuid.UUID.__init__``'s checks of its input
    (for values Foundation built or read back from its own canonical text)."""
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", _UNKNOWN_SAFETY)
    return made


# -- event input ---------------------------------------------------------------------------


def _as_mapping(event: Any) -> Mapping[str, Any]:
    if isinstance(event, Mapping):
        return event
    if isinstance(event, pydantic.BaseModel):
        try:
            dumped = event.model_dump(mode="json", exclude_unset=False)
            alias = False
            if not _EVENT_KEYS.issuperset(dumped):
                # A model that names the event's fields by alias (kind = Field(alias="type")):
                # the form with fewer other fields, so that a refusal names one of those.
                by_alias = event.model_dump(mode="json", exclude_unset=False, by_alias=True)
                if len(by_alias.keys() - _EVENT_KEYS) < len(dumped.keys() - _EVENT_KEYS):
                    dumped, alias = by_alias, True
            _refuse_nan(event, alias)
            return dumped
        except (ValueError, TypeError) as exc:  # PydanticSerializationError is a ValueError
            raise EventError(
                f"event model {type(event).__name__} cannot be turned into JSON: {exc}",
                context={"type": type(event).__name__},
            ) from None
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    raise EventError(
        f"an event must be a dict, a pydantic model or a dataclass, not {type(event).__name__}",
        context={"type": type(event).__name__},
    )


def _refuse_nan(model: pydantic.BaseModel, by_alias: bool) -> None:
    """NaN and Infinity are refused in a model as in a dict: its JSON dump would store
    them as null. Read from the model's Python values, so a serializer that turns them
    into something else must run in both modes (``when_used="always"``)."""
    for field, value in model.model_dump(by_alias=by_alias).items():
        if has_nan_or_infinity(value):
            raise EventError(
                f"event model {type(model).__name__} is not JSON: its {field!r} holds NaN "
                "or Infinity, which are not JSON",
                context={"type": type(model).__name__, "field": field},
            )


def valid_name(value: Any, field: str, *, required: bool) -> str | None:
    # The common case first: a short printable str (printable excludes lone surrogates,
    # so such a name always encodes as UTF-8).
    if (
        type(value) is str
        and 0 < len(value) <= MAX_NAME
        and value.isprintable()
        and not value.isspace()
    ):
        return value
    if value is None and not required:
        return None
    value = name_text(value)
    if not isinstance(value, str) or not value.strip():
        raise EventError(
            f"event field {field!r} must be a non-empty string"
            + ("" if value is not None else " (it is missing)"),
            context={"field": field, "value": shown(value)},
        )
    # Each refusal says which rule the name breaks: a 2-character name holding a NUL
    # is not "too long".
    if len(value) > MAX_NAME:
        raise EventError(
            f"event field {field!r} must be at most {MAX_NAME} characters "
            f"(this one has {len(value)})",
            context={"field": field, "value": shown(value), "length": len(value)},
        )
    # Printable excludes lone surrogates: a printable name is also valid UTF-8.
    if not value.isprintable():
        if not is_utf8(value):
            raise EventError(
                f"event field {field!r} must be valid UTF-8 text (it holds a lone surrogate)",
                context={"field": field, "value": shown(value)},
            )
        bad = next(c for c in value if not c.isprintable())
        raise EventError(
            f"event field {field!r} must not contain control or other non-printable "
            f"characters ({bad!r})",
            context={"field": field, "value": shown(value)},
        )
    return str.__str__(value)  # a str subclass (a StrEnum) is kept as the plain text


def _event_id(value: Any) -> tuple[uuid.UUID, bool]:
    if value is None:
        return uuid7(), False
    if isinstance(value, uuid.UUID):
        return value, True
    if isinstance(value, str):
        try:
            # Lower case: uuid.UUID strips only a lower-case "urn:uuid:" (RFC 4122's is
            # case-insensitive, as the hex digits are).
            return uuid.UUID(value.lower()), True
        except ValueError:
            pass
    raise EventError(
        "event field 'id' must be a UUID (or its text)",
        context={"field": "id", "id": shown(value)},
    )


def _expected(value: Any) -> ExpectedVersion:
    if value in ("any", "no_stream", "exists"):
        return value  # type: ignore[no-any-return]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION:
        return value
    raise EventError(
        f"expected_version must be a version (an int from 0 to {MAX_VERSION}), "
        "'any', 'no_stream' or 'exists'",
        context={"field": "expected_version", "expected_version": shown(value)},
    )


# "the data of event 'x'" per type: formatting it (a repr) on every store costs more than
# the lookup; it is only read when the data is refused.
_DATA_WHAT: dict[str, str] = {}


def parse_event(event: Any, max_bytes: int) -> NewEvent:
    """Validate one event given as a dict, a pydantic model or a dataclass."""
    fields = event if type(event) is dict else _as_mapping(event)
    if not _EVENT_KEYS.issuperset(fields):
        unknown = sorted(text_of(k) for k in fields if k not in _EVENT_KEYS)
        raise EventError(
            f"unknown event field {unknown[0]!r} (known: {', '.join(sorted(_EVENT_KEYS))})",
            context={"field": unknown[0]},
        )
    type_ = valid_name(fields.get("type"), "type", required=True)
    assert type_ is not None
    event_id, id_given = _event_id(fields.get("id"))
    stream_id = fields.get("stream_id")
    if stream_id is not None:
        stream_id = valid_name(stream_id, "stream_id", required=False)
    expected: ExpectedVersion = "any"  # also for None: not given, as for every optional field
    if fields.get("expected_version") not in (None, "any"):
        expected = _expected(fields["expected_version"])
        if stream_id is None:
            raise EventError(
                "expected_version needs a stream_id",
                context={"field": "expected_version", "expected_version": expected},
            )
    id_text = str(event_id)
    ctx = {"type": type_, "id": id_text}
    data = fields.get("data")
    what = _DATA_WHAT.get(type_)
    if what is None:
        if len(_DATA_WHAT) > 4096:  # bounded: types are few, but any string is one
            _DATA_WHAT.clear()
        what = _DATA_WHAT[type_] = f"the data of event {type_!r}"
    data_text = encode_json(
        data,
        what=what,
        max_bytes=_data_limit(type_, max_bytes),
        error=EventError,
        context={**ctx, "field": "data"},
    )
    metadata = fields.get("metadata")
    if not metadata and (metadata is None or type(metadata) is dict):
        metadata, metadata_text = {}, "{}"  # the usual case: nothing to encode
    elif not isinstance(metadata, Mapping):
        raise EventError(
            "event field 'metadata' must be a dict", context={**ctx, "field": "metadata"}
        )
    else:
        metadata_text = encode_json(
            dict(metadata),
            what=f"the metadata of event {type_!r}",
            max_bytes=max_bytes,
            error=EventError,
            context={**ctx, "field": "metadata"},
        )
        metadata = normalize_json(dict(metadata), metadata_text)
    correlation_id = fields.get("correlation_id")
    causation_id = fields.get("causation_id")
    correlation_given = correlation_id is not None
    if correlation_id is None:
        correlation_id = current_correlation_id()
    if correlation_id is not None:
        if isinstance(correlation_id, uuid.UUID):
            correlation_id = str(correlation_id)
        correlation_id = valid_name(correlation_id, "correlation_id", required=False)
    if causation_id is not None:
        if isinstance(causation_id, uuid.UUID):
            causation_id = str(causation_id)  # usually the id of another event
        causation_id = valid_name(causation_id, "causation_id", required=False)
    return NewEvent(
        id=event_id,
        id_text=id_text,
        id_given=id_given,
        type=type_,
        data=normalize_json(data, data_text),
        data_text=data_text,
        metadata=metadata,
        metadata_text=metadata_text,
        stream_id=stream_id,
        expected_version=expected,
        correlation_id=correlation_id,
        causation_id=causation_id,
        correlation_given=correlation_given,
    )


# -- query criteria ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Criteria:
    """Validated criteria: ``shape`` keys the compiled-statement cache, ``params`` bind."""

    shape: tuple[Any, ...]
    params: dict[str, Any]
    limit: int
    order: Literal["asc", "desc"]


_CRITERIA_KEYS = (
    "type",
    "stream_id",
    "after",
    "before",
    "after_position",
    "before_position",
    "correlation_id",
    "causation_id",
    "limit",
    "order",
)


def _fail(key: str, expected: str, value: Any) -> EventError:
    # A value of the right type but out of range is shown itself, not its type's name.
    if isinstance(value, int | float | str):
        given = shown(value, 60)
    elif isinstance(value, list | tuple):  # of the right type: its length is wrong
        given = f"a list of {len(value)}" if value else "an empty list"
    else:
        given = type(value).__name__
    return EventError(
        f"criterion {key!r} must be {expected}, not {given}",
        context={"criterion": key, "value": shown(value)},
    )


def _ts(key: str, value: Any) -> datetime:
    """The criterion in UTC. A naive datetime is refused: read as UTC, ``datetime.now()``
    (local time) would silently be hours off anywhere but in UTC, and read as local
    time, the same code would ask another question on each machine."""
    if not isinstance(value, datetime):
        raise _fail(key, "a datetime", value)
    if value.utcoffset() is None:  # no tzinfo, or one that knows no offset: both naive
        raise EventError(
            f"criterion {key!r} must be an aware datetime (with a time zone), not a naive "
            "one: pass e.g. datetime.now(UTC), not datetime.now()",
            context={"criterion": key, "value": shown(value)},
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:  # within hours of datetime.min or max in another zone
        raise EventError(
            f"criterion {key!r} is out of range in UTC",
            context={"criterion": key, "value": shown(value)},
        ) from None


def _position(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VERSION:
        raise _fail(key, f"an int from 0 to {MAX_VERSION}", value)
    return value


def _text(key: str, value: Any) -> str:
    value = name_text(value)
    if not isinstance(value, str):
        raise _fail(key, "a string", value)
    if "\x00" in value or not is_utf8(value):
        raise EventError(
            f"criterion {key!r} must be text without NUL characters or lone surrogates",
            context={"criterion": key, "value": shown(value)},
        )
    return value


def merge_criteria(criteria: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The criteria dict and the keyword arguments, as one; a criterion given in both is
    refused (which of two answers was meant?)."""
    if criteria is not None and not isinstance(criteria, Mapping):
        raise EventError(
            f"criteria must be a dict, not {type(criteria).__name__}",
            context={"type": type(criteria).__name__},
        )
    if criteria and kwargs:
        both = sorted(str(key)[:200] for key in criteria if key in kwargs)
        if both:
            raise EventError(
                f"criterion {both[0]!r} is given twice, in the criteria dict and as a "
                "keyword argument: give it once",
                context={"criterion": both[0]},
            )
    return {**(criteria or {}), **kwargs}


def _text_bounds(key: str, at: datetime) -> dict[str, str]:
    """SQLite: a bound on ``recorded_at``'s text that every row within ``after``/``before``
    passes, whatever its form (0015's: an offset of at most 23:59, ``T`` or a space, a
    date alone), for a cheap test before the exact one (see ``_store._query``)."""
    utc = at.astimezone(UTC).replace(tzinfo=None)
    try:
        if key == "after":  # every such row's text is past this time's, a day before
            return {"after_floor": (utc - timedelta(days=1)).isoformat(" ", "microseconds")}
        return {"before_ceil": (utc + timedelta(days=2)).date().isoformat()}  # before that date
    except OverflowError:  # within two days of datetime's ends: no bound then
        return {"after_floor": ""} if key == "after" else {"before_ceil": "A"}


def parse_criteria(
    criteria: Mapping[str, Any] | None, kwargs: Mapping[str, Any], ts: Any
) -> Criteria:
    """Check every criterion; ``ts`` turns a datetime into the backend's bound value."""
    merged = merge_criteria(criteria, kwargs)
    for key in merged:
        if key not in _CRITERIA_KEYS:
            raise EventError(
                f"unknown criterion {shown(key)} (known: {', '.join(_CRITERIA_KEYS)})",
                context={"criterion": text_of(key)},
            )
    params: dict[str, Any] = {}
    shape: list[Any] = []
    types = merged.get("type")
    if types is not None:
        names = [types] if isinstance(types, str | enum.Enum) else types
        if not isinstance(names, list | tuple) or not names or len(names) > MAX_TYPES:
            raise _fail("type", f"a string or a list of 1 to {MAX_TYPES} strings", types)
        for i, name in enumerate(names):
            params[f"type_{i}"] = _text("type", name)
        shape.append(("type", len(names)))
    for key in ("stream_id", "correlation_id", "causation_id"):
        value = merged.get(key)
        if value is not None:
            if key != "stream_id" and isinstance(value, uuid.UUID):
                value = str(value)  # as store() takes them
            params[key] = _text(key, value)
            shape.append(key)
    for key in ("after", "before"):
        if merged.get(key) is not None:
            at = _ts(key, merged[key])
            params[key] = ts(at)
            params.update(_text_bounds(key, at))
            shape.append(key)
    for key in ("after_position", "before_position"):
        if merged.get(key) is not None:
            params[key] = _position(key, merged[key])
            shape.append(key)
    limit = merged.get("limit", DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise _fail("limit", f"an int from 1 to {MAX_LIMIT}", limit)
    order = merged.get("order", "asc")
    if order not in ("asc", "desc"):
        raise EventError(
            "criterion 'order' must be 'asc' or 'desc'",
            context={"criterion": "order", "value": shown(order)},
        )
    shape.append(order)
    return Criteria(shape=tuple(shape), params=params, limit=limit, order=order)
