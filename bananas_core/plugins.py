"""Plugin discovery through entry points, and calls into plugin hooks."""

from __future__ import annotations

import importlib
import inspect
import logging
import reprlib
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from bananas_core import hookspecs
from bananas_core.errors import PluginError
from bananas_core.registry import HandlerRegistry

if TYPE_CHECKING:
    from bananas_core.context import JobContext
    from bananas_core.job import Job
    from bananas_core.settings import Settings

ENTRY_POINT_GROUP = "bananas"

hookimpl = pluggy.HookimplMarker("bananas")

logger = logging.getLogger(__name__)
# Every hook call when TRACE_HOOKS is on, in a logger of its own so it can be filtered.
trace_logger = logging.getLogger("bananas.hooks")

# Hooks that bananas calls without awaiting, so a coroutine function would never run, and
# the one hook that must be a coroutine function because it awaits the rest of the chain.
_PLAIN_FUNCTION_HOOKS = (
    "bananas_register_handlers",
    "bananas_backend",
    "bananas_retry_delay",
    "bananas_periodic_jobs",
    "bananas_cli_commands",
    "bananas_api_routes",
)
_COROUTINE_HOOKS = ("bananas_wrap_job",)


# The distribution of a module that the PLUGINS setting loads, which has none of its own.
PLUGINS_SETTING = "(PLUGINS setting)"


def origin(distribution: str, version: str) -> str:
    """Return where a plugin comes from in words: its distribution and version, or the setting."""
    return "PLUGINS setting" if distribution == PLUGINS_SETTING else f"{distribution} {version}"


@dataclass
class PluginInfo:
    """A loaded plugin: where it came from and what it registered."""

    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SkippedPlugin:
    """An installed or listed plugin that was not imported, and the setting that excluded it."""

    name: str
    distribution: str
    version: str
    reason: str  # such as "blocked by PLUGINS_BLOCK"


@dataclass
class Plugins:
    """The plugin manager, the handler registry it filled, and what each plugin is."""

    manager: pluggy.PluginManager
    registry: HandlerRegistry
    infos: list[PluginInfo]
    skipped: list[SkippedPlugin] = field(default_factory=list)


class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, plus the TRACE_HOOKS switch for calls that bananas makes itself."""

    def __init__(self) -> None:
        super().__init__("bananas")
        self.trace_hooks = False


def load_configured_plugins(settings: Settings) -> Plugins:
    """Load the plugins that the PLUGINS, PLUGINS_ALLOW, PLUGINS_BLOCK and TRACE_HOOKS settings select.

    Raises PluginError as ``load_plugins`` does.
    """
    return load_plugins(
        settings.plugin_modules,
        allow=split_names(settings.PLUGINS_ALLOW),
        block=split_names(settings.PLUGINS_BLOCK),
        trace_hooks=settings.TRACE_HOOKS,
    )


def split_names(text: str) -> list[str]:
    """Split a comma-separated setting into its non-empty, stripped names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def load_plugins(
    modules: Sequence[str] = (),
    *,
    entry_point_group: str = ENTRY_POINT_GROUP,
    allow: Collection[str] = (),
    block: Collection[str] = (),
    trace_hooks: bool = False,
) -> Plugins:
    """Load the built-in plugin, the installed entry-point plugins and ``modules``.

    ``allow``, when not empty, limits entry-point plugins to those whose entry-point name or
    distribution it lists. ``block`` excludes entry-point plugins by either name, and
    ``modules`` by module name. An excluded plugin is never imported and is listed in
    ``Plugins.skipped``. ``trace_hooks`` logs every hook call to the ``bananas.hooks`` logger.

    Then call ``bananas_register_handlers`` on each plugin. Raises PluginError naming the
    plugin, its distribution and the cause when a plugin fails to import, implements a hook
    that does not exist or in the wrong form, or when two plugins register the same handler
    name.
    """
    manager = PluginManager()
    manager.add_hookspecs(hookspecs)
    if trace_hooks:
        _enable_tracing(manager)

    from bananas_core.builtin import BuiltinPlugin

    registry = HandlerRegistry()
    manager.register(BuiltinPlugin(registry), name="bananas.builtin")
    infos = [PluginInfo("bananas.builtin", "bananas", _version("bananas"))]
    skipped: list[SkippedPlugin] = []
    allowed, blocked = set(allow), set(block)
    matched: set[str] = set()

    for entry_point in sorted(entry_points(group=entry_point_group), key=lambda e: e.name):
        distribution = entry_point.dist.name if entry_point.dist else "unknown"
        version = entry_point.dist.version if entry_point.dist else "unknown"
        names = {entry_point.name, distribution}
        matched |= names
        if names & blocked:
            skipped.append(SkippedPlugin(entry_point.name, distribution, version, "blocked by PLUGINS_BLOCK"))
            continue
        if allowed and not names & allowed:
            skipped.append(SkippedPlugin(entry_point.name, distribution, version, "not in PLUGINS_ALLOW"))
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:
            raise PluginError(
                f"plugin {entry_point.name!r} failed to import:\n"
                f"  distribution: {distribution} {version}\n"
                f"  entry point: {entry_point.value}\n"
                f"  cause: {type(error).__name__}: {error}\n"
                f"Fix or uninstall it: pip uninstall {distribution}, or add it to PLUGINS_BLOCK"
            ) from error
        _register(manager, plugin, entry_point.name, distribution)
        infos.append(PluginInfo(entry_point.name, distribution, version))

    for module_name in modules:
        matched.add(module_name)
        if module_name in blocked:
            skipped.append(SkippedPlugin(module_name, PLUGINS_SETTING, "-", "blocked by PLUGINS_BLOCK"))
            continue
        try:
            plugin = importlib.import_module(module_name)
        except Exception as error:
            raise PluginError(
                f"plugin module {module_name!r} from PLUGINS failed to import:\n"
                f"  cause: {type(error).__name__}: {error}\n"
                "Check the module name and that it is importable from this environment."
            ) from error
        _register(manager, plugin, module_name, "PLUGINS")
        infos.append(PluginInfo(module_name, PLUGINS_SETTING, "-"))

    for setting, names in (("PLUGINS_ALLOW", allowed), ("PLUGINS_BLOCK", blocked)):
        for name in sorted(names - matched):
            logger.warning("%s names %r, which matches no installed plugin or PLUGINS module", setting, name)

    _check_hooks(manager)
    _register_handlers(manager, registry)

    for info in infos:
        plugin = manager.get_plugin(info.name)
        info.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        info.handlers = registry.by_plugin(info.name)
    return Plugins(manager, registry, infos, skipped)


