"""The handler registry that plugins fill through ``bananas_register_handlers``."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from bananas_core.errors import InvalidPayload, PluginError
from bananas_core.job import Priority
from bananas_core.retry_policies import RetryPolicy, get_policy

ISOLATION_MODES = ("none", "process")
HANDLER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$")
HANDLER_NAME_RULE = "1 to 128 letters, digits, '_', '.', ':' or '-', starting with a letter or '_'"
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # the rule of the QUEUE setting
MAX_RETRIES_LIMIT = 100  # the upper bound of the MAX_RETRIES setting
# Payload keys with this prefix carry plugins' metadata, such as a trace context. Schemas
# never see them, and validate_payload keeps them.
RESERVED_PAYLOAD_PREFIX = "_bananas"


@dataclass(frozen=True)
class Handler:
    """A registered job handler and the plugin that registered it."""

    name: str
    function: Callable[..., Any]
    plugin: str
    is_async: bool
    takes_context: bool  # whether the function is called with a second argument, the JobContext
    isolation: str = "none"  # "process": run in a child process that is killed at the timeout
    # Defaults of the jobs submitted for this handler, used where a submission leaves the
    # option out; None falls back to the settings (QUEUE, MAX_RETRIES, JOB_TIMEOUT).
    queue: str | None = None
    priority: Priority | None = None
    timeout: float | None = None  # seconds
    max_retries: int | None = None
    retry_policy: RetryPolicy | None = None  # None: the built-in exponential backoff
    schema: type[BaseModel] | None = None  # the handler receives an instance instead of a dict

    def job_defaults(self) -> dict[str, Any]:
        """Return the submission options this handler sets, leaving out those that are None.

        The keys are those of ``Client.submit``: ``queue``, ``priority``, ``timeout`` and
        ``max_retries``. A submitter applies them where the caller gave no value.
        """
        defaults = {
            "queue": self.queue,
            "priority": self.priority,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
        }
        return {key: value for key, value in defaults.items() if value is not None}

    def validate_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Check ``payload`` against the handler's schema and return the payload to store.

        Without a schema the payload is returned unchanged. With one, the result is the
        validated model dumped as JSON by alias, leaving out fields the payload did not set,
        plus the reserved ``_bananas*`` keys. Raises InvalidPayload naming each invalid field.
        """
        if self.schema is None:
            return payload
        model = parse_payload(self.schema, payload, handler=self.name)
        stored = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        stored.update(_reserved(payload))
        return stored

    def prepare_payload(self, payload: dict[str, Any]) -> Any:
        """Return the value the handler receives: the schema's model instance, or ``payload``.

        The reserved ``_bananas*`` keys are left out of the model, and an instance of the
        schema is returned unchanged. Raises InvalidPayload naming each invalid field, a
        PermanentError because no retry can fix it.
        """
        if self.schema is None or isinstance(payload, self.schema):
            return payload
        return parse_payload(self.schema, payload, handler=self.name)


