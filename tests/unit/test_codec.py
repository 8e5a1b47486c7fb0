"""SQLite's timestamp text: what every table writes and every reader parses back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from foundation.database.codec import codec_for

SQLITE = codec_for("sqlite")
PLUS_TWO = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("at", "text"),
    [
        (datetime(2026, 11, 28, 19, 0, tzinfo=UTC), "2026-11-28 19:00:00.000000"),
        (datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), "2026-01-02 03:04:05.123456"),
        # Another zone is written in UTC; the year is always four digits (it sorts).
        (datetime(2026, 1, 2, 1, tzinfo=PLUS_TWO), "2026-01-01 23:00:00.000000"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01 00:00:00.000000"),
    ],
)
def test_sqlite_timestamps_are_fixed_width_utc_text(at: datetime, text: str) -> None:
    assert SQLITE.ts(at) == text
    assert SQLITE.load_ts(text) == at and SQLITE.load_ts(text).tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    ["2026-11-28 21:31:48.123+00", "2026-11-28 21:31:48+02:00", "2026-11-28T21:31:48.123456"],
)
def test_timestamps_written_by_another_hand_still_read(text: str) -> None:
    parsed = SQLITE.load_ts(text)
    assert parsed.tzinfo is not None
    expected = datetime.fromisoformat(text)
    assert parsed == (expected if expected.tzinfo else expected.replace(tzinfo=UTC))
