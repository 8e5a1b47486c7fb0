"""SQLAlchemy Core statements compiled once into each driver's SQL text.

Hot paths run on the driver connection (``sqlite3``, ``psycopg``) with the SQL text
that SQLAlchemy compiled for that dialect at start: the statements are still written
once, in Core, but a call does not pay SQLAlchemy's per-execution cost (about ten
times a SQLite upsert+commit on this kind of machine, measured in ``scripts/bench.py``).
"""

from __future__ import annotations

from functools import cache

from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from foundation.database.url import Backend

__all__ = ["compile_sql", "compile_sqlite_positional", "dialect_for"]


@cache
def dialect_for(backend: Backend) -> Dialect:
    if backend == "sqlite":
        # Named parameters (":key") so both drivers take the same dict of parameters.
        return SQLiteDialect_pysqlite(paramstyle="named")
    return PGDialect_psycopg()  # type: ignore[no-untyped-call]


def compile_sql(statement: ClauseElement, backend: Backend) -> str:
    """The driver-ready SQL text of a Core statement (parameters stay bound by name)."""
    compiled = statement.compile(
        dialect=dialect_for(backend), compile_kwargs={"render_postcompile": True}
    )
    if compiled.positional:  # type: ignore[attr-defined]  # both dialects above are named
        raise AssertionError("Foundation compiles statements with named parameters only")
    # Constants belong in the SQL text (sa.literal_column, sa.true()): a bind parameter
    # with a value baked in would need its value at every call.
    baked = {name: value for name, value in compiled.params.items() if value is not None}
    if baked:
        raise AssertionError(f"statement has bound constants {sorted(baked)}; inline them")
    return str(compiled)


@cache
def _sqlite_qmark() -> Dialect:
    return SQLiteDialect_pysqlite(paramstyle="qmark")


def compile_sqlite_positional(statement: ClauseElement, order: tuple[str, ...]) -> str:
    """SQLite text with ``?`` placeholders for a hot statement bound from a tuple.

    ``sqlite3`` binds a named parameter by asking SQLite for its name and looking that up
    in the dict, per parameter per call: about 0.5 µs each on this kind of machine, a
    few percent of an insert. ``order`` is the tuple's order, checked against the text.
    """
    compiled = statement.compile(dialect=_sqlite_qmark())
    if tuple(compiled.positiontup or ()) != order:  # type: ignore[attr-defined]
        raise AssertionError(f"parameters are {compiled.positiontup}, not {order}")  # type: ignore[attr-defined]
    if any(value is not None for value in compiled.params.values()):
        raise AssertionError("statement has bound constants; inline them")
    return str(compiled)
