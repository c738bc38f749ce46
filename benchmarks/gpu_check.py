"""The GPU check: DenseNet-121 in TorchScript, what the device and the cores can do, and what the runtime serves.

    python benchmarks/gpu_check.py                  # on a CUDA machine with PyTorch: the full measurement
    python benchmarks/gpu_check.py --device cpu --small --batches 1,2 --workers 1 --concurrency 4 \\
        --duration 2 --warmup 1 --target-batch 2    # anywhere, in seconds (CI runs this)

One run measures, with the example's own model (make_model.py --format torchscript) and score.py (3 first, so
that a server that does not start ends the run at once):

1. the device limit: the TorchScript model by batch size, numpy in and numpy out, through the same
   platform instance the server runs; at the largest batch also with TorchScript's optimized execution
   (which the example's config turns off) and, on a GPU, with pinned input buffers;
2. the preprocessing limit: the example's preprocessing (JPEG decode, resize, crop, normalise) in one
   process per core;
3. ``runtime serve`` with the hook-style score_densenet.py and the TorchScript repository on
   ``KIND_GPU`` (``KIND_CPU`` with --device cpu) for each worker count, JPEG in, at --concurrency
   through ``runtime bench``'s client loop in --clients processes: images/s, p50, client CPU and the
   mean batch from /metrics, and the ratio to min(device limit at the largest batch, preprocessing limit);
4. the served-vs-in-process target: the same model.pt as a second model with max_batch_size
   --target-batch, which only the first row's ``runtime serve`` has, measured on it after that row
   (v2, binary tensors, one image per request; the only model that gets requests then), against the
   platform instance in this process at that batch size.

Packages the GPU machine lacks come as wheels (see docs/benchmarks.md): ``--wheels DIR`` installs
them from DIR (no index) into DIR/site and puts that on the servers' PYTHONPATH.
A server that dies stops the run at once, with its log.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DENSENET = REPO / "examples" / "densenet_onnx"
MODEL = "densenet_onnx"
TARGET = "densenet_target"  # the served-vs-in-process target: MODEL's file with max_batch_size --target-batch


class ServerDied(RuntimeError):
    pass


_POOLS: dict[int, Any] = {}


def process_pool(size: int) -> Any:
    """A pool of ``size`` spawned processes, kept for the rest of the run (:func:`close_pools`): each new
    process imports numpy and the client again, a third of a CPU-second."""
    if size not in _POOLS:
        _POOLS[size] = multiprocessing.get_context("spawn").Pool(size)
    return _POOLS[size]


def close_pools() -> None:
    for pool in _POOLS.values():
        pool.terminate()
        pool.join()
    _POOLS.clear()


def example(name: str) -> ModuleType:
    """A module of the DenseNet example (imagenet, make_model, client), imported by path."""
    if str(DENSENET) not in sys.path:
        sys.path.insert(0, str(DENSENET))
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", DENSENET / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- environment -------------------------------------------------------------------------------------


def python_path(work: Path, wheels: Path | None) -> str:
    """PYTHONPATH for servers: the wheels' site, this checkout, and ``runtime_plugins`` when it is not installed."""
    paths = [str(REPO)]
    if importlib.util.find_spec("runtime_plugins") is None:
        shim = work / "shim"
        shim.mkdir(exist_ok=True)
        link = shim / "runtime_plugins"
        if not link.exists():
            link.symlink_to(REPO / "plugins")
        paths.insert(0, str(shim))
    if wheels is not None:
        paths.insert(0, str(wheels / "site"))
    return os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def install_wheels(wheels: Path) -> None:
    site = wheels / "site"
    if not site.is_dir():
        found = sorted(str(p) for p in wheels.glob("*.whl"))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), *found],
            check=True,
        )
    sys.path.insert(0, str(site))


