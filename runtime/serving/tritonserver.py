"""A tritonserver the runtime installs, starts, watches and stops (``--triton managed``).

* ``runtime triton install`` makes a venv with the ``nvidia-pytriton`` wheel (which
  ships a working ``tritonserver`` with the python backend), ``numpy<2`` (the
  python-backend stub needs it) and onnxruntime.
* The binary is found from ``--tritonserver PATH``, then ``TRITONSERVER_PATH``,
  then PATH, then that venv.
* When the server has no onnxruntime backend, ONNX models are served through a
  generated python-backend ``model.py`` in a staged copy of the repository,
  with the same (completed) config and dynamic batching.
* The server binds 127.0.0.1 on free ports; its log is streamed into ours with
  a ``[tritonserver]`` prefix; it dies with us (PR_SET_PDEATHSIG), and is
  restarted if it exits on its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime import scratch
from runtime.errors import StartupError
from runtime.prctl import tie_to_parent
from runtime.serving.platform_names import ONNX_PLATFORM
from runtime.serving.repository import load_model, model_paths, repository_root, triton_backend_of
from runtime.serving.supervised import SupervisedProcess

logger = logging.getLogger("runtime.tritonserver")

TRITON_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime"]
TEMPLATE = Path(__file__).parent / "templates" / "onnx_python_backend.py"


def install(home: Path, python: str | None = None) -> Path:
    """Create the Triton venv in ``home`` (idempotent; Settings.triton_home) and return the tritonserver binary."""
    venv = home / "venv"
    marker = venv / ".runtime-installed"
    if not marker.exists() or marker.read_text() != "\n".join(TRITON_REQUIREMENTS):
        python = python or shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}") or sys.executable
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-U", "pip"], check=True)
        subprocess.run([*pip, *TRITON_REQUIREMENTS], check=True)
        marker.write_text("\n".join(TRITON_REQUIREMENTS))
    binary = _wheel_binary(venv)
    if binary is None:
        raise StartupError(f"nvidia-pytriton in {venv} ships no tritonserver binary")
    return binary


def _wheel_binary(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    return found[-1] if found else None


def find_tritonserver(explicit: str | None, home: Path) -> Path:
    """``explicit`` (Settings.tritonserver_path), then PATH, then the install in ``home``."""
    for candidate in (explicit, shutil.which("tritonserver")):
        if candidate:
            path = Path(candidate)
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise StartupError(f"tritonserver {path} is not an executable file")
            return path
    wheel = _wheel_binary(home / "venv")
    if wheel is not None:
        return wheel
    raise StartupError(
        "No tritonserver found (--tritonserver, TRITONSERVER_PATH, PATH, or the runtime's own install). "
        "Install one with: runtime triton install"
    )


@dataclass
class Launch:
    """How to start one tritonserver binary."""

    binary: Path
    env: dict[str, str]
    backend_dir: Path | None
    has_onnxruntime: bool


def prepare_launch(binary: Path, work: Path) -> Launch:
    env = dict(os.environ)
    site = binary.parents[3] if binary.parts[-4:-1] == ("pytriton", "tritonserver", "bin") else None
    if site is None:
        default = Path("/opt/tritonserver/backends")
        return Launch(binary, env, None, (default / "onnxruntime").is_dir())
    # The pip wheel: its libraries, a backends folder with the python stub for its Python, and its
    # venv's python first on PATH (the stub runs in whichever `python` it finds; it needs numpy<2).
    version = site.parent.name.removeprefix("python")
    backends = work / "backends"
    if not backends.exists():
        shutil.copytree(site / "pytriton" / "tritonserver" / "backends", backends)
        stub = site / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    venv_bin = site.parents[2] / "bin"
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    libs = site / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = f"{libs}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep)
    return Launch(binary, env, backends, (backends / "onnxruntime").is_dir())


def stage_repository(model_dir: str, stage: Path, backends: Collection[str] | None = None) -> Path:
    """A repository in which every ONNX model is served by the python backend running onnxruntime; the models
    of other backends (python, pytorch, ...) are linked as they are. ``backends``: the server's, when known (a
    model that needs another is a StartupError)."""
    from runtime.serving.model_config import mc

    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for path in model_paths(model_dir):
        backend = triton_backend_of(path)
        config = load_model(path) if backend is None else None
        if config is not None and config.proto.platform != ONNX_PLATFORM:
            backend = config.proto.backend
        if backend is not None:
            if backends is not None and backend not in backends:
                raise StartupError(
                    f"model {path.name!r} needs Triton's {backend} backend, which the managed tritonserver lacks "
                    f"(it has: {', '.join(sorted(backends)) or 'none'}); give --tritonserver a Triton that has it, "
                    "or run one and give its address with --triton-url"
                )
            (stage / path.name).symlink_to(path.resolve(), target_is_directory=True)
            continue
        assert config is not None
        target = stage / config.name
        target.mkdir()
        proto = mc.ModelConfig()
        proto.CopyFrom(config.proto)
        proto.platform = ""
        proto.backend = "python"
        proto.default_model_filename = ""
        for group in proto.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
        (target / "config.pbtxt").write_text(str(config.config_text_of(proto)))
        for output in config.proto.output:
            if output.label_filename:
                shutil.copy2(config.path / output.label_filename, target / output.label_filename)
        for version in config.versions:
            (target / version).mkdir()
            shutil.copy2(TEMPLATE, target / version / "model.py")
            (target / version / "model.onnx").symlink_to(config.model_file(version).resolve())
    return stage


# What a tritonserver without a GPU always says (it looks for CUDA, NVML and DCGM at start): expected, not errors.
CPU_ONLY_MESSAGES = (
    "CudaDriverHelper has not been initialized",
    "Failed to initialize NVML",
    "DCGM unable to start",
    "Unable to allocate pinned system memory",
    "CUDA memory pool disabled",
    "GPU metrics will not be available",
)
GLOG_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


def triton_log_level(line: str, previous: int) -> int:
    """The level for one line of Triton's log: its glog letter (``E1126 ...``), DEBUG for expected CPU-only
    complaints and for the start-up tables (the runtime's own summary says what is served)."""
    if any(message in line for message in CPU_ONLY_MESSAGES):
        return logging.DEBUG
    if line[:1] in GLOG_LEVELS and line[1:5].isdigit():
        return GLOG_LEVELS[line[0]]
    if line.startswith(("+", "|")) or not line.strip():
        return logging.DEBUG
    return logging.INFO if previous == logging.DEBUG else previous


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the runtime dies, even by SIGKILL; own process group."""
    tie_to_parent(signal.SIGTERM)
    os.setpgrp()


SHM_DIR = "/dev/shm"
# Then the runtime's pid and a token: the python backend's regions of one managed server are named
# ``<SHM_PREFIX><pid>-<token>-...``, and its folder ``<SHM_PREFIX><pid>-<token>`` in SHM_DIR holds their lock
# (runtime/scratch.py). Its work folder in the temporary directory is named the same way.
SHM_PREFIX = "runtime-triton-"


def remove_stale_regions() -> None:
    """Remove the python-backend regions of managed servers whose runtime is gone (a SIGKILLed master), their
    lock folders, and their work folders (a copy of the backends, the staged repository)."""
    shm = Path(SHM_DIR)
    for region in shm.glob(f"{SHM_PREFIX}*"):
        if region.is_dir():  # a lock folder (or a work folder, where TMPDIR is /dev/shm)
            continue
        owner = shm / (SHM_PREFIX + "-".join(region.name[len(SHM_PREFIX) :].split("-")[:2]))  # <pid>-<token>
        # Without its lock folder (an older runtime's, or what a stopped Triton left), owner_gone judges the pid
        # in the folder's name, which is the region's.
        if scratch.owner_gone(owner, SHM_PREFIX):
            region.unlink(missing_ok=True)
    scratch.remove_stale(SHM_PREFIX, SHM_DIR)
    scratch.remove_stale(SHM_PREFIX)


class ManagedTriton(SupervisedProcess):
    label = "tritonserver"

    def __init__(
        self,
        model_dir: str,
        binary: Path,
        port: int | None = None,
        wait_s: float = 120,
        supervise: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_dir = model_dir
        self.extra_args = tuple(extra_args)  # RUNTIME_TRITONSERVER_ARGS, after the runtime's own flags
        self.http_port = port or free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.wait_s = wait_s
        self.supervise = supervise
        remove_stale_regions()
        super().__init__()
        # The python backend's shared-memory regions, named for this server: a tritonserver that is killed
        # cannot unlink its own, and they would stay in /dev/shm (about 10 a test run, 1 MiB each when used).
        try:
            self.shm_lock = Path(scratch.owned_folder(SHM_PREFIX, SHM_DIR))
        except OSError as ex:
            raise StartupError(
                f"managed Triton needs a writable {SHM_DIR} for its python backend's shared memory ({ex.strerror}: "
                f"{ex.filename}); in a container, give it one (docker run --shm-size=1g)"
            ) from None
        self.shm_prefix = f"{self.shm_lock.name}-"
        try:
            # Named for this runtime too: one that is killed cannot remove its copy of the backends and staging.
            self.work = Path(scratch.owned_folder(SHM_PREFIX))
            self.launch = prepare_launch(binary, self.work)
            if self.launch.has_onnxruntime:
                self.repository = repository_root(model_dir)
            else:
                backend_dir = self.launch.backend_dir
                backends = None if backend_dir is None else {p.name for p in backend_dir.iterdir()}
                self.repository = stage_repository(model_dir, self.work / "repository", backends)
        except BaseException:
            self._release_folders()
            raise

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        cmd = [
            str(self.launch.binary),
            f"--model-repository={self.repository}",
            # Auto-complete (what --strict-model-config=false asked for, a deprecated flag) is Triton's default.
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=10",
        ]
        if self.launch.backend_dir is not None:
            cmd.append(f"--backend-directory={self.launch.backend_dir}")
        cmd.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        return [*cmd, *self.extra_args]

    def _after_exit(self) -> None:
        for region in Path(SHM_DIR).glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)

    def _spawn(self) -> None:
        logger.info("Starting %s", " ".join(self.command()))
        self.proc = subprocess.Popen(
            self.command(),
            env=self.launch.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            # Its folders stay locked while it runs: after a SIGKILLed runtime it may take seconds to exit, and a
            # runtime started meanwhile must not remove the regions and repository it still uses.
            pass_fds=(scratch.lock_fd(self.shm_lock), scratch.lock_fd(self.work)),
        )
        threading.Thread(target=self._stream_log, args=(self.proc,), daemon=True).start()

    def _stream_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        level = logging.INFO
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            level = triton_log_level(line, level)
            logger.log(level, "[tritonserver] %s", line)

    def start(self) -> None:
        self._spawn()
        self.wait_ready()
        if self.supervise:
            self._supervise()

    def restart(self) -> None:
        """Start the server again on the same ports (for an unsupervised server that was stopped)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("tritonserver is still running")
        self._spawn()
        self.wait_ready()

    def wait_ready(self) -> None:
        self._wait_for(self._ready, self.wait_s, 0.2)
        logger.info("tritonserver is ready at %s", self.url)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, grace_s: float = 30) -> None:
        if not self.owned:  # a worker unwinding: the staged repository is the running Triton's
            return
        self._stop_process(grace_s)
        self._release_folders()

    def _release_folders(self) -> None:
        if hasattr(self, "work"):
            scratch.release(self.work)
        scratch.release(self.shm_lock)  # after its regions (_after_exit), which it guards
