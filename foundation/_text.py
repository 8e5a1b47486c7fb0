"""Text the databases store as given (UTF-8 without lone surrogates), and text shown of
what a caller gave.

Python strings may hold lone surrogates (``"\\ud800"``), which no UTF-8 text column
accepts: the driver raises ``UnicodeEncodeError`` before the database is even asked.
Every name, key and id is checked here first, so the caller gets a ``FoundationError``.
"""

from __future__ import annotations

import enum
import hashlib
import reprlib

__all__ = ["is_utf8", "name_text", "node_tag", "shown", "text_of"]

# Room left, in a 255-character column, for what follows a node id ("#" and a counter).
_NODE_TAG_MAX = 200


def node_tag(node_id: str) -> str:
    """``node_id`` as the first part of a holder's token ("<node>#<n>"), in a column as
    wide as a node id: a long one is shortened, kept unique by its digest."""
    if len(node_id) <= _NODE_TAG_MAX:
        return node_id
    digest = hashlib.sha256(node_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{node_id[: _NODE_TAG_MAX - 40]}~{digest}"


def name_text(value: object) -> object:
    """A name or key given as an enum member is its text: its value if that is a string,
    else its name (every key, name and type is stored as text); anything else as given."""
    if isinstance(value, enum.Enum):
        if isinstance(value.value, str):
            return value.value
        return value if value.name is None else value.name  # (an empty Flag has none)
    return value


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (it holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, for an error's message or context.

    Never raises: the value is one a caller got wrong, and Python's own ``repr`` of it may
    fail (an int of more than 4,300 digits, a list nested past the recursion limit, a
    class whose ``__repr__`` raises): the error would become that exception instead."""
    try:
        return repr(value)[:limit]
    except Exception:
        pass
    if isinstance(value, int):  # past sys.get_int_max_str_digits()
        digits = int(abs(value).bit_length() * 0.30103) + 1
        return f"<{type(value).__name__} of about {digits:,} digits>"[:limit]
    try:
        return _SHORT.repr(value)[:limit]  # deep nesting: reprlib stops at a few levels
    except Exception:
        return f"<{type(value).__name__} object>"[:limit]


_SHORT = reprlib.Repr()
_SHORT.maxother = _SHORT.maxstring = 200


def text_of(value: object, limit: int = 200) -> str:
    """A string cut to ``limit`` characters; anything else as :func:`shown` gives it (a
    mapping's key, which callers may give as any hashable)."""
    return value[:limit] if isinstance(value, str) else shown(value, limit)
