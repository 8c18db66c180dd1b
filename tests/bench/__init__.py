"""Benchmarks for replaygen, side by side with DBOS Transact: run ``python -m tests.bench --help``."""
