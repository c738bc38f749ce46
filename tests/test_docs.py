"""The READMEs' commands, extracted from the Markdown and run exactly as written, so the docs cannot drift.

Each README's ``console`` blocks run as one bash script in a copy of the repository (the examples write
their models beside themselves), with this venv first on PATH; see tests/support/markdown.py for the
convention and the one substitution (the port).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.markdown import console_commands, missing_output, outcomes, script
from tests.support.servers import BIN, REPO, free_port

READMES = ["README.md", "examples/densenet_onnx/README.md", "examples/bidaf_onnx/README.md"]


def repository_copy(target: Path) -> Path:
    """The tracked and untracked-but-not-ignored files: what a fresh clone (plus local edits) holds."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for name in listed.stdout.splitlines():
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_console_blocks_are_found() -> None:
    """The extraction itself: the commands and outputs the READMEs show, servers marked as such."""
    commands = console_commands(REPO / "examples/bidaf_onnx/README.md")
    texts = [c.text for c in commands]
    # BiDAF: one server (step 2); step 3's clients, in the next block, run against it; then it is stopped.
    (serve,) = [i for i, c in enumerate(commands) if c.background]
    assert texts[serve].startswith("runtime serve --entry examples/bidaf_onnx/score_bidaf.py ")
    v2 = texts.index("python examples/bidaf_onnx/client.py --v2")
    assert serve < v2 < len(texts) - 1
    assert texts[-1] == "kill $!; wait $!"
    assert commands[v2].expected == ['{"answer": "."}']
    assert [c.text for c in console_commands(REPO / "README.md") if c.background] == [
        "runtime serve --entry examples/densenet_onnx/score_densenet.py --model-dir examples/densenet_onnx/models &"
    ]


def test_missing_output_matches_ellipses_in_order() -> None:
    output = ["built model at /tmp/x/model.onnx", "wrote config", "200"]
    assert missing_output(["built model at .../model.onnx", "...", "200"], output) == []
    assert missing_output(["200", "wrote config"], output) == ["wrote config"]
    assert missing_output(["201"], output) == ["201"]


@pytest.mark.slow
@pytest.mark.external  # the DenseNet README's last step runs on a managed Triton
@pytest.mark.parametrize("readme", READMES)
def test_readme_commands_run_as_written(readme: str, tmp_path: Path, tritonserver_binary: Path) -> None:
    commands = console_commands(REPO / readme)
    assert commands, f"{readme} has no console commands"
    root = repository_copy(tmp_path / "repo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZUREML_", "RUNTIME_", "SERVER_", "TRITON"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "SERVER_PORT": str(port)})
    env["TRITONSERVER_PATH"] = str(tritonserver_binary)
    result = subprocess.run(
        ["bash", "-c", script(commands, port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    for command, outcome in zip(commands, outcomes(result.stdout, len(commands)), strict=True):
        shown = "\n".join(outcome.output[-40:])
        assert outcome.status == 0, f"{command.source}: `{command.text}` exited {outcome.status}:\n{shown}"
        missing = missing_output(command.expected, outcome.output)
        assert not missing, f"{command.source}: `{command.text}` did not print {missing}; it printed:\n{shown}"
