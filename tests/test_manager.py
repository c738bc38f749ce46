"""runtime.manager: registration order, score.py's plain functions as hooks, hook callers, tracing."""

from __future__ import annotations

import asyncio
import logging
import os
import textwrap
from pathlib import Path

import pytest

from runtime import hookspecs
from runtime.azureml.entry import load_entry_script
from runtime.azureml.request import ScoringRequest
from runtime.context import InitContext
from runtime.errors import BadRequest, RunFailed, StartupError
from runtime.manager import PluginManager
from runtime.settings import Settings
from tests.conftest import script

MARKER = f"{hookspecs.PROJECT_NAME}_impl"


def request(body: bytes = b"{}") -> ScoringRequest:
    from starlette.datastructures import Headers, QueryParams

    return ScoringRequest("POST", "/score", Headers(), QueryParams(""), body, "rid", None)


def manager(entry_path: str | None, *plugins: str, trace: bool = False) -> PluginManager:
    pm = PluginManager(trace=trace)
    entry = load_entry_script(entry_path) if entry_path else None
    pm.register_all(Settings(plugins=plugins, backend="onnxruntime"), entry)
    return pm


def test_registration_order_and_plain_functions_stay_unmarked() -> None:
    pm = manager(script("core/hook_style.py"), script("core/record_plugin.py"))
    names = [name for name, _ in pm.list_name_plugin()]
    entry_name = f"entry:{Path(script('core/hook_style.py'))}"
    assert names == ["onnxruntime", script("core/record_plugin.py"), "azureml-defaults", entry_name]
    module = pm.get_plugin(entry_name)
    # score.py's plain preprocess and init are hooks, and nothing was set on them.
    assert not hasattr(module.preprocess, MARKER) and not hasattr(module.init, MARKER)
    assert entry_name in [i.plugin_name for i in pm.hook.preprocess.get_hookimpls()]
    assert entry_name in [i.plugin_name for i in pm.hook.init.get_hookimpls()]


def test_imported_hook_names_are_not_hooks(tmp_path: Path) -> None:
    helper = tmp_path / "helpers.py"
    helper.write_text("def postprocess(request, outputs):\n    return 'helper'\n")
    score = tmp_path / "score.py"
    score.write_text("from helpers import postprocess\n\ndef preprocess(request):\n    return {}\n")
    pm = manager(str(score))
    owners = [i.plugin_name for i in pm.hook.postprocess.get_hookimpls()]
    assert owners == ["azureml-defaults"]


def test_preprocess_runs_first_result_and_wraps_foreign_errors() -> None:
    pm = manager(script("core/hook_style.py"), script("core/record_plugin.py"))
    payload = asyncio.run(pm.preprocess(request(b'{"x": [1]}')))
    assert payload.model == "double"
    with pytest.raises(BadRequest):
        asyncio.run(pm.preprocess(request(b'{"y": 1}')))
    with pytest.raises(RunFailed) as raised:
        asyncio.run(pm.preprocess(request(b'"x"')))  # hook_style.py indexes the str "x" by "x"
    assert isinstance(raised.value.original, TypeError)


FAILING_PLUGIN = """
from runtime import hookimpl

@hookimpl
def init(context):
    raise ValueError("no model")

@hookimpl
def shutdown():
    raise OSError("disk gone")
"""
EXITING_SCRIPT = """
import sys

def init():
    sys.exit("model missing")  # what many scripts do when the model is not there

def shutdown():
    sys.exit(1)

def run(data):
    return data
"""


@pytest.mark.parametrize(
    ("source", "is_entry", "failure"),
    [(FAILING_PLUGIN, False, "ValueError: no model"), (EXITING_SCRIPT, True, "SystemExit: model missing")],
)
def test_init_failure_is_a_startup_error_and_shutdown_errors_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, source: str, is_entry: bool, failure: str
) -> None:
    path = tmp_path / "failing.py"
    path.write_text(source)
    pm = manager(str(path)) if is_entry else manager(script("core/echo.py"), str(path))
    name = f"entry:{path}" if is_entry else str(path)
    context = InitContext(settings=Settings(), plugin_manager=pm)
    with pytest.raises(StartupError) as raised:
        asyncio.run(pm.init(context))
    assert str(raised.value) == f"init() of {name} failed: {failure}"
    with caplog.at_level(logging.ERROR, logger="runtime.hooks"):
        asyncio.run(pm.shutdown())
    assert f"shutdown() of {name} failed; continuing shutdown" in caplog.text


