"""``foundation_append_events`` may leave the NOTIFY to its caller.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

Every NOTIFY that commits makes PostgreSQL signal each listening backend, which wakes to
read the queue and write to its client: on a small server that wake competes for the CPU
with the writer's own commit, and it cost a store a fifth to a quarter of its time in the
benchmark. So a node that stores in a burst announces the burst, not every store: its
first store notifies as before, and so does one store per 5 ms after it; the stores in
between pass ``p_notify => false``, and when a burst ends the node's change feed sends
one NOTIFY for its last stores, at most 10 ms after them (``foundation.events._base``).
What a store writes, and when it is visible, does not change; only the wake-up of other
nodes is coalesced.

The function of 0007 is kept under its three-argument signature, now a wrapper that
always notifies, so that nodes still running the previous release keep working while a
deploy rolls through.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

THREE_ARGUMENTS = """
CREATE OR REPLACE FUNCTION foundation_append_events(
    p_events jsonb, p_recorded_at timestamptz, p_writer text)
RETURNS TABLE (o_ord integer, o_position bigint, o_version bigint, o_actual bigint,
               o_tail bigint)
LANGUAGE sql AS $$
    SELECT * FROM foundation_append_events(p_events, p_recorded_at, p_writer, true)
$$
"""


def _function_of_0007() -> str:
    # A landed revision is never edited: its DDL is read from it, not copied here.
    path = Path(__file__).with_name("0007_events_append.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.APPEND_FUNCTION)


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"migration 0008: {old!r} is not in the 0007 function once")
    return text.replace(old, new)


def _four_arguments() -> str:
    text = _replace_once(
        _function_of_0007(),
        "p_writer text)",
        "p_writer text, p_notify boolean)",
    )
    return _replace_once(text, "HAVING count(*) > 0", "HAVING count(*) > 0 AND p_notify")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_four_arguments())
        op.execute(THREE_ARGUMENTS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            _replace_once(_function_of_0007(), "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
        )
        op.execute("DROP FUNCTION foundation_append_events(jsonb, timestamptz, text, boolean)")
