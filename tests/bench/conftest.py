"""The benchmark suite is a program (``python -m tests.bench``), not tests: pytest collects nothing here."""

collect_ignore_glob = ["*.py"]
