"""One typed settings object, read from ``FOUNDATION_*`` environment variables.

Every knob of Foundation is a field here; explicit keyword arguments to
:class:`foundation.Foundation` override the environment.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import pydantic
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from foundation._text import is_utf8, shown
from foundation.errors import ConfigError

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "build_settings", "default_node_id"]

ENV_PREFIX = "FOUNDATION_"
# Variables of this prefix that are no setting, yet Foundation's own: its test suite's.
_OTHER_VARIABLES = ("FOUNDATION_TEST_",)
_warned: set[str] = set()
log = logging.getLogger("foundation.settings")

DEFAULT_DATABASE_URL = "sqlite:///foundation.db"
# The upper bound of every interval setting: past it, thread waits overflow the platform's
# time_t and lease expiries overflow BIGINT milliseconds (found by the hostile-input tests).
_DAY_MS = 86_400_000


def default_node_id() -> str:
    """``host:pid:random``: unique per process, readable in audit tables."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Foundation's settings, from ``FOUNDATION_<FIELD>`` (``FOUNDATION_DATABASE_URL``, …)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    database_url: str = DEFAULT_DATABASE_URL
    """``sqlite:///path`` (the embedded default) or ``postgresql+psycopg://user@host/db``."""

    node_id: str = Field(default_factory=default_node_id)
    """Names this process in audit columns, leases and telemetry."""

    migrate: Literal["upgrade", "check", "skip"] | None = None
    """On start: ``upgrade`` the schema, ``check`` it is at head, or ``skip``.
    ``None`` means upgrade on SQLite and check on PostgreSQL."""

    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """NORMAL (WAL): a commit survives a process crash, the last commits may be lost in a
    power cut. FULL: fsync on every commit, durable through power loss."""

    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0, le=_DAY_MS)
    """How long a SQLite writer waits for the write lock before giving up."""

    pool_min_size: int = Field(default=1, ge=0, le=10_000)
    pool_max_size: int = Field(default=10, ge=1, le=10_000)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    """PostgreSQL: how long to wait for a connection, opened or from the pool (seconds;
    one at least is used, as libpq counts whole seconds)."""

    poll_interval_ms: int = Field(default=25, ge=1, le=_DAY_MS)
    """SQLite change feed: how often ``PRAGMA data_version`` is checked."""

    listen_reconnect_max_ms: int = Field(default=2000, ge=10, le=_DAY_MS)
    """PostgreSQL change feed: the longest back-off between reconnect attempts."""

    max_value_bytes: int = Field(default=1024 * 1024, ge=1, le=2**30)
    """Largest JSON value (encoded, in bytes) accepted by config and events."""

    max_key_length: int = Field(default=255, ge=1, le=1024)

    postgres_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL only: keep Foundation's tables in this schema (created by the migrations)
    instead of the connection's default ``search_path``."""

    config_file: Path | None = None
    """A TOML or JSON file of config values (lower precedence than env and runtime)."""

    config_env_prefix: str = "FOUNDATION_CONFIG__"
    """Environment variables with this prefix become config values."""

    events_tail_size: int = Field(default=10_000, ge=0, le=10_000_000)
    """How many of the newest events each node keeps in memory to answer ``get`` without
    the database (0 turns the tail cache off)."""

    registry_ttl_ms: int = Field(default=30_000, ge=100, le=_DAY_MS)
    """How long a node's lease (and so its registered names) outlives its last heartbeat."""

    registry_heartbeat_ms: int | None = Field(default=None, ge=1)
    """How often the lease is renewed; by default a third of the TTL, at most half of it."""

    rate_limiter_on_storage_error: Literal["open", "closed"] = "open"
    """When the database cannot be reached, a shared limiter admits the call (``open``,
    flagged ``degraded`` in the decision and in telemetry) or refuses it (``closed``)."""

    rate_limiter_fast_commit: bool = True
    """PostgreSQL: limiter counters commit without waiting for the WAL flush
    (``synchronous_commit=off`` for that statement only). A server crash can lose the
    last ~600 ms of increments, so those keys may admit that many calls again."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # True is an int to Python: a number setting given True or False is a mistake
        # (pydantic's lax mode would take it as 1 or 0).
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and bool not in get_args(annotation):
                raise ValueError("must be a number, not True or False")
        return value

    @field_validator(
        "sqlite_busy_timeout_ms",
        "poll_interval_ms",
        "listen_reconnect_max_ms",
        "registry_ttl_ms",
        "registry_heartbeat_ms",
        mode="before",
    )
    @classmethod
    def _milliseconds(cls, value: Any) -> Any:
        # The spec's unit is milliseconds; a timedelta is accepted too.
        if isinstance(value, timedelta):
            ms = value / timedelta(milliseconds=1)
            return int(ms) if ms == int(ms) else ms  # a fraction of a ms fails as int does
        return value

    @field_validator("connect_timeout_s", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        return value.total_seconds() if isinstance(value, timedelta) else value

    @field_validator("config_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        # FOUNDATION_CONFIG_FILE= (set but empty) means no file, not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("node_id")
    @classmethod
    def _storable_node_id(cls, value: str) -> str:
        # Written into every row this node changes (updated_by, changed_by, leases, …):
        # what those VARCHAR(255) columns of both databases can hold.
        if not value.strip() or len(value) > 255 or not value.isprintable():
            raise ValueError("node_id must be 1 to 255 printable characters")
        _utf8(value, "node_id")
        return value

    @field_validator("database_url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("database_url must not contain a NUL character")
        _utf8(value, "database_url")
        if "://" not in value:
            raise ValueError(
                f"not a database URL: {_shown(value)}; use sqlite:///path/app.db or "
                "postgresql+psycopg://user:password@host/db"
            )
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise _FieldError(
                "pool_min_size",
                f"pool_min_size ({self.pool_min_size}) must not be larger than "
                f"pool_max_size ({self.pool_max_size})",
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> Settings:
        # A renewal must land before the lease runs out with room to spare: the heartbeat
        # wakes on a tick and waits for the database, and near the TTL every late beat
        # lets the lease lapse (the node's names then flap, and another may take them).
        if self.registry_heartbeat_ms is not None and (
            self.registry_heartbeat_ms * 2 > self.registry_ttl_ms
        ):
            raise _FieldError(
                "registry_heartbeat_ms",
                f"registry_heartbeat_ms ({self.registry_heartbeat_ms}) must be at most half "
                f"of registry_ttl_ms ({self.registry_ttl_ms}), so that a late renewal still "
                "lands before the lease runs out",
            )
        return self


def _utf8(value: str, name: str) -> None:
    if not is_utf8(value):
        raise ValueError(f"{name} must be valid UTF-8 (it holds a lone surrogate)")


def _shown(value: str) -> str:
    """A rejected URL as an error may show it: hidden if it may hold a credential (a
    ``sqlite:`` one holds none, unless it has a user part)."""
    plain_sqlite = value.lower().startswith("sqlite:") and "@" not in value
    if (any(c in value for c in "@=:") and not plain_sqlite) or len(value) > 80:
        return "(hidden: it may hold a password)"
    return shown(value)


class _FieldError(ValueError):
    """A check across fields, naming the field the error is reported under."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def build_settings(values: Mapping[str, Any], base: Settings | None = None) -> Settings:
    """Settings from keyword arguments over ``base`` (or over ``FOUNDATION_*`` variables).

    A bad value is a ``config_error`` naming the setting, and the environment variable
    when that is where the value came from.
    """
    if base is not None and not isinstance(base, Settings):
        raise ConfigError(
            f"settings must be a foundation.Settings, not {type(base).__name__}; pass "
            "Settings(...), or the values as keyword arguments (Foundation(url, pool_max_size=5))",
            context={"setting": "settings", "type": type(base).__name__},
        )
    try:
        if base is not None:
            return Settings.model_validate({**base.model_dump(), **values})
        settings = Settings(**values)
    except pydantic.ValidationError as exc:
        raise _setting_error(exc, values, from_env=base is None) from None
    _warn_unknown_variables(settings.config_env_prefix)
    return settings


