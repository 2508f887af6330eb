"""certificates: every name's status, chain and key in the store, so every Berth server
serves the same certificates (berth.certs.store_certs)

Revision ID: 0012_certificates
Revises: 0011_rotation_overlap
Create Date: 2026-12-01 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_certificates"
down_revision = "0011_rotation_overlap"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("status_json", sa.Text(), nullable=False, server_default=""),
        sa.Column("chain_pem", sa.Text(), nullable=False, server_default=""),
        sa.Column("key_pem", sa.Text(), nullable=False, server_default=""),
        sa.Column("version", sa.String(32), nullable=False, server_default=""),
        sa.Column("updated_at", sa.Float(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("certificates")
