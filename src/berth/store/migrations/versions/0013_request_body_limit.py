"""request body limit: the largest request body a tenant's apps accept at the ingress, per
plan (NULL: the installation's setting request_body_max_mb)

Revision ID: 0013_request_body_limit
Revises: 0012_certificates
Create Date: 2026-12-01 21:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_request_body_limit"
down_revision = "0012_certificates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_request_body_mb", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("max_request_body_mb")
