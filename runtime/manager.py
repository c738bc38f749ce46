"""The hook layer: the one place that registers plugins and calls hooks.

:class:`PluginManager` is pluggy's manager with three additions:

* :meth:`PluginManager.register_all` holds the whole registration order (later registrations run first
  within the same tryfirst/trylast class, as in pluggy):

  1. the selected backend (one of :data:`runtime.plugins.DEFAULT_PLUGINS`),
  2. plugins from the ``scoring_runtime`` entry-point group,
  3. ``--plugin MODULE_OR_PATH`` (``RUNTIME_PLUGINS``),
  4. the built-in Azure ML defaults (``trylast``),
  5. score.py itself, so user code wins.

* score.py's plain functions named like hooks are implementations as they are: nothing is set on
  them (:meth:`PluginManager.parse_hookimpl_opts`, as pytest accepts conftest functions).
* a typed ``async`` caller per hook. Whether a hook runs on the event loop or in the worker's thread
  pool, and what its errors become, is decided here and nowhere else.

``RUNTIME_TRACE_HOOKS=1`` logs every hook call, the implementations it ran and the result.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from runtime import hookspecs, plugins
from runtime.errors import NoBackend, RunFailed, ServingError, StartupError
from runtime.executor import Executor

if TYPE_CHECKING:
    import numpy as np

    from runtime.azureml.entry import EntryScript
    from runtime.azureml.request import ScoringRequest
    from runtime.context import InitContext
    from runtime.serving.repository import ModelConfig
    from runtime.settings import Settings

logger = logging.getLogger("runtime.hooks")

T = TypeVar("T")

INLINE_MARK = "runtime_inline"
# Hooks the runtime calls without awaiting (see their specs): an ``async def`` implementation is refused.
SYNC_HOOKS = ("model_index", "model_config")
# pluggy's options for a plain function: no ordering, no wrapper.
PLAIN_HOOK = pluggy.HookimplOpts(
    wrapper=False, hookwrapper=False, optionalhook=False, tryfirst=False, trylast=False, specname=None
)


class Placement(enum.Enum):
    """Where a firstresult hook's implementations run (:meth:`PluginManager._first`)."""

    LOOP = "loop"  # every implementation inline: pluggy's call on the event loop
    POOL = "pool"  # some sync implementation is not inline: pluggy's call in the hook pool
    EACH = "each"  # some implementation is async: one after the other, each awaited before the next


def inline(func: Any) -> Any:
    """Mark a sync hook as cheap and non-blocking, so it runs on the event loop without a thread hop.

    For hooks that take microseconds (reading a small JSON body, shaping a small answer). Never
    for anything that blocks or computes for long: it would stall every request of the worker.
    A hook runs inline only when every implementation of it is inline (or async).
    """
    setattr(func, INLINE_MARK, True)
    return func


def _runs_on_loop(impl: pluggy.HookImpl) -> bool:
    return bool(getattr(impl.function, INLINE_MARK, False)) or inspect.iscoroutinefunction(impl.function)


