"""The soak's proxy in front of PostgreSQL, to cut one client's connection on demand.

Cutting a connection there, and not on the server, is what a lost reply is: the client
sees its connection fail while the server process behind it goes on with the statement.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ["cut_proxy"]

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@contextmanager
def cut_proxy(url: str) -> Iterator[tuple[Any, str]]:
    """A proxy in front of the PostgreSQL server of ``url`` (``cut(client_port)``), and
    the URL through it."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from soak_proxy import LatencyProxy
    finally:
        sys.path.remove(str(SCRIPTS))
    parsed = make_url(url)
    proxy = LatencyProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    try:
        yield (
            proxy,
            parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        )
    finally:
        proxy.stop()
