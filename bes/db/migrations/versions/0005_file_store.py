"""The file store: stored files, their names, the activities that use them, usage and quotas,
uploads under way.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_file",
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_used_at", UtcDateTime(), nullable=False),
        sa.Column("expired_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("owner", "sha256", name="pk_stored_file"),
    )
    op.create_index("ix_stored_file_last_used_at", "stored_file", ["last_used_at"])
    op.create_table(
        "file_name",
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bound_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", name="pk_file_name"),
    )
    op.create_index("ix_file_name_owner_sha256", "file_name", ["owner", "sha256"])
    op.create_table(
        "file_ref",
        sa.Column("activity_id", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activity.id"],
            name="fk_file_ref_activity_id_activity",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("activity_id", "sha256", name="pk_file_ref"),
    )
    op.create_index("ix_file_ref_owner_sha256", "file_ref", ["owner", "sha256"])
    op.create_table(
        "file_usage",
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("quota_bytes", sa.BigInteger()),
        sa.PrimaryKeyConstraint("owner", name="pk_file_usage"),
    )
    op.create_table(
        "file_upload",
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "sha256", name="pk_file_upload"),
    )
    op.create_index("ix_file_upload_updated_at", "file_upload", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_file_upload_updated_at", table_name="file_upload")
    op.drop_table("file_upload")
    op.drop_table("file_usage")
    op.drop_index("ix_file_ref_owner_sha256", table_name="file_ref")
    op.drop_table("file_ref")
    op.drop_index("ix_file_name_owner_sha256", table_name="file_name")
    op.drop_table("file_name")
    op.drop_index("ix_stored_file_last_used_at", table_name="stored_file")
    op.drop_table("stored_file")
