"""The package list in pyproject.toml: every package folder ships, and the plugins install as runtime_plugins."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import httpx
import tomllib

from tests.support.cli import settings_of
from tests.support.inprocess import served
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


def test_a_users_own_plugins_package_is_not_shadowed(tmp_path: Path) -> None:
    """score.py imports its sibling package ``plugins``, which is also on PYTHONPATH: both must work.

    The app ``runtime serve`` would run, in this process with the folder first on sys.path (as PYTHONPATH
    puts it) and no ``plugins`` imported yet: were the built-in plugins imported as ``plugins``, they would
    resolve to the user's package and the start-up would fail, as it did in a real server."""
    app = tmp_path / "app"
    (app / "plugins").mkdir(parents=True)
    (app / "plugins" / "__init__.py").write_text("")
    (app / "plugins" / "mine.py").write_text("ANSWER = 'from the user plugins package'\n")
    (app / "score.py").write_text(
        "from plugins.mine import ANSWER\n\ndef init():\n    pass\n\ndef run(data):\n    return {'answer': ANSWER}\n"
    )
    settings = settings_of("serve", "--entry", str(app / "score.py"), env={"PYTHONPATH": str(app)})
    imported = {
        name: module for name, module in sys.modules.items() if name != "plugins" and not name.startswith("plugins.")
    }
    with (
        mock.patch.object(sys, "path", [str(app), *sys.path]),
        mock.patch.dict(sys.modules, imported, clear=True),
        served(settings) as url,
    ):
        response = httpx.post(url + "/score", content=b"{}", headers={"Content-Type": "application/json"})
        assert sys.modules["plugins"].__file__ == str(app / "plugins" / "__init__.py")
    assert response.status_code == 200
    assert response.json() == {"answer": "from the user plugins package"}
