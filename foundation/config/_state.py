"""Config logic shared by the sync and async services: no I/O here.

Values come in layers, lowest precedence first::

    default  <  file  <  env  <  runtime

``runtime`` is what ``set`` wrote to the database; it wins on every node, so a value
set at runtime is what ``get`` returns next everywhere. ``_effective`` holds the
winning value of every key and is what ``get`` reads: one dict lookup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import threading
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import pydantic
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from foundation._json import (
    MAX_DEPTH,
    encode_json,
    has_nan_or_infinity,
    normalize_json,
    same_json,
)
from foundation._text import is_utf8, name_text, shown
from foundation._watch import Watch, Watchers
from foundation.config._immutable import freeze_value, same_value
from foundation.config._sources import EnvValue, env_layer
from foundation.errors import ConfigError

__all__ = [
    "ConfigChange",
    "ConfigExplanation",
    "ConfigHistoryEntry",
    "ConfigState",
    "ConfigWatch",
    "Watch",
]

log = logging.getLogger("foundation.config")

Layer = Literal["default", "file", "env", "runtime"]
LAYERS: tuple[Layer, ...] = ("default", "file", "env", "runtime")
_MISSING: Any = object()


@dataclass(frozen=True)
class ConfigChange:
    """What a watcher receives: a key's winning value before and after a change."""

    key: str
    old: Any
    new: Any
    source: Literal["local", "remote", "reload"]
    deleted: bool = False


def type_name(type_: Any) -> str:
    """How errors and ``explain()`` name a key's type: a class by its name, a generic
    whole (``list[int]``, not ``list``), ``Annotated[X, …]`` so. Never raises: a type
    whose parts cannot be named is shown as ``repr`` shows it."""
    try:
        return _type_name(type_)
    except Exception:
        return shown(type_)


def _type_name(type_: Any) -> str:
    if type_ is None or type_ is type(None):
        return "None"
    if isinstance(type_, list):  # Callable's arguments
        return f"[{', '.join(_type_name(a) for a in type_)}]"
    if isinstance(type_, type) and not typing.get_args(type_):
        return str(type_.__name__)
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if origin is typing.Annotated:  # its metadata may change what it takes (Json, say)
        return f"Annotated[{_type_name(args[0])}, …]"
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    if origin is None or not args:
        text = shown(type_)
        return text.removeprefix("typing.")
    inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
    return f"{getattr(origin, '__name__', shown(origin))!s}[{inner}]"


@dataclass(frozen=True)
class ConfigExplanation:
    """Where a key's value comes from: every layer that has it, and the winner."""

    key: str
    value: Any
    source: str | None
    layers: dict[str, Any] = field(default_factory=dict)
    typed: str | None = None


@dataclass(frozen=True)
class ConfigHistoryEntry:
    """One row of ``foundation_config_history``."""

    id: int
    key: str
    operation: str
    old_value: Any
    new_value: Any
    revision: int
    changed_at: datetime
    changed_by: str
    correlation_id: str | None


@dataclass
class _Runtime:
    value: Any
    revision: int
    deleted: bool
    updated_by: str
    raw: Any = _MISSING  # the row's JSON value, when it came from the table
    # Set by another node, and refused by this node's type for the key: this node reads
    # the key from its next layer (see apply_runtime).
    refused: bool = False

    def holds(self, raw: Any, deleted: bool) -> bool:
        """Whether this is the row's content (when its JSON value is known)."""
        if deleted or self.deleted:
            return deleted == self.deleted
        return self.raw is _MISSING or same_json(self.raw, raw)


# A watcher of config changes (shared with the registry: foundation._watch).
ConfigWatch = Watch[ConfigChange]