def test_trace_logs_every_call_with_its_implementations(caplog: pytest.LogCaptureFixture) -> None:
    pm = manager(script("core/hook_style.py"), script("core/record_plugin.py"), trace=True)
    entry_name = f"entry:{Path(script('core/hook_style.py'))}"
    with caplog.at_level(logging.INFO, logger="runtime.hooks"):
        asyncio.run(pm.preprocess(request(b'{"x": [1]}')))
        asyncio.run(pm.server_ready())
    assert f"hook preprocess(request): {script('core/record_plugin.py')}, {entry_name}, azureml-defaults" in caplog.text
    assert "hook preprocess returned InferRequest" in caplog.text
    assert "hook server_ready(): onnxruntime" in caplog.text


def test_misspelled_plugin_hook_names_the_known_hooks() -> None:
    with pytest.raises(StartupError) as raised:
        manager(script("core/echo.py"), script("core/misspelled_plugin.py"))
    assert "unknown hook 'postprocesss'" in str(raised.value)
    assert "Known hooks: infer, init, model_config" in str(raised.value)


def test_request_path_hooks_call_a_sole_implementation_directly_and_pluggy_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from runtime.hookspecs import hookimpl

    calls: list[tuple[str, object]] = []

    class Backend:
        @hookimpl
        def model_config(self, model: str) -> object:  # a subset of the spec's arguments, as pluggy allows
            calls.append(("backend", model))
            return None if model == "other" else f"config of {model}"

    class Second:
        @hookimpl
        def model_config(self, model: str, version: str | None) -> object:
            calls.append(("second", (model, version)))
            return f"second {model}"

    pm = PluginManager()
    pm.register(Backend(), "backend")
    assert pm.model_config("m", "1") == "config of m"
    assert pm.model_config("other", None) is None
    assert pm._sole["model_config"] is not None  # called without pluggy's dispatch
    pm.register(Second(), "second")  # registered later: runs first, and every call goes through pluggy again
    assert pm.model_config("m", "1") == "second m"
    assert pm.model_config("other", None) == "second other"
    assert pm._sole["model_config"] is None
    pm.unregister(name="second")
    assert pm.model_config("m", None) == "config of m" and pm._sole["model_config"] is not None
    second = [("second", ("m", "1")), ("second", ("other", None))]
    assert calls == [("backend", "m"), ("backend", "other"), *second, ("backend", "m")]
    traced = PluginManager(trace=True)
    traced.register(Backend(), "backend")
    with caplog.at_level(logging.INFO, logger="runtime.hooks"):
        assert traced.model_config("m", None) == "config of m"
    assert traced._sole["model_config"] is None
    assert "hook model_config(model, version): backend" in caplog.text


def test_async_first_result_hooks_that_return_none_leave_the_answer_to_the_next(tmp_path: Path) -> None:
    plugin = tmp_path / "tensors.py"
    plugin.write_text(
        textwrap.dedent("""
        from runtime import hookimpl

        @hookimpl
        def preprocess(request):
            return {"x": "from the plugin"}
    """)
    )
    score = tmp_path / "score.py"
    score.write_text(
        textwrap.dedent("""
        async def preprocess(request):
            return None  # not this script's kind of request: the next preprocess decides

        async def postprocess(request, outputs):
            return None if outputs == "as is" else {"shaped": outputs}
    """)
    )
    pm = manager(str(score), str(plugin))
    assert asyncio.run(pm.preprocess(request())) == {"x": "from the plugin"}
    assert asyncio.run(pm.postprocess(request(), "as is")) == "as is"  # the built-in default's answer
    assert asyncio.run(pm.postprocess(request(), 1)) == {"shaped": 1}


