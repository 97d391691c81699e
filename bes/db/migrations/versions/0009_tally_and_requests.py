"""Counts kept by the database and an index for one owner's active activities (views that stay
fast at a million activities), and the CreateActivity requests already answered (a retried
request does not create twice).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime
from bes.db.tally_rows import create_triggers, drop_triggers

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tally",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "owner", "state", "slot", name="pk_tally"),
    )
    create_triggers(op.get_bind())
    # One owner's active activities in order, however many other owners have queued.
    op.create_index(
        "ix_activity_owner_state_created_at_id", "activity", ["owner", "state", "created_at", "id"]
    )
    op.create_table(
        "create_request",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("activity_id", sa.String(32), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_create_request"),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activity.id"],
            name="fk_create_request_activity_id_activity",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_create_request_at", "create_request", ["at"])
    op.create_index("ix_create_request_activity_id", "create_request", ["activity_id"])


def downgrade() -> None:
    op.drop_table("create_request")
    op.drop_index("ix_activity_owner_state_created_at_id", "activity")
    drop_triggers(op.get_bind())
    op.drop_table("tally")
