"""Users of the service and the nonces (and signature values) they have used.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bes.db.tables import UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_user",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("password_hash", sa.Text()),
        sa.Column("password_sealed", sa.Text()),
        sa.Column("certificate_subject", sa.Text()),
        sa.Column("certificate_fingerprint", sa.String(64)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_service_user"),
    )
    op.create_index("ix_service_user_certificate_subject", "service_user", ["certificate_subject"])
    op.create_index(
        "ix_service_user_certificate_fingerprint", "service_user", ["certificate_fingerprint"]
    )
    op.create_table(
        "seen_nonce",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_seen_nonce"),
    )
    op.create_index("ix_seen_nonce_expires_at", "seen_nonce", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_nonce_expires_at", table_name="seen_nonce")
    op.drop_table("seen_nonce")
    op.drop_index("ix_service_user_certificate_fingerprint", table_name="service_user")
    op.drop_index("ix_service_user_certificate_subject", table_name="service_user")
    op.drop_table("service_user")