def _warn_unknown_variables(config_prefix: str) -> None:
    """Log, once per process, each ``FOUNDATION_*`` variable that names no setting (a
    misspelt ``FOUNDATION_SQLITE_SYNCRONOUS`` would be ignored without a word; the
    same misspelt keyword argument is a ``config_error``). Config values are any name:
    this instance's ``config_env_prefix``, and any name with a ``__`` (no setting has one;
    another instance's prefix, ``FOUNDATION_SVC__``, does)."""
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    for variable in os.environ:
        if (
            not variable.upper().startswith(ENV_PREFIX)
            or "__" in variable
            or variable.upper() in known
            or variable.upper().startswith((config_prefix.upper(), *_OTHER_VARIABLES))
            or variable in _warned
        ):
            continue
        _warned.add(variable)
        close = difflib.get_close_matches(variable.upper(), known, n=1)
        log.warning(
            "the environment variable %s names no Foundation setting: it is ignored%s",
            variable,
            f" (did you mean {close[0]}?)" if close else "",
        )


def _setting_error(
    exc: pydantic.ValidationError, given: Mapping[str, Any], *, from_env: bool
) -> ConfigError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ()))
    message = str(first.get("msg", ""))
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, _FieldError):
        field, message = error.field, str(error)
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    elif first.get("type") == "extra_forbidden":  # a misspelt keyword, most likely
        close = difflib.get_close_matches(field, list(Settings.model_fields), n=1)
        message = "no such setting" + (f" (did you mean {close[0]}?)" if close else "")
    context: dict[str, Any] = {"setting": field, "errors": len(exc.errors())}
    where = ""
    variable = ENV_PREFIX + field.upper()
    if from_env and field and field not in given and variable in os.environ:
        where = f" (from the environment variable {variable})"
        context["env"] = variable
    return ConfigError(f"invalid Foundation setting {field!r}{where}: {message}", context=context)
