"""Tooling that is not needed to serve: ``runtime bench`` and its plots (install the ``bench`` extra)."""
