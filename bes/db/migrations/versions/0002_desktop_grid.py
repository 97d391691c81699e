"""Desktop grid: workers, the queue of leased jobs, kept outputs of activities, warnings of
normalized documents, parameter sweeps (parent and child activities); the documents
move out of the activity row (rewritten at every transition) into activity_document.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "activity_document",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["id"], ["activity.id"], name="fk_activity_document_id_activity", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_activity_document"),
    )
    op.execute(
        "INSERT INTO activity_document (id, document, job) SELECT id, document, job FROM activity"
    )
    op.add_column(
        "activity", sa.Column("outputs", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("activity", sa.Column("warnings", sa.Text()))
    # A parameter sweep is one activity (the parent, children > 0) standing for its points.
    op.add_column("activity", sa.Column("parent_id", sa.String(32)))
    op.add_column(
        "activity", sa.Column("children", sa.Integer(), nullable=False, server_default="0")
    )
    op.create_index("ix_activity_parent_id", "activity", ["parent_id"])
    # Not batch mode: on SQLite that copies the table and drops the old one, and the drop
    # would cascade to the documents and events that refer to it (foreign_keys=ON). SQLite
    # (3.35 and later) and PostgreSQL both drop a column in place.
    op.execute("ALTER TABLE activity DROP COLUMN document")
    op.execute("ALTER TABLE activity DROP COLUMN job")
    op.create_table(
        "worker",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime()),
        sa.Column("facts", sa.Text()),
        sa.Column("last_seen_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_worker"),
        sa.UniqueConstraint("name", name="uq_worker_name"),
        sa.UniqueConstraint("token_hash", name="uq_worker_token_hash"),
    )
    op.create_table(
        "grid_job",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("activity_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("substate", sa.String(32)),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("disk_mib", sa.Integer(), nullable=False),
        sa.Column("needs_network", sa.Boolean(), nullable=False),
        sa.Column("hypervisors", sa.String(64), nullable=False),
        sa.Column("worker_id", sa.String(32)),
        sa.Column("lease_epoch", sa.Integer(), nullable=False),
        sa.Column("lease_until", UtcDateTime()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("ran", sa.Boolean(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("message", sa.Text()),
        sa.Column("result", sa.Text()),
        sa.Column("queued_at", UtcDateTime(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_grid_job"),
    )
    op.create_index("ix_grid_job_state_queued_at", "grid_job", ["state", "queued_at"])
    op.create_index("ix_grid_job_activity_id", "grid_job", ["activity_id"])


def downgrade() -> None:
    op.drop_index("ix_grid_job_activity_id", table_name="grid_job")
    op.drop_index("ix_grid_job_state_queued_at", table_name="grid_job")
    op.drop_table("grid_job")
    op.drop_table("worker")
    op.execute("ALTER TABLE activity DROP COLUMN outputs")
    op.execute("ALTER TABLE activity DROP COLUMN warnings")
    op.drop_index("ix_activity_parent_id", table_name="activity")
    op.execute("ALTER TABLE activity DROP COLUMN parent_id")
    op.execute("ALTER TABLE activity DROP COLUMN children")
    op.add_column("activity", sa.Column("document", sa.Text(), nullable=False, server_default=""))
    op.add_column("activity", sa.Column("job", sa.Text(), nullable=False, server_default=""))
    op.execute(
        "UPDATE activity SET document = (SELECT d.document FROM activity_document d"
        " WHERE d.id = activity.id), job = (SELECT d.job FROM activity_document d"
        " WHERE d.id = activity.id)"
    )
    op.drop_table("activity_document")
