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
down_revision = "0003"
branch_labels = None
depends_on = None

BIGINTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens",
           "total_tokens")  # fmt: skip
DOUBLES = ("total_cost", "aem_value", "aem_cost", "runtime_minutes")


def upgrade() -> None:
    ids = ("tenant_id", "execution_id")
    op.create_table(
        "turn_rollups",
        *(sa.Column(c, sa.String(256), nullable=False) for c in ids),
        sa.Column("hour", UTCDateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("model_provider", sa.String(256), nullable=False),
        sa.Column("model_weight", sa.Double(), nullable=False),
        sa.Column("turns", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in BIGINTS),
        *(sa.Column(c, sa.Double(), nullable=False) for c in DOUBLES),
        sa.PrimaryKeyConstraint(*ids, "hour", "model", "model_provider", "model_weight"),
    )
    op.create_table(
        "tool_rollups",
        *(sa.Column(c, sa.String(256), nullable=False) for c in ids),
        sa.Column("tool_name", sa.String(256), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*ids, "tool_name"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        citus = bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'citus'"))
        if citus.first() is not None:  # docs/scaling.md: distributed by tenant, co-located
            for table in ("turn_rollups", "tool_rollups"):
                op.execute(
                    f"SELECT create_distributed_table('{table}', 'tenant_id', "
                    "colocate_with => 'executions')"
                )
    # Backfill with the writer's own grouping (store/rollup.py), over every stored row.
    from turnstream.store import rollup

    dialect = op.get_bind().dialect.name
    for insert in rollup.rebuilds(dialect, "1 = 1"):
        op.execute(insert)
    if dialect == "postgresql":  # plan the first dashboard with statistics, not guesses
        op.execute("ANALYZE turn_rollups")
        op.execute("ANALYZE tool_rollups")


def downgrade() -> None:
    op.drop_table("tool_rollups")
    op.drop_table("turn_rollups")
