"""A partial index of the activities still to hand to their backend: the dispatcher's claim
read every Pending activity to find none when the desktop grid queues jobs at create (a
second's loop stall at a million queued), and now reads only those.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TO_DISPATCH = sa.text("backend IS NOT NULL AND backend_job_id IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_activity_to_dispatch",
        "activity",
        ["state", "created_at"],
        sqlite_where=_TO_DISPATCH,
        postgresql_where=_TO_DISPATCH,
    )


def downgrade() -> None:
    op.drop_index("ix_activity_to_dispatch", "activity")
