"""Strict JSON for everything Foundation stores: no NaN, no NUL, no lone surrogates.

Both databases must accept and return the same values, so the rules are the stricter
of the two: PostgreSQL's JSONB refuses ``\\u0000`` and UTF-8 refuses lone surrogates,
and neither NaN nor Infinity is JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from foundation._text import shown
from foundation.errors import FoundationError

__all__ = ["MAX_DEPTH", "decode_json", "encode_json", "normalize_json", "same_json"]

# An escaped NUL (\u0000) not itself escaped by a preceding backslash.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Deeper values are refused: the JSON encoder accepts more levels than the decoder and
# the recursive copies of the caches (config, the event log's tail) can take, so a value
# a little under the encoder's limit would be written and then fail to read back.
MAX_DEPTH = 100

_encode_str = json.encoder.encode_basestring  # what the encoder does to a str


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder json.dumps builds on every call, built once: compact, UTF-8 kept, NaN
# refused. No circular-reference markers (a failed call would leave stale ones behind):
# a cycle ends in RecursionError, reported like any other value that is not JSON.
_c_encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _not_json, _encode_str, None, ":", ",", False, False, False
)
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def encode_json(
    value: Any,
    *,
    what: str,
    max_bytes: int,
    error: type[FoundationError],
    context: dict[str, Any] | None = None,
) -> str:
    """``value`` as compact JSON text, or ``error`` saying plainly why it cannot be stored."""
    kind = type(value)
    # Fast paths for the values most calls carry: building the encoder's iterator for a
    # scalar or an empty dict costs more than everything else here. ``context`` is only
    # copied when an error is raised.
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int and -(10**18) < value < 10**18:  # far below the 4300-digit str limit
        return int.__repr__(value)
    if kind is dict and not value:
        return "{}"
    if kind is str:
        if "\x00" in value:
            raise error(
                f"{what} contains a NUL character, which the database cannot store",
                context=dict(context or {}),
            )
        return _checked_size(_encode_str(value), what, max_bytes, error, context)
    try:
        text = "".join(_c_encode(value, 0))
        # A float of 1e16 or more, or -0.0 (or a string holding "e+" or "-0.0"): the form
        # both databases give back (see _canonical_floats).
        if "e+" in text or "-0.0" in text:
            text = "".join(_c_encode(_canonical_floats(value), 0))
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            # The encoder recurses once per level: a value nested past the interpreter's
            # limit (or one that holds itself) ends here, not at the depth check below.
            if _holds_itself(value):
                raise error(
                    f"{what} is not JSON: it contains itself (a circular reference)",
                    context={**(context or {}), "python_type": type(value).__name__},
                ) from None
            if _too_deep(value):
                raise error(
                    f"{what} is nested more than {MAX_DEPTH} levels deep",
                    context={**(context or {}), "max_depth": MAX_DEPTH},
                ) from None
        reason = str(exc)
        if "Out of range float" in reason:
            reason = "NaN and Infinity are not JSON"
        raise error(
            f"{what} is not JSON: {reason}",
            context={**(context or {}), "python_type": type(value).__name__},
        ) from None
    if "{" in text:
        # One object and it is the value: its own keys are all there is to check.
        flat = kind is dict and text.count("{") == 1
        key = _first_key_not_text(value) if flat else _key_not_text(value)
        if key is not _NONE:
            raise error(
                f"{what} has a key that is not a string ({shown(key, 100)}): JSON keys are "
                "strings, so it would read back as another key, or collide with one",
                context={**(context or {}), "json_key": shown(key)},
            )
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value):
        raise error(
            f"{what} is nested more than {MAX_DEPTH} levels deep",
            context={**(context or {}), "max_depth": MAX_DEPTH},
        )
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise error(
            f"{what} contains a NUL character, which the database cannot store",
            context=dict(context or {}),
        )
    return _checked_size(text, what, max_bytes, error, context)


def has_nan_or_infinity(value: Any) -> bool:
    """Whether a Python value holds a float NaN or Infinity (which pydantic's JSON dump
    turns into null without a word)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_nan_or_infinity(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(has_nan_or_infinity(v) for v in value)
    return False


def _checked_size(
    text: str,
    what: str,
    max_bytes: int,
    error: type[FoundationError],
    context: dict[str, Any] | None,
) -> str:
    # len(text) bounds the UTF-8 size from below: only long texts need encoding to count.
    if len(text) * 4 > max_bytes or not text.isascii():
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise error(
                f"{what} contains a lone surrogate, which is not valid UTF-8",
                context=dict(context or {}),
            ) from None
        if size > max_bytes:
            raise error(
                f"{what} is {size} bytes of JSON, over the limit of {max_bytes} bytes",
                context={**(context or {}), "size": size, "max_bytes": max_bytes},
            )
    return text


_NONE = object()
_CONTAINERS = (dict, list, tuple)


def _first_key_not_text(mapping: dict[Any, Any]) -> Any:
    if set(map(type, mapping)) <= {str}:  # the usual answer, without a Python loop
        return _NONE
    return next((key for key in mapping if not isinstance(key, str)), _NONE)


def _key_not_text(value: Any) -> Any:
    """The first dict key that is not a str (the encoder writes 1, None, True as "1",
    "null", "true", silently), or ``_NONE``. Walked without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            key = _first_key_not_text(item)
            if key is not _NONE:
                return key
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, _CONTAINERS):
                stack.append(child)
    return _NONE


def _children(item: Any) -> Any:
    if isinstance(item, dict):
        return item.values()
    if isinstance(item, list | tuple):
        return item
    return None


def _holds_itself(value: Any) -> bool:
    """Whether a container holds itself at some depth (walked without recursion; each
    container once, so a value that shares one many times costs no more)."""
    if _children(value) is None:
        return False
    on_path = {id(value)}  # the containers from value down to the one being walked
    done: set[int] = set()  # walked whole: no cycle through them
    stack = [(value, iter(_children(value)))]
    while stack:
        item, children = stack[-1]
        for child in children:
            grandchildren = _children(child)
            if grandchildren is None or id(child) in done:
                continue
            if id(child) in on_path:
                return True
            on_path.add(id(child))
            stack.append((child, iter(grandchildren)))
            break
        else:
            stack.pop()
            on_path.discard(id(item))
            done.add(id(item))
    return False


def _too_deep(value: Any) -> bool:
    """Whether containers nest more than MAX_DEPTH levels (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# Floats of 1e16 and more are whole numbers that Python writes with an exponent
# ("1.5e+300"). PostgreSQL's JSONB keeps a number as a decimal and gives it back without
# the exponent ("15000…0"), which reads back as an int, and a different one from the
# float's value, while SQLite keeps the text and gives back the float: the nodes and the
# two databases would disagree. So such a float is written as the exact integer it is:
# every reader gets the same int, equal (==) to the float that was stored.
# Likewise -0.0: JSONB's numeric has no negative zero and gives back 0.0, SQLite keeps
# "-0.0"; so it is written as 0.0 (equal to it, as Python and JSON numbers go).
_BIG_FLOAT = 1e16


def _canonical_floats(value: Any) -> Any:
    if isinstance(value, float):
        if value == 0.0:
            return 0.0
        return int(value) if _BIG_FLOAT <= abs(value) < math.inf else value
    if isinstance(value, dict):
        return {k: _canonical_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_floats(v) for v in value]
    return value


def decode_json(text: str) -> Any:
    return json.loads(text)


_PLAIN = frozenset((bool, int, str))


def normalize_json(value: Any, text: str) -> Any:
    """What a value reads back as from the database (tuples become lists, and so on)."""
    if value is None or type(value) in _PLAIN:
        return value  # not a subclass (an IntEnum): that reads back as the plain value
    if type(value) is float and not abs(value) >= _BIG_FLOAT and value != 0.0:
        return value
    if text == "{}":  # the usual metadata: no decoder for it
        return {}
    # Text encode_json just made (valid, compact): the C scanner without json.loads's
    # Python wrappers, which cost as much as the scan for small values.
    return _scan(text, 0)[0]


def same_json(a: Any, b: Any) -> bool:
    """Whether two decoded JSON values are the same JSON.

    Python's ``==`` says ``True == 1`` and ``{"x": 1} == {"x": True}``; JSON does not.
    Numbers compare by value (``1`` and ``1.0`` are one number, as in PostgreSQL's jsonb).
    """
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_json(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(same_json(x, y) for x, y in zip(a, b, strict=True))
        )
    if type(a) in (int, float):
        return type(b) in (int, float) and a == b
    return type(a) is type(b) and a == b
