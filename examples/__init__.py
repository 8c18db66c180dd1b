"""Runnable replaygen examples; each module exposes ``workflows`` for ``replaygen worker``."""
