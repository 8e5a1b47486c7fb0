"""Review 15, events, on SQLite and PostgreSQL: a schema version written as ``2.0`` (one
JSON number with 2, as the log compares numbers) is version 2, at decode and at store."""

from __future__ import annotations

import pydantic

from foundation import Foundation


class PaidV2(pydantic.BaseModel):
    amount_cents: int


def test_a_schema_version_written_as_a_whole_float_is_that_version(db_url: str) -> None:
    with Foundation(db_url) as fdn:
        events = fdn.events
        by_hand = events.store(
            {"type": "paid", "data": {"amount_cents": 1}, "metadata": {"schema_version": 2.0}}
        )
        events.register_type("paid", PaidV2, version=2, upcasters={1: lambda d: d})
        assert events.decode(by_hand) == PaidV2(amount_cents=1)
        typed = events.store(
            {"type": "paid", "data": {"amount_cents": 2}, "metadata": {"schema_version": 2.0}}
        )
        assert typed.metadata["schema_version"] == 2
        assert events.decode(typed) == PaidV2(amount_cents=2)
