"""Fixtures of the hostile-input tests: one instance and one outside view of the tables."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.support import Face, Tables


@pytest.fixture(params=["sync", "async"])
def face(request: pytest.FixtureRequest, db_url: str) -> Iterator[Face]:
    """One instance for the whole test: a Foundation, or an AsyncFoundation on its own loop."""
    instance = Face(db_url, request.param)
    yield instance
    instance.close()


@pytest.fixture
def tables(db_url: str) -> Iterator[Tables]:
    """Every foundation_* table, read with a plain driver connection."""
    t = Tables(db_url)
    yield t
    t.close()
