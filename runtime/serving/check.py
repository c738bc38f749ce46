"""``runtime check``: load a repository the way the server will, and print what it will serve."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from runtime.errors import StartupError
from runtime.serving import instances as instance_groups
from runtime.serving.engine.remote import applies
from runtime.serving.platforms import Device, load_instance, platform_for
from runtime.serving.repository import (
    ModelConfig,
    inside_a_repository,
    load_repository,
    looks_like_repository,
    repository_root,
)
from runtime.serving.tensors import expected_shape


def describe(config: ModelConfig, devices: list[Device] | None = None, processes: str = "auto") -> str:
    lines = [f"model {config.name}  versions {', '.join(config.versions)}  max_batch_size {config.max_batch_size}"]
    batching = config.dynamic_batching
    if batching is not None:
        lines.append(
            f"  dynamic batching: max_queue_delay {batching.max_queue_delay_us} us, "
            f"preferred sizes {list(batching.preferred_batch_sizes) or 'none'}, "
            f"preserve_ordering {batching.preserve_ordering}"
        )
    where = f" ({instance_groups.describe(devices)})" if devices else ""
    apart = sum(applies(processes, d) for d in devices or [])
    own = f", {apart} in instance processes (runtime-inst)" if apart else ""
    lines.append(f"  instances: {config.instance_count}{where}{own}")
    for kind, specs in (("input ", config.inputs), ("output", config.outputs)):
        for spec in specs:
            extra = f"  reshape {list(spec.reshape)}" if spec.reshape is not None else ""
            if spec.labels is not None:
                extra += f"  labels {len(spec.labels)}"
            if spec.optional:
                extra += "  optional"
            lines.append(f"  {kind} {spec.name}: {spec.datatype} {expected_shape(config, spec)}{extra}")
    lines.append("  completed config.pbtxt:")
    lines.extend(f"    {line}" for line in config.config_text().rstrip().splitlines())
    return "\n".join(lines)


def check_repository(model_dir: str, out: TextIO, processes: str = "auto") -> int:
    """``processes``: RUNTIME_INSTANCE_PROCESSES, to say which instances run in processes of their own."""
    repository = looks_like_repository(model_dir)
    misplaced = inside_a_repository(model_dir) if not repository else None
    if misplaced:
        print(f"error: {misplaced}", file=out)
        return 1
    if Path(model_dir).is_dir() and not repository:
        # What `runtime serve` does with such a folder: hands it to score.py, serves no models itself.
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(model_dir).iterdir())
        print(
            f"{model_dir}: an Azure ML model folder, not a model repository (it holds "
            f"{', '.join(held[:10]) or 'nothing'}{', ...' if len(held) > 10 else ''}).\n"
            f"runtime serve --entry score.py --model-dir {model_dir} serves it: score.py finds it in "
            "AZUREML_MODEL_DIR; the runtime's backends serve no models from it. Without --entry there is nothing "
            "to serve.",
            file=out,
        )
        return 0
    try:
        configs = load_repository(model_dir)
        placements = [instance_groups.resolve(config, platform_for(config)) for config in configs]
        for config in configs:
            for version in config.versions:
                _try_session(config, version)
    except StartupError as ex:
        print(f"error: {ex}", file=out)
        return 1
    print(f"repository {repository_root(model_dir)}: {len(configs)} model(s), all loadable", file=out)
    for config, devices in zip(configs, placements, strict=True):
        print(describe(config, devices, processes), file=out)
    return 0


def _try_session(config: ModelConfig, version: str) -> None:
    load_instance(config, version, Device("cpu"), 1).close()
