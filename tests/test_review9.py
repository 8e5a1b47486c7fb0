"""Found in the ninth round of review, outside the event log and the registry.

* ``fdn.poller()`` emitted values (``memory.peak_rss``, ``memory.vms``,
  ``circuit_breakers.total``) that ``default_metrics()`` had no metric for, though
  docs/telemetry.md says every value has one.
* A closed ``Foundation`` could be entered again (``with fdn:``) without a word, failing
  only at its first database call; ``AsyncFoundation`` refuses at once.
"""

from __future__ import annotations

import time

import pytest

from foundation import Foundation, FoundationError
from foundation.telemetry import default_metrics


def test_every_value_the_poller_emits_has_a_default_metric(fdn: Foundation) -> None:
    emitted: set[str] = set()
    fdn.telemetry.attach(
        "review9-poller",
        [
            ("foundation", "poller", "memory"),
            ("foundation", "poller", "event_log"),
            ("foundation", "poller", "circuit_breakers"),
        ],
        lambda event, measurements, _m, _c: emitted.update(
            ".".join(event) + "." + key for key in measurements
        ),
    )
    with fdn.poller(interval_ms=10):
        deadline = time.monotonic() + 10
        while len(emitted) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    names = {metric.dotted_name for metric in default_metrics()}
    assert emitted and emitted <= names, emitted - names


def test_a_closed_foundation_is_not_entered_again(db_url: str) -> None:
    fdn = Foundation(db_url, migrate="check")
    with fdn:
        fdn.config.set("k", 1)
    with pytest.raises(FoundationError) as err, fdn:
        pass
    assert err.value.code == "storage_unavailable" and "cannot be opened again" in str(err.value)
