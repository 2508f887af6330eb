"""rotation overlap: a database's current login, the credential pending revocation and when,
when it was last rotated and when the previous credential was revoked

Revision ID: 0011_rotation_overlap
Revises: 0010_acme_challenges
Create Date: 2026-12-01 21:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_rotation_overlap"
down_revision = "0010_acme_challenges"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("databases") as batch:
        batch.add_column(sa.Column("login", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("retiring", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("retire_after", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rotated_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("retired_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("databases") as batch:
        for column in ("retired_at", "rotated_at", "retire_after", "retiring", "login"):
            batch.drop_column(column)
