"""A config value written with plain SQL must be one every reader can load.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30

The config triggers copy each change into the append-only history and, as a
``foundation.config.changed`` event, into the log, where a value no reader can load stays
for good: the key could not be read (nor its history, nor the log's export), and every
subscription stopped at that event, failed. The database took such values from plain SQL:

* PostgreSQL: a number of more than 4,300 digits (``jsonb`` keeps ``1e5000`` as its
  digits; Python's ``int`` reads no more), one past the float range with a fraction (read
  as infinity, which is not JSON), or containers nested more than 100 deep (Foundation
  writes no deeper; its readers' recursive copies stop there).
* SQLite: a value that is not text (``x'31'``, a BLOB), the same numbers, containers
  nested past 100 levels under plain keys, and an escaped lone surrogate
  (``"\\ud800"``, which ``json_valid`` takes: ``json_tree`` decodes it to the bytes
  ``ED A0`` to ``ED BF``, which no valid UTF-8 holds), which no reply or export line
  could encode, and an escaped NUL (``"\\u0000"``: PostgreSQL's ``jsonb`` refuses it,
  and so does ``config.set``). SQLite does not check that text is UTF-8
  (``CAST(x'FF' AS TEXT)``), and a trigger cannot either: such text stays for a
  plain-SQL writer not to write.

A trigger now refuses them, before any other trigger copies the value anywhere. Values
Foundation writes never meet it (``encode_json`` refuses them first). A value already in
the table is left as it is (its readers name the key).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_UPGRADE = [
    """
    CREATE FUNCTION foundation_config_value_readable() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        IF NEW.value IS NULL THEN
            RETURN NEW;
        END IF;
        IF EXISTS (
            SELECT 1
            FROM jsonb_path_query(NEW.value, 'strict $.** ? (@.type() == "number")') AS n(v)
            WHERE CASE WHEN strpos(v::text, '.') > 0
                       THEN abs(v::text::numeric) > 1.7976931348623157e308
                       ELSE length(ltrim(v::text, '-')) > 4300 END
        ) THEN
            RAISE EXCEPTION 'foundation_config: % holds a number Python cannot read', NEW.key
                USING ERRCODE = 'check_violation',
                      HINT = 'more than 4300 digits, or past the float range with a fraction';
        END IF;
        IF jsonb_path_exists(
            NEW.value,
            'strict $.**{100 to last} ? (@.type() == "array" || @.type() == "object")'
        ) THEN
            RAISE EXCEPTION 'foundation_config: the value of % is nested over 100 levels', NEW.key
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_config_value_readable
        BEFORE INSERT OR UPDATE OF value ON foundation_config
        FOR EACH ROW EXECUTE FUNCTION foundation_config_value_readable()
    """,
]

# SQLite: BEFORE triggers, which run before 0001/0010's AFTER triggers copy the value.
# json_tree reads a number past the float range as infinity: a real literal so is read
# so by Python too; an integer's digits are counted in its own text (``->`` gives it).
# An escaped NUL is looked for once every escaped backslash is gone (an escaped
# backslash before "u0000" is no NUL); json_tree ends a string at its NUL, so cannot show it.
# The depth is counted in each container's path ("$.a[2].b"), where a key holding other
# characters than a name's is quoted: such a path is not counted (the check stays on
# the safe side: no legal value is refused).
_SQLITE_CHECK = """
    BEGIN
        SELECT RAISE(ABORT, 'foundation_config: the value must be JSON text')
        WHERE NEW.value IS NOT NULL
          AND (typeof(NEW.value) != 'text' OR NOT json_valid(NEW.value));
        SELECT RAISE(ABORT, 'foundation_config: the value holds a number Python cannot read')
        WHERE EXISTS (
            SELECT 1 FROM json_tree(NEW.value)
            WHERE type IN ('integer', 'real') AND abs(atom) > 1.7976931348623157e308
              AND (type = 'real' OR length(ltrim(NEW.value -> fullkey, '-')) > 4300));
        SELECT RAISE(ABORT, 'foundation_config: the value holds a NUL character')
        WHERE instr(replace(NEW.value, '\\\\', ''), '\\u0000') > 0;
        SELECT RAISE(ABORT, 'foundation_config: the value holds a lone surrogate, not text')
        WHERE EXISTS (
            SELECT 1
            FROM (SELECT coalesce(CAST(atom AS BLOB), x'') || coalesce(CAST(key AS BLOB), x'') AS b
                  FROM json_tree(NEW.value))
            WHERE instr(b, x'ED') > 0
              AND (
                    instr(b, x'EDA0') > 0
                 OR instr(b, x'EDA1') > 0
                 OR instr(b, x'EDA2') > 0
                 OR instr(b, x'EDA3') > 0
                 OR instr(b, x'EDA4') > 0
                 OR instr(b, x'EDA5') > 0
                 OR instr(b, x'EDA6') > 0
                 OR instr(b, x'EDA7') > 0
                 OR instr(b, x'EDA8') > 0
                 OR instr(b, x'EDA9') > 0
                 OR instr(b, x'EDAA') > 0
                 OR instr(b, x'EDAB') > 0
                 OR instr(b, x'EDAC') > 0
                 OR instr(b, x'EDAD') > 0
                 OR instr(b, x'EDAE') > 0
                 OR instr(b, x'EDAF') > 0
                 OR instr(b, x'EDB0') > 0
                 OR instr(b, x'EDB1') > 0
                 OR instr(b, x'EDB2') > 0
                 OR instr(b, x'EDB3') > 0
                 OR instr(b, x'EDB4') > 0
                 OR instr(b, x'EDB5') > 0
                 OR instr(b, x'EDB6') > 0
                 OR instr(b, x'EDB7') > 0
                 OR instr(b, x'EDB8') > 0
                 OR instr(b, x'EDB9') > 0
                 OR instr(b, x'EDBA') > 0
                 OR instr(b, x'EDBB') > 0
                 OR instr(b, x'EDBC') > 0
                 OR instr(b, x'EDBD') > 0
                 OR instr(b, x'EDBE') > 0
                 OR instr(b, x'EDBF') > 0));
        SELECT RAISE(ABORT, 'foundation_config: the value is nested more than 100 levels deep')
        WHERE EXISTS (
            SELECT 1 FROM json_tree(NEW.value)
            WHERE type IN ('array', 'object') AND instr(fullkey, '"') = 0
              AND length(fullkey) - length(replace(replace(fullkey, '[', ''), '.', '')) >= 100);
    END
"""
SQLITE_UPGRADE = [
    "CREATE TRIGGER foundation_config_value_readable_insert BEFORE INSERT ON foundation_config"
    + _SQLITE_CHECK,
    "CREATE TRIGGER foundation_config_value_readable_update"
    " BEFORE UPDATE OF value ON foundation_config" + _SQLITE_CHECK,
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_UPGRADE:
            op.execute(statement)
        return
    for statement in SQLITE_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER foundation_config_value_readable ON foundation_config")
        op.execute("DROP FUNCTION foundation_config_value_readable()")
        return
    op.execute("DROP TRIGGER foundation_config_value_readable_insert")
    op.execute("DROP TRIGGER foundation_config_value_readable_update")
