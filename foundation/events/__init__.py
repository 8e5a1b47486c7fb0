"""The append-only event log: ``foundation.events.store({"type": ..., "data": ...})``.

The module-level functions act on the default instance (see :mod:`foundation`); every
:class:`~foundation.Foundation` has the same methods on ``fdn.events`` (awaitable on
:class:`~foundation.AsyncFoundation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from foundation.events._aio import AsyncEvents
from foundation.events._model import RecordedEvent, uuid7
from foundation.events._service import Events
from foundation.events._store import EVENTS_LOCK_KEY, EventSQL
from foundation.events._subscription import SubscriptionStatus
from foundation.events._subscription_aio import AsyncSubscription
from foundation.events._subscription_sync import Subscription
from foundation.events._tail import DEFAULT_TAIL_SIZE, TailCache
from foundation.events._typed import SCHEMA_VERSION

__all__ = [
    "DEFAULT_TAIL_SIZE",
    "EVENTS_LOCK_KEY",
    "SCHEMA_VERSION",
    "AsyncEvents",
    "AsyncSubscription",
    "EventSQL",
    "Events",
    "RecordedEvent",
    "Subscription",
    "SubscriptionStatus",
    "TailCache",
    "correlation_chain",
    "decode",
    "get",
    "iter",
    "read_stream",
    "register_type",
    "store",
    "store_many",
    "subscribe",
    "tail",
    "uuid7",
]


def _events() -> Events:
    from foundation._default import instance

    return instance().events


def store(event: Any) -> RecordedEvent:
    """Append one event; returns its :class:`RecordedEvent`."""
    return _events().store(event)


def store_many(events: list[Any]) -> list[RecordedEvent]:
    """Append several events atomically."""
    return _events().store_many(events)


def get(criteria: Mapping[str, Any] | None = None, **kwargs: Any) -> list[RecordedEvent]:
    """Events matching the criteria, by position."""
    return _events().get(criteria, **kwargs)


def iter(
    criteria: Mapping[str, Any] | None = None, batch_size: int = 500, **kwargs: Any
) -> Iterator[RecordedEvent]:
    """Every matching event, fetched a batch at a time."""
    return _events().iter(criteria, batch_size, **kwargs)


def read_stream(stream_id: str, from_version: int = 0) -> list[RecordedEvent]:
    """One stream's events from ``from_version`` on."""
    return _events().read_stream(stream_id, from_version)


def correlation_chain(correlation_id: str) -> list[RecordedEvent]:
    """Every event with ``correlation_id``, in log order."""
    return _events().correlation_chain(correlation_id)


def subscribe(
    name: str,
    handler: Callable[[RecordedEvent], Any],
    types: str | list[str] | None = None,
    start: str | int = "beginning",
    **options: Any,
) -> Subscription:
    """A durable subscription running ``handler`` in a thread."""
    return _events().subscribe(name, handler, types, start, **options)


def tail(
    criteria: Mapping[str, Any] | None = None,
    *,
    start: str | int = "end",
    poll_interval_ms: int = 500,
    **kwargs: Any,
) -> Iterator[RecordedEvent]:
    """Follow the log live from ``start`` (not durable; see :func:`subscribe`)."""
    return _events().tail(criteria, start=start, poll_interval_ms=poll_interval_ms, **kwargs)


def register_type(
    type_name: str,
    model: Any,
    version: int = 1,
    upcasters: Mapping[int, Callable[[Any], Any]] | None = None,
) -> None:
    """Validate events of ``type_name`` with a pydantic model; decode and upcast on read."""
    _events().register_type(type_name, model, version, upcasters)


def decode(record: RecordedEvent) -> Any:
    """A recorded event's data as its registered model (upcast to the current version)."""
    return _events().decode(record)
