"""VM leases: how the owner reaches a lease's VM (reported by its worker, shown in the
activity's status), suspend requests, and which replica holds each worker's tunnel.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("activity") as table:
        table.add_column(sa.Column("access", sa.Text()))
    with op.batch_alter_table("grid_job") as table:
        table.add_column(sa.Column("access", sa.Text()))
        table.add_column(
            sa.Column("suspend_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "tunnel",
        sa.Column("activity_id", sa.String(32), nullable=False),
        sa.Column("replica", sa.String(64), nullable=False),
        sa.Column("relay_url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("connected_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("activity_id", name="pk_tunnel"),
    )


def downgrade() -> None:
    op.drop_table("tunnel")
    with op.batch_alter_table("grid_job") as table:
        table.drop_column("suspend_requested")
        table.drop_column("access")
    with op.batch_alter_table("activity") as table:
        table.drop_column("access")
