"""The config repository: its SQL, written once in Core and compiled per backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from foundation.config._state import ConfigHistoryEntry
from foundation.database.codec import Codec, unreadable_json
from foundation.database.schema import config, config_history
from foundation.database.statements import compile_sql
from foundation.database.url import Backend
from foundation.errors import ConfigError

__all__ = ["ConfigSQL"]


def changed_at(backend: Backend) -> sa.ColumnElement[Any]:
    """When a change is made: PostgreSQL's clock; on SQLite, this process's, bound as
    ``at`` (SQLite's own clock keeps milliseconds only, and the change's event in the log
    would be recorded before an event this process stored just earlier)."""
    if backend == "sqlite":
        return sa.bindparam("at")
    return sa.func.now()


def _next_revision() -> sa.ColumnElement[Any]:
    """A new row's revision: one past the key's last recorded change. A row deleted with
    plain SQL and set again must not start again at 1: every node keeps a key's newest
    revision and ignores rows at or below it (one probe of the history's (key, id) index)."""
    # A change recorded below revision 1 (a row inserted by hand before migration 0023)
    # counts as none: revisions start at 1, which 0023 holds the table to.
    revision = config_history.c.revision
    last = (
        sa.select(
            sa.case((revision > sa.literal_column("0"), revision), else_=sa.literal_column("0"))
        )
        .where(config_history.c.key == sa.bindparam("key"))
        .order_by(config_history.c.id.desc())
        .limit(sa.literal_column("1"))
        .offset(sa.literal_column("0"))  # SQLite's LIMIT comes with an OFFSET
        .scalar_subquery()
    )
    return sa.func.coalesce(last, sa.literal_column("0")) + sa.literal_column("1")


def _upsert(backend: Backend) -> sa.Insert:
    insert = postgresql.insert if backend == "postgresql" else sqlite.insert
    stmt = insert(config).values(
        key=sa.bindparam("key"),
        value=sa.bindparam("value"),
        deleted=sa.false(),
        revision=_next_revision(),
        updated_at=changed_at(backend),
        updated_by=sa.bindparam("by"),
        correlation_id=sa.bindparam("cid"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[config.c.key],
        set_={
            "value": stmt.excluded.value,
            "deleted": sa.false(),
            "revision": config.c.revision + sa.literal_column("1"),
            "updated_at": stmt.excluded.updated_at,
            "updated_by": stmt.excluded.updated_by,
            "correlation_id": stmt.excluded.correlation_id,
        },
    ).returning(config.c.revision)


@dataclass(frozen=True)
class ConfigSQL:
    """Every statement the config service runs, as driver-ready text."""

    upsert: str
    delete: str
    select_all: str
    select_one: str
    history_all: str
    history_key: str
    history_head: str
    history_keys: str
    codec: Codec
    binds_time: bool  # statements take the change's time as ``at`` (see ``changed_at``)

    @classmethod
    def build(cls, backend: Backend, codec: Codec) -> ConfigSQL:
        columns = (
            config.c.key,
            config.c.value,
            config.c.revision,
            config.c.deleted,
            config.c.updated_by,
        )
        delete = (
            sa.update(config)
            .where(config.c.key == sa.bindparam("key"), config.c.deleted == sa.false())
            .values(
                value=sa.null(),
                deleted=sa.true(),
                revision=config.c.revision + sa.literal_column("1"),
                updated_at=changed_at(backend),
                updated_by=sa.bindparam("by"),
                correlation_id=sa.bindparam("cid"),
            )
            .returning(config.c.revision)
        )
        history = (
            sa.select(
                config_history.c.id,
                config_history.c.key,
                config_history.c.operation,
                config_history.c.old_value,
                config_history.c.new_value,
                config_history.c.revision,
                config_history.c.changed_at,
                config_history.c.changed_by,
                config_history.c.correlation_id,
            )
            .order_by(config_history.c.id.desc())
            .limit(sa.bindparam("limit"))
            .offset(sa.literal_column("0"))
        )
        return cls(
            upsert=compile_sql(_upsert(backend), backend),
            delete=compile_sql(delete, backend),
            select_all=compile_sql(sa.select(*columns), backend),
            select_one=compile_sql(
                sa.select(*columns).where(config.c.key == sa.bindparam("key")), backend
            ),
            history_all=compile_sql(history, backend),
            history_head=compile_sql(sa.select(sa.func.max(config_history.c.id)), backend),
            history_keys=compile_sql(
                sa.select(config_history.c.key)
                .where(
                    config_history.c.id > sa.bindparam("after"),
                    config_history.c.id <= sa.bindparam("upto"),
                )
                .distinct(),
                backend,
            ),
            history_key=compile_sql(
                history.where(config_history.c.key == sa.bindparam("key")), backend
            ),
            codec=codec,
            binds_time=backend == "sqlite",
        )

    def runtime_row(self, row: tuple[Any, ...]) -> tuple[str, Any, int, bool, str]:
        key, value, revision, deleted, updated_by = row
        deleted = self.codec.load_bool(deleted)
        return (
            key,
            (None if deleted else self._load(key, "foundation_config", value)),
            int(revision),
            deleted,
            updated_by,
        )

    def history_entry(self, row: tuple[Any, ...]) -> ConfigHistoryEntry:
        return ConfigHistoryEntry(
            id=int(row[0]),
            key=row[1],
            operation=row[2],
            old_value=self._load(row[1], "foundation_config_history", row[3]),
            new_value=self._load(row[1], "foundation_config_history", row[4]),
            revision=int(row[5]),
            changed_at=self.codec.load_ts(row[6]),
            changed_by=row[7],
            correlation_id=row[8],
        )

    def _load(self, key: str, table: str, value: Any) -> Any:
        try:
            return self.codec.load_json(value)
        except ValueError as exc:
            what = f"the value of config key {key!r}"
            raise unreadable_json(what, table, exc, ConfigError, key=key) from None
