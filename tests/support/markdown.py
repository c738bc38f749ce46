"""The ``console`` blocks of a Markdown file as one bash script, run exactly as written.

Convention (README.md and the examples' READMEs): in a ```console block, ``$ `` starts a command
(a trailing ``\\`` continues it), the lines up to the next command are its expected output, where
``...`` stands for anything. A command ending in ``&`` is a server: the script sends its output to a
log file, and waits until it answers on ``$SERVER_PORT`` before the next command. The commands run
in one shell, in order, so ``kill $!`` stops the last server started.

The one change to what a user types: the port. Tests run in parallel, so the script runs with
``SERVER_PORT`` set to a free port (``runtime serve`` and the examples' clients read it) and
``127.0.0.1:5001`` in a command becomes that port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DOC_PORT = "5001"
BEGIN, END = "@@BEGIN", "@@END"
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


def script(commands: list[Command], port: int) -> str:
    """A bash script that runs ``commands`` and marks where each one's output begins and ends."""
    lines = [
        "set -u",
        # Stop every server this script started, whatever happens.
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
        "ready() {",
        "  for _ in $(seq 1 900); do",
        '    kill -0 "$1" 2>/dev/null || { echo "server exited:"; cat "$2"; return 1; }',
        f'    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:{port}/" && return 0',
        "    sleep 0.2",
        "  done",
        '  echo "server not ready after 180 s:"; cat "$2"; return 1',
        "}",
    ]
    for index, command in enumerate(commands):
        text = command.text.replace(f"127.0.0.1:{DOC_PORT}", f"127.0.0.1:{port}")
        lines.append(f"echo {BEGIN} {index}")
        if command.background:
            log = f"server-{index}.log"
            lines.append(f"{text.rstrip()[:-1].rstrip()} > {log} 2>&1 &")
            lines.append(f"ready $! {log}; echo {END} {index} $?")
        else:
            lines.append(text)
            lines.append(f"echo {END} {index} $?")
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    status: int | None  # None: the script stopped before the command finished
    output: list[str]


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


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.rstrip().split("...")))


def missing_output(expected: list[str], output: list[str]) -> list[str]:
    """The expected lines (``...`` matches anything) not found in ``output``, in order."""
    missing = []
    position = 0
    for line in expected:
        if line.strip() in ("", "..."):
            continue
        pattern = _pattern(line)
        found = next((i for i in range(position, len(output)) if pattern.fullmatch(output[i].rstrip())), None)
        if found is None:
            missing.append(line)
        else:
            position = found + 1
    return missing
