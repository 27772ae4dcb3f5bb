"""Storage: SQLAlchemy Core tables, the group-commit writer, migrations and read queries."""
