"""The ``console`` blocks of a Markdown file as one bash script, run exactly as written.

Convention (README.md and the examples' READMEs): in a ```console block, ``$ `` starts a command
(a trailing ``\\`` continues it), the lines up to the next command are its expected output, where
``...`` stands for anything. A command ending in ``&`` is a server: the script sends its output to a
log file (``server-<index>.log``, shown when a test fails), and goes on at once, as a shell does: the
next command must wait for the server itself (:func:`waits_for_server`). The commands run in one shell,
in order, so ``kill $!`` stops the last server started.

A ```python block whose first line is a comment naming a file (``# score.py``) is a file the reader
saves before running the commands (docs/tutorial.md): :func:`named_files` returns them.

The one change to what a user types: the port. Tests run in parallel, so the script runs with
``SERVER_PORT`` set to a free port (``runtime serve`` and the examples' clients read it) and
``127.0.0.1:5001`` in a command becomes that port.

A server command that several READMEs write the same way starts once (:class:`Shared`): the first
README that reaches it runs it as written, and its script stays alive after its last command to keep
that server running; the later READMEs send their commands to it. From that command to the next
``kill $!``, a script uses the shared server's own port, and that ``kill $!`` stops a stand-in that
exits as the server does. The test stops the server at the end of the module.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DOC_PORT = "5001"
BEGIN, END, DONE = "@@BEGIN", "@@END", "@@DONE"
END_LINE = re.compile(rf"{END} (\d+) (\d+)$")


@dataclass
class Command:
    text: str
    source: str  # file:line, for failure messages
    expected: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return self.text.rstrip().endswith("&") and not self.text.rstrip().endswith("&&")


def console_commands(path: Path) -> list[Command]:
    commands: list[Command] = []
    in_block = False
    continuing = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```console" and not in_block
            continuing = False
            continue
        if not in_block:
            continue
        if continuing:
            commands[-1].text += "\n" + line
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            commands.append(Command(line[2:], f"{path.name}:{number}"))
            continuing = line.endswith("\\")
        elif commands:
            commands[-1].expected.append(line)
    return commands


NAMED_FILE = re.compile(r"# ([\w.-]+\.py)$")


def named_files(path: Path) -> dict[str, str]:
    """The ```python blocks of ``path`` that start with ``# NAME.py``: NAME.py and its text, as the reader saves it."""
    files: dict[str, str] = {}
    block: list[str] | None = None
    for line in path.read_text().splitlines():
        if block is None and line.strip() == "```python":
            block = []
        elif block is not None and line.startswith("```"):
            if block and (name := NAMED_FILE.match(block[0])):
                files[name.group(1)] = "\n".join(block) + "\n"
            block = None
        elif block is not None:
            block.append(line)
    return files


@dataclass
class Shared:
    """A server command that several READMEs write the same way: its port, and the pid once a script started it."""

    port: int
    pidfile: Path

    @property
    def running(self) -> bool:
        pid = self.pidfile.read_text().strip() if self.pidfile.is_file() else ""
        return pid.isdigit() and Path(f"/proc/{pid}").exists()

    def stop(self) -> None:
        if self.running:
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)


@dataclass
class SharedServers:
    """The server commands several READMEs write alike, and the scripts that keep them running (:func:`run_script`)."""

    servers: dict[str, Shared]
    scripts: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        for process in self.scripts:
            process.wait(60)


def shared_servers(readmes: Iterable[Path], folder: Path, free_port: Callable[[], int]) -> SharedServers:
    """The server commands that more than one of ``readmes`` writes, each with a free port."""
    counts: dict[str, int] = {}
    for readme in readmes:
        for text in {c.text for c in console_commands(readme) if c.background}:
            counts[text] = counts.get(text, 0) + 1
    texts = [text for text, count in counts.items() if count > 1]
    return SharedServers({text: Shared(free_port(), folder / f"shared-{i}.pid") for i, text in enumerate(texts)})


def script(commands: list[Command], port: int, shared: Mapping[str, Shared] | None = None) -> str:
    """A bash script that runs ``commands`` and marks where each one's output begins and ends.

    A command of ``shared`` is started unless it runs already; when this script starts it, the script
    prints DONE after the last command and then waits for that server (:func:`run_script`)."""
    lines = [
        "set -u",
        # Stop every server this script started, whatever happens.
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
        # What `kill $!` stops in place of a shared server: it exits 0 on SIGTERM, as the server does.
        "stand_in() { trap 'exit 0' TERM; while :; do sleep 0.2; done; }",
    ]
    current, kept = port, []
    for index, command in enumerate(commands):
        common = (shared or {}).get(command.text) if command.background else None
        if common is not None:
            current = common.port
            lines.append(f"export SERVER_PORT={current}")
        text = command.text.replace(f"127.0.0.1:{DOC_PORT}", f"127.0.0.1:{current}")
        lines.append(f"echo {BEGIN} {index}")
        if command.background:
            log = f"server-{index}.log"
            if common is not None and common.running:  # an earlier README's: does it answer?
                lines.append(f'curl -s -o /dev/null --max-time 5 "http://127.0.0.1:{current}/"; status=$?')
            else:
                lines.append(f"{text.rstrip()[:-1].rstrip()} > {log} 2>&1 &")
                lines.append("status=0")
            if common is not None:
                if not common.running:
                    lines.append(f"echo $! > {common.pidfile}")
                    kept.append(common.pidfile)
                lines.append("stand_in &")
            lines.append(f"echo {END} {index} $status")
        else:
            lines.append(text)
            lines.append(f"echo {END} {index} $?")
        if current != port and command.text.startswith("kill $!"):
            current = port
            lines.append(f"export SERVER_PORT={port}")
    if kept:
        lines += [f"echo {DONE}", *(f"wait $(cat {pidfile})" for pidfile in kept)]
    return "\n".join(lines) + "\n"


