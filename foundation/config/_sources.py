"""The external sources of config values: a TOML or JSON file and the environment."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foundation.errors import ConfigError

__all__ = ["env_key", "read_env", "read_file"]


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
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid JSON at line {exc.lineno}, "
                f"column {exc.colno}: {exc.msg}",
                context={"file": str(path), "line": exc.lineno, "column": exc.colno},
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {path} must hold a JSON object at the top",
                context={"file": str(path), "line": 1},
            )
        return data
    if path.suffix.lower() != ".toml":
        raise ConfigError(
            f"config file {path} must end in .toml or .json", context={"file": str(path)}
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_line(str(exc))
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}",
            context={"file": str(path), "line": line},
        ) from None


def _toml_line(message: str) -> int | None:
    # tomllib says "... (at line 3, column 7)"; older forms say "at end of document".
    marker = "at line "
    if marker in message:
        digits = message.split(marker, 1)[1].split(",", 1)[0].rstrip(")")
        if digits.isdigit():
            return int(digits)
    return None


def env_key(name: str, prefix: str) -> str:
    """``FOUNDATION_CONFIG__DB__HOST`` → ``db.host``."""
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
        return json.loads(raw)
    except ValueError:
        return raw
