"""Pools of workers and cloud worker nodes: each worker and queued job belongs to a pool;
queued jobs say why they wait; instances the autoscaler started; duties one replica holds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("activity") as table:
        table.add_column(sa.Column("pool", sa.String(64)))
    with op.batch_alter_table("worker") as table:
        table.add_column(
            sa.Column("pool", sa.String(64), nullable=False, server_default="volunteers")
        )
        table.add_column(sa.Column("draining_at", UtcDateTime()))
    with op.batch_alter_table("grid_job") as table:
        table.add_column(
            sa.Column("pool", sa.String(64), nullable=False, server_default="volunteers")
        )
        table.add_column(
            sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        table.add_column(sa.Column("reason", sa.Text()))
    op.create_index("ix_grid_job_pool_state_queued_at", "grid_job", ["pool", "state", "queued_at"])
    op.create_table(
        "cloud_instance",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("provider_id", sa.String(128)),
        sa.Column("host", sa.String(256)),
        sa.Column("flavor", sa.String(64), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("registered_at", UtcDateTime()),
        sa.Column("idle_since", UtcDateTime()),
        sa.Column("ended_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("name", name="pk_cloud_instance"),
    )
    op.create_index("ix_cloud_instance_pool_state", "cloud_instance", ["pool", "state"])
    op.create_index("ix_cloud_instance_ended_at", "cloud_instance", ["ended_at"])
    op.create_table(
        "duty",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("until", UtcDateTime(), nullable=False),
        sa.Column("status", sa.Text()),
        sa.PrimaryKeyConstraint("name", name="pk_duty"),
    )


def downgrade() -> None:
    op.drop_table("duty")
    op.drop_index("ix_cloud_instance_ended_at", table_name="cloud_instance")
    op.drop_index("ix_cloud_instance_pool_state", table_name="cloud_instance")
    op.drop_table("cloud_instance")
    op.drop_index("ix_grid_job_pool_state_queued_at", table_name="grid_job")
    with op.batch_alter_table("grid_job") as table:
        table.drop_column("reason")
        table.drop_column("pinned")
        table.drop_column("pool")
    with op.batch_alter_table("worker") as table:
        table.drop_column("draining_at")
        table.drop_column("pool")
    with op.batch_alter_table("activity") as table:
        table.drop_column("pool")
