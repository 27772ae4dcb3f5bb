"""Benchmarks (`make bench`): end-to-end Append throughput and latency vs the database's raw ceiling."""
