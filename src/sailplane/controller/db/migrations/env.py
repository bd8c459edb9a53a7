"""Alembic environment: runs on the connection :func:`sailplane.controller.db.engine.migrate`
passes in, so migrations need no alembic.ini or separate URL."""

from __future__ import annotations

from alembic import context

from sailplane.controller.db.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
