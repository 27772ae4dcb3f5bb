"""Foreign wire shapes <-> turnstream.v1 messages, one module per format (no I/O)."""
