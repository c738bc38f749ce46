"""Instance groups as Triton reads them: ``count``, ``kind`` and ``gpus``, resolved to devices.

``KIND_AUTO`` (also what an unset kind means) is a GPU when the model's platform can use one here,
else the CPU. ``KIND_GPU`` without a usable GPU is a start-up error naming the model and what is
missing. Intra-op threads are split over a model's CPU instances.
"""

from __future__ import annotations

import os

from runtime.errors import StartupError
from runtime.serving.model_config import mc
from runtime.serving.platforms import Device, Platform
from runtime.serving.repository import ModelConfig


class InstanceGroupError(StartupError):
    """An instance group cannot be placed on this machine."""


def resolve(config: ModelConfig, platform: Platform) -> list[Device]:
    """One device per instance, in config order."""
    groups = list(config.proto.instance_group) or [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_AUTO)]
    devices: list[Device] = []
    for number, group in enumerate(groups):
        count = max(group.count, 1)
        kind = group.kind
        where = f"model {config.name!r}: instance_group {number}"
        if kind == mc.ModelInstanceGroup.KIND_AUTO:
            kind = mc.ModelInstanceGroup.KIND_GPU if platform.gpu_count() > 0 else mc.ModelInstanceGroup.KIND_CPU
        if kind == mc.ModelInstanceGroup.KIND_CPU:
            devices.extend(Device("cpu") for _ in range(count))
            continue
        if kind != mc.ModelInstanceGroup.KIND_GPU:
            name = mc.ModelInstanceGroup.Kind.Name(kind)
            raise InstanceGroupError(f"{where}: kind {name} is not supported; use KIND_CPU, KIND_GPU or KIND_AUTO")
        available = platform.gpu_count()
        if available == 0:
            raise InstanceGroupError(
                f"{where} asks for KIND_GPU, but no GPU is usable: {platform.missing_gpu_reason()}. "
                f"Use kind: KIND_AUTO to fall back to the CPU."
            )
        gpus = [int(g) for g in group.gpus] or list(range(available))
        missing = [g for g in gpus if not 0 <= g < available]
        if missing:
            raise InstanceGroupError(f"{where} asks for gpus {missing}, but this machine has GPUs 0..{available - 1}")
        devices.extend(Device("gpu", g) for g in gpus for _ in range(count))
    return devices


def cpu_threads(devices: list[Device], cores: int | None = None) -> int:
    """Intra-op threads for each CPU instance of one model: the cores split over its CPU instances."""
    cpu = sum(1 for d in devices if d.kind == "cpu")
    return max(1, (cores or os.cpu_count() or 1) // max(cpu, 1))


def describe(devices: list[Device]) -> str:
    """``2 x CPU, 1 x GPU 0``: where the instances run, for logs and ``runtime check``."""
    counts: dict[Device, int] = {}
    for device in devices:
        counts[device] = counts.get(device, 0) + 1
    return ", ".join(f"{n} x {d}" for d, n in counts.items())
