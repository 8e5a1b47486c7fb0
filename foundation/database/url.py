"""Database URLs: which backend, where, and how to show them without the password."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from foundation.errors import ConfigError

__all__ = ["DatabaseURL", "mask_url"]

Backend = Literal["sqlite", "postgresql"]


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for messages and logs)."""
    try:
        return _shown(make_url(url))
    except Exception:  # an unparsable URL may still hold a secret: show only its scheme
        return url.split(":", 1)[0] + "://***"


def _shown(url: URL) -> str:
    """``url`` with every secret as ``***``: the password, and libpq's options that carry
    one in the query (``?password=``, ``?sslpassword=``)."""
    secret = {key: "***" for key in url.query if "password" in key.lower()}
    if secret:
        url = url.update_query_dict(secret)
    # (rendered percent-encoded in the query: shown as in the user part)
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


# A server that stops answering while the connection stays open (a network partition, a
# host gone) would hold a statement until the kernel gives up retransmitting (about 15
# minutes on Linux), past every lease. With these, a connection that gets no answer is
# dropped: data unacknowledged for 15 s, or an idle wait for a reply whose probes go
# unanswered for 10 + 3 x 5 s. A live server's kernel answers both while a slow statement
# runs, so none is cut short. Ignored on Unix sockets.
_DEAD_PEER = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


# A query host with its port, as SQLAlchemy's multi-host form writes it (?host=h1:5432).
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<name>[^:]+)):(?P<port>\d+)$")


