"""azmlinfsrv's JSON settings file: ``AZUREML_CONFIG_FILE`` / ``--config_file``.

Found as azmlinfsrv 1.5.1 finds it: ``AZUREML_CONFIG_FILE`` when that names a non-empty file,
else a non-empty ``config.json`` in ``AML_APP_ROOT`` (default: the working directory) or in
the entry script's folder. Its keys are the environment variable names; environment
variables win over the file. azmlinfsrv reads only the settings below from the file (the
others, ``AML_APP_ROOT`` and ``AML_CORS_ORIGINS`` included, come from the environment only);
other keys are logged as a warning and ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

logger = logging.getLogger("runtime.azureml.config")

# The keys azmlinfsrv 1.5.1 takes from the file (its settings fields with an alias).
FILE_KEYS = (
    "AZUREML_SOURCE_DIRECTORY",
    "AZUREML_ENTRY_SCRIPT",
    "SERVICE_NAME",
    "WORKSPACE_NAME",
    "SERVICE_PATH_PREFIX",
    "SERVICE_VERSION",
    "SCORING_TIMEOUT_MS",
    "AZUREML_LOG_LEVEL",
    "APP_INSIGHTS_LOG_RESPONSE_ENABLED",
    "AZUREML_MODEL_DIR",
    "HOSTNAME",
    "AZUREML_DEBUG_PORT",
)


def _usable(path: str | None) -> bool:
    return bool(path) and os.path.isfile(str(path)) and os.path.getsize(str(path)) > 0


def find_config_file(env: Mapping[str, str]) -> str | None:
    explicit = env.get("AZUREML_CONFIG_FILE")
    if _usable(explicit):
        return explicit
    entry = env.get("AZUREML_ENTRY_SCRIPT")
    roots = [env.get("AML_APP_ROOT") or os.getcwd(), os.path.dirname(os.path.abspath(entry)) if entry else None]
    for root in roots:
        if root and _usable(candidate := os.path.join(root, "config.json")):
            return candidate
    return None


def with_config_file(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` completed with the settings file's values (the environment wins); ValueError if it is bad."""
    merged = dict(env)
    path = find_config_file(env)
    if path is None:
        return merged
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError) as ex:
        raise ValueError(f"the settings file {path} cannot be read as JSON: {ex}") from None
    if not isinstance(content, dict):
        raise ValueError(f"the settings file {path} must hold a JSON object of settings, got {type(content).__name__}")
    extra = sorted(k for k in content if k not in FILE_KEYS)
    if extra:
        logger.warning("Settings file %s: keys not read from a settings file, ignored: %s", path, ", ".join(extra))
    for key in FILE_KEYS:
        value = content.get(key)
        if value is not None and key not in env:
            merged[key] = str(value).lower() if isinstance(value, bool) else str(value)
    merged["AZUREML_CONFIG_FILE"] = path
    return merged
