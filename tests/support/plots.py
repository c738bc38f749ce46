"""Checks on the PNG files the plotting code writes."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def assert_matplotlib_png(path: Path) -> None:
    """A real picture drawn by matplotlib: its PNG ``Software`` text chunk says so, and it is not blank."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert str(image.info.get("Software", "")).startswith("Matplotlib"), image.info
        extrema = image.convert("L").getextrema()
        assert image.width >= 600 and image.height >= 400
    assert extrema[0] < extrema[1], "the picture is one flat color"
