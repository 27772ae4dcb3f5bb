"""turnstream: gRPC ingestion of LLM-agent telemetry; an ack means the record is committed."""

__version__ = "0.1.0"
