"""drop requests.output_format, which every request set to "jpeg" and nothing ever read

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

An API from before this revision still writes the column: stop those processes before
migrating.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("output_format")


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("output_format", sa.String(16), nullable=False, server_default="jpeg")
        )
