"""Strict JSON for everything Foundation stores: no NaN, no NUL, no lone surrogates.

Both databases must accept and return the same values, so the rules are the stricter
of the two: PostgreSQL's JSONB refuses ``\\u0000`` and UTF-8 refuses lone surrogates,
and neither NaN nor Infinity is JSON.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from foundation.errors import FoundationError

__all__ = ["MAX_DEPTH", "decode_json", "encode_json", "normalize_json"]

# An escaped NUL (\u0000) not itself escaped by a preceding backslash.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Deeper values are refused: the JSON encoder accepts more levels than the decoder and
# the recursive copies of the caches (config, the event log's tail) can take, so a value
# a little under the encoder's limit would be written and then fail to read back.
MAX_DEPTH = 100

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_encode_str = json.encoder.encode_basestring  # what the encoder does to a str


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
    # scalar or an empty dict costs more than everything else here.
    if value is None:
        return "null"
    if kind is int or kind is bool:
        if value is True or value is False:
            return "true" if value else "false"
        try:
            return int.__repr__(value)
        except ValueError:  # over Python's digit limit for int -> str (4300 by default)
            raise error(
                f"{what} is not JSON: an integer of more than "
                f"{sys.get_int_max_str_digits()} digits",
                context=dict(context or {}),
            ) from None
    if kind is dict and not value:
        return "{}"
    ctx = dict(context or {})
    if kind is str:
        text = _encode_str(value)
        if "\x00" in value:
            raise error(
                f"{what} contains a NUL character, which the database cannot store", context=ctx
            )
        return _checked_size(text, what, max_bytes, error, ctx)
    try:
        text = _encoder.encode(value)
        if "e+" in text:  # a float of 1e16 or more (or a string holding "e+")
            text = _encoder.encode(_exact_big_floats(value))
    except (TypeError, ValueError, RecursionError) as exc:
        reason = str(exc)
        if "Out of range float" in reason:
            reason = "NaN and Infinity are not JSON"
        raise error(
            f"{what} is not JSON: {reason}", context={**ctx, "type": type(value).__name__}
        ) from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value):
        raise error(
            f"{what} is nested more than {MAX_DEPTH} levels deep",
            context={**ctx, "max_depth": MAX_DEPTH},
        )
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise error(
            f"{what} contains a NUL character, which the database cannot store", context=ctx
        )
    return _checked_size(text, what, max_bytes, error, ctx)


def _checked_size(
    text: str, what: str, max_bytes: int, error: type[FoundationError], ctx: dict[str, Any]
) -> str:
    # len(text) bounds the UTF-8 size from below: only long texts need encoding to count.
    if len(text) * 4 > max_bytes or not text.isascii():
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise error(
                f"{what} contains a lone surrogate, which is not valid UTF-8", context=ctx
            ) from None
        if size > max_bytes:
            raise error(
                f"{what} is {size} bytes of JSON, over the limit of {max_bytes} bytes",
                context={**ctx, "size": size, "max_bytes": max_bytes},
            )
    return text


# Floats of 1e16 and more are whole numbers that Python writes with an exponent
# ("1.5e+300"). PostgreSQL's JSONB keeps a number as a decimal and gives it back without
# the exponent ("15000…0"), which reads back as an int, and a different one from the
# float's value, while SQLite keeps the text and gives back the float: the nodes and the
# two databases would disagree. So such a float is written as the exact integer it is:
# every reader gets the same int, equal (==) to the float that was stored.
_BIG_FLOAT = 1e16


def _exact_big_floats(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if _BIG_FLOAT <= abs(value) < math.inf else value
    if isinstance(value, dict):
        return {k: _exact_big_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact_big_floats(v) for v in value]
    return value


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


def decode_json(text: str) -> Any:
    return json.loads(text)


def normalize_json(value: Any, text: str) -> Any:
    """What a value reads back as from the database (tuples become lists, and so on)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if type(value) is float and not abs(value) >= _BIG_FLOAT:
        return value
    return json.loads(text)
