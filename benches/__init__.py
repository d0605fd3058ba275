"""Benchmarks: run each with ``python -m benches.<name>``; none runs as part of the tests."""
