"""The pictures in docs/: the request path (architecture.png) and the engine's processes (engine.png).

    python docs/pictures.py              # rewrites docs/architecture.png and docs/engine.png
    python docs/pictures.py --output DIR

Drawn with matplotlib (the ``bench`` extra) through its object API on the Agg canvas, in pixel
coordinates with y pointing down, so that the layout below reads like the picture. What each box
says is text (REQUEST_PATH, PROCESSES: one section per box, see :func:`sections`); the functions
place the boxes and draw the arrows. The same matplotlib writes the same bytes.

Before saving, :meth:`Drawing.problems` measures every text as rendered: text that leaves its box
or the picture, runs into another box, overlaps other text or lies under an arrow, boxes that
cross, and sections never drawn stop the script, so that a picture that does not fit is never
written.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image
from PIL.PngImagePlugin import PngInfo

DOCS = Path(__file__).resolve().parent
DPI = 100  # one coordinate unit is one pixel
FONT = 11  # points: about 15 px at DPI 100, readable at 100% zoom
LINE = 20  # px between lines of FONT
PAD = 12  # px inside a box
COLORS = 96  # in the saved PNG: the fills, the inks and enough shades for smooth text

# (fill, edge) per kind of thing: the HTTP wing, the core, plugins, other processes, hooks, shared memory.
HTTP = ("#e3f2fd", "#1565c0")
CORE = ("#e8f5e9", "#2e7d32")
PLUGIN = ("#f3e5f5", "#6a1b9a")
PROCESS = ("#eceff1", "#37474f")
HOOK = ("#ffe0b2", "#e65100")
INPUT = ("#bbdefb", "#0d47a1")
OUTPUT = ("#c8e6c9", "#1b5e20")
FREE = ("#ffffff", "#78909c")
INK = "#212121"
ARROW = "#37474f"


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    def contains(self, other: Rect) -> bool:
        return self.x <= other.x and self.y <= other.y and other.right <= self.right and other.bottom <= self.bottom

    def crosses(self, other: Rect) -> bool:
        """They overlap without one holding the other."""
        apart = other.x >= self.right or self.x >= other.right or other.y >= self.bottom or self.y >= other.bottom
        return not apart and not self.contains(other) and not other.contains(self)


@dataclass(frozen=True)
class Hook:
    """A line that names a hook call: drawn as an orange tag."""

    text: str


Line = str | Hook
Point = tuple[float, float]


@dataclass
class _Placed:
    text: Text
    inside: Rect | None  # the box that must hold it; None: only the picture
    label: str


@dataclass
class _Arrow:
    points: list[Point]
    label: Text | None


@dataclass
class Drawing:
    width: int
    height: int
    figure: Figure = field(init=False)
    texts: list[_Placed] = field(default_factory=list)
    boxes: list[tuple[Rect, str]] = field(default_factory=list)
    arrows: list[_Arrow] = field(default_factory=list)
    words: dict[str, list[Line]] = field(default_factory=dict)  # what the boxes say, by name (see sections())
    used: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.figure = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_axes((0, 0, 1, 1))
        self.axes.set_xlim(0, self.width)
        self.axes.set_ylim(self.height, 0)
        self.axes.set_axis_off()

    # -- drawing ------------------------------------------------------------------------------
    def text(
        self,
        x: float,
        y: float,
        line: Line,
        inside: Rect | None = None,
        size: float = FONT,
        bold: bool = False,
        ha: str = "left",
        color: str = INK,
        background: str | None = None,
    ) -> Text:
        tag: dict[str, object] | None = None
        if isinstance(line, Hook):
            tag = {"boxstyle": "round,pad=0.25", "fc": HOOK[0], "ec": HOOK[1], "lw": 1}
        elif background is not None:
            tag = {"boxstyle": "square,pad=0.15", "fc": background, "ec": "none"}
        words = line.text if isinstance(line, Hook) else line
        artist = self.axes.text(
            x,
            y,
            words,
            fontsize=size,
            fontweight="bold" if bold else "normal",
            ha=ha,
            va="top",
            color=color,
            zorder=4,
            bbox=tag,
        )
        self.texts.append(_Placed(artist, inside, words))
        return artist

    def box(self, rect: Rect, name: str, colors: tuple[str, str] = CORE, size: float = FONT) -> Rect:
        """The box ``name``: its section's first line as its title, the others below it."""
        title, *lines = self.section(name)
        assert isinstance(title, str), f"section {name!r} starts with a hook"
        return self.panel(rect, title, lines, colors, size)

    def lines(self, x: float, y: float, name: str, inside: Rect, size: float = FONT) -> None:
        """The lines of section ``name`` from (x, y) down, in ``inside``."""
        for line in self.section(name):
            self.text(x, y, line, inside, size)
            y += LINE * size / FONT

    def section(self, name: str) -> list[Line]:
        self.used.add(name)
        return self.words[name]

    def panel(
        self, rect: Rect, title: str, lines: Sequence[Line] = (), colors: tuple[str, str] = CORE, size: float = FONT
    ) -> Rect:
        """A rounded box with a bold title and lines below it; returns the rect."""
        self.axes.add_patch(
            FancyBboxPatch(
                (rect.x, rect.y),
                rect.w,
                rect.h,
                boxstyle="round,pad=0,rounding_size=8",
                fc=colors[0],
                ec=colors[1],
                lw=1.6,
                zorder=1 + len(self.boxes) * 0.01,
            )
        )
        self.boxes.append((rect, title))
        y = rect.y + PAD - 2
        if title:
            self.text(rect.x + PAD, y, title, rect, size, bold=True, color=colors[1])
            y += LINE * size / FONT + 4
        for line in lines:
            self.text(rect.x + PAD + (4 if isinstance(line, Hook) else 0), y, line, rect, size)
            y += LINE * size / FONT + (4 if isinstance(line, Hook) else 0)
        return rect

    def cell(self, rect: Rect, words: str, colors: tuple[str, str], size: float = FONT - 1) -> None:
        """A square cell with centred words (the arena's chunks)."""
        self.axes.add_patch(Rectangle((rect.x, rect.y), rect.w, rect.h, fc=colors[0], ec=colors[1], lw=1.2, zorder=2))
        self.text(rect.cx, rect.cy - size * 0.75, words, rect, size, ha="center")

    def arrow(
        self,
        *points: Point,
        label: str = "",
        at: Point | None = None,
        color: str = ARROW,
        both: bool = False,
        dashed: bool = False,
        width: float = 1.6,
        size: float = FONT - 1,
        step: int = 0,
        inside: Rect | None = None,
    ) -> None:
        """A line through ``points``, its head at the last; ``label`` (or the badge of ``step``) centred at ``at``
        (default: the middle of the middle segment)."""
        for start, end in itertools.pairwise(points):
            last = end == points[-1]
            first = start == points[0]
            style = "<|-|>" if both and first and last else "<|-" if both and first else "-|>" if last else "-"
            self.axes.add_patch(
                FancyArrowPatch(
                    start,
                    end,
                    arrowstyle=style,
                    mutation_scale=14,
                    color=color,
                    lw=width,
                    ls="--" if dashed else "-",
                    shrinkA=0,
                    shrinkB=0,
                    zorder=3,
                )
            )
        if at is None:
            (x1, y1), (x2, y2) = points[len(points) // 2 - 1], points[len(points) // 2]
            at = ((x1 + x2) / 2, (y1 + y2) / 2)
        text = None
        if step:
            text = self.badge(at[0], at[1], step, inside)
        elif label:
            text = self.text(at[0], at[1] - size * 0.7, label, inside, size, ha="center", background="white")
        self.arrows.append(_Arrow(list(points), text))

    def extent(self, text: Text) -> Rect:
        """Where ``text`` (with its tag, if any) lands, in drawing coordinates."""
        self.figure.canvas.draw()
        placed = next(p for p in self.texts if p.text is text)
        (x0, y0), (x1, y1) = self.axes.transData.inverted().transform(self._extent(placed).get_points())
        return Rect(min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))

    # -- checking -----------------------------------------------------------------------------
    def _extent(self, placed: _Placed) -> Bbox:
        patch = placed.text.get_bbox_patch()
        if patch is not None:
            return Bbox.union([placed.text.get_window_extent(), patch.get_window_extent()])
        return placed.text.get_window_extent()

    def _display(self, rect: Rect) -> Bbox:
        (x0, y0), (x1, y1) = self.axes.transData.transform([(rect.x, rect.y), (rect.right, rect.bottom)])
        return Bbox.from_extents(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def problems(self) -> list[str]:
        """What does not fit: text outside its box or the picture, in a box not its own, over other text or
        under an arrow; boxes that cross."""
        self.figure.canvas.draw()
        found = []
        picture = self._display(Rect(0, 0, self.width, self.height))
        extents = [(placed, self._extent(placed)) for placed in self.texts]
        for placed, extent in extents:
            outer = picture if placed.inside is None else self._display(placed.inside)
            if not _holds(outer, extent):
                found.append(f"{placed.label!r} leaves {'the picture' if placed.inside is None else 'its box'}")
        for i, (a, first) in enumerate(extents):
            for b, second in extents[i + 1 :]:
                if _overlap(first, second):
                    found.append(f"{a.label!r} overlaps {b.label!r}")
        for arrow in self.arrows:
            line = [(float(x), float(y)) for x, y in self.axes.transData.transform(arrow.points)]
            for placed, extent in extents:
                if placed.text is not arrow.label and _hits(line, extent):
                    found.append(f"an arrow from {arrow.points[0]} crosses {placed.label!r}")
        for placed, extent in extents:
            for rect, title in self.boxes:
                home = placed.inside is not None and rect.contains(placed.inside)
                if not home and _overlap(extent, self._display(rect)):
                    found.append(f"{placed.label!r} runs into box {title!r}")
        found += [f"section {name!r} is never drawn" for name in self.words if name not in self.used]
        for i, (rect, title) in enumerate(self.boxes):
            found += [
                f"box {title!r} crosses box {name!r}" for other, name in self.boxes[i + 1 :] if rect.crosses(other)
            ]
        return found

    def badge(self, x: float, y: float, number: int, inside: Rect | None = None) -> Text:
        """A numbered dot: a step of the legend, centred at (x, y)."""
        self.axes.add_patch(Circle((x, y), 11, fc=ARROW, ec="none", zorder=5))
        artist = self.axes.text(
            x, y, str(number), fontsize=FONT - 1, fontweight="bold", ha="center", va="center", color="white", zorder=6
        )
        self.texts.append(_Placed(artist, inside, f"step {number}"))
        return artist

    def save(self, path: Path) -> None:
        """A PNG of at most COLORS colours: a third of the bytes of matplotlib's RGBA, the same bytes every time."""
        drawn = io.BytesIO()
        self.figure.savefig(drawn, format="png", dpi=DPI, facecolor="white")
        with Image.open(drawn) as image:
            info = PngInfo()
            # matplotlib's own mark: tools (and tests/support/plots.py) know its pictures by it.
            info.add_text("Software", str(image.info["Software"]))
            # What else decides the pixels: tests/test_pictures.py compares pictures drawn by the same tools.
            info.add_text("Comment", f"docs/pictures.py, Pillow {PIL.__version__}")
            path.parent.mkdir(parents=True, exist_ok=True)
            quantized = image.convert("RGB").quantize(COLORS, Image.Quantize.MEDIANCUT)
            quantized.save(path, format="PNG", pnginfo=info, optimize=True)


def sections(text: str) -> dict[str, list[Line]]:
    """``== name`` starts a section (a box's title, then its lines); a line that starts with ``! `` is a hook call."""
    found: dict[str, list[Line]] = {}
    lines: list[Line] = []
    for line in text.strip("\n").splitlines():
        if line.startswith("== "):
            lines = found[line[3:].strip()] = []
        else:
            lines.append(Hook(line[2:]) if line.startswith("! ") else line.rstrip())
    return found


def _holds(outer: Bbox, inner: Bbox, slack: float = 1.0) -> bool:
    return bool(
        inner.x0 >= outer.x0 - slack
        and inner.y0 >= outer.y0 - slack
        and inner.x1 <= outer.x1 + slack
        and inner.y1 <= outer.y1 + slack
    )


def _overlap(a: Bbox, b: Bbox, slack: float = 1.0) -> bool:
    return bool(a.x0 < b.x1 - slack and b.x0 < a.x1 - slack and a.y0 < b.y1 - slack and b.y0 < a.y1 - slack)


def _hits(line: Sequence[Point], box: Bbox, step: float = 2.0) -> bool:
    """Whether the polyline passes through ``box`` (sampled every ``step`` pixels)."""
    for (x1, y1), (x2, y2) in itertools.pairwise(line):
        n = max(1, int(max(abs(x2 - x1), abs(y2 - y1)) / step))
        for k in range(n + 1):
            x, y = x1 + (x2 - x1) * k / n, y1 + (y2 - y1) * k / n
            if box.x0 + 1 < x < box.x1 - 1 and box.y0 + 1 < y < box.y1 - 1:
                return True
    return False


# -- the request path ---------------------------------------------------------------------------
# http/middleware/__init__.py stack(), outermost first: (module, what it answers or adds); [name]: only
# when configured. tests/test_pictures.py checks the names and their order against stack().
MIDDLEWARE = [
    ("paths", ["//score is", "/score"]),
    ("request_metrics", ["counts every", "answer"]),
    ("[cors]", ["--cors-origins"]),
    ("request_ids", ["431: an id too", "long"]),
    ("[server_spans]", ["when tracing"]),
    ("keepalive", ["connection age"]),
    ("admission", ["413 / 429 / 503", "Retry-After"]),
    ("[auth]", ["API keys: 401"]),
]
WHITE_HTTP = ("#ffffff", HTTP[1])
WHITE_CORE = ("#ffffff", CORE[1])
WHITE_PLUGIN = ("#ffffff", PLUGIN[1])
INSTANCE = ("#f1f8e9", CORE[1])
ARENA = ("#fffde7", "#f9a825")

REQUEST_PATH = """
== client
client
HTTP
== master
Gunicorn master: runtime serve
http/server.py; cli.py first starts the model
engine (engine.png) or a managed Triton
== worker
uvicorn worker x N: one event loop, the app of http/app.py
! hook init (start-up), hook shutdown (stop): the lifespan in http/app.py
== stack
http/middleware/__init__.py stack(), outermost first ([...]: only when configured)
== score
POST /score: http/score.py
read_body (413), ScoringRequest
== pipeline
Pipeline.score (pipeline.py), under the timeout
! hook preprocess: the first result
  then one of:
== run
score.py has run(): Azure ML style
run(payload) in the executor's threads (async:
on the loop); it may call runtime.infer()
== hooked
hook style: no run()
preprocess returned tensors, or an
InferRequest that names the model
== response
to_response: JSON, AMLResponse, a stream;
x-ms-run-function-failed, x-ms-run-fn-exec-ms
== v2
POST /v2/models/{m}/infer: http/v2.py
read_decoded_body (413, Content-Encoding)
v2codec.decode_infer_request: binary
   tensors as memoryview slices, no copy
! plane.resolve(m, version): hook model_config
== v2run
plane.run(config, inputs, parameters)
exact datatypes; parameters: the outputs
asked for, classification, priority and
timeout
== encode
v2codec.encode_outputs
JSON, or binary tensors after a JSON header
(Inference-Header-Content-Length)
== plane
DataPlane (dataplane.py)
one path for /score, /v2, runtime.infer()
! lookup/resolve: hook model_config
validate_inputs: checks, converts nothing
outputs asked for, classification
   -> parameters
! pm.infer: hook infer
select the outputs asked for; classify
   if the backend did not
== hooks
the other hooks, by route
GET /ready, /v2/health/ready: server_ready
GET /v2/models/{m}/ready: model_ready
GET /v2/repository/index: model_index
== backends
backends: plugins/ (runtime_plugins)
== ort
onnxruntime_backend.py
cast once to the model's dtypes and shapes
EngineClient (serving/engine/client.py)
--engine worker: a ModelRunner here instead
== engine
runtime-engine process (engine.png)
one DynamicBatcher per model version
onnxruntime / TorchScript instances on
CPU or GPU, as instance_group says
== triton
triton_backend.py
cast once; only the outputs
asked for; tritonclient aio
HTTP
== tritonserver
Triton server
batches for all
workers, and
classifies
"""


def architecture() -> Drawing:
    """/score and /v2 from the client to the backends, with every hook where it is called."""
    d = Drawing(1600, 1070, words=sections(REQUEST_PATH))
    d.text(30, 14, "One request: /score and /v2 through a worker (docs/architecture.md)", size=15, bold=True)

    client = d.box(Rect(30, 60, 150, 66), "client", PROCESS)
    master = d.box(Rect(250, 50, 420, 86), "master", PROCESS)
    worker = d.box(Rect(760, 50, 810, 86), "worker", HTTP)
    d.arrow((client.right, client.cy), (master.x, client.cy))
    d.arrow((master.right, master.cy), (worker.x, master.cy), label="fork")

    stack = d.box(Rect(30, 170, 1540, 150), "stack", HTTP)
    width, gap = 168, 20
    left = stack.x + (stack.w - len(MIDDLEWARE) * width - (len(MIDDLEWARE) - 1) * gap) / 2
    cells: list[Rect] = []
    for name, notes in MIDDLEWARE:
        cells.append(d.panel(Rect(left + len(cells) * (width + gap), stack.y + 44, width, 92), name, notes, WHITE_HTTP))
        if len(cells) > 1:
            d.arrow((cells[-2].right, cells[-1].cy), (cells[-1].x, cells[-1].cy))
    d.arrow((worker.cx, worker.bottom), (worker.cx, stack.y))

    # /score on the left, /v2 on the right, the data plane between them.
    score = d.box(Rect(30, 370, 500, 470), "score", HTTP)
    pipeline = d.box(Rect(50, 440, 460, 330), "pipeline", CORE)
    run = d.box(Rect(70, 532, 420, 84), "run", WHITE_CORE)
    hooked = d.box(Rect(70, 630, 420, 84), "hooked", WHITE_CORE)
    post = d.text(70, 730, Hook("hook postprocess: the first result"), pipeline)
    d.lines(50, 784, "response", score)
    v2 = d.box(Rect(1070, 370, 500, 470), "v2", HTTP)
    v2run = d.box(Rect(1090, 532, 460, 104), "v2run", WHITE_CORE)
    encode = d.box(Rect(1090, 700, 460, 84), "encode", WHITE_HTTP)
    plane = d.box(Rect(600, 532, 400, 256), "plane", CORE)
    d.box(Rect(600, 370, 400, 104), "hooks", HOOK, FONT - 1)
    for column in (score, v2):
        d.arrow((column.cx, stack.bottom), (column.cx, column.y), label="route", at=(column.cx, 345))
    d.arrow((run.right, run.cy), (plane.x, run.cy), label="infer()", at=(565, run.cy))
    d.arrow((hooked.right, hooked.cy), (plane.x, hooked.cy), label="infer", at=(565, hooked.cy))
    d.arrow((v2run.x, v2run.cy), (plane.right, v2run.cy), label="run", at=(1045, v2run.cy))
    d.arrow((plane.x, 742), (d.extent(post).right + 6, 742), label="outputs", at=(565, 742), dashed=True)
    d.arrow((plane.right, 742), (encode.x, 742), label="outputs", at=(1035, 742), dashed=True)

    backends = d.box(Rect(30, 880, 1540, 170), "backends", PLUGIN)
    ort = d.box(Rect(50, 924, 430, 106), "ort", WHITE_PLUGIN)
    engine = d.box(Rect(580, 924, 420, 106), "engine", PROCESS)
    tri = d.box(Rect(1070, 924, 260, 106), "triton", WHITE_PLUGIN)
    server = d.box(Rect(1390, 924, 160, 106), "tritonserver", PROCESS)
    d.arrow((ort.right, ort.cy), (engine.x, ort.cy), both=True, label="memfd,\nsocket", at=(530, 969), inside=backends)
    d.arrow((tri.right, tri.cy), (server.x, tri.cy), both=True)
    trunk = 850
    d.arrow((plane.cx, plane.bottom), (plane.cx, trunk), (ort.right - 50, trunk), (ort.right - 50, ort.y))
    d.arrow((plane.cx, trunk), (tri.cx, trunk), (tri.cx, tri.y))
    d.text(plane.cx + 10, plane.bottom + 8, "hook infer: the first that answers", size=FONT - 1)
    return d


# -- the engine's processes ----------------------------------------------------------------------
PROCESSES = """
== master
runtime serve: the Gunicorn master (cli.py serve_with_engine)
the metrics folder, then the engine (every model loaded), then the workers;
on SIGTERM the workers drain first, the engine stops last
== supervisor
EngineSupervisor
engine/supervisor.py; a thread
restarts the engine at once
== worker
worker 1 (uvicorn, one event loop)
HTTP: /score, /v2
score.py: init(), preprocess, run(), postprocess
infer (the hook pipeline, runtime.infer(), /v2)
   -> onnxruntime plugin: cast once
   -> EngineClient (engine/client.py)

its arena: one memfd, runtime-arena-<pid>,
RUNTIME_ENGINE_ARENA_MB (64 MiB; pages used
when touched); a request takes one chunk
(first fit, 64-byte aligned): its inputs and
room for its outputs

outputs come back as numpy views on the
chunk, freed once the last is collected
== worker2
worker 2
the same: its own connection and arena
== workerN
worker N
the same: its own connection and arena
== socket
control socket
abstract Unix socket (no file to clean up):
@runtime-engine-<pid>-<hex>; per frame a
16-byte header (JSON length, fds, request
id), JSON; fds ride along (SCM_RIGHTS)
hello + the arena's fd -> welcome (models)
infer -> result | error; cancel -> cancelled
== arena
worker 1's arena: shared memory
a memfd, mapped by both: not in /dev/shm,
freed with the last process that maps it
== overflow
too big, or outputs of unknown size (BYTES,
-1 dims): a memfd of its own, fd in the frame
== rest
workers 2 ... N
a connection and an arena each; their
requests join the same batches
== engine
runtime-engine (its /proc/PID/comm)
python -m runtime.serving.engine.process
loads every model, then listens; one event
loop (uvloop); one WorkerConnection per
worker: its frames, its arena mapped
== model_a
model a, version 1: ModelRunner
DynamicBatcher: one queue for every worker
== model_b
model b, version 1: ModelRunner
DynamicBatcher
== instances
instances: instance_group (KIND_CPU/GPU/AUTO);
the cores split over a model's CPU instances;
model metrics: the workers' Prometheus folder
== steps
one infer, step by step
"""
STEPS = [
    "the worker writes the cast inputs into a chunk of its arena: the only copy on the way in",
    "an infer frame: model, version, request id, trace context; per tensor name, datatype, shape, offset; no bytes",
    "the engine reads the inputs in place (numpy views on the arena) and queues them",
    "an instance runs a batch that holds requests from every worker (several requests: one concatenate)",
    "the engine writes each request's outputs into the room reserved next to its inputs: the only copy out",
    "a result frame: the worker hands the outputs to score.py as views; the chunk is reused once they are freed",
]


def arena(d: Drawing, x: float, y: float) -> Rect:
    """An arena's chunks: [inputs | room for outputs] per request, then free space."""
    cells = [("in", INPUT, 58), ("out", OUTPUT, 58), ("in", INPUT, 44), ("out", OUTPUT, 70), ("free", FREE, 120)]
    left = x
    for words, colors, width in cells:
        d.cell(Rect(left, y, width, 34), words, colors)
        left += width
    return Rect(x, y, left - x, 34)


def engine() -> Drawing:
    """``runtime serve`` with the engine: the master, N workers, runtime-engine, the socket and the arenas."""
    d = Drawing(1600, 1010, words=sections(PROCESSES))
    d.text(30, 14, "The model engine: processes, the control socket, the arenas (docs/engine.md)", size=15, bold=True)

    master = d.box(Rect(330, 56, 940, 116), "master", PROCESS)
    supervisor = d.box(Rect(990, 70, 266, 88), "supervisor", ("#ffffff", PROCESS[1]), FONT - 1)
    worker = d.box(Rect(30, 250, 520, 360), "worker", HTTP)
    others = [
        d.box(Rect(30, 630, 520, 62), "worker2", HTTP, FONT - 1),
        d.box(Rect(30, 712, 520, 62), "workerN", HTTP, FONT - 1),
    ]
    d.arrow((master.x + 120, master.bottom), (master.x + 120, worker.y), label="fork", at=(master.x + 120, 210))

    socket = d.box(Rect(620, 250, 400, 172), "socket", PROCESS, FONT - 1)
    shared = d.box(Rect(620, 460, 400, 190), "arena", ARENA, FONT - 1)
    bar = arena(d, shared.x + 25, shared.y + 84)
    d.lines(shared.x + 12, shared.y + 130, "overflow", shared, FONT - 1)
    rest = d.box(Rect(620, 670, 400, 104), "rest", PROCESS, FONT - 1)

    engine = d.box(Rect(1090, 250, 480, 524), "engine", PROCESS)
    model_a = d.box(Rect(1110, 380, 440, 166), "model_a", WHITE_CORE)
    d.panel(Rect(1126, 448, 408, 40), "", ["instance 0: CPU thread"], INSTANCE, FONT - 1)
    d.panel(Rect(1126, 496, 408, 40), "", ["instance 1: GPU 0 (CUDA)"], INSTANCE, FONT - 1)
    d.badge(model_a.right - 26, model_a.y + 20, 4, model_a)
    d.box(Rect(1110, 556, 440, 110), "model_b", WHITE_CORE)
    d.panel(Rect(1126, 616, 408, 40), "", ["instance 0: CPU thread"], INSTANCE, FONT - 1)
    d.lines(1110, 680, "instances", engine, FONT - 1)

    spawn = "spawn (a fresh interpreter);\ndies with the master"
    d.arrow((supervisor.cx, supervisor.bottom), (supervisor.cx, engine.y), label=spawn, at=(supervisor.cx, 200))
    d.arrow((worker.right, 320), (socket.x, 320), step=2, at=(585, 320))
    d.arrow((socket.right, 320), (engine.x, 320), step=2, at=(1055, 320))
    d.arrow((socket.x, 370), (worker.right, 370), step=6, at=(585, 370))
    d.arrow((engine.x, 370), (socket.right, 370), step=6, at=(1055, 370))
    d.arrow((worker.right, bar.cy), (shared.x, bar.cy), step=1, at=(585, bar.cy))
    d.arrow((shared.right, bar.cy - 12), (engine.x, bar.cy - 12), step=3, at=(1055, bar.cy - 12))
    d.arrow((engine.x, bar.cy + 14), (shared.right, bar.cy + 14), step=5, at=(1055, bar.cy + 14))
    for other in others:
        d.arrow((other.right, other.cy), (rest.x, other.cy), dashed=True)
    d.arrow((rest.right, rest.cy), (engine.x, rest.cy), dashed=True, both=True)

    legend = d.box(Rect(30, 800, 1540, 196), "steps", ("#fafafa", ARROW))
    for number, step in enumerate(STEPS, 1):
        y = legend.y + 40 + (number - 1) * 25
        d.badge(legend.x + 26, y + 9, number, legend)
        d.text(legend.x + 46, y, step, legend)
    return d


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DOCS, help="the folder to write into (default: docs/)")
    args = parser.parse_args(argv)
    for name, draw in (("architecture.png", architecture), ("engine.png", engine)):
        drawing = draw()
        found = drawing.problems()
        if found:
            print(f"{name} does not fit:", *found, sep="\n  ", file=sys.stderr)
            return 1
        drawing.save(args.output / name)
        print(args.output / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
