"""The package list in pyproject.toml: every package folder ships, and the plugins install as runtime_plugins."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import tomllib

from tests.conftest import StartRuntime
from tests.support.servers import REPO


def test_every_runtime_package_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "runtime").rglob("__init__.py")
        if "templates" not in init.parts
    }
    listed = set(setuptools["packages"])
    assert on_disk - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert "runtime_plugins" in listed
    assert setuptools["package-dir"] == {"runtime_plugins": "plugins"}


@pytest.mark.slow
def test_a_users_own_plugins_package_is_not_shadowed(start_runtime: StartRuntime, tmp_path: Path) -> None:
    """score.py imports its sibling package ``plugins``, which is also on PYTHONPATH: both must work."""
    app = tmp_path / "app"
    (app / "plugins").mkdir(parents=True)
    (app / "plugins" / "__init__.py").write_text("")
    (app / "plugins" / "mine.py").write_text("ANSWER = 'from the user plugins package'\n")
    (app / "score.py").write_text(
        "from plugins.mine import ANSWER\n\ndef init():\n    pass\n\ndef run(data):\n    return {'answer': ANSWER}\n"
    )
    server = start_runtime("--entry", str(app / "score.py"), env={"PYTHONPATH": str(app)})
    response = httpx.post(server.url + "/score", content=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json() == {"answer": "from the user plugins package"}