class ConfigState:
    """Layers, typed keys, the effective view and the watchers of one instance."""

    def __init__(self, *, node_id: str, max_key_length: int, max_value_bytes: int) -> None:
        self.node_id = node_id
        self.max_key_length = max_key_length
        self.max_value_bytes = max_value_bytes
        self._lock: threading.RLock = threading.RLock()
        self._layers: dict[Layer, dict[str, Any]] = {name: {} for name in LAYERS}
        self._env_names: dict[str, str] = {}
        # Each env key's text as the variables gave it (a str, or for variables that
        # reach into a table, the merged dict with text leaves): a typed key validates
        # this, so that FOUNDATION_CONFIG__VERSION=1.10 is "1.10" for a str key.
        self._env_text: dict[str, Any] = {}
        self._file: str | None = None
        self._runtime: dict[str, _Runtime] = {}
        self._types: dict[str, TypeAdapter[Any]] = {}
        self._type_names: dict[str, str] = {}
        self._effective: dict[str, Any] = {}
        self._source: dict[str, Layer] = {}
        self._watchers: Watchers[ConfigChange] = Watchers(
            "config", lambda change: change.key, self.check_key, ConfigError, log
        )
        self.local_writes = 0  # lets an async reload tell whether a write raced its read
        # Keys this node is writing right now: the writer applies its own row (so its
        # watchers have run when set() returns), the feed leaves it alone meanwhile.
        self._in_flight: dict[str, int] = {}

    # -- reads (hot path) -------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` from the in-process cache (the winning layer's), or
        ``default``: no database, so it answers during an outage too. A cached dict or
        list is frozen (read-only, shared by every reader): copy it to change it. A key
        that is not a string raises ``config_error`` (an Enum reads as its value, or its
        name)."""
        if key.__class__ is not str:
            key = self.check_key(key)
        # Containers in the cache are frozen (foundation._frozen), so the cached value
        # itself can be handed out: no copy on the read path.
        return self._effective.get(key, default)

    def all(self) -> dict[str, Any]:
        return dict(self._effective)

    # -- validation -------------------------------------------------------------------

    def check_key(self, key: Any) -> str:
        key = name_text(key)
        if not isinstance(key, str):
            raise ConfigError(
                f"a config key must be a string, not {type(key).__name__}",
                context={"key": shown(key), "type": type(key).__name__},
            )
        if not key or not key.strip():
            raise ConfigError("a config key must not be empty", context={"key": key})
        if len(key) > self.max_key_length:
            raise ConfigError(
                f"a config key must be at most {self.max_key_length} characters "
                f"(this one has {len(key)})",
                context={"key": key[:80] + "…", "length": len(key)},
            )
        if not is_utf8(key):
            raise ConfigError(
                "a config key must be valid UTF-8 text (it holds a lone surrogate)",
                context={"key": shown(key)},
            )
        if not key.isprintable():
            raise ConfigError(
                "a config key must not contain control characters",
                context={"key": shown(key)},
            )
        return key

    def prepare(self, key: str, value: Any) -> tuple[Any, str, Any]:
        """Validate a value for ``set``: (the value as it will read back, its JSON text,
        the JSON value as the table will hold it)."""
        adapter = self._types.get(key)
        if adapter is None:
            text = self._encoded(key, value)
            raw = normalize_json(value, text)
            return raw, text, raw
        value = self._validate(key, adapter, value, source="set")
        # The value as every other node, and this one after a restart, reads it: the
        # stored JSON as the type reads it (a set given to an ``Any`` key: a list).
        return self._stored_form(key, adapter, value)

    def _encoded(self, key: str, plain: Any) -> str:
        return encode_json(
            plain,
            what=f"the value for config key {key!r}",
            max_bytes=self.max_value_bytes,
            error=ConfigError,
            context={"key": key},
        )

    def _stored_form(self, key: str, adapter: TypeAdapter[Any], value: Any) -> tuple[Any, str, Any]:
        """A typed value as it reads back, and its JSON (text, value) as the table will
        hold it: one that reads back as itself on every node and at the next start.

        The wire form (by alias) first, which is what other services exchange and an
        alias-only field validates from; by field name when that does not read back (a
        ``serialization_alias`` no validation takes: the field would read back as its
        default, or as missing). Read back means: validated again and dumped again, the
        same JSON. Computed fields are not stored (computed again on read). Neither form
        reading back (a serializer whose output the type refuses): ``config_error``.
        """
        refusal = ""
        try:
            python = adapter.dump_python(value, exclude_computed_fields=True)
        except (ValueError, TypeError):
            python = None  # refused with its reason by the JSON dump below
        if has_nan_or_infinity(python):  # pydantic's JSON dump writes them as null
            raise ConfigError(
                f"the value for config key {key!r} is not JSON: NaN and Infinity are not JSON",
                context={"key": key, "expected": self._type_names[key]},
            )
        for by_alias in (True, False):
            options: dict[str, Any] = {"by_alias": by_alias, "exclude_computed_fields": True}
            try:
                plain = adapter.dump_python(value, mode="json", **options)
            except (ValueError, TypeError) as exc:  # UnicodeDecodeError: bytes not UTF-8
                raise ConfigError(
                    f"the value for config key {key!r} cannot be stored as JSON: {exc}",
                    context={"key": key, "expected": self._type_names[key]},
                ) from None
            text = self._encoded(key, plain)
            raw = normalize_json(plain, text)
            try:
                read = _validated(adapter, raw)
                again = adapter.dump_python(read, mode="json", **options)
            except PydanticValidationError as exc:
                refusal = refusal or f"; {_first_error(exc)}"
                continue
            if _same_object(read, value) is not False and same_json(
                normalize_json(again, self._encoded(key, again)), raw
            ):
                return read, text, raw
        raise ConfigError(
            f"the value for config key {key!r} cannot be stored: its JSON form does not "
            f"read back as a {self._type_names[key]} equal to it{refusal}",
            context={"key": key, "expected": self._type_names[key]},
        )

    def _validate(self, key: str, adapter: TypeAdapter[Any], value: Any, *, source: str) -> Any:
        try:
            return _validated(adapter, value)
        except PydanticValidationError as exc:
            raise ConfigError(
                f"invalid value for config key {key!r} (from {source}): "
                f"expected {self._type_names[key]}; {_first_error(exc)}",
                context={"key": key, "source": source, "expected": self._type_names[key]},
            ) from None

    def _validate_env(
        self, key: str, adapter: TypeAdapter[Any], parsed: Any, text: Any, source: str
    ) -> Any:
        """An env value for a typed key: ``parsed`` (as JSON) or ``text`` (as written).

        A type that takes the text as it is (``str``, a ``Literal`` of strings, ``str |
        None``) gets the text: ``1.10`` stays ``"1.10"``. Other types read it as JSON
        first (``[1, 2]``, ``{"a": 1}``), then as text in pydantic's lax mode (``8`` for
        an int, ``2026-01-01`` for a date).
        """
        if isinstance(text, str):
            try:
                return adapter.validate_python(text, strict=True)
            except PydanticValidationError:
                pass
            try:
                return adapter.validate_json(text)
            except PydanticValidationError:
                return self._validate(key, adapter, text, source=source)
        try:
            return _validated(adapter, parsed)
        except PydanticValidationError:
            return self._validate(key, adapter, text, source=source)

    # -- typed keys -------------------------------------------------------------------

    def register(self, key: Any, type_: Any, default: Any = _MISSING) -> list[ConfigChange]:
        key = self.check_key(key)
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(type_)
            # A name pydantic cannot resolve ("nonsense") makes an adapter that fails only
            # when first used: resolve it now, so the error is this call's config_error.
            adapter.rebuild(raise_errors=True)
        except Exception as exc:
            raise ConfigError(
                f"cannot use {shown(type_, 100)} as the type of config key {key!r}: {exc}",
                context={"key": key},
            ) from None
        name = type_name(type_)
        with self._lock:
            # Nothing changes unless everything validates: the type, the default and
            # the values already loaded are put in place together, or not at all.
            previous = (self._types.get(key), self._type_names.get(key))
            defaults = self._layers["default"]
            previous_default = defaults.get(key, _MISSING)
            self._types[key] = adapter
            self._type_names[key] = name
            try:
                if default is not _MISSING:
                    default = self._validate(key, adapter, default, source="default")
                # Values already loaded must fit the type too. The file and env layers
                # are typed as they are read; the runtime value is typed when applied,
                # so one loaded before this call (every start) is typed again now.
                for layer in ("file", "env"):
                    if key in self._layers[layer]:
                        self._typed_value(key, layer, self._layers[layer][key])
                runtime = self._runtime.get(key)
                typed = _MISSING
                if runtime is not None and not runtime.deleted:
                    raw = runtime.raw if runtime.raw is not _MISSING else runtime.value
                    try:
                        typed = self._typed_value(key, "runtime", raw)
                    except ConfigError:
                        # One this node refused already (see apply_runtime): it still
                        # reads its next layer; a value it holds must fit the new type.
                        if not runtime.refused:
                            raise
                if default is not _MISSING:
                    defaults[key] = default
                if runtime is not None and typed is not _MISSING:
                    self._runtime[key] = dataclasses.replace(runtime, value=typed, refused=False)
                    self._layers["runtime"][key] = typed
                return self._recompute([key], "reload")
            except (ConfigError, RecursionError) as exc:
                if previous[0] is None:
                    self._types.pop(key, None)
                    self._type_names.pop(key, None)
                else:
                    self._types[key], self._type_names[key] = previous  # type: ignore[assignment]
                if previous_default is _MISSING:
                    defaults.pop(key, None)
                else:
                    defaults[key] = previous_default
                if isinstance(exc, RecursionError):  # pydantic's, or a deep copy's
                    raise ConfigError(
                        f"the default of config key {key!r} nests too deeply to be a "
                        f"config value (JSON takes at most {MAX_DEPTH} levels)",
                        context={"key": key, "max_depth": MAX_DEPTH},
                    ) from None
                raise

    def _typed_value(self, key: str, layer: Layer, raw: Any) -> Any:
        adapter = self._types.get(key)
        if adapter is None:
            return raw
        if layer == "env":
            text = self._env_text.get(key, raw)
            return self._validate_env(key, adapter, raw, text, self._env_names.get(key, "env"))
        source = {"file": f"file {self._file}", "runtime": "the database"}.get(layer, layer)
        return self._validate(key, adapter, raw, source=source)

    # -- layer updates ----------------------------------------------------------------

    def load_external(
        self,
        file_values: dict[str, Any],
        file_name: str | None,
        env_values: dict[str, tuple[str, str]],
    ) -> list[ConfigChange]:
        """Replace the file and env layers (validated first: all or nothing).

        A variable whose name reaches into a table (``FOUNDATION_CONFIG__DB__HOST``)
        overrides that entry of key ``db``: the env layer's ``db`` is the file's table
        with ``host`` replaced (see :func:`foundation.config._sources.env_layer`).
        """
        for key in file_values:
            self.check_key(key)
        env: dict[str, EnvValue] = env_layer(env_values, file_values)
        for key in env:
            self.check_key(key)
        with self._lock:
            old = (
                self._layers["file"],
                self._layers["env"],
                self._env_names,
                self._env_text,
                self._file,
            )
            self._layers["file"] = dict(file_values)
            self._layers["env"] = {k: v.value for k, v in env.items()}
            self._env_names = {k: v.names for k, v in env.items()}
            self._env_text = {k: v.text for k, v in env.items()}
            self._file = file_name
            keys = set(old[0]) | set(old[1]) | set(file_values) | set(env)
            try:
                for key in keys & set(self._types):
                    layer: Layer
                    for layer in ("file", "env"):
                        if key in self._layers[layer]:
                            self._typed_value(key, layer, self._layers[layer][key])
            except ConfigError:
                (
                    self._layers["file"],
                    self._layers["env"],
                    self._env_names,
                    self._env_text,
                    self._file,
                ) = old
                raise
            return self._recompute(keys, "reload")

    def runtime_revision(self, key: str) -> int:
        entry = self._runtime.get(key)
        return entry.revision if entry is not None else 0

    def apply_runtime(
        self,
        key: str,
        value: Any,
        revision: int,
        deleted: bool,
        updated_by: str,
        source: Literal["local", "remote", "reload"],
        raw: Any = _MISSING,
    ) -> list[ConfigChange]:
        """One runtime row, if it is newer than what this node holds."""
        with self._lock:
            if source != "local" and self._own_write_in_flight(key, updated_by):
                return []
            if revision <= self.runtime_revision(key):
                return []  # an older or repeated notification: keep the newer value
            if raw is _MISSING and source != "local":
                raw = value  # a row read from the table: its JSON value, before typing
            refused = False
            if not deleted:
                try:
                    value = self._typed_value(key, "runtime", value)
                except ConfigError as exc:
                    # Set by a node that does not type the key so. Keeping the value this
                    # node held before would answer what the table no longer says: the
                    # key reads from its next layer here, and watchers are told.
                    log.error(
                        "config key %r: %s (set by %s): this node reads the key from its "
                        "file, environment or default until a value of its type is set",
                        key,
                        exc.message,
                        updated_by,
                    )
                    refused = True
            self._runtime[key] = _Runtime(value, revision, deleted, updated_by, raw, refused)
            if source == "local":
                self.local_writes += 1
            if deleted or refused:
                self._layers["runtime"].pop(key, None)
            else:
                self._layers["runtime"][key] = value
            return self._recompute([key], source)

    def apply_read(
        self, key: str, value: Any, revision: int, deleted: bool, updated_by: str
    ) -> list[ConfigChange]:
        """The key's row as the change feed read it, under :attr:`lock` (so no local write
        was applied since the read). A revision below this node's, or the same one with
        other contents, means the row was deleted with plain SQL and written again (by a
        plain INSERT, a ``REPLACE``, or a node of an earlier release, whose rows started
        again at 1): the table is the truth."""
        with self._lock:
            current = self._runtime.get(key)
            if (
                current is not None
                and not self._own_write_in_flight(key, updated_by)
                and (
                    revision < current.revision
                    or (revision == current.revision and not current.holds(value, deleted))
                )
            ):
                self._runtime.pop(key)
            return self.apply_runtime(key, value, revision, deleted, updated_by, "remote")

    def replace_runtime(
        self, rows: Iterable[tuple[str, Any, int, bool, str]], source: Literal["remote", "reload"]
    ) -> list[ConfigChange]:
        """The whole runtime table as read now (rows absent from it were deleted).

        The caller holds :attr:`lock` across the read and this call, so no local write
        can be applied in between: what was read is at least as new as the cache.
        """
        changes: list[ConfigChange] = []
        with self._lock:
            seen: set[str] = set()
            for key, value, revision, deleted, updated_by in rows:
                seen.add(key)
                current = self._runtime.get(key)
                if self._own_write_in_flight(key, updated_by):
                    continue
                if (
                    current is None
                    or revision != current.revision
                    # The same revision with another value: a row changed by hand in a
                    # database without revision 0010's trigger. Re-reading the table
                    # means taking what it holds.
                    or deleted != current.deleted
                    or (not deleted and current.raw is not _MISSING and value != current.raw)
                ):
                    self._runtime.pop(key, None)  # the table is the truth, even if older
                    changes += self.apply_runtime(
                        key, value, revision, deleted, updated_by, source, raw=value
                    )
            for key in [k for k in self._runtime if k not in seen]:
                changes += self.forget_runtime(key, source)
        return changes

    def begin_write(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def end_write(self, key: str) -> None:
        with self._lock:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]

    def _own_write_in_flight(self, key: str, updated_by: str) -> bool:
        return updated_by == self.node_id and key in self._in_flight

    def forget_runtime(
        self, key: str, source: Literal["local", "remote", "reload"]
    ) -> list[ConfigChange]:
        """The key's row is gone (deleted with plain SQL): a new row starts at revision 1."""
        with self._lock:
            if self._runtime.pop(key, None) is None:
                return []
            self._layers["runtime"].pop(key, None)
            return self._recompute([key], source)

    @property
    def lock(self) -> threading.RLock:
        """Held by the change feed across a read and its apply (see replace_runtime)."""
        return self._lock

    def _recompute(
        self, keys: Iterable[str], source: Literal["local", "remote", "reload"]
    ) -> list[ConfigChange]:
        changes = []
        for key in keys:
            old = self._effective.get(key, _MISSING)
            new: Any = _MISSING
            winner: Layer | None = None
            for layer in reversed(LAYERS):
                if key in self._layers[layer]:
                    new = (
                        self._typed_value(key, layer, self._layers[layer][key])
                        if layer
                        in (
                            "file",
                            "env",
                        )
                        else self._layers[layer][key]
                    )
                    winner = layer
                    break
            if new is _MISSING:
                self._effective.pop(key, None)
                self._source.pop(key, None)
            else:
                new = freeze_value(new)
                self._effective[key] = new
                self._source[key] = winner  # type: ignore[assignment]
            if old is not new and not same_value(old, new):
                changes.append(
                    ConfigChange(
                        key,
                        None if old is _MISSING else old,
                        None if new is _MISSING else new,
                        source,
                        deleted=new is _MISSING,
                    )
                )
        return changes

    # -- explain, watch ---------------------------------------------------------------

    def explain(self, key: Any) -> ConfigExplanation:
        key = self.check_key(key)
        with self._lock:
            layers: dict[str, Any] = {}
            for layer in LAYERS:
                refused = self._runtime.get(key) if layer == "runtime" else None
                if refused is not None and refused.refused and not refused.deleted:
                    # Not a layer this node reads (see apply_runtime), but what the table
                    # holds: the answer to "why is my set not taken?"
                    why = f"refused, expected {self._type_names.get(key, 'its type')}"
                    layers[f"{self._describe(key, layer)}, {why}"] = freeze_value(refused.value)
                if key in self._layers[layer]:
                    value = self._layers[layer][key]
                    if layer in ("file", "env") and key in self._types:
                        # As the key reads from that layer (a str key's "1.10" as written,
                        # not the JSON number its text also is); checked when loaded.
                        value = self._typed_value(key, layer, value)
                    layers[self._describe(key, layer)] = freeze_value(value)
            winner = self._source.get(key)
            return ConfigExplanation(
                key=key,
                value=self._effective.get(key),
                source=self._describe(key, winner) if winner else None,
                layers=layers,
                typed=self._type_names.get(key),
            )

    def _describe(self, key: str, layer: Layer) -> str:
        if layer == "env":
            return f"env:{self._env_names.get(key, '?')}"
        if layer == "file":
            return f"file:{self._file}"
        if layer == "runtime":
            entry = self._runtime.get(key)
            return (
                f"runtime (revision {entry.revision}, by {entry.updated_by})"
                if entry
                else "runtime"
            )
        return "default"

    def watch(
        self,
        pattern: Any,
        callback: Callable[[ConfigChange], Any],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> ConfigWatch:
        if isinstance(pattern, enum.Enum):  # matched as the key it names, as get() reads it
            pattern = self.check_key(pattern)
        if pattern == "":
            raise ConfigError(
                'a config watch needs a key, a prefix ("db.*") or "*" for every key, '
                "not an empty string",
                context={"pattern": ""},
            )
        return self._watchers.add(pattern, callback, loop)

    def notify(self, changes: list[ConfigChange]) -> None:
        self._watchers.notify(changes)


def _first_error(exc: PydanticValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where + ': ' if where else ''}{first.get('msg', '')}"


def _validated(adapter: TypeAdapter[Any], value: Any) -> Any:
    """A value of the key's type, validated as the type says (by alias, for a field that
    has one); by field name too when that fails, or when it reads more of the value's
    fields (a field with a ``validation_alias`` and a default, stored by its name, would
    read as its default): values are stored by field name where the alias does not read
    back, and were stored so before. Not by name alone: a union's choice would change
    (``{"x": 7}`` would fit a first model whose field ``x`` has the alias ``X``)."""
    try:
        read = adapter.validate_python(value)
    except PydanticValidationError:
        return adapter.validate_python(value, by_alias=True, by_name=True)
    if not isinstance(read, pydantic.BaseModel) or not isinstance(value, dict):
        return read
    try:
        by_name = adapter.validate_python(value, by_alias=True, by_name=True)
    except PydanticValidationError:
        return read
    if isinstance(by_name, pydantic.BaseModel) and by_name.model_fields_set > read.model_fields_set:
        return by_name
    return read


def _same_object(read: Any, given: Any) -> bool | None:
    """Whether a model or dataclass read back is the one given (its own class, equal): a
    field excluded from its dump would read back as its default, a union's member as
    another member. None for other values, which their JSON judges (a set given to an
    ``Any`` key reads back as a list: not equal, and what every node reads)."""
    if isinstance(given, pydantic.BaseModel) or (
        dataclasses.is_dataclass(given) and not isinstance(given, type)
    ):
        return type(read) is type(given) and bool(read == given)
    return None
