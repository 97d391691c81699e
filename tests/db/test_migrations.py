"""Schema migrations: automatic, idempotent, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import UniqueConstraint, inspect

from bes.db import migrate
from bes.db.engine import create_engines
from bes.db.store import Database
from bes.db.tables import metadata


def test_migrated_schema_matches_the_table_definitions(db: Database) -> None:
    writer, reader = create_engines(db.url)
    try:
        assert migrate.current_revision(writer) == migrate.head_revision()
        inspector = inspect(reader)
        for table in metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
            # PostgreSQL lists the index behind each unique constraint too.
            indexes = {
                i["name"]
                for i in inspector.get_indexes(table.name)
                if not i.get("duplicates_constraint")
            }
            assert indexes == {i.name for i in table.indexes}, table.name
            uniques = {u["name"] for u in inspector.get_unique_constraints(table.name)}
            declared = {c.name for c in table.constraints if isinstance(c, UniqueConstraint)}
            assert uniques == declared, table.name
    finally:
        writer.dispose()
        reader.dispose()


def test_migrating_twice_is_harmless(db: Database) -> None:
    db.migrate()
    db.migrate()


def test_sqlite_file_is_in_wal_mode_and_synchronous_full(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    try:
        database.migrate()
        modes = database.read_sync(
            lambda c: (
                c.exec_driver_sql("PRAGMA journal_mode").scalar(),
                c.exec_driver_sql("PRAGMA synchronous").scalar(),
            )
        )
        assert modes == ("wal", 2)  # 2 = FULL: every commit reaches the disk
    finally:
        database.close()


def test_upgrading_a_database_of_the_first_release_keeps_its_activities(tmp_path: Path) -> None:
    """0002 moves the documents out of the activity row: nothing may be lost on the way."""
    from alembic import command
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    writer, _ = create_engines(url)
    try:
        config = migrate._config()
        with writer.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
        with writer.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO activity (id, owner, state, substate, job_name, document, job,"
                    " cancel_requested, created_at, changed_at) VALUES ('a' , 'alice',"
                    " 'Pending', 'Queued', 'old', '<jsdl:JobDefinition/>', '{}', 0,"
                    " '2026-11-25 10:00:00.000000', '2026-11-25 10:00:00.000000')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO activity_event (activity_id, at, state, substate, message)"
                    " VALUES ('a', '2026-11-25 10:00:00.000000', 'Pending', 'Queued',"
                    " 'accepted')"
                )
            )
    finally:
        writer.dispose()
    with Database(url) as db:
        db.migrate()
        from bes.db import activity_rows as rows
        from bes.ids import ActivityId

        (record, document) = db.read_sync(rows.get_documents, [ActivityId("a")])[ActivityId("a")]
        assert document == "<jsdl:JobDefinition/>"
        assert record.owner == "alice" and record.outputs is False
        assert db.read_sync(rows.jobs_of, ["a"]) == [("a", "{}")]
        assert [e[3] for e in db.read_sync(rows.events, ActivityId("a"))] == ["accepted"]
