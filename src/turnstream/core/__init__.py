"""Core: the pure steps between the doors and the writer (validate, enrich, price, rows; no I/O)."""
