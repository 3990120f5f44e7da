"""re-runs: owners' storage scopes, the source cache, and what each image reused

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Requests from before keep their images under images/<request id>/ (scope NULL).
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.Uuid(), nullable=True))
        batch_op.add_column(
            sa.Column("refresh", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("reused_images", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reuse", sa.String(length=16), nullable=True))
    op.create_index("ix_images_output_key", "images", ["output_key"])
    op.create_table(
        "owner_scopes",
        sa.Column("owner", sa.String(length=64), primary_key=True),
        sa.Column("scope", sa.Uuid(), nullable=False, unique=True),
    )
    op.create_table(
        "source_cache",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("url_digest", sa.String(length=64), nullable=False),
        sa.Column("spec_digest", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("last_modified", sa.Text(), nullable=True),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.Column("output_key", sa.String(length=255), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "url_digest", "spec_digest"),
    )
    op.create_index("ix_source_cache_output_key", "source_cache", ["output_key"])


def downgrade() -> None:
    op.drop_index("ix_source_cache_output_key", table_name="source_cache")
    op.drop_table("source_cache")
    op.drop_table("owner_scopes")
    op.drop_index("ix_images_output_key", table_name="images")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("reuse")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("reused_images")
        batch_op.drop_column("refresh")
        batch_op.drop_column("scope")
