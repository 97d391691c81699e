"""Alembic environment: migrations run on a connection handed over by :mod:`bes.db.migrate`."""

from alembic import context

from bes.db.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
