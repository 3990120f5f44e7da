"""effort levels, and originals kept when re-encoding would not have made them smaller

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        # Requests from before effort levels get the default; their images still pending are
        # encoded with it.
        batch_op.add_column(
            sa.Column("effort", sa.String(16), nullable=False, server_default="balanced")
        )
        batch_op.add_column(
            sa.Column("kept_images", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kept_original", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("kept_original")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("kept_images")
        batch_op.drop_column("effort")
