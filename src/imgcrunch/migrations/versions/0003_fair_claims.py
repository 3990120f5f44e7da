"""scale-out workers pick the request that waited longest: when each was last claimed from

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(
            "ix_images_request_status_id", ["request_id", "status", "id"], unique=False
        )
        batch_op.drop_index("ix_images_request_status")


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index("ix_images_request_status", ["request_id", "status"], unique=False)
        batch_op.drop_index("ix_images_request_status_id")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("last_claimed_at")
