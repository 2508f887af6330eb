"""hostile tenants: build and disk limits per plan, egress switch, soft delete, domain proof

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_concurrent_builds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("build_memory_mb", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("build_cpus_milli", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("build_disk_mb", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("instance_disk_mb", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("egress_internet", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleting_at", sa.Float(), nullable=True))
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("verification_token", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("verified_at", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("verified_by", sa.String(length=16), nullable=False, server_default="")
        )
    # Domains added before proof of control existed were already routed: keep them serving.
    op.execute(
        "UPDATE domains SET verified_at = created_at, verified_by = 'legacy' "
        "WHERE verified_at IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.drop_column("verified_by")
        batch_op.drop_column("verified_at")
        batch_op.drop_column("verification_token")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_column("deleting_at")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        for column in (
            "egress_internet",
            "instance_disk_mb",
            "build_disk_mb",
            "build_cpus_milli",
            "build_memory_mb",
            "max_concurrent_builds",
        ):
            batch_op.drop_column(column)
