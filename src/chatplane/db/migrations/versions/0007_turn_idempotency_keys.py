"""idempotent message posts: turns.idempotency_key and turns.request_hash, unique per
conversation

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 01:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "uq_turns_conversation_idempotency",
            ["conversation_id", "idempotency_key"],
            unique=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_index("uq_turns_conversation_idempotency")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
