"""Observability: Prometheus metrics of the gRPC server, the HTTP listener and the ingest path
(registry.py), the gRPC interceptor and the HTTP middleware that feed them, and the files that
let every process of a `--workers N` group be scraped through any of them (procs.py)."""
