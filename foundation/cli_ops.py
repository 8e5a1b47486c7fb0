"""``foundation registry | breakers | limits``: what the cluster's shared state looks like.

foundation registry list [--prefix P] [--json]
foundation registry show NAME
foundation registry unregister NAME       # forced: the CLI is never the owner
foundation breakers [--json]
foundation limits [--limit N] [--json]
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Column, Table

from foundation.cli_common import dumps, open_foundation, stdout_console, truncate
from foundation.service_registry import ServiceEntry

__all__ = ["breakers", "limits", "registry"]

NAME_WIDTH = 24  # registry list: longer names fold


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "—"
    seconds = (now - since).total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{sign}{seconds:.1f}s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.1f}m"
    return f"{sign}{seconds / 3600:.1f}h"


def _entry_dict(entry: ServiceEntry) -> dict[str, Any]:
    expires = entry.expires_at
    return {
        "name": entry.name,
        "address": entry.address,
        "metadata": entry.metadata,
        "node": entry.node,
        "epoch": entry.epoch,
        "registered_at": entry.registered_at.isoformat(),
        "expires_at": expires.isoformat() if expires else None,
    }


@click.group()
def registry() -> None:
    """Names registered across the cluster (leases, owners, fencing epochs)."""


@registry.command("list")
@click.option("--prefix", default=None, help="Only names starting with this.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
@click.pass_context
def registry_list(ctx: click.Context, prefix: str | None, as_json: bool) -> None:
    """Live names with their owner, age and time to expiry."""
    with open_foundation(ctx, create=False) as fdn:
        entries = fdn.service_registry.list(prefix=prefix)
    if as_json:
        click.echo(dumps([_entry_dict(e) for e in entries]))
        return
    now = datetime.now(UTC)
    # A name may be 255 characters: never wrapped, it took the whole width and left the
    # other columns none. So a name folds (whole, to copy into `registry show`) when one
    # is longer than NAME_WIDTH; shorter ones stay on one line, as names read best.
    # Addresses, owners and metadata fold too; the short columns never wrap.
    longest = max((len(entry.name) for entry in entries), default=0)
    table = Table(
        Column("name", no_wrap=longest <= NAME_WIDTH, overflow="fold"),
        Column("address", overflow="fold"),
        Column("owner", overflow="fold"),
        Column("epoch", no_wrap=True, justify="right"),
        Column("age", no_wrap=True),
        Column("expires in", no_wrap=True),
        Column("metadata", overflow="fold"),
    )
    for entry in entries:
        table.add_row(
            entry.name,
            truncate(dumps(entry.address), 40),
            entry.node,
            str(entry.epoch),
            _age(entry.registered_at, now),
            _age(now, entry.expires_at) if entry.expires_at else "never",
            truncate(dumps(entry.metadata), 40),
        )
    stdout_console().print(table)


@registry.command("show", short_help="One name, or a group's members.")
@click.argument("name")
@click.pass_context
def registry_show(ctx: click.Context, name: str) -> None:
    """One name (raises not_found when nobody holds it), or a group's members."""
    with open_foundation(ctx, create=False) as fdn:
        entry = fdn.service_registry.find(name)
        members = fdn.service_registry.members(name)
        if entry is None and not members:
            fdn.service_registry.lookup(name)  # raises not_found, reported by the root group
        out: dict[str, Any] = _entry_dict(entry) if entry is not None else {"name": name}
        if members:
            out["members"] = [
                {"member_id": m.member_id, "address": m.address, "node": m.node} for m in members
            ]
    click.echo(dumps(out))


@registry.command("unregister", short_help="Remove NAME, whoever holds it (an override).")
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    expose_value=False,
    help="Accepted and ignored: unregister always removes NAME, whoever holds it.",
)
@click.pass_context
def registry_unregister(ctx: click.Context, name: str) -> None:
    """Remove NAME whoever holds it (an operator's override: force=True)."""
    with open_foundation(ctx, create=False) as fdn:
        fdn.service_registry.unregister(name, force=True)
    click.echo(f"unregistered {name}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
@click.pass_context
def breakers(ctx: click.Context, as_json: bool) -> None:
    """Shared circuit breakers with a stored state (any that has failed, opened, or been
    forced or reset): state, failures and time until the next probe."""
    with open_foundation(ctx, create=False) as fdn:
        infos = [i for i in fdn.circuit_breaker.breakers() if i.scope != "local"]
    if as_json:
        click.echo(dumps([asdict(i) for i in infos]))
        return
    table = Table("name", "state", "failures", "probe in")
    for info in infos:
        probe = "" if info.retry_after is None else f"{info.retry_after / 1000:.1f}s"
        table.add_row(info.name, info.state, str(info.failures), probe)
    stdout_console().print(table)


@click.command()
@click.option("--limit", "max_rows", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
@click.pass_context
def limits(ctx: click.Context, max_rows: int, as_json: bool) -> None:
    """Shared rate limits as of now: key, algorithm, usage in the current window, reset
    (a window that has ended is empty, so it is not listed)."""
    with open_foundation(ctx, create=False) as fdn:
        usage = fdn.rate_limiter.usage(limit=max_rows)
    if as_json:
        click.echo(dumps([{**u._asdict(), "expires_at": u.expires_at.isoformat()} for u in usage]))
        return
    now = datetime.now(UTC)
    table = Table("key", "algorithm", "used", "previous window", "state expires in")
    for u in usage:
        # usage() judged "now" by the database's clock: never show a time already past.
        expires = _age(now, max(now, u.expires_at))
        table.add_row(u.key, u.algorithm, str(u.used), str(u.previous_count), expires)
    stdout_console().print(table)
