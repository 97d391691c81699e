"""Counts kept up to date with the rows they count, so that no view counts a million rows.

The factory attributes, the status page and ``/metrics`` show how many activities are in each
state (per owner, or everyone's) and how many desktop-grid jobs are in each queue state. Counting
those rows on every request costs time in proportion to everything ever stored (70-185 ms at a
million activities); instead the database keeps a ``tally`` up to date itself, with triggers on
``activity`` and ``grid_job``: whatever code inserts, moves or deletes a row (a create, a
transition, a purge, a migration, an administrator's SQL), the counts follow in the same
transaction. A view then sums a few rows.

Activities count by their points: a parameter sweep's own row stands for its children and is
left out (``children > 0``), as everywhere else.

**Several replicas on PostgreSQL.** A single counter row per ``(owner, state)`` would be a hot
row: every replica's writer would wait on it, and two transactions touching two owners' rows in
opposite orders would deadlock. So each database session counts into its own *slot* (its
backend pid): writers never share a row. A row of a session that has ended is folded into slot
0 by :func:`fold_tally` (every minute, by the replica holding the ``upkeep`` duty,
:mod:`bes.upkeep`); reads sum every slot, so a fold changes no total. SQLite has one writer
at a time and counts into slot 0 only.

SQLite drops a table's triggers when a migration rebuilds the table (``batch_alter_table``):
such a migration must call :func:`create_triggers` again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import Connection, func, select, text

from bes.db.tables import tally
from bes.states import ActivityState

ACTIVITY: Final = "activity"
GRID_JOB: Final = "grid_job"

_SQLITE_TRIGGERS: Final = (
    # Activities: counted by owner and state, sweeps by their points.
    """
    CREATE TRIGGER tally_activity_insert AFTER INSERT ON activity WHEN NEW.children = 0
    BEGIN
        INSERT INTO tally (kind, owner, state, slot, n)
        VALUES ('activity', NEW.owner, NEW.state, 0, 1)
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER tally_activity_delete AFTER DELETE ON activity WHEN OLD.children = 0
    BEGIN
        INSERT INTO tally (kind, owner, state, slot, n)
        VALUES ('activity', OLD.owner, OLD.state, 0, -1)
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n - 1;
    END
    """,
    """
    CREATE TRIGGER tally_activity_update AFTER UPDATE OF owner, state, children ON activity
    WHEN OLD.owner IS NOT NEW.owner OR OLD.state IS NOT NEW.state
        OR OLD.children IS NOT NEW.children
    BEGIN
        INSERT INTO tally (kind, owner, state, slot, n)
        SELECT 'activity', OLD.owner, OLD.state, 0, -1 WHERE OLD.children = 0
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n - 1;
        INSERT INTO tally (kind, owner, state, slot, n)
        SELECT 'activity', NEW.owner, NEW.state, 0, 1 WHERE NEW.children = 0
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n + 1;
    END
    """,
    # The desktop grid's queue: counted by queue state (owner '').
    """
    CREATE TRIGGER tally_grid_job_insert AFTER INSERT ON grid_job
    BEGIN
        INSERT INTO tally (kind, owner, state, slot, n) VALUES ('grid_job', '', NEW.state, 0, 1)
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER tally_grid_job_delete AFTER DELETE ON grid_job
    BEGIN
        INSERT INTO tally (kind, owner, state, slot, n) VALUES ('grid_job', '', OLD.state, 0, -1)
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n - 1;
    END
    """,
    """
    CREATE TRIGGER tally_grid_job_update AFTER UPDATE OF state ON grid_job
    WHEN OLD.state IS NOT NEW.state
    BEGIN
        INSERT INTO tally (kind, owner, state, slot, n) VALUES ('grid_job', '', OLD.state, 0, -1)
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n - 1;
        INSERT INTO tally (kind, owner, state, slot, n) VALUES ('grid_job', '', NEW.state, 0, 1)
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = n + 1;
    END
    """,
)

# PostgreSQL: inserts and deletes by statement, with transition tables, so a statement of many
# rows (a purge) writes one aggregated row per (owner, state); a change of state by row, and only
# when the state changes. Each session counts into its own slot.
_PG_FUNCTIONS: Final = (
    """
    CREATE FUNCTION bes_tally_bump(k text, o text, s text, d bigint) RETURNS void
    LANGUAGE sql AS $$
        INSERT INTO tally AS t (kind, owner, state, slot, n) VALUES (k, o, s, pg_backend_pid(), d)
        ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = t.n + EXCLUDED.n
    $$
    """,
    """
    CREATE FUNCTION bes_tally_activity_rows() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM bes_tally_bump('activity', owner, state, count(*)) FROM new_rows
            WHERE children = 0 GROUP BY owner, state;
        ELSE
            PERFORM bes_tally_bump('activity', owner, state, -count(*)) FROM old_rows
            WHERE children = 0 GROUP BY owner, state;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION bes_tally_activity_move() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.children = 0 THEN
            PERFORM bes_tally_bump('activity', OLD.owner, OLD.state, -1);
        END IF;
        IF NEW.children = 0 THEN
            PERFORM bes_tally_bump('activity', NEW.owner, NEW.state, 1);
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION bes_tally_grid_job_rows() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM bes_tally_bump('grid_job', '', state, count(*)) FROM new_rows GROUP BY state;
        ELSE
            PERFORM bes_tally_bump('grid_job', '', state, -count(*)) FROM old_rows GROUP BY state;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION bes_tally_grid_job_move() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM bes_tally_bump('grid_job', '', OLD.state, -1);
        PERFORM bes_tally_bump('grid_job', '', NEW.state, 1);
        RETURN NULL;
    END $$
    """,
)

_PG_MOVED: Final = {
    "activity": "OLD.owner IS DISTINCT FROM NEW.owner OR OLD.state IS DISTINCT FROM NEW.state"
    " OR OLD.children IS DISTINCT FROM NEW.children",
    "grid_job": "OLD.state IS DISTINCT FROM NEW.state",
}
_PG_FUNCTION_NAMES: Final = (
    "bes_tally_activity_rows()",
    "bes_tally_activity_move()",
    "bes_tally_grid_job_rows()",
    "bes_tally_grid_job_move()",
    "bes_tally_bump(text, text, text, bigint)",
)


def _pg_triggers(table: str) -> tuple[str, ...]:
    return (
        f"CREATE TRIGGER tally_{table}_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION bes_tally_{table}_rows()",
        f"CREATE TRIGGER tally_{table}_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION bes_tally_{table}_rows()",
        f"CREATE TRIGGER tally_{table}_update AFTER UPDATE ON {table} FOR EACH ROW "
        f"WHEN ({_PG_MOVED[table]}) EXECUTE FUNCTION bes_tally_{table}_move()",
    )


def create_triggers(conn: Connection) -> None:
    """(Re)create the triggers that keep the tally, and count what the tables hold now.

    Run inside the migration's transaction: on PostgreSQL ``CREATE TRIGGER`` locks the tables
    against writes until it commits, so no row is missed or counted twice.
    """
    drop_triggers(conn)
    if conn.dialect.name == "postgresql":
        statements = (*_PG_FUNCTIONS, *_pg_triggers("activity"), *_pg_triggers("grid_job"))
    else:
        statements = _SQLITE_TRIGGERS
    for statement in statements:
        conn.execute(text(statement))
    conn.execute(tally.delete())
    conn.execute(
        text(
            "INSERT INTO tally (kind, owner, state, slot, n) "
            "SELECT 'activity', owner, state, 0, count(*) FROM activity WHERE children = 0 "
            "GROUP BY owner, state"
        )
    )
    conn.execute(
        text(
            "INSERT INTO tally (kind, owner, state, slot, n) "
            "SELECT 'grid_job', '', state, 0, count(*) FROM grid_job GROUP BY state"
        )
    )


def drop_triggers(conn: Connection) -> None:
    """Remove the tally's triggers (and PostgreSQL functions), if any."""
    postgres = conn.dialect.name == "postgresql"
    for table in ("activity", "grid_job"):
        for op in ("insert", "delete", "update"):
            on = f" ON {table}" if postgres else ""
            conn.execute(text(f"DROP TRIGGER IF EXISTS tally_{table}_{op}{on}"))
    if postgres:
        for fn in _PG_FUNCTION_NAMES:
            conn.execute(text(f"DROP FUNCTION IF EXISTS {fn}"))


