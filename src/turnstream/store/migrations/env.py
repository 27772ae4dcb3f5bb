"""Alembic environment: runs migrations on the engine handed in by turnstream.store.engine."""

from alembic import context

from turnstream.store.schema import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