def build_repository(root: Path, small: bool, max_batch_size: int, kind: str) -> Path:
    """The example's TorchScript repository, with its config's instance kind set to ``kind``."""
    example("make_model").main(
        ["--out", str(root), "--format", "torchscript", "--max-batch-size", str(max_batch_size)]
        + (["--small"] if small else [])
    )
    config = root / "triton" / MODEL / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_AUTO", kind))
    return root


def add_target(root: Path, max_batch_size: int) -> None:
    """TARGET beside MODEL in the repository: the same files, its own name and max_batch_size."""
    folder = root / "triton" / TARGET
    shutil.copytree(root / "triton" / MODEL, folder)
    config = folder / "config.pbtxt"
    text = config.read_text().replace(f'name: "{MODEL}"', f'name: "{TARGET}"')
    config.write_text(re.sub(r"max_batch_size: \d+", f"max_batch_size: {max_batch_size}", text))


def take_target(root: Path, into: Path) -> Path:
    """TARGET moved out of ``root`` into a repository of its own at ``into``: the later rows serve MODEL alone."""
    (into / "triton").mkdir(parents=True)
    shutil.move(root / "triton" / TARGET, into / "triton" / TARGET)
    return into


def set_instances(root: Path, count: int) -> None:
    """The instance group's count in the repository's config."""
    config = root / "triton" / MODEL / "config.pbtxt"
    config.write_text(re.sub(r"count: \d+", f"count: {count}", config.read_text()))


# -- limits --------------------------------------------------------------------------------------------


def rate(run: Callable[[], int], seconds: float) -> float:
    """Items per second of ``run`` (which returns how many items it did), after a warm-up.

    TorchScript's profiling executor optimises a graph for each new input shape over its first calls:
    warm up for three calls and a third of the time.
    """
    warm, calls = time.perf_counter() + seconds / 3, 0
    while calls < 3 or time.perf_counter() < warm:
        run()
        calls += 1
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        done += run()
    return done / elapsed


def device_limits(repo: Path, device: str, batches: list[int], seconds: float, variant: str = "") -> dict[int, float]:
    """Images/s of the platform instance by batch size, numpy in and numpy out.

    ``variant``: "pinned" stages inputs in pinned buffers; "optimized" turns the TorchScript profiling
    executor's optimisations back on (the example's config disables them).
    """
    from runtime.serving.platforms import Device, platform_for
    from runtime.serving.repository import load_repository

    os.environ["RUNTIME_TORCH_PINNED"] = "1" if variant == "pinned" else "0"
    config = load_repository(repo)[0]
    if variant == "optimized":
        config.proto.parameters["DISABLE_OPTIMIZED_EXECUTION"].string_value = "false"
    target = Device("gpu", 0) if device == "cuda" else Device("cpu")
    instance = platform_for(config).load(config, config.latest_version, target, os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    limits = {}
    for batch in batches:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)

        def one(x: np.ndarray = x, batch: int = batch) -> int:
            instance.run({"data_0": x})
            return batch

        limits[batch] = rate(one, seconds)
        print(f"  {variant} batch {batch:>3}: {limits[batch]:8.1f} images/s", flush=True)
    instance.close()
    return limits


def _preprocess_loop(image: bytes, seconds: float) -> int:
    imagenet = example("imagenet")
    done, stop = 0, time.perf_counter() + seconds
    while done == 0 or time.perf_counter() < stop:  # one at least: a process that started late still counts
        imagenet.preprocess(imagenet.load_image(image))
        done += 1
    return done


def preprocessing_limit(image: bytes, seconds: float) -> float:
    """Images/s of the example's preprocessing in one process per core."""
    cores = os.cpu_count() or 1
    pool = process_pool(cores)
    warm = min(0.2, seconds)  # imports paid before the clock starts, here and below
    _preprocess_loop(image, warm)
    pool.starmap(_preprocess_loop, [(image, warm)] * cores)
    started = time.perf_counter()
    counts = pool.starmap(_preprocess_loop, [(image, seconds)] * cores)
    return sum(counts) / (time.perf_counter() - started)