class HandlerRegistry:
    """Handler names mapped to the functions that run them, one plugin per name."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.current_plugin = "<direct>"  # set by the plugin manager around each plugin's hook

    def register(
        self,
        name: str,
        function: Callable[..., Any],
        *,
        queue: str | None = None,
        priority: Priority | str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_policy: str | RetryPolicy | None = None,
        isolation: str = "none",
        schema: type[BaseModel] | None = None,
    ) -> None:
        """Register ``function`` to run jobs named ``name``.

        ``queue``, ``priority``, ``timeout`` (seconds) and ``max_retries`` are the defaults of
        jobs submitted for this handler without those options. ``retry_policy`` names a
        policy of ``bananas_core.retry_policies``, such as ``"fixed:30s"`` or ``"none"``.
        ``schema`` is a pydantic model: submissions are validated against it, and the
        handler receives the model instance instead of the payload dict.

        ``isolation="process"`` runs each job in a child process that is killed at the timeout,
        for sync handlers that could block or loop past it. Such a function must be defined at
        module level so that the child can import it.

        Raises PluginError if the name, an option or isolation is invalid, the function is not
        callable or importable as isolation requires, or another plugin already registered the
        name.
        """
        if not isinstance(name, str) or not HANDLER_NAME.fullmatch(name):
            raise PluginError(
                f"plugin {self.current_plugin!r} registered an invalid handler name {name!r}: "
                f"use {HANDLER_NAME_RULE}"
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

        options = self._check_options(name, queue, priority, timeout, max_retries, retry_policy, schema)

        existing = self._handlers.get(name)
        if existing is not None:
            raise PluginError(
                f"handler {name!r} is registered twice:\n"
                f"  first by plugin {existing.plugin!r}\n"
                f"  again by plugin {self.current_plugin!r}\n"
                "Uninstall one of the two plugins, or add one to PLUGINS_BLOCK."
            )

        self._handlers[name] = Handler(
            name=name,
            function=function,
            plugin=self.current_plugin,
            is_async=_is_async(function),
            takes_context=_wants_context(function),
            isolation=isolation,
            **options,
        )

    def _check_options(
        self,
        name: str,
        queue: object,
        priority: object,
        timeout: object,
        max_retries: object,
        retry_policy: object,
        schema: object,
    ) -> dict[str, Any]:
        where = f"plugin {self.current_plugin!r} registered handler {name!r} with invalid"
        if queue is not None and not (isinstance(queue, str) and QUEUE_NAME.fullmatch(queue)):
            raise PluginError(f"{where} queue {queue!r}: use 1 to 64 letters, digits, '-', '_' or '.'")
        try:
            checked_priority = None if priority is None else Priority(priority)
        except ValueError:
            raise PluginError(f"{where} priority {priority!r}: use high, normal or low") from None
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise PluginError(f"{where} timeout {timeout!r}: use a number of seconds greater than 0")
        if max_retries is not None and (
            isinstance(max_retries, bool)
            or not isinstance(max_retries, int)
            or not 0 <= max_retries <= MAX_RETRIES_LIMIT
        ):
            raise PluginError(
                f"{where} max_retries {max_retries!r}: use a whole number from 0 to {MAX_RETRIES_LIMIT}"
            )
        try:
            policy = None if retry_policy is None else get_policy(retry_policy)  # type: ignore[arg-type]
        except ValueError as error:
            raise PluginError(f"plugin {self.current_plugin!r} registered handler {name!r} with {error}") from None
        if schema is not None and not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise PluginError(f"{where} schema {schema!r}: use a subclass of pydantic.BaseModel")
        return {
            "queue": queue,
            "priority": checked_priority,
            "timeout": None if timeout is None else float(timeout),  # type: ignore[arg-type]
            "max_retries": max_retries,
            "retry_policy": policy,
            "schema": schema,
        }

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


def parse_payload(schema: type[BaseModel], payload: dict[str, Any], *, handler: str) -> BaseModel:
    """Validate ``payload`` against ``schema``, leaving out the reserved ``_bananas*`` keys.

    Raises InvalidPayload naming ``handler`` and each invalid field.
    """
    fields = without_reserved_keys(payload)
    try:
        return schema.model_validate(fields)
    except ValidationError as error:
        problems = [
            {"field": _field_path(item["loc"]), "message": item["msg"], "input": item.get("input")}
            for item in error.errors(include_url=False)
        ]
        described = "; ".join(
            f"{problem['field'] or 'payload'}: {problem['message']}" for problem in problems
        )
        raise InvalidPayload(f"invalid payload for handler {handler!r}: {described}", problems) from error


def without_reserved_keys(payload: dict[Any, Any]) -> dict[Any, Any]:
    """Return ``payload`` without the reserved ``_bananas*`` keys that carry plugins' metadata.

    A handler that validates a payload itself calls this first, as the core does for a schema.
    """
    return {key: value for key, value in payload.items() if not _is_reserved(key)}


def _is_reserved(key: object) -> bool:
    return isinstance(key, str) and key.startswith(RESERVED_PAYLOAD_PREFIX)


def _reserved(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if _is_reserved(key)}


def _field_path(location: tuple[int | str, ...]) -> str:
    # ("to", 0, "name") becomes "to[0].name", the way the payload's JSON is navigated.
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path
