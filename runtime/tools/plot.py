"""Latency against throughput as a PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def latency_throughput_png(
    series: dict[str, Sequence[tuple[float, float, int]]], path: Path, title: str = "p50 latency vs throughput"
) -> None:
    """``series``: name -> [(throughput req/s, p50 latency ms, concurrency)], one line per name."""
    width, height, left, right, top, bottom = 960, 600, 80, 230, 40, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = [p for values in series.values() for p in values]
    max_x = max((p[0] for p in points), default=1.0) * 1.05 or 1.0
    max_y = max((p[1] for p in points), default=1.0) * 1.05 or 1.0

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + x / max_x * (width - left - right), height - bottom - y / max_y * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(6):
        gx, gy = max_x * i / 5, max_y * i / 5
        x, _ = xy(gx, 0)
        _, y = xy(0, gy)
        draw.line([x, height - bottom, x, height - bottom + 5], fill="black")
        draw.text((x - 15, height - bottom + 8), f"{gx:.0f}", fill="black")
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((5, y - 6), f"{gy:.1f}", fill="black")
    draw.text((left + (width - left - right) // 2 - 60, height - 25), "throughput (req/s)", fill="black")
    draw.text((5, top - 30), "p50 latency (ms)", fill="black")
    draw.text((left + 150, 10), title, fill="black")
    for n, (name, values) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        coords = [xy(x, y) for x, y, _ in values]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for (cx, cy), (_, _, concurrency) in zip(coords, values, strict=True):
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
            draw.text((cx + 4, cy - 12), str(concurrency), fill=color)
        draw.rectangle([width - right + 10, top + 20 * n + 4, width - right + 22, top + 20 * n + 16], fill=color)
        draw.text((width - right + 28, top + 20 * n + 3), name[:32], fill="black")
    image.save(path)
