"""The HTTP listener pages and their scripts, served from the package (no CDN)."""
