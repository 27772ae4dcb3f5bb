"""turns: inputs, outputs and metadata, so foreign formats (HoneyHive) are stored losslessly

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Nullable columns without defaults: instant on PostgreSQL, no table rewrite.
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("inputs", JSON, nullable=True))
        batch.add_column(sa.Column("outputs", JSON, nullable=True))
        batch.add_column(sa.Column("metadata", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("metadata")
        batch.drop_column("outputs")
        batch.drop_column("inputs")
