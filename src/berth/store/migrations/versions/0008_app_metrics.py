"""app metrics: per-app traffic buckets from each server's nginx, per-instance cgroup buckets

Revision ID: 0008_app_metrics
Revises: 0007_database_usage
Create Date: 2026-12-01 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_app_metrics"
down_revision = "0007_database_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_metric_buckets",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("server_id", sa.String(length=200), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("tenant_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False, index=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("status_1xx", sa.BigInteger(), nullable=False),
        sa.Column("status_2xx", sa.BigInteger(), nullable=False),
        sa.Column("status_3xx", sa.BigInteger(), nullable=False),
        sa.Column("status_4xx", sa.BigInteger(), nullable=False),
        sa.Column("status_5xx", sa.BigInteger(), nullable=False),
        sa.Column("body_bytes", sa.BigInteger(), nullable=False),
        sa.Column("latency", sa.Text(), nullable=False),
        sa.UniqueConstraint("server_id", "app_id", "bucket_start"),
    )
    op.create_table(
        "instance_metric_buckets",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("server_id", sa.String(length=200), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("app_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("tenant_id", sa.String(length=32), nullable=False, index=True),
        sa.Column("container_id", sa.String(length=128), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False, index=True),
        sa.Column("cpu_usec_delta", sa.BigInteger(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_max_bytes", sa.BigInteger(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("sampled_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("server_id", "instance_id", "bucket_start"),
    )


def downgrade() -> None:
    op.drop_table("instance_metric_buckets")
    op.drop_table("app_metric_buckets")
