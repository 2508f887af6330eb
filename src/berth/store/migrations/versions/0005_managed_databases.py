"""managed databases: shared database servers, tenants' databases, their attachments to apps

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "db_servers",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("name", sa.String(length=64), nullable=False, unique=True),
        sa.Column("engine", sa.String(length=16), nullable=False, index=True),
        sa.Column("admin_url", sa.Text(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False, server_default="active"),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "databases",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "tenant_id", sa.String(length=32), sa.ForeignKey("tenants.id"), nullable=False,
            index=True,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column(
            "server_id", sa.String(length=32), sa.ForeignKey("db_servers.id"), nullable=False,
            index=True,
        ),
        sa.Column("plan", sa.String(length=16), nullable=False, server_default="shared"),
        sa.Column("size_mb", sa.Integer(), nullable=False),
        sa.Column("connection_limit", sa.Integer(), nullable=False),
        sa.Column("password", sa.Text(), nullable=False, server_default=""),
        sa.Column("write_allowed", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("state", sa.String(length=16), nullable=False, server_default="active"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("deleted_at", sa.Float(), nullable=True),
        sa.Column("purge_after", sa.Float(), nullable=True, index=True),
        sa.UniqueConstraint("tenant_id", "name"),
    )  # fmt: skip
    op.create_table(
        "database_attachments",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "tenant_id", sa.String(length=32), sa.ForeignKey("tenants.id"), nullable=False,
            index=True,
        ),
        sa.Column(
            "database_id", sa.String(length=32),
            sa.ForeignKey("databases.id", ondelete="CASCADE"), nullable=False, index=True,
        ),
        sa.Column(
            "app_id", sa.String(length=32), sa.ForeignKey("apps.id", ondelete="CASCADE"),
            nullable=False, index=True,
        ),
        sa.Column("var", sa.String(length=128), nullable=False),
        sa.Column("prefix_var", sa.String(length=128), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("database_id", "app_id"),
        sa.UniqueConstraint("app_id", "var"),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("database_attachments")
    op.drop_table("databases")
    op.drop_table("db_servers")
