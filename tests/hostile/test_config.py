"""Hostile input to config: every public function, sync and async, SQLite and PostgreSQL.

See ``tests/hostile/support.py`` for the property: works (and reads back equal, from the cache
and from the table), or ``config_error`` with nothing written; nothing else escapes.
"""

from __future__ import annotations

import enum
import uuid

from hypothesis import given
from hypothesis import strategies as st

from foundation.errors import ConfigError
from tests.hostile.support import (
    HOSTILE,
    Face,
    Tables,
    expect,
    fine_text,
    good_name,
    has_bad_text,
    hostile_any,
    hostile_text,
    is_json,
    json_values,
    plain_json,
)

CONFIG = {"config_error"}


class Color(enum.Enum):
    RED = "red; DROP TABLE foundation_config"


keys = st.one_of(hostile_any, fine_text, fine_text, st.just(Color.RED))
types_ = st.sampled_from([int, str, float, bool, list[int], dict[str, int], "nonsense", 3, None])


def _key_ok(key: object) -> bool:
    return isinstance(key, Color) or good_name(key, 255)


def _stored(tables: Tables, key: str) -> object:
    row = tables.one(
        "SELECT value FROM foundation_config WHERE key = ?",
        "SELECT value FROM foundation_config WHERE key = %s",
        (key,),
    )
    assert row is not None
    return tables.load_json(row[0])


def test_set_get_delete(face: Face, tables: Tables) -> None:
    outcomes: set[str] = set()

    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        config = data.draw(st.sampled_from(face.services("config")))
        key = data.draw(keys)
        value = data.draw(json_values)
        result = expect(tables, lambda: face.run(config.set(key, value)), CONFIG)
        text = key.value if isinstance(key, Color) else key
        if isinstance(result, ConfigError):
            outcomes.add("refused")
            # Only a bad key or a value that is not storable JSON may be refused.
            assert not _key_ok(key) or not is_json(value) or has_bad_text(value), (key, result)
            return
        outcomes.add("stored")
        assert _key_ok(key), key
        want = plain_json(value)
        assert face.fdn.config.get(key) == want
        assert _stored(tables, text) == want  # what every other node reads
        assert face.fdn.config.explain(key).value == want
        deleted = expect(tables, lambda: face.run(config.delete(key)), CONFIG)
        assert deleted is True
        assert face.fdn.config.get(key, "gone") == "gone"

    check()
    assert "refused" in outcomes
    # and the good cases surely work too, hostile-looking as they are
    for key in ("'; DROP TABLE foundation_config; --", "%s", ":name", "$1", "é😀", Color.RED):
        face.run(face.fdn.config.set(key, {"v": "'; DROP TABLE x; --", "n": [1.5e300, -0.0]}))
        text = key.value if isinstance(key, Color) else key
        assert (
            _stored(tables, text)
            == face.fdn.config.get(key)
            == {
                "v": "'; DROP TABLE x; --",
                "n": [1.5e300, 0.0],
            }
        )


def test_reads_and_history(face: Face, tables: Tables) -> None:
    face.run(face.fdn.config.set("present", {"a": [1, 2]}))

    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        config = data.draw(st.sampled_from(face.services("config")))
        key = data.draw(keys)
        default = data.draw(hostile_any)
        got = expect(tables, lambda: config.get(key, default), CONFIG)
        if _key_ok(key):
            assert got is default or got == {"a": [1, 2]}
        else:
            # a bad key is refused (a str one not present just gives the default)
            assert isinstance(got, ConfigError) or got is default
        explained = expect(tables, lambda: config.explain(key), CONFIG)
        assert isinstance(explained, ConfigError) != _key_ok(key)
        limit = data.draw(st.one_of(st.integers(-5, 20_000), hostile_any))
        history = expect(tables, lambda: face.run(config.history(key, limit)), CONFIG)
        if (key is None or _key_ok(key)) and type(limit) is int and 1 <= limit <= 10_000:
            assert isinstance(history, list)
        else:
            assert isinstance(history, ConfigError)
        everything = face.run(config.all())
        assert everything["present"] == {"a": [1, 2]}
        assert expect(tables, lambda: face.run(config.reload()), CONFIG) is None

    check()


def test_register_watch_delete(face: Face, tables: Tables) -> None:
    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        config = data.draw(st.sampled_from(face.services("config")))
        key = data.draw(keys)
        type_ = data.draw(types_)
        default = data.draw(st.one_of(st.integers(), hostile_any))
        registered = expect(tables, lambda: config.register(key, type_, default), CONFIG)
        if not _key_ok(key) or type_ in ("nonsense", 3):
            assert isinstance(registered, ConfigError)
        pattern = data.draw(st.one_of(keys, st.sampled_from(["*", "a.*", "**", ".*", "*.*"])))
        watch = expect(tables, lambda: face.in_loop(lambda: config.watch(pattern, print)), CONFIG)
        if not isinstance(watch, ConfigError):
            watch.cancel()
        deleted = expect(tables, lambda: face.run(config.delete(key)), CONFIG)
        assert deleted is False or isinstance(deleted, ConfigError)
        assert isinstance(deleted, ConfigError) != _key_ok(key)

    check()


def test_typed_key_refuses_wrong_values(face: Face, tables: Tables) -> None:
    key = f"typed.{uuid.uuid4().hex[:6]}"
    face.fdn.config.register(key, int, default=1)

    @HOSTILE
    @given(value=st.one_of(json_values, hostile_text))
    def check(value: object) -> None:
        result = expect(tables, lambda: face.run(face.fdn.config.set(key, value)), CONFIG)
        if isinstance(result, ConfigError):
            assert face.fdn.config.get(key) == face.fdn.config.get(key)  # still readable
            return
        stored = face.fdn.config.get(key)
        assert isinstance(stored, int)
        assert _stored(tables, key) == stored

    check()
