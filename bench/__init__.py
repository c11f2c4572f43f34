"""Benchmarks for mailgate (issue #8), outside the test suite. See bench/README.md.

Run from the repository root, e.g. `.venv/bin/python -m bench.ingest`.
"""
