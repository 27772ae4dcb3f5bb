"""turn_rollups and tool_rollups: per-execution aggregates the dashboard reads (store/rollup.py),
backfilled from the rows already stored

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from turnstream.store.schema import UTCDateTime

revision = "0004"
# Only this line changes when the migrations are re-chained.
down_revision = "0002"
branch_labels = None
depends_on = None

BIGINTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens",
           "total_tokens")  # fmt: skip
DOUBLES = ("total_cost", "aem_value", "aem_cost", "runtime_minutes")


def upgrade() -> None:
    op.create_table(
        "turn_rollups",
        sa.Column("tenant_id", sa.String(256), nullable=False),
        sa.Column("execution_id", sa.String(256), nullable=False),
        sa.Column("hour", UTCDateTime(timezone=True), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("model_provider", sa.String(256), nullable=True),
        sa.Column("model_weight", sa.Double(), nullable=True),
        sa.Column("turns", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=True) for c in BIGINTS),
        *(sa.Column(c, sa.Double(), nullable=True) for c in DOUBLES),
    )
    op.create_index("ix_turn_rollups_execution", "turn_rollups", ["tenant_id", "execution_id"])
    op.create_table(
        "tool_rollups",
        sa.Column("tenant_id", sa.String(256), nullable=False),
        sa.Column("execution_id", sa.String(256), nullable=False),
        sa.Column("tool_name", sa.String(256), nullable=True),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_tool_rollups_execution", "tool_rollups", ["tenant_id", "execution_id"])
    # Backfill: the writer's own rebuild (store/rollup.py), over every stored execution.
    from turnstream.store import rollup

    dialect = op.get_bind().dialect.name
    for table, insert in rollup.rebuilds(dialect, "1 = 1"):
        op.execute(insert)
        if dialect == "postgresql":  # plan the first dashboard with statistics, not guesses
            op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    op.drop_index("ix_tool_rollups_execution", table_name="tool_rollups")
    op.drop_table("tool_rollups")
    op.drop_index("ix_turn_rollups_execution", table_name="turn_rollups")
    op.drop_table("turn_rollups")
