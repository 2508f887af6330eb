"""many machines: placement constraints per app, releases pinned by registry digest, the
controllers' lease, node drains

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("constraints_json", sa.Text(), nullable=False, server_default="[]")
        )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pinned_image", sa.String(length=512), nullable=True))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=64), nullable=True))
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        # The constraints a deployment's revision places under (NULL: the app's, from before).
        batch_op.add_column(sa.Column("constraints_json", sa.Text(), nullable=True))
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("holder", sa.String(length=128), nullable=False, server_default=""),
        sa.Column("token", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at", sa.Float(), nullable=False, server_default="0"),
        sa.Column("renewed_at", sa.Float(), nullable=False, server_default="0"),
    )
    op.create_table(
        "node_drains",
        sa.Column("node_id", sa.String(length=64), primary_key=True),
        sa.Column("node_name", sa.String(length=255), nullable=False, server_default=""),
        sa.Column("status", sa.String(length=32), nullable=False, server_default="draining"),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("deadline", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("node_drains")
    op.drop_table("leases")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("constraints_json")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("address")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("pinned_image")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_column("constraints_json")