# -- serving -------------------------------------------------------------------------------------------


class Server:
    def __init__(self, args: list[str], workers: int, log: Path, env: dict[str, str], model: str = MODEL) -> None:
        self.model = model
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log = log
        argv = [sys.executable, "-m", "runtime", "serve", "--port", str(self.port), "--workers", str(workers)]
        argv += args
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def tail(self) -> str:
        """The end of the server's log: errors quote it, as the run's work folder is removed."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise ServerDied(f"runtime serve exited with {self.proc.returncode}; its log ends:\n{self.tail()}")

    def wait_ready(self, timeout: float) -> None:
        """Until every worker has logged that it is ready (each loads its own copy without the engine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if self.log.read_text(errors="replace").count("Worker ready:") >= self.workers:
                return
            time.sleep(0.2)
        raise ServerDied(f"runtime serve not ready after {timeout:.0f} s; its log ends:\n{self.tail()}")

    def counters(self, model: str | None = None) -> dict[str, float]:
        """The batch and duration counters of ``model`` (default: the server's), and the /score latency, from
        /metrics (all processes)."""
        self.check()
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as response:
            text = response.read().decode()
        label = f'model="{model or self.model}"'
        names = {
            "batch_sum": ("runtime_batch_size_sum", label),
            "batch_count": ("runtime_batch_size_count", label),
            "request_us": ("nv_inference_request_duration_us_total", label),
            "queue_us": ("nv_inference_queue_duration_us_total", label),
            "compute_us": ("nv_inference_compute_infer_duration_us_total", label),
            "http_s": ("runtime_http_request_duration_seconds_sum", 'route="/score"'),
            "http_count": ("runtime_http_request_duration_seconds_count", 'route="/score"'),
        }
        totals = {}
        for key, (metric, label) in names.items():
            pattern = rf"^{metric}\{{([^}}]*)\}} (\S+)$"
            totals[key] = sum(float(v) for labels, v in re.findall(pattern, text, re.MULTILINE) if label in labels)
        return totals

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of the engine, its instance processes, the workers together, and the master."""
        from tests.support.processes import comm, cpu_seconds, descendants

        totals = {"engine": 0.0, "instances": 0.0, "workers": 0.0, "master": cpu_seconds(self.proc.pid)}
        names = {"runtime-engine": "engine", "runtime-inst": "instances"}
        for pid in descendants(self.proc.pid):
            totals[names.get(comm(pid), "workers")] += cpu_seconds(pid)
        return totals

    def engine_pid(self) -> int | None:
        from tests.support.processes import comm, descendants

        return next((pid for pid in descendants(self.proc.pid) if comm(pid) == "runtime-engine"), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _client(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float) -> dict[str, Any]:
    from runtime.tools import bench

    step = asyncio.run(bench.run_step(bench.Target(url, lambda: body, headers), concurrency, duration, 0.0))
    return asdict(step)


def run_clients(
    pool: Any, server: Server, path: str, body: bytes, headers: dict[str, str], shares: list[int], duration: float
) -> list[dict[str, Any]]:
    """One closed-loop client step per process, checking all along that the server is alive."""
    jobs = [(server.url + path, body, headers, share, duration) for share in shares]
    pending = pool.starmap_async(_client, jobs)
    while not pending.ready():
        server.check()
        pending.wait(0.5)
    steps: list[dict[str, Any]] = pending.get()
    return steps


def load(
    server: Server,
    path: str,
    body: bytes,
    headers: dict[str, str],
    args: argparse.Namespace,
    concurrency: int,
    model: str | None = None,
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients split over --clients processes: a warm-up, then the measured window.

    Batch counters are ``model``'s (default: the server's)."""
    processes = max(1, min(args.clients, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    pool = process_pool(processes)
    run_clients(pool, server, path, body, headers, shares, args.warmup)
    duration = args.duration
    while True:
        before, cpu_before = server.counters(model), server.cpu_seconds()
        profiler = profile(server, args, duration)
        steps = run_clients(pool, server, path, body, headers, shares, duration)
        after, cpu_after = server.counters(model), server.cpu_seconds()
        if profiler is not None:
            profiler.wait(30)
        # A window shorter than one answer (a loaded machine: 0.9 s an answer once, in a 0.6 s window) counts
        # nothing in some process; measured again, twice as long, up to 8 times --duration.
        if all(s["requests"] > 0 for s in steps):
            break
        if duration >= 8 * args.duration:
            print(f"warning: no answer in a window of {duration:g} s in some client process", file=sys.stderr)
            break
        duration *= 2
    ok = sum(s["throughput"] for s in steps)
    errors: dict[str, int] = {}
    for s in steps:
        for status, count in s["errors"].items():
            errors[status] = errors.get(status, 0) + count
    delta = {key: after[key] - before[key] for key in after}
    batches = delta["batch_count"]
    requests = sum(s["requests"] for s in steps)
    served = max(1.0, delta["batch_sum"])
    return {
        "images_per_s": ok,
        "duration_s": duration,
        # Each process reports its own p50: this is their mean weighted by requests, not the exact median.
        "p50_ms": sum(s["latency_ms"]["p50"] * s["requests"] for s in steps) / max(1, requests),
        "mean_ms": sum(s["latency_ms"]["mean"] * s["requests"] for s in steps) / max(1, requests),
        "mean_batch": delta["batch_sum"] / batches if batches else 0.0,
        "client_cpu_percent": sum(s["client_cpu_percent"] for s in steps),
        "client_processes": processes,
        "errors": errors,
        # Where a request's time goes, as the server counts it (means per request; compute per batch).
        "server_ms": 1e3 * delta["http_s"] / max(1.0, delta["http_count"]),
        "model_request_ms": delta["request_us"] / 1e3 / served,
        "model_queue_ms": delta["queue_us"] / 1e3 / served,
        "compute_ms_per_batch": delta["compute_us"] / 1e3 / max(1.0, batches),
        # CPU per request, in microseconds, by process.
        "cpu_us": {key: 1e6 * (cpu_after[key] - cpu_before[key]) / max(1, requests) for key in cpu_after},
    }


def profile(server: Server, args: argparse.Namespace, duration: float) -> subprocess.Popen[bytes] | None:
    """py-spy (when --profile names a folder and py-spy is found) records the engine during the measured window."""
    installed = args.wheels / "site" / "bin" / "py-spy" if args.wheels is not None else None
    py_spy = str(installed) if installed is not None and installed.exists() else shutil.which("py-spy")
    pid = server.engine_pid()
    if args.profile is None or py_spy is None or pid is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / f"engine-{server.workers}w-{server.port}.txt"
    argv = [py_spy, "record", "-p", str(pid), "-d", str(max(1, round(duration))), "-f", "raw", "-o", str(out)]
    return subprocess.Popen([*argv, "--threads", "--nonblocking"], stdout=subprocess.DEVNULL)


def served_hook(
    repo: Path,
    workers: int,
    image: bytes,
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str],
    engine: str,
    processes: str = "auto",
    target: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The hook-style row; with ``target`` given, the served target is measured on the same server after it."""
    entry = str(DENSENET / "score_densenet.py")
    flags = ["--entry", entry, "--model-dir", str(repo), "--engine", engine, *shlex.split(args.serve_args)]
    env = {**env, "RUNTIME_INSTANCE_PROCESSES": processes}
    server = Server(flags, workers, work / f"serve-{engine}-{processes}-{workers}.log", env)
    try:
        server.wait_ready(args.start_timeout)
        row = load(server, "/score", image, {"Content-Type": "image/jpeg"}, args, args.concurrency)
        if target is not None:
            target.update(served_model(server, args.target_batch, args))
        return row
    finally:
        server.stop()


def served_model(server: Server, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """TARGET on v2, one image per request, while no other model gets requests."""
    from runtime.tools import bench

    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    body, headers = bench.v2_body({"data_0": x}, ["fc6_1"])
    # Twice the batch in flight keeps a full batch queued while one runs.
    return load(server, f"/v2/models/{TARGET}/infer", body, headers, args, 2 * batch, TARGET)


def _commit() -> str:
    """The checkout's short commit; "unknown" on a copy without git (as the GPU machine gets it)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


# -- report ---------------------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    limit = result["limit_images_per_s"]
    lines = [
        f"device {result['device_name']}, {result['cores']} cores, torch {result['torch']}, commit {result['commit']}",
        "",
        "| measurement | images/s | p50 ms | mean batch | client CPU | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for batch, value in result["device_limit"].items():
        extra = "".join(
            f" ({name}: {result[key][batch]:.1f})"
            for name, key in (("pinned inputs", "device_limit_pinned"), ("optimized", "device_limit_optimized"))
            if batch in result[key]
        )
        lines.append(f"| device limit, batch {batch} | {value:.1f}{extra} | | {batch} | | |")
    lines.append(f"| preprocessing limit, {result['cores']} processes | {result['preprocessing_limit']:.1f} | | | | |")
    served = [("", row) for row in result["served"].items()]
    largest = max(result["served"])
    served += [(f", {n} model instances", (largest, row)) for n, row in result["served_instances"].items()]
    served += [(", per-worker design", row) for row in result["served_per_worker"].items()]
    for mode, rows in result.get("served_instance_processes", {}).items():
        served += [(f", instance processes {mode}", row) for row in rows.items()]
    for design, (workers, row) in served:
        lines.append(
            f"| runtime serve{design}, hook score.py, {workers} worker(s), JPEG, c={result['concurrency']} "
            f"| {row['images_per_s']:.1f} | {row['p50_ms']:.1f} | {row['mean_batch']:.1f} "
            f"| {row['client_cpu_percent']:.0f}% ({row['client_processes']} proc) | {row['images_per_s'] / limit:.2f} |"
        )
    target = result["target"]
    lines += [
        "",
        f"ratio = images/s / min(device limit at batch {max(result['device_limit'])}, preprocessing limit)"
        f" = images/s / {limit:.1f}",
        f"served model (v2, 1 image per request, max_batch_size {target['batch']}): "
        f"{target['served']['images_per_s']:.1f} images/s, mean batch {target['served']['mean_batch']:.1f}; "
        f"in-process at batch {target['batch']}: {target['in_process']:.1f} images/s; ratio {target['ratio']:.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="the small DenseNet (same signature; for smoke runs)")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="device limit batch sizes")
    parser.add_argument("--workers", default="1,4,16", help="worker counts to serve with")
    parser.add_argument(
        "--per-worker", default="", help="worker counts to serve with the per-worker design too (--engine worker)"
    )
    parser.add_argument(
        "--instances",
        default="1",
        help="model instance counts: the first for every row, the others at the largest worker count too",
    )
    parser.add_argument(
        "--instance-processes",
        default="auto",
        help="RUNTIME_INSTANCE_PROCESSES modes (auto, on, off): the first for every row, the others at every "
        "worker count too, in the same run",
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", type=int, help="client processes (default: 4 on cuda, 1 on cpu)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per step")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each measured step")
    parser.add_argument("--limit-seconds", type=float, help="seconds per limit measurement (default: --duration / 3)")
    parser.add_argument("--target-batch", type=int, default=8, help="batch size of the served-vs-in-process target")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--serve-args", default="", help="more flags for every runtime serve, as one string")
    parser.add_argument("--wheels", type=Path, help="install the wheels in this folder (no index) and use them")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--profile", type=Path, help="py-spy recordings of the engine go in this folder")
    args = parser.parse_args(argv)
    args.clients = args.clients or (4 if args.device == "cuda" else 1)
    batches = [int(b) for b in args.batches.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    per_worker = [int(w) for w in args.per_worker.split(",") if w]
    instances = [int(n) for n in args.instances.split(",")]
    modes = args.instance_processes.split(",")
    unknown = set(modes) - {"auto", "on", "off"}
    if unknown:
        parser.error(f"--instance-processes takes auto, on and off, not {', '.join(sorted(unknown))}")
    seconds = args.limit_seconds or max(1.0, args.duration / 3)

    if args.wheels is not None:
        install_wheels(args.wheels)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # SIGTERM unwinds like an error, so that the servers and client processes are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from runtime.serving.platforms.torchscript import import_torch

    torch = import_torch(MODEL)  # as the server imports it (thread wait policy included)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: torch {torch.__version__} sees no CUDA device (use --device cpu)")
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    env = {**os.environ, "PYTHONPATH": python_path(work, args.wheels)}
    kind = "KIND_GPU" if args.device == "cuda" else "KIND_CPU"
    repo = build_repository(work / "models", args.small, max(batches), kind)
    add_target(repo, args.target_batch)  # until the first row is served
    image = example("client").synthetic_jpeg()
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU",
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "concurrency": args.concurrency,
        "small": args.small,
        "instance_processes": modes[0],
    }
    try:
        # The served rows first: flags that stop the server (--serve-args) end the run before minutes of limits.
        result["served"] = {}
        result["served_per_worker"], result["served_instances"] = {}, {}
        result["served_instance_processes"] = {mode: {} for mode in modes[1:]}
        # Modes take turns at each worker count, so that they meet the same machine.
        by_mode = {modes[0]: result["served"], **result["served_instance_processes"]}
        runs = [("process", count, instances[0], m, by_mode[m], count) for count in workers for m in modes]
        runs += [("process", max(workers), n, modes[0], result["served_instances"], n) for n in instances[1:]]
        runs += [("worker", count, instances[0], "off", result["served_per_worker"], count) for count in per_worker]
        served: dict[str, Any] = {}  # the target, served by the first row's server
        for index, (design, count, group, mode, rows, label) in enumerate(runs):
            set_instances(repo, group)
            target = served if index == 0 else None
            rows[label] = served_hook(repo, count, image, args, work, env, design, mode, target)
            if index == 0:
                target_repo = take_target(repo, work / "target")
            print(
                f"served, --engine {design}, {count} worker(s), {group} instance(s), instance processes {mode}: "
                f"{json.dumps(rows[label])}",
                flush=True,
            )
        print("device limit (numpy in, numpy out):", flush=True)
        result["device_limit"] = device_limits(repo, args.device, batches, seconds)
        largest = [max(batches)]
        pinned = largest if args.device == "cuda" else []  # nothing moves on the CPU
        result["device_limit_pinned"] = device_limits(repo, args.device, pinned, seconds, "pinned")
        result["device_limit_optimized"] = device_limits(repo, args.device, largest, seconds, "optimized")
        result["preprocessing_limit"] = preprocessing_limit(image, seconds)
        print(f"preprocessing limit: {result['preprocessing_limit']:.1f} images/s", flush=True)
        result["limit_images_per_s"] = min(result["device_limit"][max(batches)], result["preprocessing_limit"])
        in_process = device_limits(target_repo, args.device, [args.target_batch], seconds)
        result["target"] = {
            "batch": args.target_batch,
            "in_process": in_process[args.target_batch],
            "served": served,
            "ratio": served["images_per_s"] / in_process[args.target_batch],
        }
    except ServerDied as ex:
        print(f"error: {ex}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        close_pools()
        shutil.rmtree(work, ignore_errors=True)  # also when a server died: its log's end is in the error
    print()
    print(table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
