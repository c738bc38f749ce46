"""What ``init`` hooks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pluggy

    from runtime.settings import Settings


@dataclass
class InitContext:
    settings: Settings
    plugin_manager: pluggy.PluginManager  # a runtime.manager.PluginManager
    # Plugins may share objects through here (a backend puts its model table in it).
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def model_dir(self) -> str | None:
        return self.settings.model_dir