def _host_list(hosts: Sequence[str]) -> dict[str, str]:
    """``?host=h1&host=h2`` (or ``h1:5432``, ``[::1]:5433`` each) as libpq's lists."""
    names, ports = [], []
    for host in hosts:
        match = _HOST_PORT.match(host)
        names.append(host if match is None else match["v6"] or match["name"])
        ports.append("" if match is None else match["port"])
    listed = {"host": ",".join(names)}
    if any(ports):
        listed["port"] = ",".join(ports)
    return listed


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed Foundation database URL.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and
    ``postgresql+psycopg://user:password@host:port/dbname`` (``postgresql://`` and
    ``postgres://`` are read as psycopg too).
    """

    url: URL
    backend: Backend

    @classmethod
    def parse(cls, raw: str | URL) -> DatabaseURL:
        if isinstance(raw, str):
            if raw.startswith("postgres://"):
                raw = "postgresql://" + raw[len("postgres://") :]
            try:
                url = make_url(raw)
            except (ArgumentError, ValueError) as exc:
                # ValueError: a port that is not a number, an unclosed [IPv6 host]
                why = "" if isinstance(exc, ArgumentError) else " (its host or port is unreadable)"
                raise ConfigError(
                    f"not a database URL: {mask_url(raw)!r}{why}",
                    context={"url": mask_url(raw)},
                ) from None
        else:
            url = raw
        backend_name = url.get_backend_name()
        if backend_name == "sqlite":
            if url.drivername not in ("sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"):
                raise ConfigError(
                    f"unsupported SQLite driver {url.drivername!r}; use sqlite:///path",
                    context={"url": _shown(url)},
                )
            if url.host and not url.database:  # sqlite://app.db: the file taken for a host
                raise ConfigError(
                    f"sqlite://{url.host} names a host, not a file: a SQLite URL's path "
                    f"takes three slashes (sqlite:///{url.host}), four for an absolute one",
                    context={"url": _shown(url)},
                )
            if url.database in (None, "", ":memory:"):
                raise ConfigError(
                    "an in-memory SQLite database cannot be shared between connections; "
                    "give a file path (sqlite:///app.db)",
                    context={"url": _shown(url)},
                )
            if url.query:
                # sqlite3 would ignore them (SQLAlchemy only warns): a ?mode=ro that
                # writes, a ?timeout= that waits as the settings say, is worse than none.
                raise ConfigError(
                    f"a SQLite URL takes no options ({', '.join(sorted(url.query))}): "
                    "Foundation opens the file read-write itself; its settings are "
                    "sqlite_synchronous and sqlite_busy_timeout_ms",
                    context={"url": _shown(url)},
                )
            return cls(url.set(drivername="sqlite"), "sqlite")
        if backend_name == "postgresql":
            if url.drivername not in ("postgresql", "postgresql+psycopg"):
                raise ConfigError(
                    f"unsupported PostgreSQL driver {url.drivername!r}; "
                    "Foundation uses psycopg 3 (postgresql+psycopg://…)",
                    context={"url": _shown(url)},
                )
            parsed = cls(url.set(drivername="postgresql+psycopg"), "postgresql")
            parsed._check_conninfo()
            return parsed
        raise ConfigError(
            f"unsupported database {backend_name!r}: use sqlite:///path or "
            "postgresql+psycopg://user@host/db",
            context={"url": _shown(url)},
        )

    @property
    def masked(self) -> str:
        return _shown(self.url)

    @property
    def sqlite_path(self) -> Path:
        assert self.backend == "sqlite" and self.url.database
        return Path(self.url.database)

    @property
    def conninfo(self) -> str:
        """libpq's connection string for psycopg (password included: never log it), with
        libpq's TCP options for a server that stops answering, unless the URL sets any.

        Built from the URL's parts as keyword=value pairs, each quoted by psycopg: a
        password with a space or a quote, and a query value with ``%20``, reach libpq as
        they were meant (a URI rendered again would not: it writes a space as ``+``)."""
        assert self.backend == "postgresql"
        from psycopg.conninfo import make_conninfo

        url = self.url
        params: dict[str, Any] = {
            key: value
            for key, value in (
                # SQLAlchemy decodes every part but the host: a socket's folder in it
                # (%2Fvar%2Frun%2Fpostgresql), an IPv6 zone (fe80::1%25eth0).
                ("host", None if url.host is None else unquote(url.host)),
                ("port", url.port),
                ("dbname", url.database),
                ("user", url.username),
                ("password", url.password),
            )
            if value not in (None, "")
        }
        for key, value in url.query.items():
            # Given twice, the last wins, as in libpq; hosts are a list (their ports too).
            params[key] = value if isinstance(value, str) else value[-1]
        hosts = url.query.get("host")
        if hosts is not None and not isinstance(hosts, str):
            params.update(_host_list(hosts))
        # A URL that sets one of them (keepalives=0: off) is tuned by its author; a
        # service file entry (``service=``, PGSERVICE) may set them, and the URL's own
        # words would win over the file's. Either way, none is added.
        tuned = "service" in params or os.environ.get("PGSERVICE") or _DEAD_PEER.keys() & params
        if not tuned:
            params.update(_DEAD_PEER)
        return make_conninfo(**params)

    def _check_conninfo(self) -> None:
        """Refuse now what libpq would refuse at each connect, as the server's refusal
        (``?sslmod=``: a misspelt option)."""
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(self.conninfo)
        except ProgrammingError as exc:
            why = str(exc).strip()
            if self.url.password:  # libpq's message may quote the value it could not read
                why = why.replace(str(self.url.password), "***")
            raise ConfigError(
                f"the database URL {self.masked!r} is not one libpq reads: {why}",
                context={"url": self.masked},
            ) from None
        ports = str(params.get("port") or "").split(",")
        if any(port and not (port.isdigit() and 0 < int(port) < 65536) for port in ports):
            raise ConfigError(
                f"the database URL {self.masked!r} has no valid port: a port is a number "
                "from 1 to 65535",
                context={"url": self.masked},
            )

    def sqlalchemy_url(self, *, asynchronous: bool = False) -> URL:
        if self.backend == "sqlite":
            return self.url.set(drivername="sqlite+aiosqlite" if asynchronous else "sqlite")
        return self.url

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"DatabaseURL({self.masked!r}, backend={self.backend!r})"