def test_async_model_ready_that_returns_none_leaves_the_model_to_the_next_backend() -> None:
    from runtime.hookspecs import hookimpl

    class Serves:
        @hookimpl
        def model_ready(self, model: str) -> bool | None:
            return True if model == "theirs" else None

    class ServesOther:
        @hookimpl
        async def model_ready(self, model: str) -> bool | None:
            return True if model == "mine" else None

    pm = PluginManager()
    pm.register(Serves(), "serves")
    pm.register(ServesOther(), "serves-other")  # registered later: asked first
    assert asyncio.run(pm.model_ready("mine", None)) is True
    assert asyncio.run(pm.model_ready("theirs", None)) is True
    assert asyncio.run(pm.model_ready("nobody's", None)) is False


def test_an_async_infer_that_returns_none_leaves_the_model_to_the_next_backend(tmp_path: Path) -> None:
    """An ``async def infer`` returns a coroutine for every model: pluggy took it as the answer, so the backend
    registered before it was never asked, and a model it did not serve resolved to None instead of a 404."""
    from runtime.errors import NoBackend

    plugin = tmp_path / "backend.py"
    plugin.write_text(
        textwrap.dedent("""
        import asyncio

        from runtime import hookimpl

        @hookimpl
        def infer(model, version, inputs, parameters):
            if model != "theirs":
                return None
            done = asyncio.get_running_loop().create_future()
            done.set_result({"y": "from the backend"})
            return done
    """)
    )
    score = tmp_path / "score.py"
    score.write_text(
        textwrap.dedent("""
        def init():
            pass

        def run(data):
            return data

        async def infer(model, version, inputs, parameters):
            return {"y": "from score.py"} if model == "mine" else None
    """)
    )
    pm = manager(str(score), str(plugin))

    async def infer(model: str) -> object:
        return await pm.infer(model, None, {}, {})

    assert asyncio.run(infer("mine")) == {"y": "from score.py"}
    assert asyncio.run(infer("theirs")) == {"y": "from the backend"}
    with pytest.raises(NoBackend):
        asyncio.run(infer("nobody's"))


@pytest.mark.parametrize("hook", ["model_config", "model_index"])
def test_an_async_implementation_of_a_hook_called_synchronously_is_a_startup_error(tmp_path: Path, hook: str) -> None:
    score = tmp_path / "score.py"
    arguments = "model, version" if hook == "model_config" else ""
    score.write_text(f"def init():\n    pass\n\n\ndef run(data):\n    return data\n\n\n"
                     f"async def {hook}({arguments}):\n    return None\n")  # fmt: skip
    with pytest.raises(StartupError) as info:
        manager(str(score))
    assert str(info.value) == (
        f"entry:{score}: the {hook} hook is called synchronously; define it with def, not async def"
    )


def test_a_plugin_named_twice_is_registered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = Path(script("core/record_plugin.py"))
    monkeypatch.chdir(plugin.parent)
    # RUNTIME_PLUGINS and --plugin both name it, once by path and once relative to the working directory.
    pm = manager(script("core/hook_style.py"), str(plugin), str(plugin), f".{os.sep}{plugin.name}")
    owners = [i.plugin_name for i in pm.hook.preprocess.get_hookimpls()]
    assert owners.count(str(plugin)) == 1 and len(owners) == 3, owners
    module = pm.get_plugin(str(plugin))
    pm._register(module, "the same module under another name")  # an entry point naming a --plugin module
    assert pm.get_name(module) == str(plugin)


def test_a_plugin_that_exits_while_importing_is_a_startup_error(tmp_path: Path) -> None:
    exiting = tmp_path / "exiting.py"
    exiting.write_text("import sys\n\nsys.exit(2)\n")
    with pytest.raises(StartupError) as raised:
        manager(None, str(exiting))
    assert str(raised.value) == f"Plugin {exiting} failed to import: SystemExit: 2"


def test_an_entry_point_plugin_that_exits_while_importing_is_a_startup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "ep_exiting-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-exiting\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[scoring_runtime]\nexiting = ep_exiting\n")
    (tmp_path / "ep_exiting.py").write_text("import sys\n\nsys.exit('no licence')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(StartupError) as raised:
        manager(None)
    assert str(raised.value) == "A plugin in entry point group 'scoring_runtime' failed to load: no licence"
