"""database usage: measurements of managed databases, the storage billed per hour, the size
quota's pending state, a plan's storage price

Revision ID: 0007_database_usage
Revises: 0006
Create Date: 2026-12-01 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_database_usage"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "database_measurements",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "database_id", sa.String(length=32),
            sa.ForeignKey("databases.id", ondelete="CASCADE"), nullable=False, index=True,
        ),
        sa.Column("tenant_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("measured_at", sa.Float(), nullable=False, index=True),
        sa.Column("bytes_used", sa.BigInteger(), nullable=False),
        sa.Column("connections", sa.Integer(), nullable=False),
    )  # fmt: skip
    op.create_table(
        "database_storage_hours",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("key", sa.String(length=200), nullable=False, unique=True),
        sa.Column("tenant_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("database_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("database_name", sa.String(length=64), nullable=False),
        sa.Column("hour_start", sa.BigInteger(), nullable=False, index=True),
        sa.Column("bytes_billed", sa.BigInteger(), nullable=False),
        sa.Column("price_per_gib_month_minor", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("invoice_period", sa.String(length=7), nullable=False, index=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("write_applied", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("usage_error", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("measured_at", sa.Float(), nullable=True))
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("storage_price_per_gib_month_minor", sa.Integer(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("storage_price_per_gib_month_minor")
    with op.batch_alter_table("databases", schema=None) as batch_op:
        batch_op.drop_column("measured_at")
        batch_op.drop_column("usage_error")
        batch_op.drop_column("write_applied")
    op.drop_table("database_storage_hours")
    op.drop_table("database_measurements")
