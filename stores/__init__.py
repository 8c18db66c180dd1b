"""Durable stores for replaygen: ``replaygen.stores.sqlite`` and ``replaygen.stores.postgres``."""
