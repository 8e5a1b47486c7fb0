"""Text the databases store as given: UTF-8 without lone surrogates.

Python strings may hold lone surrogates (``"\\ud800"``), which no UTF-8 text column
accepts: the driver raises ``UnicodeEncodeError`` before the database is even asked.
Every name, key and id is checked here first, so the caller gets a ``FoundationError``.
"""

from __future__ import annotations

__all__ = ["is_utf8"]


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (it holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
