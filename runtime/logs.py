"""Logging set-up: one format for the master, the workers and user code."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname).1s [%(process)d] %(name)s - %(message)s"


def configure(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    logging.getLogger("runtime").setLevel(level.upper())
