"""Plugin discovery through entry points, and calls into plugin hooks."""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from bananas_core import hookspecs
from bananas_core.errors import PluginError
from bananas_core.registry import HandlerRegistry

ENTRY_POINT_GROUP = "bananas"

hookimpl = pluggy.HookimplMarker("bananas")

logger = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    """A loaded plugin: where it came from and what it registered."""

    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)


@dataclass
class Plugins:
    """The plugin manager, the handler registry it filled, and what each plugin is."""

    manager: pluggy.PluginManager
    registry: HandlerRegistry
    infos: list[PluginInfo]


def load_plugins(modules: list[str] | tuple[str, ...] = (), *, entry_point_group: str = ENTRY_POINT_GROUP) -> Plugins:
    """Load the built-in plugin, every installed entry-point plugin and ``modules``.

    Then call ``bananas_register_handlers`` on each plugin. Raises PluginError naming the
    plugin, its distribution and the cause when a plugin fails to import, or when two
    plugins register the same handler name.
    """
    manager = pluggy.PluginManager("bananas")
    manager.add_hookspecs(hookspecs)

    from bananas_core import builtin

    manager.register(builtin, name="bananas.builtin")
    infos = [PluginInfo("bananas.builtin", "bananas", _version("bananas"))]

    for entry_point in sorted(entry_points(group=entry_point_group), key=lambda e: e.name):
        distribution = entry_point.dist.name if entry_point.dist else "unknown"
        version = entry_point.dist.version if entry_point.dist else "unknown"
        try:
            plugin = entry_point.load()
        except Exception as error:
            raise PluginError(
                f"plugin {entry_point.name!r} failed to import:\n"
                f"  distribution: {distribution} {version}\n"
                f"  entry point: {entry_point.value}\n"
                f"  cause: {type(error).__name__}: {error}\n"
                f"Fix or uninstall it: pip uninstall {distribution}"
            ) from error
        _register(manager, plugin, entry_point.name, distribution)
        infos.append(PluginInfo(entry_point.name, distribution, version))

    for module_name in modules:
        try:
            plugin = importlib.import_module(module_name)
        except Exception as error:
            raise PluginError(
                f"plugin module {module_name!r} from PLUGINS failed to import:\n"
                f"  cause: {type(error).__name__}: {error}\n"
                "Check the module name and that it is importable from this environment."
            ) from error
        _register(manager, plugin, module_name, "PLUGINS")
        infos.append(PluginInfo(module_name, "(PLUGINS setting)", "-"))

    try:
        # A hook implementation whose name matches no spec (a typo) would never be called.
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(
            f"plugin {manager.get_name(error.plugin)!r} implements a hook that bananas does not "
            f"define:\n  cause: {error}\nCheck the hook name against docs/plugins.md."
        ) from error

    registry = HandlerRegistry()
    for impl in reversed(manager.hook.bananas_register_handlers.get_hookimpls()):
        registry.current_plugin = impl.plugin_name
        try:
            _call(impl, {"registry": registry})
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in bananas_register_handlers:\n"
                f"  cause: {type(error).__name__}: {error}"
            ) from error
    registry.current_plugin = "<direct>"

    for info in infos:
        plugin = manager.get_plugin(info.name)
        info.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        info.handlers = registry.by_plugin(info.name)
    return Plugins(manager, registry, infos)


def log_plugins(plugins: Plugins) -> None:
    """Log each loaded plugin with its distribution, version and handlers."""
    for info in plugins.infos:
        logger.info(
            "Loaded plugin %s (%s %s), handlers: %s",
            info.name,
            info.distribution,
            info.version,
            ", ".join(info.handlers) or "none",
        )


async def notify(manager: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of an observer hook, awaiting those that are coroutines.

    An implementation that raises is logged with its plugin and hook names, and the others
    still run: an observer never fails a job or a worker.
    """
    caller = getattr(manager.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        try:
            outcome = _call(impl, kwargs)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception(
                "Plugin %s raised in %s; ignored (job %s)",
                impl.plugin_name,
                hook_name,
                getattr(kwargs.get("job"), "id", "-"),
            )


def _call(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
    # pluggy lets an implementation take a subset of the spec's arguments, by name.
    return impl.function(**{name: kwargs[name] for name in impl.argnames})


def _register(manager: pluggy.PluginManager, plugin: object, name: str, distribution: str) -> None:
    try:
        manager.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as error:
        raise PluginError(
            f"plugin {name!r} from {distribution} could not be registered:\n"
            f"  cause: {error}"
        ) from error


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
