"""acme challenges: HTTP-01 answers pending at the CA, served by every Berth server

Revision ID: 0010_acme_challenges
Revises: 0009_traffic_controls
Create Date: 2026-12-01 20:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_acme_challenges"
down_revision = "0009_traffic_controls"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_challenges",
        sa.Column("token", sa.String(128), primary_key=True),
        sa.Column("key_authorization", sa.String(300), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("acme_challenges")
