"""Review 15, an operator's plain SQL, on SQLite and PostgreSQL (migrations 0020, 0021).

* A config value no reader can load (a number of more than 4,300 digits, containers
  nested past 100 levels; on SQLite also a BLOB, an infinite float, an escaped lone
  surrogate) was taken, and the config triggers copied it into the append-only history
  and the event log, where it stopped every subscription for good: refused now.
* A SQLite value read as a BLOB or holding a lone surrogate raised a raw ``TypeError``
  (every new node failed to start) or crashed the CLI's output: now the key is named.
* A shared breaker's state typed by hand (``'CLOSED'``) refused every call for good, as
  "is CLOSED: it was forced open": refused by the database; a row already so is named.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from foundation import Foundation, FoundationError
from foundation.database.url import DatabaseURL
from tests.helpers import wait_for
from tests.test_config_review import plain_sql


def _refused(db_url: str, statement: str) -> str:
    with pytest.raises(Exception) as err:  # the driver's own error: this is plain SQL
        plain_sql(db_url, statement)
    return str(err.value)


def _changes_recorded(fdn: Foundation) -> tuple[int, int]:
    history = fdn.database.fetchone("SELECT count(*) FROM foundation_config_history")
    events = fdn.database.fetchone("SELECT count(*) FROM foundation_events")
    assert history is not None and events is not None
    return int(history[0]), int(events[0])


UNREADABLE = {
    "digits": "[" + "9" * 4301 + "]",
    "negative digits": '{"a": -' + "9" * 4301 + "}",
    "a fraction past the float range": "[" + "9" * 400 + ".5]",
    "deep": "[" * 101 + "]" * 101,
}
READABLE = {
    "4300 digits": "[" + "9" * 4300 + "]",
    "100 levels": "[" * 100 + "]" * 100,
    "digits in a string": '"' + "9" * 5000 + '"',
    "an emoji, escaped": '"\\ud83d\\ude00"',
    "an escaped backslash": '"\\\\ud800"',
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_a_config_value_no_reader_can_load_is_refused(db_url: str, case: str) -> None:
    with Foundation(db_url) as fdn:
        fdn.config.set("limit", 1)
        before = _changes_recorded(fdn)
        value = UNREADABLE[case]
        message = _refused(
            db_url, f"UPDATE foundation_config SET value = '{value}' WHERE key = 'limit'"
        )
        assert "foundation_config" in message
        assert _changes_recorded(fdn) == before  # nothing copied anywhere
        assert [e.data for e in fdn.events.get(type="foundation.config.changed")]
        assert fdn.config.history("limit")[0].new_value == 1


@pytest.mark.parametrize("case", sorted(READABLE))
def test_a_config_value_readers_can_load_is_still_taken(db_url: str, case: str) -> None:
    with Foundation(db_url) as fdn:
        fdn.config.set("limit", 1)
        plain_sql(
            db_url, f"UPDATE foundation_config SET value = '{READABLE[case]}' WHERE key = 'limit'"
        )
        assert fdn.config.history("limit")[0].changed_by.startswith("sql")
        fdn.events.get(type="foundation.config.changed")  # the log stays readable


SQLITE_ONLY = {
    "a BLOB": "x'31'",
    "an infinite float": "'[1e999]'",
    "a lone surrogate": "'\"\\ud800\"'",
    "a lone surrogate in a key": "'{\"\\udc00\": 1}'",
}


@pytest.mark.parametrize("case", sorted(SQLITE_ONLY))
def test_sqlite_refuses_a_config_value_that_is_not_readable_text(tmp_path: Any, case: str) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.config.set("limit", 1)
        before = _changes_recorded(fdn)
        message = _refused(
            url, f"UPDATE foundation_config SET value = {SQLITE_ONLY[case]} WHERE key = 'limit'"
        )
        assert "foundation_config" in message
        assert _changes_recorded(fdn) == before


def _without_the_0020_trigger(path: str, statement: str) -> None:
    """A row as a database before migration 0020 may hold it."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER foundation_config_value_readable_update")
        conn.execute("DROP TRIGGER foundation_events_valid_row")  # the copy into the log
        conn.execute(statement)


