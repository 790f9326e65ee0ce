"""The handler registry that plugins fill through ``bananas_register_handlers``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bananas_core.errors import PluginError

ISOLATION_MODES = ("none", "process")
HANDLER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$")


@dataclass(frozen=True)
class Handler:
    """A registered job handler and the plugin that registered it."""

    name: str
    function: Callable[..., Any]
    plugin: str
    is_async: bool
    takes_context: bool  # whether the function is called with a second argument, the JobContext
    isolation: str = "none"  # "process": run in a child process that is killed at the timeout


class HandlerRegistry:
    """Handler names mapped to the functions that run them, one plugin per name."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.current_plugin = "<direct>"  # set by the plugin manager around each plugin's hook

    def register(self, name: str, function: Callable[..., Any], *, isolation: str = "none") -> None:
        """Register ``function`` to run jobs named ``name``.

        ``isolation="process"`` runs each job in a child process that is killed at the timeout,
        for sync handlers that could block or loop past it. Such a function must be defined at
        module level so that the child can import it.

        Raises PluginError if the name or isolation is invalid, the function is not callable
        or importable as isolation requires, or another plugin already registered the name.
        """
        if not isinstance(name, str) or not HANDLER_NAME.match(name):
            raise PluginError(
                f"plugin {self.current_plugin!r} registered an invalid handler name {name!r}: "
                "use 1 to 128 letters, digits, '_', '.', ':' or '-', starting with a letter or '_'"
            )
        if not callable(function):
            raise PluginError(
                f"plugin {self.current_plugin!r} registered handler {name!r} with "
                f"{function!r}, which is not callable"
            )

        if isolation not in ISOLATION_MODES:
            raise PluginError(
                f"plugin {self.current_plugin!r} registered handler {name!r} with invalid "
                f"isolation {isolation!r}: use one of {', '.join(ISOLATION_MODES)}"
            )
        qualname = getattr(function, "__qualname__", "<unknown>")
        if isolation == "process" and ("<" in qualname or not getattr(function, "__module__", None)):
            raise PluginError(
                f"plugin {self.current_plugin!r} registered handler {name!r} with "
                "isolation='process', so it must be a function defined at module level that a "
                f"child process can import; got {function!r}"
            )

        existing = self._handlers.get(name)
        if existing is not None:
            raise PluginError(
                f"handler {name!r} is registered twice:\n"
                f"  first by plugin {existing.plugin!r}\n"
                f"  again by plugin {self.current_plugin!r}\n"
                "Uninstall one of the two plugins."
            )

        self._handlers[name] = Handler(
            name=name,
            function=function,
            plugin=self.current_plugin,
            is_async=_is_async(function),
            takes_context=_wants_context(function),
            isolation=isolation,
        )

    def get(self, name: str) -> Handler | None:
        """Return the handler registered for ``name``, or None."""
        return self._handlers.get(name)

    def names(self) -> list[str]:
        """Return the registered handler names, sorted."""
        return sorted(self._handlers)

    def by_plugin(self, plugin: str) -> list[str]:
        """Return the names of the handlers that ``plugin`` registered, sorted."""
        return sorted(h.name for h in self._handlers.values() if h.plugin == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)
    return inspect.iscoroutinefunction(call)


def _wants_context(function: Callable[..., Any]) -> bool:
    # A handler gets the JobContext when its second positional parameter has no default, or
    # is named ctx or context, or is annotated JobContext. So ``def h(payload, ctx=None)``
    # gets it, and ``def h(payload, retries=3)`` is called with the payload alone.
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False
    positional = []
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional.append(parameter)
    if len(positional) < 2:
        return False
    second = positional[1]
    return (
        second.default is inspect.Parameter.empty
        or second.name in ("ctx", "context")
        or "JobContext" in str(second.annotation)
    )
