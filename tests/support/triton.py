"""Helpers for tests against a real tritonserver: the managed-mode flags, its address, its statistics, load."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.servers import ServerProcess


def managed_flags(script: str, model_dir: Path, binary: Path, *extra: str) -> tuple[str, ...]:
    """``runtime serve`` flags: ``script`` on the Triton backend, with a Triton it starts for ``model_dir``."""
    return (
        "--entry",
        script,
        "--backend",
        "triton",
        "--triton",
        "managed",
        "--model-dir",
        str(model_dir),
        "--tritonserver",
        str(binary),
        *extra,
    )


def its_triton(server: ServerProcess) -> str:
    """host:port of the Triton a managed runtime started (its start-up summary names it)."""
    match = re.search(r"Triton Inference Server at (\S+) \(started by this runtime", server.log())
    assert match, server.log()
    return match.group(1)


def triton_model_stats(triton_url: str, model: str) -> dict[str, Any]:
    """Triton's own statistics for ``model`` (``GET /v2/models/<m>/stats``)."""
    stats: dict[str, Any] = httpx.get(f"http://{triton_url}/v2/models/{model}/stats").json()["model_stats"][0]
    return stats


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((n, 4)).astype(np.float32)


async def score_many(url: str, bodies: list[dict[str, object]], concurrency: int = 32) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        return await asyncio.gather(*(client.post(url + "/score", json=b) for b in bodies))
