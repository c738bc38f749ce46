"""The READMEs' and the tutorial's commands, extracted from the Markdown and run exactly as written, so the docs
cannot drift.

Each README's ``console`` blocks run as one bash script in a copy of the repository (the examples write
their models beside themselves; the tutorial's score.py is saved there first), with this venv first on
PATH; see tests/support/markdown.py for the convention, the one substitution (the port) and the server
that README.md and the DenseNet README write alike (README.md's script starts it, the DenseNet README's
commands of steps 2 and 3 go to it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.markdown import (
    SharedServers,
    console_commands,
    missing_output,
    named_files,
    outcomes,
    run_script,
    script,
    server_logs,
    shared_servers,
    waits_for_server,
)
from tests.support.servers import BIN, REPO, free_port

READMES = ["README.md", "examples/densenet_onnx/README.md", "examples/bidaf_onnx/README.md", "docs/tutorial.md"]


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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServers]:
    """The server commands several READMEs write alike, started once; stopped at the end of the module."""
    servers = shared_servers([REPO / r for r in READMES], tmp_path_factory.mktemp("shared"), free_port)
    yield servers
    servers.stop()


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


def test_a_shared_server_is_started_once_on_its_own_port(tmp_path: Path) -> None:
    """README.md's script starts the server the DenseNet README writes alike and keeps it; the DenseNet README's
    script sends steps 2 and 3 to it, on its port, and is back on its own port after their `kill $!`."""
    servers = shared_servers([REPO / r for r in READMES], tmp_path, iter([6001]).__next__)
    (serve,) = servers.servers
    assert serve.startswith("runtime serve --entry examples/densenet_onnx/score_densenet.py ")
    first = script(console_commands(REPO / "README.md"), 7001, servers.servers)
    assert f"{serve[:-1].rstrip()} > server-1.log 2>&1 &" in first and "export SERVER_PORT=6001" in first
    assert f"echo $! > {tmp_path / 'shared-0.pid'}\nstand_in &" in first
    assert first.endswith(f"@@DONE\nwait $(cat {tmp_path / 'shared-0.pid'})\n")
    (tmp_path / "shared-0.pid").write_text(str(os.getpid()))  # a live process: the server runs
    later = script(console_commands(REPO / "examples/densenet_onnx/README.md"), 7002, servers.servers)
    assert f"{serve[:-1].rstrip()} > " not in later and "@@DONE" not in later
    after = later.split("export SERVER_PORT=6001\n")[1]
    segment = after.split("export SERVER_PORT=7002")[0]  # steps 2 and 3, up to their `kill $!`
    assert "127.0.0.1:6001/score" in segment and "127.0.0.1:7002" not in segment
    assert 'curl -s -o /dev/null --max-time 5 "http://127.0.0.1:6001/"' in after
    assert after.count("export SERVER_PORT=7002") == 1 and "127.0.0.1:7002/metrics" in after


def test_the_tutorials_score_py_is_saved_and_served_then_stopped() -> None:
    """docs/tutorial.md: its score.py is a file to save; its server runs in the background and is stopped."""
    (name,) = named_files(REPO / "docs/tutorial.md")
    assert name == "score.py" and "def run(data):" in named_files(REPO / "docs/tutorial.md")[name]
    commands = console_commands(REPO / "docs/tutorial.md")
    assert [c.text for c in commands if c.background] == ["runtime serve --entry score.py &"]
    assert commands[-1].text == "kill $!; wait $!"


def test_missing_output_matches_ellipses_in_order() -> None:
    output = ["built model at /tmp/x/model.onnx", "wrote config", "200"]
    assert missing_output(["built model at .../model.onnx", "...", "200"], output) == []
    assert missing_output(["200", "wrote config"], output) == ["wrote config"]
    assert missing_output(["201"], output) == ["201"]


def test_missing_output_lets_decimals_differ_in_their_last_digit() -> None:
    # Scores differ in their sixth decimal from one CPU to another.
    output = ['  "3.607642:46:green lizard",', "took 0.251 s", "HTTP/1.0 200 OK", "runtime/0.3.0", "took 10.400 s"]
    assert missing_output(['  "3.607643:46:green lizard",', "took ... s"], output) == []
    assert missing_output(['  "3.607644:46:green lizard",'], output) == []
    assert missing_output(['  "3.607645:46:green lizard",'], output) == ['  "3.607645:46:green lizard",']
    assert missing_output(['  "3.607642:47:green lizard",'], output) == ['  "3.607642:47:green lizard",']
    assert missing_output(["took 0.250 s"], output) == []
    assert missing_output(["took 0.255 s"], output) == ["took 0.255 s"]
    # Versions, addresses and short numbers are matched exactly, and a number is matched whole.
    for exact in ("HTTP/1.1 200 OK", "runtime/0.1.0", "took 0.25 s", "took ...0.400 s"):
        assert missing_output([exact], output) == [exact]


@pytest.mark.parametrize("readme", [*READMES, "docs/reliability.md"])
def test_every_server_started_in_the_background_is_waited_for(readme: str) -> None:
    """A reader who pastes a whole block runs the next command while the server starts: it must wait for it."""
    commands = console_commands(REPO / readme)
    assert any(c.background for c in commands), readme
    assert waits_for_server(commands) == []


def test_waits_for_server_names_a_server_whose_next_command_does_not_wait(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```console\n$ runtime serve --entry a.py &\n$ python client.py\n$ kill $!\n"
        "$ runtime serve --entry b.py &\n$ curl -sf --retry 60 --retry-connrefused http://127.0.0.1:5001/ready\n"
        "$ kill $!\n$ runtime serve --entry c.py &\n$ curl -s --retry-connrefused http://127.0.0.1:5001/ready\n"
        "$ kill $!\n$ runtime serve --entry d.py &\n$ curl -s --retry 60 --retry-connrefused http://127.0.0.1:5001/\n"
        "```\n"
    )
    # c: --retry-connrefused alone does not retry; d: without -f a 503 is an answer, not a retry
    assert waits_for_server(console_commands(page)) == [f"runtime serve --entry {x}.py &" for x in "acd"]


@pytest.mark.slow
@pytest.mark.external  # the DenseNet README's last step runs on a managed Triton
@pytest.mark.parametrize("readme", READMES)
def test_readme_commands_run_as_written(
    readme: str, tmp_path: Path, tritonserver_binary: Path, shared: SharedServers
) -> None:
    commands = console_commands(REPO / readme)
    assert commands, f"{readme} has no console commands"
    root = repository_copy(tmp_path / "repo")
    for name, text in named_files(REPO / readme).items():  # the files a reader saves (the tutorial's score.py)
        (root / name).write_text(text)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZUREML_", "RUNTIME_", "SERVER_", "TRITON"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "SERVER_PORT": str(port)})
    env["TRITONSERVER_PATH"] = str(tritonserver_binary)
    stdout = run_script(script(commands, port, shared.servers), root, env, shared.scripts)
    for command, outcome in zip(commands, outcomes(stdout, len(commands)), strict=True):
        shown = "\n".join(outcome.output[-40:]) + ("" if outcome.status == 0 else server_logs(root))
        assert outcome.status == 0, f"{command.source}: `{command.text}` exited {outcome.status}:\n{shown}"
        missing = missing_output(command.expected, outcome.output)
        assert not missing, f"{command.source}: `{command.text}` did not print {missing}; it printed:\n{shown}"
