"""Modules for tests/test_lint.py. A line that must be reported ends with ``# expect: RG###``;
no other line may be."""
