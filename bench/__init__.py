"""Benchmarks (`make bench`): end-to-end Append throughput and latency vs the raw ceiling."""