@pytest.mark.parametrize("value", ["x'31'", "'\"\\ud800\"'"], ids=["a BLOB", "a lone surrogate"])
def test_sqlite_a_value_already_unreadable_is_named_not_a_raw_error(
    tmp_path: Any, value: str
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.config.set("limit", 1)
    _without_the_0020_trigger(
        DatabaseURL.parse(url).sqlite_path,
        f"UPDATE foundation_config SET value = {value} WHERE key = 'limit'",
    )
    with pytest.raises(FoundationError) as err:
        Foundation(url)
    assert err.value.code == "config_error" and err.value.context["key"] == "limit"


# -- a breaker's state ---------------------------------------------------------------------


def test_a_breaker_state_typed_by_hand_is_refused(db_url: str) -> None:
    with Foundation(db_url) as fdn:
        with pytest.raises(ZeroDivisionError):
            fdn.circuit_breaker.execute(lambda: 1 / 0, name="pay", max_failures=1)
        message = _refused(
            db_url,
            "UPDATE foundation_breakers SET state = 'CLOSED', failures = 0 WHERE name = 'pay'",
        )
        assert "closed, open or half_open" in message
        plain_sql(db_url, "UPDATE foundation_breakers SET state = 'closed', failures = 0")
        with Foundation(db_url) as other:
            assert other.circuit_breaker.execute(lambda: "paid", name="pay", max_failures=1) == (
                "paid"
            )


def test_a_breaker_row_already_in_an_unknown_state_is_named(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        with pytest.raises(ZeroDivisionError):
            fdn.circuit_breaker.execute(lambda: 1 / 0, name="pay", max_failures=1)
    with sqlite3.connect(DatabaseURL.parse(url).sqlite_path) as conn:
        conn.execute("DROP TRIGGER foundation_breakers_state_update")  # before 0021
        conn.execute("UPDATE foundation_breakers SET state = 'CLOSED' WHERE name = 'pay'")
    with Foundation(url, migrate="skip") as fdn:
        with pytest.raises(FoundationError) as err:
            fdn.circuit_breaker.execute(lambda: "paid", name="pay", max_failures=1)
        assert err.value.code == "circuit_open"
        assert "'CLOSED'" in err.value.message and "reset()" in err.value.message
        assert "forced open" not in err.value.message
        fdn.circuit_breaker.reset("pay")
        assert fdn.circuit_breaker.execute(lambda: "paid", name="pay", max_failures=1) == "paid"


@pytest.mark.parametrize(
    "value",
    [
        {"wait" + "." * 100: {"ms": 5}},  # a key the depth check must not count
        {"[a-z][0-9]" * 50: {"route": "x"}},
        {"id": 18446744073709551615, "pi": "3" * 4301},  # digits in a string, an uint64
        [10**400 + i for i in range(50)],  # integers past the float range, readable
        ["3" * 4000] + [2**70] * 20,
    ],
    ids=["dotted key", "bracketed key", "uint64 and a digit string", "big ints", "mixed"],
)
def test_values_config_set_writes_pass_the_trigger(db_url: str, value: Any) -> None:
    with Foundation(db_url) as a, Foundation(db_url) as b:
        a.config.set("k", value)
        assert a.config.get("k") == value
        wait_for(lambda: b.config.get("k") == value)


@pytest.mark.parametrize("value", ['"a\\u0000b"', '{"k\\u0000": 1}'], ids=["value", "key"])
def test_sqlite_refuses_an_escaped_nul_as_config_set_and_postgresql_do(
    tmp_path: Any, value: str
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.config.set("limit", 1)
        message = _refused(url, f"UPDATE foundation_config SET value = '{value}'")
        assert "NUL" in message
        plain_sql(url, "UPDATE foundation_config SET value = '\"\\\\u0000\"'")  # no NUL
