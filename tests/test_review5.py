"""Fifth review: naive datetimes in criteria, the index of a store_many conflict, unknown
fields in an import, what is wrong with a name, very deep JSON, tail from the beginning,
``python -m foundation.cli`` and a long name in ``registry list``."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from foundation import AsyncFoundation, ConcurrencyError, EventError, Foundation
from foundation._json import encode_json
from foundation.cli import main
from foundation.errors import ValidationError
from foundation.events._model import parse_event


def uid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def run(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, ["-d", url, *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# -- 1. a naive datetime in after / before is refused, not read as UTC ------------------


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: Python counts such a datetime as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None


NAIVE = [datetime.now(), datetime.now().replace(tzinfo=_NoOffset())]


@pytest.mark.parametrize("key", ["after", "before"])
@pytest.mark.parametrize("naive", NAIVE, ids=["no-tzinfo", "tzinfo-without-offset"])
def test_naive_datetime_criterion_is_refused(fdn: Foundation, key: str, naive: datetime) -> None:
    stored = fdn.events.store({"type": "x"})
    for read in (fdn.events.get, lambda **c: list(fdn.events.iter(**c))):
        with pytest.raises(EventError) as caught:
            read(**{key: naive})
        err = caught.value
        assert err.code == "event_error"
        assert f"criterion {key!r}" in err.message and "aware" in err.message
        assert "datetime.now(UTC)" in err.message
        assert err.context["criterion"] == key
    # Aware ones keep working, in any zone.
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert fdn.events.get(after=since) == [stored]
    assert fdn.events.get(after=since.astimezone(), before=since + timedelta(hours=1)) == [stored]


async def test_naive_datetime_criterion_is_refused_async(afdn: AsyncFoundation) -> None:
    await afdn.events.store({"type": "x"})
    with pytest.raises(EventError, match=r"criterion 'after' .*aware"):
        await afdn.events.get(after=datetime.now())
    with pytest.raises(EventError, match=r"criterion 'before' .*aware"):
        afdn.events.iter(before=datetime.now())
    assert len(await afdn.events.get(after=datetime.now(UTC) - timedelta(minutes=5))) == 1


# -- 2. store_many: the index of the event whose expected version or id failed ----------


def _conflicts(n: int) -> list[tuple[list[dict[str, Any]], int]]:
    """(batch, index of the event that fails) after ``_seed`` stored stream 's' at
    version 1 and event ``uid(n)``."""
    return [
        # several fresh events: the version check of each in turn
        (
            [
                {"type": "a", "stream_id": "s", "expected_version": 1},
                {"type": "b"},
                {"type": "c", "stream_id": "s", "expected_version": 1},
            ],
            2,
        ),
        # one fresh event after one already recorded (its id): SQLite's lone insert
        (
            [
                {"id": uid(n), "type": "seed"},
                {"type": "d", "stream_id": "s", "expected_version": "no_stream"},
            ],
            1,
        ),
    ]


def _seed(n: int) -> dict[str, Any]:
    return {"id": uid(n), "type": "seed"}


def test_store_many_concurrency_error_names_the_index(fdn: Foundation) -> None:
    fdn.events.store({"type": "s0", "stream_id": "s"})
    fdn.events.store(_seed(1))
    for batch, index in _conflicts(1):
        with pytest.raises(ConcurrencyError) as caught:
            fdn.events.store_many(batch)
        assert caught.value.context["index"] == index
    with pytest.raises(ConcurrencyError) as caught:  # store(): one event, no index
        fdn.events.store({"type": "e", "stream_id": "s", "expected_version": 0})
    assert "index" not in caught.value.context
    assert len(fdn.events.get()) == 2


async def test_store_many_concurrency_error_names_the_index_async(
    afdn: AsyncFoundation,
) -> None:
    await afdn.events.store({"type": "s0", "stream_id": "s"})
    await afdn.events.store(_seed(1))
    for batch, index in _conflicts(1):
        with pytest.raises(ConcurrencyError) as caught:
            await afdn.events.store_many(batch)
        assert caught.value.context["index"] == index
    assert len(await afdn.events.get()) == 2


def _id_conflicts() -> list[tuple[list[dict[str, Any]], int, str]]:
    return [
        # recorded before with other data
        ([{"type": "new"}, {"id": uid(1), "type": "seed", "data": 2}], 1, "already recorded"),
        # twice in the batch with different content: the second
        (
            [
                {"id": uid(7), "type": "t", "data": 1},
                {"type": "new"},
                {"id": uid(7), "type": "t", "data": 2},
            ],
            2,
            "appears twice",
        ),
    ]


def test_store_many_id_conflict_names_the_index(fdn: Foundation) -> None:
    fdn.events.store(_seed(1))
    for batch, index, message in _id_conflicts():
        with pytest.raises(EventError, match=message) as caught:
            fdn.events.store_many(batch)
        assert caught.value.context["index"] == index
    with pytest.raises(EventError, match="already recorded") as caught:
        fdn.events.store({"id": uid(1), "type": "other"})
    assert "index" not in caught.value.context and caught.value.context["fields"] == ["type"]
    assert len(fdn.events.get()) == 1


async def test_store_many_id_conflict_names_the_index_async(afdn: AsyncFoundation) -> None:
    await afdn.events.store(_seed(1))
    for batch, index, message in _id_conflicts():
        with pytest.raises(EventError, match=message) as caught:
            await afdn.events.store_many(batch)
        assert caught.value.context["index"] == index
    assert len(await afdn.events.get()) == 1


# -- 3. import refuses a field that is not an event's --------------------------------------


def test_import_refuses_an_unknown_field(db_url: str, tmp_path: Path) -> None:
    file = tmp_path / "typo.jsonl"
    good = {"id": uid(1), "type": "payment", "data": {"amount": 1}}
    typo = {"id": uid(2), "type": "payment", "dta": {"amount": 100}, "meta": {"x": 1}}
    file.write_text(json.dumps(good) + "\n" + json.dumps(typo) + "\n")
    result = run(db_url, "events", "import", str(file))
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("error [event_error]: line 2: unknown field 'dta'")
    assert result.stderr.endswith("; nothing was imported\n")
    with Foundation(db_url, migrate="check") as fdn:
        assert fdn.events.get() == []
    # Every field an export writes is taken (position, version and time are this log's).
    exported = {
        **good,
        "position": 9,
        "stream_id": None,
        "stream_version": None,
        "metadata": {},
        "correlation_id": None,
        "causation_id": None,
        "recorded_at": "2024-01-01T00:00:00+00:00",
    }
    file.write_text(json.dumps(exported) + "\n")
    result = run(db_url, "events", "import", str(file))
    assert result.exit_code == 0, result.stderr
    with Foundation(db_url, migrate="check") as fdn:
        [event] = fdn.events.get()
    assert (str(event.id), event.data, event.position) == (uid(1), {"amount": 1}, 1)


# -- 4. a name says what is wrong with it -------------------------------------------------


@pytest.mark.parametrize("field", ["type", "stream_id"])
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("a\x00", "must not contain control or other non-printable characters ('\\x00')"),
        ("a\n", "must not contain control or other non-printable characters ('\\n')"),
        ("\ud800x", "must be valid UTF-8 text (it holds a lone surrogate)"),
        ("x" * 256, "must be at most 255 characters (this one has 256)"),
    ],
)
def test_a_bad_name_says_what_is_wrong(field: str, value: str, says: str) -> None:
    event = {"type": "ok", field: value}
    with pytest.raises(EventError) as caught:
        parse_event(event, 1024)
    assert caught.value.message == f"event field {field!r} {says}"
    assert caught.value.context["field"] == field


def test_a_bad_name_says_what_is_wrong_on_store(fdn: Foundation) -> None:
    with pytest.raises(EventError, match="lone surrogate"):
        fdn.events.store({"type": "a\ud800"})


# -- 5. JSON nested past the interpreter's recursion limit --------------------------------


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [200, 2_500, 50_000])
def test_very_deep_json_is_too_deep_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(ValidationError) as caught:
        encode_json(_nested(depth), what="the value", max_bytes=10**9, error=ValidationError)
    assert caught.value.message == "the value is nested more than 100 levels deep"
    assert caught.value.context["max_depth"] == 100


def test_a_value_holding_itself_says_so() -> None:
    cycle: list[Any] = [1]
    cycle.append({"again": cycle})
    with pytest.raises(ValidationError) as caught:
        encode_json(cycle, what="the value", max_bytes=10**9, error=ValidationError)
    assert "contains itself" in caught.value.message


def test_very_deep_event_data(fdn: Foundation) -> None:
    with pytest.raises(EventError, match="nested more than 100 levels deep"):
        fdn.events.store({"type": "deep", "data": _nested(3_000)})


# -- 6. tail(start="beginning") -------------------------------------------------------------


def test_tail_from_the_beginning(fdn: Foundation) -> None:
    fdn.events.store_many([{"type": "x", "data": 1}, {"type": "y"}, {"type": "x", "data": 2}])
    tail = fdn.events.tail(type="x", start="beginning", poll_interval_ms=10)
    try:
        assert [next(tail).data for _ in range(2)] == [1, 2]
    finally:
        tail.close()
    with pytest.raises(EventError, match="'beginning', 'end' or a position"):
        fdn.events.tail(start="middle")


async def test_tail_from_the_beginning_async(afdn: AsyncFoundation) -> None:
    await afdn.events.store_many([{"type": "x", "data": 1}, {"type": "x", "data": 2}])
    tail = await afdn.events.tail(start="beginning", poll_interval_ms=10)
    try:
        assert [(await anext(tail)).data for _ in range(2)] == [1, 2]
    finally:
        await tail.aclose()


# -- 7. python -m foundation.cli ---------------------------------------------------------------


@pytest.mark.parametrize("module", ["foundation", "foundation.cli"])
def test_python_m(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: foundation "), done.stdout
    assert "registry" in done.stdout


@pytest.mark.parametrize(
    "module", ["foundation.cli_events", "foundation.cli_ops", "foundation.cli_common"]
)
def test_each_cli_module_imports_first(module: str) -> None:
    # They used to import foundation.cli, which imported them back: a half-made module.
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- 8. registry list with a very long name --------------------------------------------------


def test_registry_list_long_name_leaves_the_other_columns_readable(db_url: str) -> None:
    long = "n" * 254
    with Foundation(db_url, migrate="skip") as node:
        node.service_registry.register(long, "http://10.0.0.5:8000", {"v": "1"})
        node.service_registry.register("short", "http://10.0.0.6:8000", {"v": "2"})
        result = run(db_url, "registry", "list", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    header = next(line for line in lines if "name" in line)
    for column in ("address", "owner", "epoch", "age", "expires in", "metadata"):
        assert column in header, header
    # Folded, nothing is lost: each column's cells joined line by line give the values.
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "│" in line]
    columns = list(zip(*cells, strict=True))
    assert long in "".join(columns[0])
    assert "short" in columns[0]
    assert "http://10.0.0.6:8000" in "".join(columns[1])
    assert node.settings.node_id.replace(" ", "") in "".join(columns[2])
