"""Activities, their history, and service settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "activity",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("substate", sa.String(32)),
        sa.Column("message", sa.Text()),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("job_name", sa.Text()),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("backend", sa.String(64)),
        sa.Column("backend_job_id", sa.String(256)),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("dispatch_owner", sa.String(64)),
        sa.Column("dispatch_until", UtcDateTime()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_activity"),
    )
    op.create_index("ix_activity_owner_created_at", "activity", ["owner", "created_at"])
    op.create_index("ix_activity_state", "activity", ["state"])
    op.create_table(
        "activity_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("activity_id", sa.String(32), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("substate", sa.String(32)),
        sa.Column("message", sa.Text()),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activity.id"],
            name="fk_activity_event_activity_id_activity",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_activity_event"),
    )
    op.create_index("ix_activity_event_activity_id_id", "activity_event", ["activity_id", "id"])
    op.create_table(
        "setting",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_setting"),
    )


def downgrade() -> None:
    op.drop_table("setting")
    op.drop_index("ix_activity_event_activity_id_id", table_name="activity_event")
    op.drop_table("activity_event")
    op.drop_index("ix_activity_state", table_name="activity")
    op.drop_index("ix_activity_owner_created_at", table_name="activity")
    op.drop_table("activity")
