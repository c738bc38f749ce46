"""Benchmarks: the same workloads, on the same machine, in one run, through every way of serving them.

    python -m benchmarks.run            # the full run (about 40 minutes on 2 cores); writes docs/benchmarks.md
    python -m benchmarks.run --quick    # short steps, each system on one workload, to prove it works (CI)

Systems: the in-process onnxruntime limit, azmlinfsrv (its own venv) with a score.py that calls
onnxruntime per request, Triton directly (tritonserver with dynamic batching), and the runtime on
the embedded backend (v2, hook-style and run()-style scripts) and on the Triton backend.
Workloads: a tiny model (pure overhead), DenseNet-121 as v2 binary tensors, the DenseNet
example end to end (JPEG in, top 5 out) and BiDAF (string tensors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import io
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.serving.tritonserver import ManagedTriton, find_tritonserver, install
from runtime.settings import Settings
from runtime.tools import bench
from tests.support import models
from tests.support.servers import REPO, ServerProcess, free_port, runtime_argv
from tests.support.venvs import azmlinfsrv_bench_python

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
EXAMPLES = REPO / "examples"
LAUNCHER = REPO / "tests" / "support" / "azmlinfsrv_launcher.py"
CONTEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the "
    "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)
QUERY = "Who designed the Eiffel Tower?"


@dataclass
class Row:
    workload: str
    system: str
    workers: int | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def at(self, concurrency: int) -> dict[str, Any] | None:
        return next((s for s in self.steps if s["concurrency"] == concurrency), None)

    def throughput(self, concurrency: int) -> float:
        step = self.at(concurrency)
        return float(step["throughput"]) if step else 0.0


# -- models and payloads ---------------------------------------------------------------------------


def load_example(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def build_models(root: Path, small: bool) -> None:
    repo = root / "triton"
    models.make_linear(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "config.pbtxt").write_text("max_batch_size: 64\ndynamic_batching { }\n")
    load_example(EXAMPLES / "densenet_onnx" / "make_model.py").main(
        ["--out", str(root)] + (["--small"] if small else [])
    )
    load_example(EXAMPLES / "bidaf_onnx" / "make_model.py").main(["--out", str(root)])


def jpeg_bytes() -> bytes:
    x, y = np.meshgrid(np.linspace(0, 1, 500), np.linspace(0, 1, 375))
    pixels = (np.stack([x, y, (x + y) / 2], axis=-1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Workload:
    name: str
    title: str
    score_body: bytes
    content_type: str
    azml_body: bytes
    azml_content_type: str
    v2_model: str | None
    v2_inputs: dict[str, np.ndarray] | None
    azml_script: str
    hook_script: Path | None
    run_script: Path | None
    limit: Callable[[Path], float]


def workloads(model_dir: Path) -> list[Workload]:
    imagenet = load_example(EXAMPLES / "densenet_onnx" / "imagenet.py")
    tokens = load_example(EXAMPLES / "bidaf_onnx" / "tokens.py")
    image = jpeg_bytes()
    tensor = imagenet.preprocess(imagenet.load_image(image))
    _, bidaf_inputs = tokens.parse({"context": CONTEXT, "query": QUERY})
    qa = json.dumps({"context": CONTEXT, "query": QUERY}).encode()
    tiny = json.dumps({"x": [[0.1, 0.2, 0.3, 0.4]]}).encode()
    return [
        Workload(
            "tiny",
            "Tiny model (pure overhead)",
            tiny,
            "application/json",
            tiny,
            "application/json",
            "tiny",
            {"x": np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)},
            "aml_tiny.py",
            SCRIPTS / "runtime_tiny_hook.py",
            SCRIPTS / "runtime_tiny_aml.py",
            limit_batched("tiny", "x"),
        ),
        Workload(
            "densenet_v2",
            "DenseNet-121, v2 binary tensors",
            b"",
            "",
            json.dumps({"data_0": tensor.tolist()}).encode(),
            "application/json",
            "densenet_onnx",
            {"data_0": tensor},
            "aml_densenet_tensor.py",
            None,
            None,
            limit_batched("densenet_onnx", "data_0"),
        ),
        Workload(
            "densenet_jpeg",
            "DenseNet example end to end (JPEG in, top 5 out)",
            image,
            "image/jpeg",
            image,
            "image/jpeg",
            None,
            None,
            "aml_densenet_jpeg.py",
            EXAMPLES / "densenet_onnx" / "score_densenet.py",
            EXAMPLES / "densenet_onnx" / "score_densenet_aml.py",
            limit_jpeg(image, imagenet),
        ),
        Workload(
            "bidaf",
            "BiDAF (string tensors)",
            qa,
            "application/json",
            qa,
            "application/json",
            "bidaf_onnx",
            bidaf_inputs,
            "aml_bidaf.py",
            EXAMPLES / "bidaf_onnx" / "score_bidaf.py",
            EXAMPLES / "bidaf_onnx" / "score_bidaf_aml.py",
            limit_bidaf(bidaf_inputs),
        ),
    ]


# -- the in-process limit ----------------------------------------------------------------------------


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rate(fn: Callable[[], int], seconds: float) -> float:
    fn()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start)


LIMIT_SECONDS = 3.0
WORKLOAD_ORDER = ["tiny", "densenet_v2", "densenet_jpeg", "bidaf"]
# --quick proves the pipeline, not the numbers: every workload's limit and every system once, each
# system on the cheapest workload it serves (a server start costs more than its sweep).
QUICK_PLAN: dict[str, set[str]] = {
    "tiny": {"triton-direct", "azmlinfsrv", "runtime run()", "runtime+triton hook"},
    "densenet_v2": {"runtime v2"},
    "densenet_jpeg": {"runtime hook"},
    "bidaf": set(),
}
# --quick also measures "runtime v2" on the DenseNet hook server, which serves the repository's models
# on v2 too: one server for the densenet_v2 and densenet_jpeg rows (the full run measures v2 on a
# server with no score.py).
QUICK_V2_ENTRY = EXAMPLES / "densenet_onnx" / "score_densenet.py"
# The models --quick measures on Triton (QUICK_PLAN: tiny's triton-direct and runtime+triton hook rows). Triton
# and the runtime's Triton-backend servers get a repository with these alone: Triton runs each model in a
# python-backend process of its own.
QUICK_TRITON_MODELS = ("tiny",)


def limit_batched(model: str, name: str) -> Callable[[Path], float]:
    def measure(model_dir: Path) -> float:
        return _best_batched_rate(model_dir, model, name)

    return measure


@functools.cache
def _best_batched_rate(model_dir: Path, model: str, name: str) -> float:
    """Once per run and model: the DenseNet JPEG workload's limit takes the v2 workload's model rate."""
    session = _session(model_dir / "triton" / model / "1" / "model.onnx")
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    best = 0.0
    for batch in (1, 8, 16, 32, 64):
        x = np.random.default_rng(0).random([batch, *shape[1:]]).astype(np.float32)
        best = max(best, _rate(lambda x=x, b=batch: (session.run(None, {name: x}), b)[1], LIMIT_SECONDS))
    return best


def limit_jpeg(image: bytes, imagenet: Any) -> Callable[[Path], float]:
    def measure(model_dir: Path) -> float:
        preprocess_s = 1 / _rate(lambda: (imagenet.preprocess(imagenet.load_image(image)), 1)[1], LIMIT_SECONDS)
        model_s = 1 / limit_batched("densenet_onnx", "data_0")(model_dir)
        return 1 / (preprocess_s + model_s)

    return measure


def limit_bidaf(inputs: dict[str, np.ndarray]) -> Callable[[Path], float]:
    def measure(model_dir: Path) -> float:
        session = _session(model_dir / "triton" / "bidaf_onnx" / "1" / "model.onnx")
        feeds = {k: v.astype(str) for k, v in inputs.items()}
        return _rate(lambda: (session.run(None, feeds), 1)[1], LIMIT_SECONDS)

    return measure


# -- servers -----------------------------------------------------------------------------------------


def first_request(target: bench.Target) -> None:
    """One request, answered, before a row's sweep: a fresh server's first answer (lazy imports, the model's
    first run) is slow, and under load it could outlast --quick's first step."""
    request = urllib.request.Request(target.url, data=target.body(), headers=target.headers)
    with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=300) as response:
        response.read()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.model_dir = work / "models"
        self.triton_dir = self.model_dir  # what Triton serves (triton_repository)
        self.rows: list[Row] = []
        self.memory: dict[str, float] = {}
        self.kept: dict[tuple[str, ...], ServerProcess] = {}  # --quick: runtime servers by flags, until the end

    def wanted(self, workload: Workload, system: str) -> bool:
        """Whether this run measures ``system`` on ``workload`` (the full run: every pair it can serve)."""
        return not self.args.quick or system in QUICK_PLAN[workload.name]

    def log(self, message: str) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)

    def sweep(self, target: bench.Target) -> list[dict[str, Any]]:
        steps = asyncio.run(
            bench.sweep(
                target, self.args.concurrency, self.args.duration, self.args.warmup, show_progress=not self.args.quiet
            )
        )
        return [asdict(s) for s in steps]

    def start(self, argv: list[str], port: int, name: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(argv, port, self.work / f"{name}-{port}.log", env=env, cwd=self.work)
        return server.start(timeout=300)

    def runtime(self, name: str, workers: int, *args: str) -> ServerProcess:
        port = free_port()
        # On the Triton backend, the models Triton serves.
        model_dir = self.triton_dir if "triton" in args else self.model_dir
        argv = runtime_argv(
            "serve", "--port", str(port), "--workers", str(workers), "--model-dir", str(model_dir), *args
        )
        return self.start(argv, port, name, env={"RUNTIME_ACCESS_LOG": "false", "AZUREML_LOG_LEVEL": "WARNING"})

    @contextlib.contextmanager
    def serving(self, name: str, workers: int, *args: str) -> Iterator[ServerProcess]:
        """``runtime serve`` for a row: stopped after it, or with --quick kept for the rows with the same flags."""
        if not self.args.quick:
            server = self.runtime(name, workers, *args)
            try:
                yield server
            finally:
                server.stop()
            return
        key = (str(workers), *args)
        if key not in self.kept:
            self.kept[key] = self.runtime(name, workers, *args)
        yield self.kept[key]

    def azml(self, python: Path, script: str, workers: int) -> ServerProcess:
        port = free_port()
        argv = [
            str(python),
            str(LAUNCHER),
            "--entry_script",
            str(SCRIPTS / script),
            "--port",
            str(port),
            "--model_dir",
            str(self.model_dir),
            "--worker_count",
            str(workers),
        ]
        return self.start(argv, port, "azmlinfsrv", env={"AZUREML_LOG_LEVEL": "WARNING"})

    def memory_without_arena(self, target: bench.Target) -> dict[str, float]:
        """The same warm worker with onnxruntime's CPU arena off (RUNTIME_ORT_ARENA=0)."""
        port = free_port()
        argv = runtime_argv("serve", "--port", str(port), "--model-dir", str(self.model_dir))
        server = self.start(
            argv, port, "runtime-no-arena", env={"RUNTIME_ORT_ARENA": "0", "RUNTIME_ACCESS_LOG": "false"}
        )
        try:
            url = target.url.replace(target.url.split("/v2/")[0], server.url)
            asyncio.run(bench.run_step(bench.Target(url, target.body, target.headers), 32, 2.0, 0.0))
            found = memory(server, self.model_dir)
            return {"no_arena_worker_rss_mib": found["worker_rss_mib"], "no_arena_ratio": found["ratio"]}
        finally:
            server.stop()

    def measure(self, workload: Workload, system: str, workers: int | None, target: bench.Target) -> None:
        self.log(f"{workload.name}: {system} (workers {workers or '-'})")
        first_request(target)
        self.rows.append(Row(workload.name, system, workers, self.sweep(target)))

    def triton_repository(self) -> Path:
        """Every model, or with --quick a repository of QUICK_TRITON_MODELS alone."""
        if not self.args.quick:
            return self.model_dir
        root = self.work / "triton-models"
        for name in QUICK_TRITON_MODELS:
            shutil.copytree(self.model_dir / "triton" / name, root / "triton" / name)
        return root

    def run(self) -> None:
        args = self.args
        build_models(self.model_dir, small=args.quick)
        self.triton_dir = self.triton_repository()
        azml_python = azmlinfsrv_bench_python()
        settings = Settings.from_env()
        try:
            binary = find_tritonserver(settings.tritonserver_path, Path(settings.triton_home))
        except Exception:
            binary = install(Path(settings.triton_home))
        triton = ManagedTriton(str(self.triton_dir), binary, supervise=False)
        triton.start()
        try:
            for workload in workloads(self.model_dir):
                if args.workloads and workload.name not in args.workloads:
                    continue
                self.run_workload(workload, azml_python, triton)
        finally:
            for server in self.kept.values():
                server.stop()
            triton.stop()

    def run_workload(self, w: Workload, azml_python: Path, triton: ManagedTriton) -> None:
        self.log(f"{w.name}: in-process limit")
        self.rows.append(
            Row(
                w.name,
                "limit",
                None,
                [{"concurrency": 0, "throughput": w.limit(self.model_dir)}],
                note="onnxruntime in-process, best batch size",
            )
        )
        score_headers = {"Content-Type": w.content_type}
        v2 = bench.v2_body(w.v2_inputs) if w.v2_inputs is not None else None
        if v2 is not None and self.wanted(w, "triton-direct"):
            body, headers = v2
            target = bench.Target(f"http://{triton.url}/v2/models/{w.v2_model}/infer", lambda b=body: b, headers)
            self.measure(w, "triton-direct", None, target)
        for workers in self.args.workers:
            if self.wanted(w, "azmlinfsrv"):
                server = self.azml(azml_python, w.azml_script, workers)
                try:
                    azml_target = bench.Target(
                        server.url + "/score", lambda b=w.azml_body: b, {"Content-Type": w.azml_content_type}
                    )
                    self.measure(w, "azmlinfsrv", workers, azml_target)
                finally:
                    server.stop()
            if v2 is not None and self.wanted(w, "runtime v2"):
                body, headers = v2
                v2_flags = ("--entry", str(QUICK_V2_ENTRY)) if self.args.quick else ()
                with self.serving("runtime-v2", workers, *v2_flags) as server:
                    target = bench.Target(f"{server.url}/v2/models/{w.v2_model}/infer", lambda b=body: b, headers)
                    track_memory = w.name == "densenet_v2" and workers == 1
                    if track_memory:
                        # Loaded and warm: one burst of concurrent requests makes the largest batch once.
                        asyncio.run(bench.run_step(target, 32, 0.2 if self.args.quick else 2.0, 0.0))
                        self.memory.update(memory(server, self.model_dir))
                    self.measure(w, "runtime v2", workers, target)
                    if track_memory:
                        self.memory["worker_rss_after_sweep_mib"] = memory(server, self.model_dir)["worker_rss_mib"]
                        if not self.args.quick:
                            self.memory.update(self.memory_without_arena(target))
            if v2 is not None and self.wanted(w, "runtime+triton v2"):
                # The Triton backend over the same v2 API, for every workload with tensors.
                body, headers = v2
                flags = ("--backend", "triton", "--triton-url", triton.url)
                with self.serving("runtime-triton-v2", workers, *flags) as server:
                    self.measure(
                        w,
                        "runtime+triton v2",
                        workers,
                        bench.Target(f"{server.url}/v2/models/{w.v2_model}/infer", lambda b=body: b, headers),
                    )
            for system, script, extra in (
                ("runtime hook", w.hook_script, ()),
                ("runtime run()", w.run_script, ()),
                ("runtime+triton hook", w.hook_script, ("--backend", "triton", "--triton-url", triton.url)),
            ):
                if script is None or not self.wanted(w, system):
                    continue
                with self.serving(system.replace(" ", "-"), workers, "--entry", str(script), *extra) as server:
                    self.measure(
                        w, system, workers, bench.Target(server.url + "/score", lambda b=w.score_body: b, score_headers)
                    )


RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")  # the RSS, and its anonymous, file and shmem parts


def status_kb(pid: int) -> dict[str, float]:
    """The process's RSS fields from /proc/PID/status, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in RSS_FIELDS:
            fields[key] = float(value.split()[0])
    return fields


def rss_kb(pid: int) -> float:
    return status_kb(pid).get("VmRSS", 0.0)


def bare_onnxruntime_rss_kb(model_dir: Path) -> float:
    """RSS of a bare onnxruntime process holding DenseNet, after batches 1 and max_batch_size."""
    return bare_onnxruntime_status_kb(model_dir)["VmRSS"]


def bare_onnxruntime_status_kb(model_dir: Path) -> dict[str, float]:
    """The same process's RSS fields (:func:`status_kb`)."""
    import subprocess

    text = (model_dir / "triton/densenet_onnx/config.pbtxt").read_text()
    max_batch = max(1, int(text.split("max_batch_size:")[1].split()[0]))
    code = (
        "import json, numpy as np, onnxruntime as ort, sys\n"
        f"s = ort.InferenceSession({str(model_dir / 'triton/densenet_onnx/1/model.onnx')!r},"
        " providers=['CPUExecutionProvider'])\n"
        f"x = np.random.rand({max_batch}, 3, 224, 224).astype(np.float32)\n"
        f"for b in sorted({{1, {max_batch}}}): s.run(None, {{'data_0': x[:b]}})\n"
        f"print(json.dumps({{l.split(':')[0]: float(l.split()[1]) for l in open('/proc/self/status')"
        f" if l.split(':')[0] in {RSS_FIELDS!r}}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    fields: dict[str, float] = json.loads(out)
    return fields


def memory(server: ServerProcess, model_dir: Path) -> dict[str, float]:
    """RSS of a runtime worker holding DenseNet against a bare onnxruntime process holding the same model."""
    from tests.support.processes import descendants

    assert server.proc is not None
    worker_rss = max(rss_kb(pid) for pid in descendants(server.proc.pid))
    bare = bare_onnxruntime_rss_kb(model_dir)
    return {"worker_rss_mib": worker_rss / 1024, "bare_rss_mib": bare / 1024, "ratio": worker_rss / bare}


# -- report ------------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def report(
    rows: list[Row],
    memory_: dict[str, float],
    args: argparse.Namespace,
    command: str,
    date: str | None = None,
    machine: dict[str, Any] | None = None,
) -> str:
    """The Markdown report; ``date`` and ``machine`` are the run's (now and here unless given)."""
    date = date or f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py`; do not edit by hand. Re-run with:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"* date: {date}",
        f"* machine: {json.dumps(machine or bench.machine())}; client and servers share these cores",
        f"* steps: {args.duration:g} s measured after {args.warmup:g} s warm-up, closed loop, concurrency "
        f"{', '.join(map(str, args.concurrency))}",
        "* `limit`: onnxruntime in-process at the best batch size "
        "(DenseNet JPEG: 1/(preprocess + model time per image))",
        "* `azmlinfsrv`: azureml-inference-server-http 1.5.1 with a score.py that calls onnxruntime per request "
        "(what Azure ML users run today); DenseNet v2 row: the tensor as JSON",
        "* `triton-direct`: the client talks to tritonserver (python backend running onnxruntime, dynamic batching)",
        "* ratios are at concurrency 32 against the limit and against azmlinfsrv with the same worker count",
        "* the model engine against the per-worker design (`--engine worker`), in one run: "
        "[benchmarks-engine.md](benchmarks-engine.md) (`python -m benchmarks.engine`)",
        "* the Triton backend with the engine as Triton's client (`--triton-client engine`) against the workers "
        "calling Triton (the default), in one run: [benchmarks-triton-engine.md](benchmarks-triton-engine.md) "
        "(`python -m benchmarks.triton_engine`)",
        "* this code against commit 505bb0e (before the package restructure), served side by side: "
        "[benchmarks-baseline.md](benchmarks-baseline.md) (`python -m benchmarks.baseline`); the test suite's "
        "wall time and servers against 505bb0e's: [benchmarks-suite.md](benchmarks-suite.md) "
        "(`python -m benchmarks.suite`)",
        "",
    ]
    for included in ("targets.md", "usage.md"):  # hand-written sections
        if (HERE / included).is_file():
            lines += [(HERE / included).read_text().rstrip(), ""]
    for workload in dict.fromkeys(r.workload for r in rows):
        group = [r for r in rows if r.workload == workload]
        limit = next((r.steps[0]["throughput"] for r in group if r.system == "limit"), 0.0)
        lines += [f"## {workload}", "", f"In-process limit: **{fmt(limit)} /s**", ""]
        header = "| system | workers | " + " | ".join(f"c={c} req/s" for c in args.concurrency)
        header += " | p50 ms c=1 | p50 ms c=32 | errors | vs limit | vs azmlinfsrv |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for row in group:
            if row.system == "limit":
                continue
            azml = next((r for r in group if r.system == "azmlinfsrv" and r.workers == (row.workers or 1)), None)
            c32 = row.throughput(32) if row.at(32) else row.throughput(max(args.concurrency))
            base = (azml.throughput(32) if azml.at(32) else azml.throughput(max(args.concurrency))) if azml else 0
            errors = sum(sum(s["errors"].values()) for s in row.steps)
            p50_1 = row.at(1)["latency_ms"]["p50"] if row.at(1) else 0
            p50_32 = row.at(32)["latency_ms"]["p50"] if row.at(32) else 0
            cells = " | ".join(fmt(row.throughput(c)) for c in args.concurrency)
            lines.append(
                f"| {row.system} | {row.workers or '-'} | {cells} | {p50_1:.2f} | {p50_32:.1f} | {errors} | "
                f"{c32 / limit if limit else 0:.2f} | {c32 / base if base else 0:.2f} |"
            )
        lines.append("")
    if memory_:
        # --quick measures the arena's default only.
        no_arena = (
            " With onnxruntime's CPU arena off (`RUNTIME_ORT_ARENA=0`) the warm worker "
            f"holds {memory_['no_arena_worker_rss_mib']:.0f} MiB, ratio **{memory_['no_arena_ratio']:.2f}**."
            if "no_arena_worker_rss_mib" in memory_
            else ""
        )
        lines += [
            "## Memory",
            "",
            f"Runtime worker holding DenseNet, warm (after a burst of 32 concurrent requests): "
            f"{memory_['worker_rss_mib']:.0f} MiB RSS; a bare "
            f"onnxruntime process holding the same model after batches 1 and max_batch_size: "
            f"{memory_['bare_rss_mib']:.0f} MiB; "
            f"ratio **{memory_['ratio']:.2f}**. After the whole sweep (up to 256 requests of 600 KB in flight) "
            f"the worker's RSS was {memory_.get('worker_rss_after_sweep_mib', 0):.0f} MiB: request buffers that "
            f"the allocator keeps.{no_arena}",
            "",
        ]
    lines += targets(rows, memory_, args)
    analysis = HERE / "analysis.md"
    if analysis.is_file():
        lines += [analysis.read_text().rstrip(), ""]
    lines += [
        "![Throughput per system and workload against the in-process limit](benchmarks.png)",
        "",
        "![p50 and p99 latency against throughput, DenseNet v2, 1 worker](benchmarks-latency.png)",
        "",
    ]
    return "\n".join(lines)


def targets(rows: list[Row], memory_: dict[str, float], args: argparse.Namespace) -> list[str]:
    """The targets of the benchmark issue, checked on this run's numbers (best worker count)."""
    c_hi = 32 if 32 in args.concurrency else max(args.concurrency)

    def find(workload: str, system: str) -> list[Row]:
        return [r for r in rows if r.workload == workload and r.system == system]

    def limit(workload: str) -> float:
        found = find(workload, "limit")
        return float(found[0].steps[0]["throughput"]) if found else 0.0

    def ratio(workload: str, system: str, base: str | None, concurrency: int = c_hi) -> tuple[float, str]:
        best, where = 0.0, ""
        for row in find(workload, system):
            reference = (
                limit(workload)
                if base is None
                else next(
                    (r.throughput(concurrency) for r in find(workload, base) if r.workers in (row.workers, None)), 0.0
                )
            )
            value = row.throughput(concurrency) / reference if reference else 0.0
            if value > best:
                best, where = value, f"{row.workers or '-'} worker(s)"
        return best, where

    checks: list[tuple[str, float, float, str]] = []
    for system, base, goal, label in (
        ("runtime v2", None, 0.95, "DenseNet v2 binary: runtime embedded / in-process limit"),
        ("runtime v2", "azmlinfsrv", 3.5, "DenseNet v2 binary: runtime embedded / azmlinfsrv"),
    ):
        value, where = ratio("densenet_v2", system, base)
        checks.append((f"{label} (c={c_hi}, {where})", value, goal, ">="))
    for system, base, goal, label in (
        ("runtime hook", None, 0.9, "DenseNet JPEG: runtime hook / (1 / (preprocess + model))"),
        ("runtime hook", "azmlinfsrv", 1.2, "DenseNet JPEG: runtime hook / azmlinfsrv"),
    ):
        value, where = ratio("densenet_jpeg", system, base)
        checks.append((f"{label} (c={c_hi}, {where})", value, goal, ">="))
    for system, base, goal, label in (
        ("runtime hook", "azmlinfsrv", 2.0, "Tiny: runtime /score hook / azmlinfsrv"),
        ("runtime run()", "azmlinfsrv", 2.0, "Tiny: runtime /score run() / azmlinfsrv"),
        ("runtime v2", "triton-direct", 0.6, "Tiny: runtime v2 / Triton direct"),
    ):
        value, where = ratio("tiny", system, base)
        checks.append((f"{label} (c={c_hi}, {where})", value, goal, ">="))
    for workload in ("tiny", "densenet_v2", "bidaf"):
        direct = next((r.at(1) for r in find(workload, "triton-direct")), None)
        via = [r.at(1) for r in find(workload, "runtime+triton v2") if r.at(1)]
        if direct and via:
            extra = min(s["latency_ms"]["p50"] for s in via if s) - direct["latency_ms"]["p50"]
            checks.append((f"{workload}: Triton backend p50 added over Triton direct at c=1 (ms)", extra, 1.0, "<="))
    c_top = max(args.concurrency)
    if c_top > c_hi:
        for row in rows:
            if row.system.startswith("runtime") and row.at(c_top) and row.at(c_hi):
                errors = sum(row.at(c_top)["errors"].values())  # type: ignore[index]
                kept = row.throughput(c_top) / row.throughput(c_hi) if row.throughput(c_hi) else 0.0
                checks.append((f"{row.workload} {row.system} ({row.workers}w): errors at c={c_top}", errors, 0, "<="))
                checks.append((f"{row.workload} {row.system} ({row.workers}w): c={c_top} / c={c_hi}", kept, 0.9, ">="))
    if memory_:
        checks.append(("Memory: worker RSS / bare onnxruntime RSS (DenseNet)", memory_["ratio"], 1.3, "<="))
        if "no_arena_ratio" in memory_:
            checks.append(("Memory, RUNTIME_ORT_ARENA=0: worker RSS / bare RSS", memory_["no_arena_ratio"], 1.3, "<="))
    lines = ["## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for label, value, goal, op in checks:
        met = value >= goal if op == ">=" else value <= goal
        lines.append(f"| {label} | {value:.2f} | {op} {goal:g} | {'yes' if met else '**no**'} |")
    return [*lines, ""]


def previous_run(saved: dict[str, Any], output: Path) -> tuple[str | None, dict[str, Any]]:
    """When and where the saved results were measured: from the JSON, else from the report it wrote."""
    date, machine = saved.get("date"), saved.get("machine")
    if output.is_file() and (date is None or machine is None):
        for line in output.read_text().splitlines():
            if line.startswith("* date: ") and date is None:
                date = line.removeprefix("* date: ").strip()
            if line.startswith("* machine: ") and machine is None:
                machine = json.loads(line.removeprefix("* machine: ").split("}; ", 1)[0] + "}")
    return date, machine or bench.machine()


def machine_line(machine: dict[str, Any]) -> str:
    return f"{machine.get('cpus')} CPUs, {machine.get('platform', '?')}; client and servers share them"


def plot(rows: list[Row], path: Path, machine: dict[str, Any]) -> list[Path]:
    """The headline bar chart (``path``) and DenseNet's latency curves (``path`` with ``-latency``)."""
    from runtime.tools.plot import batch_sizes_png, latency_throughput_png, points, throughput_bars_png

    results: dict[str, dict[str, float]] = {}
    limits: dict[str, float] = {}
    for r in rows:
        best = max(s["throughput"] for s in r.steps)
        if r.system == "limit":
            limits[r.workload] = best
        else:
            results.setdefault(r.workload, {})[f"{r.system} ({r.workers}w)" if r.workers else r.system] = best
    subtitle = machine_line(machine)
    throughput_bars_png(results, limits, path, "Throughput per system (best over the concurrency sweep)", subtitle)
    latency = path.with_name(path.stem + "-latency.png")
    series = {
        f"{r.system} ({r.workers}w)" if r.workers else r.system: points(r.steps)
        for r in rows
        if r.workload == "densenet_v2" and r.system != "limit" and (r.workers or 1) == 1
    }
    latency_throughput_png(series, latency, "DenseNet-121 v2 (1 worker): latency against throughput", subtitle)
    pictures = [path, latency]
    # Runs since runtime bench reads batch sizes from /metrics have them; older results do not.
    batches = {
        f"c={s['concurrency']}": s["batch_sizes"]
        for r in rows
        if r.workload == "densenet_v2" and r.system == "runtime v2" and r.workers == 1
        for s in r.steps
        if s.get("batch_sizes")
    }
    if batches:
        pictures.append(path.with_name(path.stem + "-batches.png"))
        batch_sizes_png(batches, pictures[-1], "DenseNet-121 v2, runtime v2 (1 worker): batch sizes", subtitle)
    return pictures


def step_arguments(parser: argparse.ArgumentParser) -> None:
    """--quick, --duration and --warmup, as every benchmark script takes them."""
    parser.add_argument("--quick", action="store_true", help="short steps, small DenseNet (CI: proves it works)")
    parser.add_argument("--duration", type=float, help="seconds measured per step (full 10; quick: under 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per step (full 3; quick: under 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser)
    parser.add_argument("--concurrency", help="comma-separated (full 1,8,32,256; quick 1,8)")
    parser.add_argument("--workers", help="comma-separated (full 1,2; quick 1)")
    parser.add_argument("--workloads", help="comma-separated subset of tiny,densenet_v2,densenet_jpeg,bidaf")
    parser.add_argument("--output", type=Path, help="the report (full: docs/benchmarks.md; quick: a temp file)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other workloads' rows from the previous report's JSON"
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from its JSON; run nothing")
    args = parser.parse_args()
    # --quick proves that every path runs: short steps, after each row's first request (first_request).
    args.duration = args.duration or (0.5 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 3.0)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,8" if args.quick else "1,8,32,256")).split(",")]
    args.workers = [int(w) for w in (args.workers or ("1" if args.quick else "1,2")).split(",")]
    args.workloads = set(args.workloads.split(",")) if args.workloads else set()
    global LIMIT_SECONDS
    LIMIT_SECONDS = 0.05 if args.quick else 3.0
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:])
    if args.report_only:
        output = args.output or REPO / "docs" / "benchmarks.md"
        saved = json.loads(output.with_suffix(".json").read_text())
        rows = [Row(**r) for r in saved["rows"]]
        date, machine = previous_run(saved, output)
        command = saved.get("command", "python -m benchmarks.run")
        output.write_text(report(rows, saved.get("memory", {}), args, command, date, machine))
        pictures = plot(rows, output.with_suffix(".png"), machine)
        print(f"rewrote {output} and {', '.join(map(str, pictures))}")
        return
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        run = Bench(args, Path(tmp))
        output = args.output or (
            Path(tmp).parent / "runtime-bench-quick.md" if args.quick else REPO / "docs" / "benchmarks.md"
        )
        previous = output.with_suffix(".json")
        kept: list[Row] = []
        if args.merge and previous.is_file():
            saved = json.loads(previous.read_text())
            kept = [Row(**r) for r in saved["rows"] if r["workload"] not in args.workloads]
            run.memory = saved.get("memory", {})
        run.run()
        run.rows = sorted(kept + run.rows, key=lambda r: WORKLOAD_ORDER.index(r.workload))
        output.write_text(report(run.rows, run.memory, args, command.strip()))
        plot(run.rows, output.with_suffix(".png"), bench.machine())
        saved_json = {"rows": [asdict(r) for r in run.rows], "memory": run.memory, "command": command}
        saved_json["machine"] = bench.machine()
        saved_json["date"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
        (output.with_suffix(".json")).write_text(json.dumps(saved_json, indent=1))
    errors = sum(sum(s.get("errors", {}).values()) for r in run.rows for s in r.steps)
    print(f"wrote {output} and {output.with_suffix('.png')}; {errors} errors")


if __name__ == "__main__":
    main()
