"""Indexes for activities newest first: the status page reads everyone's (administrators),
or one state's, in (created_at, id) order, which was a sort of the whole table (or of the
whole state) on every page. The index on state alone becomes (state, created_at, id).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_activity_created_at_id", "activity", ["created_at", "id"])
    op.create_index("ix_activity_state_created_at_id", "activity", ["state", "created_at", "id"])
    op.drop_index("ix_activity_state", table_name="activity")


def downgrade() -> None:
    op.create_index("ix_activity_state", "activity", ["state"])
    op.drop_index("ix_activity_state_created_at_id", table_name="activity")
    op.drop_index("ix_activity_created_at_id", table_name="activity")
