"""Benchmarks: each script prints one JSON line (see README)."""
