"""Doors: transport adapters that translate a wire format to turnstream.v1 and call the core."""
