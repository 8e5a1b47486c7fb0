"""``foundation registry | breakers | limits``: what the cluster's shared state looks like.

foundation registry list [--prefix P] [--groups] [--json]
foundation registry show NAME | GROUP
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

from foundation.cli_common import dumps, open_foundation, printable, stdout_console, truncate
from foundation.service_registry import GroupMember, ServiceEntry

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


def _as_dict(item: ServiceEntry | GroupMember, *fields: str) -> dict[str, Any]:
    """``fields`` of an entry or a member as they are, times as ISO text (None: never)."""
    out = {}
    for name in fields:
        value = getattr(item, name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _entry_dict(entry: ServiceEntry) -> dict[str, Any]:
    return _as_dict(
        entry, "name", "address", "metadata", "node", "epoch", "registered_at", "expires_at"
    )


def _member_dict(member: GroupMember) -> dict[str, Any]:
    return _as_dict(member, "member_id", "address", "metadata", "node", "joined_at", "expires_at")


@click.group()
def registry() -> None:
    """Names registered across the cluster (leases, owners, fencing epochs)."""


@registry.command("list")
@click.option("--prefix", default=None, help="Only names (or groups) starting with this.")
@click.option("--groups", "groups", is_flag=True, help="Groups and their members instead of names.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
@click.pass_context
def registry_list(ctx: click.Context, prefix: str | None, groups: bool, as_json: bool) -> None:
    """Live names with their owner, age and time to expiry (--groups: the groups)."""
    with open_foundation(ctx, create=False) as fdn:
        if groups:
            found = {
                g: fdn.service_registry.members(g) for g in fdn.service_registry.groups(prefix)
            }
            _print_groups(found, as_json)
            return
        entries = fdn.service_registry.list(prefix=prefix)
        group_count = len(fdn.service_registry.groups(prefix))
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
    if group_count:  # on stderr: stdout stays the table alone
        plural = "group has" if group_count == 1 else "groups have"
        click.echo(f"{group_count} {plural} live members: registry list --groups", err=True)


def _print_groups(found: dict[str, list[GroupMember]], as_json: bool) -> None:
    if as_json:
        click.echo(
            dumps(
                [{"group": g, "members": [_member_dict(m) for m in ms]} for g, ms in found.items()]
            )
        )
        return
    now = datetime.now(UTC)
    table = Table(
        Column("group", overflow="fold"),
        Column("member", overflow="fold"),
        Column("address", overflow="fold"),
        Column("owner", overflow="fold"),
        Column("age", no_wrap=True),
        Column("expires in", no_wrap=True),
        Column("metadata", overflow="fold"),
    )
    for group, members in found.items():
        for member in members:
            expires = member.expires_at
            table.add_row(
                group,
                member.member_id,
                truncate(dumps(member.address), 40),
                member.node,
                _age(member.joined_at, now),
                _age(now, expires) if expires else "never",
                truncate(dumps(member.metadata), 40),
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
            out["members"] = [_member_dict(m) for m in members]
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
    table = Table(Column("name", overflow="fold"), "state", "failures", "probe in")
    for info in infos:
        probe = "" if info.retry_after is None else f"{info.retry_after / 1000:.1f}s"
        table.add_row(printable(info.name), info.state, str(info.failures), probe)
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
    table = Table(
        Column("key", overflow="fold"), "algorithm", "used", "previous window", "state expires in"
    )
    for u in usage:
        # usage() judged "now" by the database's clock: never show a time already past.
        expires = _age(now, max(now, u.expires_at))
        # A token bucket keeps when it is full again, not a count (see LimitUsage).
        used = "-" if u.used is None else str(u.used)
        previous = "-" if u.previous_count is None else str(u.previous_count)
        table.add_row(printable(u.key), u.algorithm, used, previous, expires)
    stdout_console().print(table)