def log_plugins(plugins: Plugins) -> None:
    """Log each loaded plugin with its distribution, version and handlers, and each skipped one."""
    for info in plugins.infos:
        logger.info(
            "Loaded plugin %s (%s), handlers: %s",
            info.name, origin(info.distribution, info.version), ", ".join(info.handlers) or "none",
        )
    for skipped in plugins.skipped:
        logger.info(
            "Skipped plugin %s (%s): %s",
            skipped.name, origin(skipped.distribution, skipped.version), skipped.reason,
        )


async def notify(manager: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of an observer hook, awaiting those that are coroutines.

    An implementation that raises an Exception is logged with its plugin and hook names, and
    the others still run, so an observer's error fails neither the job nor the worker.
    """
    caller = getattr(manager.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        try:
            outcome = _call(manager, hook_name, impl, kwargs)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            job = kwargs.get("job")
            if job is not None:
                logger.exception(
                    "Plugin %s raised in %s; ignored (job %s)", impl.plugin_name, hook_name, job.id
                )
            else:
                logger.exception("Plugin %s raised in %s; ignored", impl.plugin_name, hook_name)


async def call_job_wrappers(
    manager: pluggy.PluginManager,
    job: Job,
    context: JobContext | None,
    run: Callable[[], Awaitable[Any]],
) -> Any:
    """Run ``run`` (the handler) inside every ``bananas_wrap_job`` implementation.

    ``context`` may be None only when no plugin wraps jobs.

    The plugin registered last is the outermost wrapper. Returns what the outermost wrapper
    returns, or what ``run`` returns when no plugin wraps jobs. An exception of a wrapper or
    of ``run`` propagates, and becomes the run's error.
    """
    impls = list(reversed(manager.hook.bananas_wrap_job.get_hookimpls()))
    if not impls:
        return await run()

    async def call_from(index: int) -> Any:
        if index == len(impls):
            return await run()
        impl = impls[index]
        called = False

        async def call_next() -> Any:
            nonlocal called
            if called:
                raise RuntimeError(
                    f"plugin {impl.plugin_name!r} called call_next twice in bananas_wrap_job "
                    f"for job {job.id}; the handler runs at most once per run"
                )
            called = True
            return await call_from(index + 1)

        kwargs = {"job": job, "context": context, "call_next": call_next}
        return await _call(manager, "bananas_wrap_job", impl, kwargs)

    return await call_from(0)


@asynccontextmanager
async def service_lifecycle(manager: pluggy.PluginManager, service: str, **kwargs: Any) -> AsyncIterator[None]:
    """Run the start-up hooks of ``service`` ("worker" or "api") on entry and its shutdown hooks on exit.

    ``kwargs`` are the hooks' arguments: ``worker=`` or ``app=``. A start-up implementation
    that raises stops the start-up with a PluginError naming the plugin. The shutdown hooks
    run on every exit, also after a failed start-up, and an implementation that raises there
    is logged while the others still run.
    """
    if service not in ("worker", "api"):
        raise ValueError(f"invalid service {service!r}: use 'worker' or 'api'")
    startup, shutdown = f"bananas_{service}_startup", f"bananas_{service}_shutdown"
    try:
        for impl in reversed(getattr(manager.hook, startup).get_hookimpls()):
            try:
                outcome = _call(manager, startup, impl, kwargs)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as error:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in {startup}:\n"
                    f"  cause: {type(error).__name__}: {error}"
                ) from error
        yield
    finally:
        await notify(manager, shutdown, **kwargs)


def add_plugin_routes(
    app: Any, manager: pluggy.PluginManager, settings: Settings, dependencies: Sequence[Any] = ()
) -> list[str]:
    """Include the routers that ``bananas_api_routes`` returns into the FastAPI ``app``.

    Call it after the built-in routes are added. ``dependencies`` (such as the API key check)
    apply to every plugin route. Returns ``"METHOD PATH (plugin)"`` for each route added.
    Raises PluginError naming the plugin for a value that is not an APIRouter, a plain
    Starlette route, a path and method that is already taken, or an exception in the hook.
    """
    from fastapi import APIRouter
    from fastapi.routing import APIRoute, APIWebSocketRoute

    taken: dict[tuple[str, str], str] = {}
    for route in app.routes:
        for method in getattr(route, "methods", None) or ("WEBSOCKET",):
            taken[(route.path, method)] = "bananas"

    added = []
    for impl in reversed(manager.hook.bananas_api_routes.get_hookimpls()):
        plugin = impl.plugin_name
        try:
            returned = _call(manager, "bananas_api_routes", impl, {"settings": settings})
        except Exception as error:
            raise PluginError(
                f"plugin {plugin!r} failed in bananas_api_routes:\n  cause: {type(error).__name__}: {error}"
            ) from error
        if returned is None:
            routers = []
        elif isinstance(returned, (list, tuple)):
            routers = list(returned)
        else:
            routers = [returned]
        for router in routers:
            if not isinstance(router, APIRouter):
                raise PluginError(
                    f"plugin {plugin!r} returned {router!r} from bananas_api_routes: "
                    "return a fastapi.APIRouter, a list of them, or None"
                )
            for route in router.routes:
                if not isinstance(route, (APIRoute, APIWebSocketRoute)):
                    raise PluginError(
                        f"plugin {plugin!r} returned the plain Starlette route {route!r}, which the "
                        "API key check cannot protect: declare it with @router.get, .post and so on"
                    )
                for method in getattr(route, "methods", None) or ("WEBSOCKET",):
                    owner = taken.get((route.path, method))
                    if owner is not None:
                        raise PluginError(
                            f"plugin {plugin!r} adds the route {method} {route.path}, which "
                            f"{'bananas' if owner == 'bananas' else f'plugin {owner!r}'} already serves"
                        )
                    taken[(route.path, method)] = plugin
                    added.append(f"{method} {route.path} ({plugin})")
            app.include_router(router, dependencies=list(dependencies))
    return added


def add_plugin_commands(manager: pluggy.PluginManager, subparsers: Any) -> list[str]:
    """Let every ``bananas_cli_commands`` implementation add its commands to ``subparsers``.

    Call it after the built-in commands are added. Returns the names of the added commands.
    Raises PluginError naming the plugin when a command name is taken, a command sets no
    handler, or the hook raises.
    """
    owners = {name: "bananas" for name in subparsers.choices}
    added: list[str] = []
    for impl in reversed(manager.hook.bananas_cli_commands.get_hookimpls()):
        adder = _CommandAdder(subparsers, impl.plugin_name, owners)
        try:
            _call(manager, "bananas_cli_commands", impl, {"subparsers": adder})
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in bananas_cli_commands:\n"
                f"  cause: {type(error).__name__}: {error}"
            ) from error
        for name, parser in adder.parsers.items():
            if parser.get_default("handler") is None:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} added the command {name!r} without a handler: "
                    "call parser.set_defaults(handler=function), where function(settings, args) "
                    "returns the exit status"
                )
            added.append(name)
    return added


class _CommandAdder:
    """The ``subparsers`` a plugin gets: ``add_parser`` with a check for taken names."""

    def __init__(self, subparsers: Any, plugin: str, owners: dict[str, str]) -> None:
        self._subparsers = subparsers
        self._plugin = plugin
        self._owners = owners
        self.parsers: dict[str, Any] = {}

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        for each in (name, *kwargs.get("aliases", ())):
            owner = self._owners.get(each)
            if owner is not None:
                holder = "bananas" if owner == "bananas" else f"plugin {owner!r}"
                raise PluginError(
                    f"plugin {self._plugin!r} adds the command {each!r}, which {holder} already "
                    "has: choose another name"
                )
        parser = self._subparsers.add_parser(name, **kwargs)
        for each in (name, *kwargs.get("aliases", ())):
            self._owners[each] = self._plugin
        self.parsers[name] = parser
        return parser


def _register_handlers(manager: pluggy.PluginManager, registry: HandlerRegistry) -> None:
    for impl in reversed(manager.hook.bananas_register_handlers.get_hookimpls()):
        registry.current_plugin = impl.plugin_name
        try:
            _call(manager, "bananas_register_handlers", impl, {"registry": registry})
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in bananas_register_handlers:\n"
                f"  cause: {type(error).__name__}: {error}"
            ) from error
    registry.current_plugin = "<direct>"


def _check_hooks(manager: pluggy.PluginManager) -> None:
    try:
        # A hook implementation whose name matches no spec (a typo) would never be called.
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(
            f"plugin {manager.get_name(error.plugin)!r} implements a hook that bananas does not "
            f"define:\n  cause: {error}\nCheck the hook name against docs/plugins.md."
        ) from error

    for hook_name in _PLAIN_FUNCTION_HOOKS:
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            if inspect.iscoroutinefunction(impl.function):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} implements {hook_name} as a coroutine function, "
                    "which bananas would never await: write it as a plain function (def, not async def)"
                )
    for hook_name in _COROUTINE_HOOKS:
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            if not inspect.iscoroutinefunction(impl.function):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} implements {hook_name} as a plain function: "
                    "write it as a coroutine function (async def) that awaits call_next()"
                )


def _call(manager: pluggy.PluginManager, hook_name: str, impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
    # pluggy lets an implementation take a subset of the spec's arguments, by name.
    arguments = {name: kwargs[name] for name in impl.argnames}
    if getattr(manager, "trace_hooks", False):
        trace_logger.info("Calling %s of plugin %s(%s)", hook_name, impl.plugin_name, _describe_arguments(arguments))
    return impl.function(**arguments)


def _enable_tracing(manager: PluginManager) -> None:
    # pluggy's monitoring traces the hooks that bananas calls through pluggy, such as
    # bananas_retry_delay. _call traces those that bananas calls one plugin at a time.
    manager.trace_hooks = True

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        trace_logger.info(
            "Calling %s(%s) on plugins %s",
            hook_name, _describe_arguments(kwargs), ", ".join(impl.plugin_name for impl in reversed(impls)),
        )

    def after(outcome: Any, hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        if outcome.exception is not None:
            trace_logger.info("Hook %s raised %s: %s", hook_name, type(outcome.exception).__name__, outcome.exception)
        else:
            trace_logger.info("Hook %s returned %s", hook_name, _describe(outcome.get_result()))

    manager.add_hookcall_monitoring(before, after)


_short_repr = reprlib.Repr()
_short_repr.maxstring = 80
_short_repr.maxother = 80


def _describe_arguments(arguments: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={_describe(value)}" for name, value in arguments.items())


def _describe(value: Any) -> str:
    # A trace line names a job by its id and handler, without its payload, and hides the
    # password of a URL. Other values are cut to 80 characters.
    from bananas_core.context import JobContext
    from bananas_core.job import Job
    from bananas_core.settings import Settings, redact_url

    if isinstance(value, Job):
        return f"Job({value.id}:{value.name})"
    if isinstance(value, JobContext):
        return f"JobContext({value.job.id}:{value.job.name})"
    if isinstance(value, Settings):
        return "Settings(...)"
    if isinstance(value, str) and "://" in value:
        return repr(redact_url(value))
    return _short_repr.repr(value)


def _register(manager: pluggy.PluginManager, plugin: object, name: str, distribution: str) -> None:
    # Deprecation warnings of pluggy's warn_on_impl are logged too, because Python hides
    # DeprecationWarning outside __main__ by default, and then warned again as usual.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            manager.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as error:
            raise PluginError(
                f"plugin {name!r} from {distribution} could not be registered:\n"
                f"  cause: {error}"
            ) from error
    for warning in caught:
        if issubclass(warning.category, DeprecationWarning):
            logger.warning("Plugin %s from %s: %s", name, distribution, warning.message)
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
