"""The bundled demo: a small SSE origin, a config pointing at it, and a page."""
