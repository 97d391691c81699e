"""Users' own VM images: a disk of the owner's file store under a name.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_image",
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("os_type", sa.String(64)),
        sa.Column("min_memory_mib", sa.Integer()),
        sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", name="pk_user_image"),
    )
    op.create_index("ix_user_image_owner_sha256", "user_image", ["owner", "sha256"])
    op.create_index("ix_user_image_name", "user_image", ["name"])


def downgrade() -> None:
    op.drop_index("ix_user_image_name", table_name="user_image")
    op.drop_index("ix_user_image_owner_sha256", table_name="user_image")
    op.drop_table("user_image")
