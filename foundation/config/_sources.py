"""The external sources of config values: a TOML or JSON file and the environment."""

from __future__ import annotations

import datetime
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation._json import encode_json
from foundation.errors import ConfigError

__all__ = ["EnvValue", "env_key", "env_layer", "parse_env_value", "read_env", "read_file"]

_NO_LIMIT = 2**62  # a file's or variable's size is its owner's: set()'s limit is not asked


def read_file(path: Path) -> dict[str, Any]:
    """Top-level keys of a ``.toml`` or ``.json`` file (a table's value is a dict).

    A file that cannot be parsed is a ``config_error`` naming the file and the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", context={"file": str(path)}
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path} cannot be read: {exc}", context={"file": str(path)}
        ) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, parse_constant=_not_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid JSON at line {exc.lineno}, "
                f"column {exc.colno}: {exc.msg}",
                context={"file": str(path), "line": exc.lineno, "column": exc.colno},
            ) from None
        except ValueError as exc:  # NaN or Infinity (see _not_json)
            raise ConfigError(
                f"config file {path} is not valid JSON: {exc}", context={"file": str(path)}
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {path} must hold a JSON object at the top",
                context={"file": str(path), "line": 1},
            )
        return _storable_file(path, data)
    if path.suffix.lower() != ".toml":
        raise ConfigError(
            f"config file {path} must end in .toml or .json", context={"file": str(path)}
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_line(str(exc))
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}",
            context={"file": str(path), "line": line},
        ) from None
    return _storable_file(path, _iso_times(data))


def _iso_times(value: Any) -> Any:
    """TOML's dates, times and datetimes as their ISO 8601 text: what JSON holds of them,
    and what a key typed ``datetime`` (``date``, ``time``) reads back as one."""
    if isinstance(value, dict):
        return {key: _iso_times(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_iso_times(item) for item in value]
    if isinstance(value, datetime.date | datetime.time):  # a datetime is a date too
        return value.isoformat()
    return value


def _storable_file(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Each key's value held to set()'s rules: JSON every reader takes. TOML has nan and
    inf; a JSON number such as 1e400 reads as inf; an escape such as \\ud800 is a lone
    surrogate (no UTF-8 text, the CLI could not print it)."""
    for key, value in data.items():
        _storable(value, f"config file {path}: key {key!r}", {"file": str(path), "key": key})
    return data


def _storable(value: Any, what: str, context: dict[str, Any]) -> None:
    encode_json(value, what=what, max_bytes=_NO_LIMIT, error=ConfigError, context=context)


def _not_json(constant: str) -> Any:
    # json.loads takes NaN, Infinity and -Infinity by default; JSON has none of them.
    raise ValueError(f"{constant} is not JSON")


def _toml_line(message: str) -> int | None:
    # tomllib says "... (at line 3, column 7)"; older forms say "at end of document".
    marker = "at line "
    if marker in message:
        digits = message.split(marker, 1)[1].split(",", 1)[0].rstrip(")")
        if digits.isdigit():
            return int(digits)
    return None


def env_key(name: str, prefix: str) -> str:
    """``FOUNDATION_CONFIG__DB__HOST`` → ``db.host`` (a path: key ``db``, entry ``host``)."""
    return name[len(prefix) :].lower().replace("__", ".")


def read_env(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Config keys from environment variables: key → (variable name, raw text)."""
    env = os.environ if environ is None else environ
    found: dict[str, tuple[str, str]] = {}
    for name, raw in env.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            found[env_key(name, prefix)] = (name, raw)
    return found


def parse_env_value(raw: str) -> Any:
    """JSON when the text is JSON (``4000``, ``true``, ``[1, 2]``), else the text itself."""
    try:
        return json.loads(raw, parse_constant=_not_json)
    except ValueError:
        return raw


def _env_value(name: str, raw: str) -> Any:
    """``parse_env_value``, held to set()'s rules: JSON no database takes (``1e999``
    reads as inf) is the text itself, as ``NaN`` is; a variable whose bytes are not UTF-8
    (lone surrogates, Python's surrogateescape) is refused."""
    value = parse_env_value(raw)
    try:
        _storable(value, f"environment variable {name}", {"variable": name})
    except ConfigError:
        _storable(raw, f"environment variable {name}", {"variable": name})
        return raw
    return value


@dataclass(frozen=True)
class EnvValue:
    """One config key as the environment gives it."""

    value: Any  # JSON-parsed leaves: what an untyped key reads
    text: Any  # the variables' text (a str, or a dict with text leaves): for typed keys
    names: str  # the variable(s), for explain() and error messages


def env_layer(
    env_values: Mapping[str, tuple[str, str]], file_values: Mapping[str, Any]
) -> dict[str, EnvValue]:
    """The env layer: key → value, from :func:`read_env`'s ``db.host`` → (name, text).

    A double underscore reaches into a table, as pydantic-settings' nested delimiter
    does: ``FOUNDATION_CONFIG__DB__HOST=envhost`` sets ``host`` inside key ``db``, over
    the file's ``[db]`` table (or over ``FOUNDATION_CONFIG__DB``'s JSON object), so
    ``get("db")`` is the file's table with ``host`` replaced. Keys are the top-level
    names; a name with an empty part (``A____B``) stays the flat key ``a..b``.
    """
    whole: dict[str, tuple[str, str]] = {}
    nested: dict[str, list[tuple[list[str], str, str]]] = {}
    for dotted, (name, raw) in sorted(env_values.items()):
        parts = dotted.split(".")
        if len(parts) == 1 or "" in parts:
            whole[dotted] = (name, raw)
        else:
            nested.setdefault(parts[0], []).append((parts[1:], name, raw))
    out: dict[str, EnvValue] = {}
    for key, (name, raw) in whole.items():
        out[key] = EnvValue(_env_value(name, raw), raw, name)
    for key, entries in nested.items():
        # Both trees start from the same base (a whole JSON variable is already parsed).
        base: Any = out[key].value if key in out else file_values.get(key)
        value, text = _copy_tree(base), _copy_tree(base)
        names = [out[key].names] if key in out else []
        for path, name, raw in entries:
            value = _put(value, path, _env_value(name, raw))
            text = _put(text, path, raw)
            names.append(name)
        out[key] = EnvValue(value, text, ",".join(names))
    return out


def _copy_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    return value


def _put(tree: Any, path: list[str], leaf: Any) -> dict[str, Any]:
    root: dict[str, Any] = tree if isinstance(tree, dict) else {}
    node = root
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = leaf
    return root