def counts(conn: Connection, kind: str, owner: str | None = None) -> dict[str, int]:
    """Rows of ``kind`` per state (of one owner, or of everyone), summed over the slots."""
    query = select(tally.c.state, func.sum(tally.c.n)).where(tally.c.kind == kind)
    if owner is not None:
        query = query.where(tally.c.owner == owner)
    return {state: int(n) for state, n in conn.execute(query.group_by(tally.c.state)) if n}


def activity_counts(conn: Connection, owner: str | None) -> dict[ActivityState, int]:
    """Activities per basic state, by points (of one owner, or of everyone)."""
    found = dict.fromkeys(ActivityState, 0)
    for state, n in counts(conn, ACTIVITY, owner).items():
        found[ActivityState(state)] = n
    return found


def fold_tally(conn: Connection, _items: Sequence[None] = (None,)) -> list[int]:
    """Fold the slots of database sessions that have ended into slot 0, and drop empty rows;
    return how many rows went. PostgreSQL only (SQLite counts into slot 0 alone)."""
    if conn.dialect.name != "postgresql":
        return [0] * len(_items)
    moved = conn.execute(
        text(
            """
            WITH gone AS (
                DELETE FROM tally
                WHERE slot <> 0 AND slot NOT IN (SELECT pid FROM pg_stat_activity)
                RETURNING kind, owner, state, n
            ), summed AS (
                SELECT kind, owner, state, sum(n) AS n FROM gone GROUP BY kind, owner, state
            ), merged AS (
                INSERT INTO tally AS t (kind, owner, state, slot, n)
                SELECT kind, owner, state, 0, n FROM summed
                ORDER BY kind, owner, state
                ON CONFLICT (kind, owner, state, slot) DO UPDATE SET n = t.n + EXCLUDED.n
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM merged)
            """
        )
    ).scalar_one()
    conn.execute(tally.delete().where(tally.c.slot == 0, tally.c.n == 0))
    return [int(moved)] * len(_items)
