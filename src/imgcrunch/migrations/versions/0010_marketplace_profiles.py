"""Marketplace profiles: requests.profile and its count of images with findings; each image's
findings and the quality it was encoded at

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("profile", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("noncompliant_images", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("findings", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("quality", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("quality")
        batch_op.drop_column("findings")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("noncompliant_images")
        batch_op.drop_column("profile")
