"""traffic controls: an app's redirects, basic auth, maintenance page, allow/deny list and rate
limit, one validated JSON value (berth.domain.traffic)

Revision ID: 0009_traffic_controls
Revises: 0008_app_metrics
Create Date: 2026-12-01 18:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_traffic_controls"
down_revision = "0008_app_metrics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("traffic_json", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("traffic_json")
