"""Benchmarks. `python -m bench.embedded` measures the embedded (single-node SQLite) server."""