def run_script(text: str, cwd: Path, env: Mapping[str, str], kept: list[subprocess.Popen[bytes]]) -> str:
    """Run a :func:`script` in bash; its output once it has finished or printed DONE (then it stays in ``kept``)."""
    output = cwd / "script-output.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while process.poll() is None and f"\n{DONE}\n" not in output.read_text(errors="replace"):
        if time.monotonic() > deadline:
            process.kill()
            break
        time.sleep(0.1)
    if process.poll() is None:
        kept.append(process)
    return output.read_text(errors="replace")


@dataclass
class Outcome:
    status: int | None  # None: the script stopped before the command finished
    output: list[str]


# What a command that follows a server started with ``&`` runs first: it waits while the server starts, as a
# reader who pastes the commands of a block needs. curl retries a refused connection (--retry-connrefused, which
# takes effect only with --retry N) and, with -f, a 503 from a server that is not ready yet.
def _waits(text: str) -> bool:
    args = shlex.split(text)
    if args[:1] != ["curl"] or "--retry-connrefused" not in args or "--retry" not in args:
        return False
    count = args[args.index("--retry") + 1 : args.index("--retry") + 2]
    fails = any(a in ("-f", "--fail") or (a.startswith("-") and not a.startswith("--") and "f" in a) for a in args)
    return fails and bool(count) and count[0].isdigit() and int(count[0]) > 0 and f"127.0.0.1:{DOC_PORT}/" in text


def waits_for_server(commands: list[Command]) -> list[str]:
    """The servers (commands ending in ``&``) whose next command does not wait for them to answer."""
    return [
        command.text
        for command, after in zip(commands, [*commands[1:], None], strict=True)
        if command.background and (after is None or not _waits(after.text))
    ]


def server_logs(folder: Path) -> str:
    """The output of the servers a script started, for a failure's message."""
    return "".join(
        f"\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}" for log in sorted(folder.glob("server-*.log"))
    )


def outcomes(stdout: str, count: int) -> list[Outcome]:
    results = [Outcome(None, []) for _ in range(count)]
    current: Outcome | None = None
    for line in stdout.splitlines():
        if line.startswith(f"{BEGIN} "):
            current = results[int(line.split()[1])]
        elif (end := END_LINE.search(line)) and current is not None:
            # Output without a final newline runs into the marker.
            if end.start():
                current.output.append(line[: end.start()])
            current.status = int(end.group(2))
            current = None
        elif current is not None:
            current.output.append(line)
    return results


# A measurement in an expected line: a number with three decimals or more, standing alone (not a version, an
# address, HTTP/1.1). Its last digits differ from CPU to CPU (a model's scores printed with six decimals came out
# 3.607642 on an AMD EPYC and 3.607643 on the machine the README was written on).
_DECIMAL = re.compile(r"(?<![\w./-])-?\d+\.\d{3,}(?![\w.])")
_CAPTURE = r"(?<![\w.])(-?\d+\.\d+)(?![\w.])"  # what stands in its place in the output
# How far a printed decimal may stray, in units of its last printed digit.
_LAST_DIGITS = 2


def _pattern(expected: str) -> tuple[re.Pattern[str], list[str]]:
    """A regex for one expected line (``...`` matches anything), and the decimals it captures in order."""
    decimals: list[str] = []

    def literal(part: str) -> str:
        pieces, position = [], 0
        for match in _DECIMAL.finditer(part):
            pieces += [re.escape(part[position : match.start()]), _CAPTURE]
            decimals.append(match.group())
            position = match.end()
        return "".join([*pieces, re.escape(part[position:])])

    return re.compile(".*".join(literal(part) for part in expected.rstrip().split("..."))), decimals


def _matches(expected: tuple[re.Pattern[str], list[str]], line: str) -> bool:
    pattern, decimals = expected
    match = pattern.fullmatch(line.rstrip())
    if match is None:
        return False
    for want, got in zip(decimals, match.groups(), strict=True):
        unit = 10.0 ** -len(want.partition(".")[2])
        if abs(float(got) - float(want)) > _LAST_DIGITS * unit * (1 + 1e-9):
            return False
    return True


def missing_output(expected: list[str], output: list[str]) -> list[str]:
    """The expected lines not found in ``output``, in order.

    ``...`` matches anything; a decimal matches one within a few units of its last printed digit.
    """
    missing = []
    position = 0
    for line in expected:
        if line.strip() in ("", "..."):
            continue
        pattern = _pattern(line)
        found = next((i for i in range(position, len(output)) if _matches(pattern, output[i])), None)
        if found is None:
            missing.append(line)
        else:
            position = found + 1
    return missing
