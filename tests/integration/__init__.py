"""Integration tests: a real gRPC server on free ports over real SQLite and PostgreSQL."""