async def _resolve(value: Awaitable[T] | T) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the runtime's hooks; one per app."""

    def __init__(self, executor: Executor | None = None, trace: bool = False) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        # Where sync preprocess/postprocess run when not every implementation is inline (Settings.hook_threads).
        self.executor = executor or Executor(1)
        self._plain: set[int] = set()  # plugins whose plain functions named like hooks are hooks (score.py)
        self._placements: dict[str, Placement] = {}
        self._sole: dict[str, tuple[Callable[..., Any], tuple[str, ...]] | None] = {}
        self._monitored = False
        if trace:
            self.add_hookcall_monitoring(_trace_before, _trace_after)

    # -- registration ------------------------------------------------------------------------------

    def register_all(self, settings: Settings, entry: EntryScript | None) -> None:
        """Every registration, in order (see the module docstring), then the check for misspelled hooks."""
        backend = settings.backend
        if backend:
            if backend not in plugins.BACKENDS:
                raise StartupError(f"Unknown backend {backend!r}; known backends: {', '.join(plugins.BACKENDS)}.")
            self._register(plugins.builtin(backend), backend)
        try:
            self.load_setuptools_entrypoints(plugins.ENTRY_POINT_GROUP)
        except pluggy.PluginValidationError as ex:
            raise StartupError(f"Plugin from entry point group {plugins.ENTRY_POINT_GROUP!r}: {ex}") from ex
        except (Exception, SystemExit) as ex:  # as for --plugin: sys.exit() while importing is a start-up failure
            raise StartupError(
                f"A plugin in entry point group {plugins.ENTRY_POINT_GROUP!r} failed to load: {ex}"
            ) from ex
        # RUNTIME_PLUGINS and --plugin may name one plugin twice, or spell one path two ways: registered once.
        unique: dict[str, str] = {}
        for spec in settings.plugins:
            unique.setdefault(plugins.identity(spec), spec)
        for spec in unique.values():
            self._register(plugins.import_plugin(spec), spec)
        # Registered after the plugins: pluggy calls trylast implementations registered later, later still.
        self._register(plugins.builtin(plugins.AZUREML_DEFAULTS, entry), plugins.AZUREML_DEFAULTS)
        if entry is not None:
            self._plain.add(id(entry.module))
            self._register(entry.module, f"entry:{entry.path}")
        try:
            self.check_pending()
        except pluggy.PluginValidationError as ex:
            raise StartupError(f"{ex} Known hooks: {', '.join(hookspecs.names())}.") from ex
        for name in SYNC_HOOKS:
            for impl in getattr(self.hook, name).get_hookimpls():
                if inspect.iscoroutinefunction(impl.function):
                    # Its coroutine would be taken for the answer (a config, an index) without being awaited.
                    raise StartupError(
                        f"{impl.plugin_name}: the {name} hook is called synchronously; define it with def, "
                        "not async def"
                    )

    def _register(self, plugin: object, name: str) -> None:
        if self.is_registered(plugin):  # an entry point's module named by --plugin too: its hooks run once
            logger.info("Plugin %s is registered already as %s", name, self.get_name(plugin))
            return
        try:
            self.register(plugin, name=name)
        except pluggy.PluginValidationError as ex:
            raise StartupError(f"Plugin {name}: {ex}") from ex

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """pluggy's register; a plugin registered later (say, from an init hook) may change where hooks run."""
        registered = super().register(plugin, name)
        self._placements.clear()
        self._sole.clear()
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        unregistered = super().unregister(plugin, name)
        self._placements.clear()
        self._sole.clear()
        return unregistered

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        """pluggy's monitoring (RUNTIME_TRACE_HOOKS): every hook call goes through pluggy from then on."""
        self._monitored = True
        self._sole.clear()
        return super().add_hookcall_monitoring(before, after)

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None or id(plugin) not in self._plain or name not in hookspecs.names():
            return opts
        value = inspect.getattr_static(plugin, name, None)
        # Only functions score.py defines: a hook-named function it imports is not its hook.
        if inspect.isfunction(value) and value.__module__ == getattr(plugin, "__name__", None):
            return PLAIN_HOOK
        return None

    # -- calling -----------------------------------------------------------------------------------

    def _call(self, name: str, **kwargs: Any) -> Any:
        """A firstresult hook of the request path (model_config, infer), called as pluggy would call it.

        With one plain implementation (a backend's) and no monitoring, that function is called directly:
        pluggy's dispatch (defaults, argument checks, a copy of the implementation list, the multicall
        loop) costs about 4 µs a call, twice a request.
        """
        if name not in self._sole:
            impls = getattr(self.hook, name).get_hookimpls()
            plain = len(impls) == 1 and not (impls[0].wrapper or impls[0].hookwrapper) and not self._monitored
            self._sole[name] = (impls[0].function, tuple(impls[0].argnames)) if plain else None
        sole = self._sole[name]
        if sole is None:
            return getattr(self.hook, name)(**kwargs)
        function, argnames = sole
        return function(*[kwargs[argname] for argname in argnames])

    def _placement(self, name: str) -> Placement:
        cached = self._placements.get(name)
        if cached is None:
            impls = getattr(self.hook, name).get_hookimpls()
            if any(inspect.iscoroutinefunction(i.function) for i in impls) and not any(
                i.wrapper or i.hookwrapper for i in impls
            ):
                cached = Placement.EACH
            elif all(_runs_on_loop(i) for i in impls):
                cached = Placement.LOOP
            else:
                cached = Placement.POOL
            self._placements[name] = cached
        return cached

    async def _first(self, name: str, **kwargs: Any) -> Any:
        """A firstresult hook: on the loop when every implementation may run there, else in the pool.

        Anything but a :class:`ServingError` becomes :class:`RunFailed` (a 500 naming the script).
        """
        try:
            placement = self._placement(name)
            if placement is Placement.EACH:
                return await self._first_awaited(name, kwargs, pool=True)
            hook = getattr(self.hook, name)
            result = hook(**kwargs) if placement is Placement.LOOP else await self.executor.run(hook, **kwargs)
            return await _resolve(result)
        except (ServingError, asyncio.CancelledError):
            raise
        except (Exception, SystemExit) as ex:  # sys.exit() in a hook fails its request, not the worker
            raise RunFailed(ex) from ex

    async def _first_awaited(self, name: str, kwargs: dict[str, Any], pool: bool) -> Any:
        """A firstresult hook with async implementations, one implementation after the other.

        pluggy stops at the first result that is not None, and an async implementation's coroutine is
        one even when it resolves to None ("not mine"): the next implementation would never be asked.
        Sync implementations that are not inline run in the pool when ``pool``.
        """
        for impl in reversed(getattr(self.hook, name).get_hookimpls()):
            if pool and not _runs_on_loop(impl):
                result = await self.executor.run(self._hookexec, name, [impl], kwargs, True)
            else:
                result = self._hookexec(name, [impl], kwargs, True)
            result = await _resolve(result)
            if result is not None:
                return result
        return None

    async def _each(self, name: str, on_error: Callable[[str, Exception | SystemExit], None], **kwargs: Any) -> None:
        """A broadcast hook, one implementation after the other in pluggy's order.

        Async implementations are awaited on the loop; sync ones run in a thread, so that a sync init()
        may call the blocking :func:`runtime.infer` (e.g. to warm up).
        """
        for impl in reversed(getattr(self.hook, name).get_hookimpls()):
            try:
                if inspect.iscoroutinefunction(impl.function):
                    results = self._hookexec(name, [impl], kwargs, False)
                else:
                    results = await asyncio.to_thread(self._hookexec, name, [impl], kwargs, False)
                assert isinstance(results, list)
                for result in results:
                    await _resolve(result)
            except (Exception, SystemExit) as ex:  # sys.exit() in init() is a start-up failure like any other
                on_error(f"{name}() of {impl.plugin_name}", ex)

    async def init(self, context: InitContext) -> None:
        """Every ``init``; the first failure stops start-up (:class:`StartupError`)."""

        def stop(where: str, ex: Exception | SystemExit) -> None:
            if isinstance(ex, StartupError):
                # Expected (Triton not there, a bad repository): its message says it all, no traceback.
                raise StartupError(f"{where}: {ex}") from ex
            logger.exception("%s failed", where)
            raise StartupError(f"{where} failed: {type(ex).__name__}: {ex}") from ex

        await self._each("init", stop, context=context)

    async def shutdown(self) -> None:
        """Every ``shutdown``; failures are logged and do not stop the others."""

        def log(where: str, ex: Exception | SystemExit) -> None:
            if isinstance(ex, StartupError):
                logger.error("%s failed; continuing shutdown: %s", where, ex)
            else:
                logger.error("%s failed; continuing shutdown", where, exc_info=ex)

        await self._each("shutdown", log)

    async def preprocess(self, request: ScoringRequest) -> Any:
        return await self._first("preprocess", request=request)

    async def postprocess(self, request: ScoringRequest, outputs: Any) -> Any:
        return await self._first("postprocess", request=request, outputs=outputs)

    async def infer(
        self, model: str, version: str | None, inputs: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """The backend that serves ``model`` runs it (batched where it batches); on the loop, as specified."""
        if self._placement("infer") is Placement.EACH:
            # An ``async def infer`` returns a coroutine for every model, and pluggy would stop there: each
            # implementation is awaited in turn, and one that resolves to None leaves the model to the next.
            kwargs = {"model": model, "version": version, "inputs": inputs, "parameters": parameters}
            outputs: dict[str, np.ndarray] | None = await self._first_awaited("infer", kwargs, pool=False)
            if outputs is None:
                raise NoBackend(model)
            return outputs
        pending = self._call("infer", model=model, version=version, inputs=inputs, parameters=parameters)
        if pending is None:
            raise NoBackend(model)
        result: dict[str, np.ndarray] = await pending
        return result

    def model_index(self) -> list[dict[str, str]]:
        return [entry for result in self.hook.model_index() for entry in result]

    def model_config(self, model: str, version: str | None) -> ModelConfig | None:
        config: ModelConfig | None = self._call("model_config", model=model, version=version)
        return config

    async def model_ready(self, model: str, version: str | None) -> bool:
        if self._placement("model_ready") is Placement.EACH:
            return bool(await self._first_awaited("model_ready", {"model": model, "version": version}, pool=False))
        return bool(await _resolve(self.hook.model_ready(model=model, version=version)))

    async def server_ready(self) -> bool:
        results: Sequence[bool | Awaitable[bool]] = self.hook.server_ready()
        return all([await _resolve(r) for r in results])


def _trace_before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]) -> None:
    # pluggy calls the last registered first.
    order = ", ".join(i.plugin_name for i in reversed(impls))
    logger.info("hook %s(%s): %s", hook_name, ", ".join(kwargs), order or "no implementations")


def _trace_after(
    outcome: pluggy.Result[object],
    hook_name: str,
    impls: Sequence[pluggy.HookImpl],
    kwargs: Mapping[str, object],
) -> None:
    if outcome.exception is not None:
        logger.info("hook %s raised %s: %s", hook_name, type(outcome.exception).__name__, outcome.exception)
    else:
        logger.info("hook %s returned %s", hook_name, _describe(outcome.get_result()))


def _describe(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return "None" if value is None else type(value).__name__
