"""The controller's database: SQLite (WAL) by default, PostgreSQL by URL; Alembic migrations."""
