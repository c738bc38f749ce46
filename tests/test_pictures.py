"""docs/pictures.py: it draws both pictures, they fit, they show the code as it is, and the docs embed them."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image, ImageChops

from runtime import hookspecs
from runtime.http.health import WorkerHealth
from runtime.http.middleware import stack
from runtime.settings import Settings
from tests.support.plots import assert_matplotlib_png
from tests.support.servers import REPO

SCRIPT = REPO / "docs" / "pictures.py"
PICTURES = {"architecture.png": "architecture.md", "engine.png": "engine.md"}


@pytest.fixture(scope="module")
def pictures() -> ModuleType:
    """docs/pictures.py as a module (docs/ is no package)."""
    spec = importlib.util.spec_from_file_location("docs_pictures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def drawings(pictures: ModuleType) -> dict[str, Any]:
    """Both pictures drawn once in this process (each drawing costs a second), for the tests that only read."""
    return {"architecture.png": pictures.architecture(), "engine.png": pictures.engine()}


@pytest.fixture(scope="module")
def script_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``python docs/pictures.py --output DIR``, as the docs say to run it, once: its result and DIR."""
    folder = tmp_path_factory.mktemp("pictures")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(folder)], capture_output=True, text=True, timeout=120
    )
    return result, folder


def test_the_script_draws_both_pictures(script_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """As the docs say to run it; the committed pictures have the size the script draws."""
    result, folder = script_run
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(PICTURES)
    for name in PICTURES:
        drawn = folder / name
        assert_matplotlib_png(drawn)
        assert 20_000 < drawn.stat().st_size < 200_000, f"{name}: {drawn.stat().st_size} bytes"
        with Image.open(drawn) as new, Image.open(REPO / "docs" / name) as committed:
            stale = f"docs/{name} is not what the script draws: run python docs/pictures.py"
            assert new.size == committed.size, stale
            assert len(new.getcolors(256) or []) > 8  # a picture in colour, not a bare outline
            tools = [(image.info.get("Software"), image.info.get("Comment")) for image in (new, committed)]
            if tools[0] == tools[1]:  # other versions of matplotlib or Pillow may shade text differently
                assert ImageChops.difference(new.convert("RGB"), committed.convert("RGB")).getbbox() is None, stale


def test_the_same_bytes_every_time(
    tmp_path: Path, drawings: dict[str, Any], script_run: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    """Drawn here and drawn by the script in a process of its own: the same bytes."""
    drawings["engine.png"].save(tmp_path / "engine.png")
    assert (tmp_path / "engine.png").read_bytes() == (script_run[1] / "engine.png").read_bytes()


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_the_docs_embed_the_pictures(name: str) -> None:
    text = (REPO / "docs" / PICTURES[name]).read_text()
    # An image with alt text for readers who cannot see it, not only a link.
    assert re.search(rf"!\[[^\]]{{40,}}\]\({re.escape(name)}\)", text), f"docs/{PICTURES[name]} does not show {name}"
    assert "python docs/pictures.py" in text


def test_every_picture_fits(drawings: dict[str, Any]) -> None:
    for drawing in drawings.values():
        assert drawing.problems() == []


def test_the_layout_check_finds_what_does_not_fit(pictures: ModuleType) -> None:
    d = pictures.Drawing(400, 300, words=pictures.sections("== long\na title far too long for its box\n== unused\nx"))
    box = d.box(pictures.Rect(10, 10, 120, 60), "long")
    d.text(200, 100, "one text")
    d.text(210, 104, "another text")
    d.arrow((180, 200), (380, 200))
    d.text(250, 192, "under the arrow")
    d.panel(pictures.Rect(100, 40, 100, 100), "crossing")
    problems = d.problems()
    assert "'a title far too long for its box' leaves its box" in problems
    assert "'one text' overlaps 'another text'" in problems
    assert "an arrow from (180, 200) crosses 'under the arrow'" in problems
    assert "box 'a title far too long for its box' crosses box 'crossing'" in problems
    assert "'crossing' runs into box 'a title far too long for its box'" in problems
    assert "section 'unused' is never drawn" in problems
    assert box == pictures.Rect(10, 10, 120, 60)


def test_sections_of_text(pictures: ModuleType) -> None:
    text = "\n== a\ntitle\n   indented  \n! hook infer\n\n== b\nonly a title\n"
    assert pictures.sections(text) == {
        "a": ["title", "   indented", pictures.Hook("hook infer"), ""],
        "b": ["only a title"],
    }


def test_the_middleware_in_the_picture_is_stack(pictures: ModuleType) -> None:
    """Names and order as http/middleware stack() builds them; [bracketed] exactly when optional."""
    everything = Settings(cors_origins=("*",), auth_keys=("key",), otel_traces_exporter=("console",))
    built = [m.cls.__module__.rsplit(".", 1)[1] for m in stack(everything, WorkerHealth())]
    drawn = [name.strip("[]") for name, _ in pictures.MIDDLEWARE]
    assert drawn == built
    always = [m.cls.__module__.rsplit(".", 1)[1] for m in stack(Settings(), WorkerHealth())]
    assert [name for name, _ in pictures.MIDDLEWARE if not name.startswith("[")] == always


def test_every_hook_is_in_the_request_path(drawings: dict[str, Any]) -> None:
    words = " ".join(placed.label for placed in drawings["architecture.png"].texts)
    missing = [name for name in hookspecs.names() if not re.search(rf"\b{name}\b", words)]
    assert not missing, f"hooks not in architecture.png: {missing}"
