"""database backups: one row per backup of a managed database, verified or failed with why

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "database_backups",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "tenant_id", sa.String(length=32), sa.ForeignKey("tenants.id"), nullable=False,
            index=True,
        ),
        sa.Column(
            "database_id", sa.String(length=32),
            sa.ForeignKey("databases.id", ondelete="CASCADE"), nullable=False, index=True,
        ),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False, server_default="pending"),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("path", sa.Text(), nullable=False, server_default=""),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("sha256", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("fingerprint", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False, index=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("keep_until", sa.Float(), nullable=True),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("database_backups")
