"""The test suite against a baseline commit's, run one after the other on this machine.

    python -m benchmarks.suite                      # baseline 505bb0e against HEAD; writes docs/benchmarks-suite.md
    python -m benchmarks.suite --baseline REF --rounds 2

Each side is a clean clone at its commit with a venv of its own (``pip install -e '.[test]'``,
made once under ``.cache/suite-bench``, where clones of other commits are removed), running its
README's test command, ``python -m pytest``, with the server counter (tests/support/servercount.py)
loaded from outside the clone so that both sides are counted the same way. Reported per side: tests
passed, wall time, CPU seconds of pytest and everything below it, servers started. Reference servers
come from the shared venvs (``$RUNTIME_VENVS``) and ``runtime triton install``, prepared before any
clock starts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".cache" / "suite-bench"
COUNTER_FILES = ("__init__.py", "processes.py", "servercount.py")
PASSED = re.compile(r"(\d+) passed")


@dataclass
class Run:
    side: str
    commit: str
    exit_code: int
    passed: int
    summary: str
    wall_s: float
    cpu_s: float
    servers: int


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def prepare(commit: str) -> Path:
    """A clean clone at ``commit`` with its test dependencies installed in its own venv."""
    clone = WORK / commit[:12]
    python = clone / ".venv" / "bin" / "python"
    if not (clone / ".installed").exists():
        shutil.rmtree(clone, ignore_errors=True)
        clone.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(clone)], check=True)
        git("checkout", "-q", commit, cwd=clone)
        subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", ".[test]"], cwd=clone, check=True)
        # The reference servers' venvs, as .ci/run prepares them: not part of the timed run.
        subprocess.run([str(python), "-m", "tests.support.venvs"], cwd=clone, env=_environment(), check=True)
        (clone / ".installed").write_text(commit + "\n")
    return clone


def prune(keep: set[str]) -> None:
    """Remove the clones of earlier runs' commits: 1.5 GB each, one per HEAD measured."""
    if WORK.is_dir():
        for clone in WORK.iterdir():
            if clone.name not in keep:
                shutil.rmtree(clone, ignore_errors=True)


def _environment() -> dict[str, str]:
    """Both sides share this checkout's reference-server venvs (as CI's are made once, before pytest)."""
    env = {**os.environ, "RUNTIME_VENVS": os.environ.get("RUNTIME_VENVS", str(REPO / ".cache" / "venvs"))}
    env.pop("VIRTUAL_ENV", None)
    return env


def counter_package(into: Path) -> str:
    """This checkout's server counter as a package of its own, importable beside any commit's ``tests``."""
    package = into / "suite_servercount"
    package.mkdir()
    for name in COUNTER_FILES:
        shutil.copy(REPO / "tests" / "support" / name, package / name)
    return "suite_servercount.servercount"


def run_suite(side: str, commit: str, clone: Path, plugin_dir: Path, plugin: str, extra: list[str]) -> Run:
    counts = plugin_dir / f"{side}.json"
    env = {**_environment(), "PYTHONPATH": str(plugin_dir), "SERVER_COUNT_FILE": str(counts)}
    command = [str(clone / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", plugin, *extra]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
        # wait4 reports this pytest's CPU with that of every descendant it waited for (servers included).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    exit_code = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    lines = [line for line in output.splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    found = PASSED.search(summary)
    servers = json.loads(counts.read_text())["total"] if counts.exists() else -1
    if exit_code != 0:
        print(output[-4000:], file=sys.stderr)
    passed = int(found.group(1)) if found else 0
    return Run(side, commit[:12], exit_code, passed, summary, wall, cpu, servers)


def write_report(runs: list[Run], baseline: str, path: Path) -> None:
    by_side: dict[str, list[Run]] = {}
    for run in runs:
        by_side.setdefault(run.side, []).append(run)
    base, head = by_side["baseline"], by_side["HEAD"]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    wall_ratio = mean([r.wall_s for r in head]) / mean([r.wall_s for r in base])
    cpu_ratio = mean([r.cpu_s for r in head]) / mean([r.cpu_s for r in base])
    lines = [
        "# Benchmark: the test suite against the baseline's",
        "",
        "Generated by `benchmarks/suite.py`; do not edit by hand. Re-run with:",
        "",
        "```bash",
        f"python -m benchmarks.suite --baseline {baseline} --rounds {len(base)}",
        "```",
        "",
        f"* date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs, "
        "shared with other jobs; the sides alternate, baseline first",
        "* each side: a clean clone at its commit, its README's test command (`python -m pytest`, with the "
        "options its pyproject sets), the server counter of tests/support/servercount.py loaded from outside",
        "",
        "| side | commit | exit | tests passed | wall s | CPU s | servers started |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.side} | {run.commit} | {run.exit_code} | {run.passed} | {run.wall_s:.0f} | {run.cpu_s:.0f} | "
            f"{run.servers} |"
        )
    lines += [
        "",
        f"**Wall time, HEAD / baseline: {wall_ratio:.2f}** (target ≤ 0.5). CPU time, HEAD / baseline: {cpu_ratio:.2f}. "
        f"Servers started by HEAD: {max(r.servers for r in head)} (target ≤ 40).",
        "",
    ]
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="505bb0e", help="the commit to compare with (505bb0e: before issue 9)")
    parser.add_argument("--head", default="HEAD", help="the commit measured against it (HEAD)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-suite.md")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest on both sides (a quick check)")
    args = parser.parse_args(argv)
    sides = {"baseline": git("rev-parse", args.baseline), "HEAD": git("rev-parse", args.head)}
    prune(keep={commit[:12] for commit in sides.values()})
    clones = {side: prepare(commit) for side, commit in sides.items()}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="suite-bench-") as tmp:
        plugin = counter_package(Path(tmp))
        for round_ in range(args.rounds):
            for side, commit in sides.items():
                run = run_suite(side, commit, clones[side], Path(tmp), plugin, args.pytest_args)
                runs.append(run)
                print(
                    f"round {round_ + 1} {side} {run.commit}: {run.summary} wall {run.wall_s:.0f} s, "
                    f"CPU {run.cpu_s:.0f} s, {run.servers} servers",
                    flush=True,
                )
    write_report(runs, args.baseline, args.out)
    print(args.out.read_text())
    return 0 if all(r.exit_code == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
