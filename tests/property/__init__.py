"""Property-based tests (Hypothesis): arbitrary hostile records through the core and the writer."""
