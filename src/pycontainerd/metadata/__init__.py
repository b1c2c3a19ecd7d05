"""Namespaced metadata on SQLite."""
