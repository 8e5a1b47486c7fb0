"""Found by a reviewer: typed events given as pydantic models, and set fields.

* An event model whose ``type`` is an alias (``kind = Field(alias="type")``) or an Enum
  skipped the registered type's validation: invalid data was stored, without its
  ``schema_version``, and never decoded.
* Such a model's metadata was read raw once its type was registered (a datetime there
  was refused, though accepted for an unregistered type).
* A ``set`` field dumped in the set's iteration order, which follows the process's hash
  seed: valid events were refused at random ("would not decode back"), and a retry of
  the same event from another process was "already recorded with different content".
"""

from __future__ import annotations

import enum
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from foundation import EventError, Foundation


class OrderPlaced(pydantic.BaseModel):
    order_id: str
    total: int


class Envelope(pydantic.BaseModel):
    kind: str = pydantic.Field(alias="type")
    data: dict[str, Any]


class Kind(enum.Enum):
    PLACED = "order_placed"


class EnumEnvelope(pydantic.BaseModel):
    type: Kind
    data: dict[str, Any]


class DatedEnvelope(pydantic.BaseModel):
    type: str
    data: dict[str, Any]
    metadata: dict[str, datetime]


class Tagged(pydantic.BaseModel):
    tags: set[str]


@pytest.mark.parametrize(
    "event",
    [
        Envelope(type="order_placed", data={"order_id": "7"}),
        EnumEnvelope(type=Kind.PLACED, data={"order_id": 7, "total": 1}),
    ],
    ids=["alias", "enum"],
)
def test_an_event_model_is_validated_as_its_registered_type(fdn: Foundation, event: Any) -> None:
    fdn.events.register_type("order_placed", OrderPlaced)
    with pytest.raises(EventError, match="does not match OrderPlaced"):
        fdn.events.store(event)
    assert fdn.events.get(type="order_placed") == []
    stored = fdn.events.store(Envelope(type="order_placed", data={"order_id": "7", "total": 3}))
    assert stored.metadata == {"schema_version": 1}
    assert fdn.events.decode(stored) == OrderPlaced(order_id="7", total=3)


def test_an_event_models_metadata_is_read_as_json_for_a_registered_type(fdn: Foundation) -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    fdn.events.register_type("order_placed", OrderPlaced)
    stored = fdn.events.store(
        DatedEnvelope(type="order_placed", data={"order_id": "1", "total": 1}, metadata={"at": at})
    )
    assert stored.metadata == {"at": "2024-01-01T00:00:00Z", "schema_version": 1}


def test_a_set_field_is_stored_sorted_and_always_accepted(fdn: Foundation) -> None:
    fdn.events.register_type("tagged", Tagged)
    words = [f"w{i}" for i in range(40)]
    for i in range(20):
        tags = set(words[i : i + 15])
        stored = fdn.events.store({"type": "tagged", "data": {"tags": list(tags)}})
        assert stored.data == {"tags": sorted(tags)}
        assert fdn.events.decode(stored) == Tagged(tags=tags)


def test_a_set_field_stores_the_same_data_whatever_the_hash_seed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'seeds.db'}"
    event_id = str(uuid.uuid4())
    script = textwrap.dedent(
        f"""
        import pydantic
        from foundation import Foundation
        class Tagged(pydantic.BaseModel):
            tags: set[str]
        with Foundation({url!r}) as fdn:
            fdn.events.register_type("tagged", Tagged)
            tags = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
            record = fdn.events.store(
                {{"id": {event_id!r}, "type": "tagged", "data": {{"tags": tags}}}}
            )
            print(record.position, record.data["tags"])
        """
    )
    outputs = set()
    for seed in ("1", "2", "3", "4"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.add(done.stdout)
    # Every retry got the first record back: one position, one sorted list.
    assert outputs == {"1 ['alpha', 'beta', 'delta', 'epsilon', 'gamma', 'zeta']\n"}
