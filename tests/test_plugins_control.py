"""Plugin loading control and the hooks of services: allow and block lists, tracing,
deprecations, job wrappers, start-up and shutdown, API routes and CLI commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException

from bananas_core.context import JobContext, job_logger
from bananas_core.deprecation import BananasDeprecationWarning, deprecation, warn_deprecated
from bananas_core.errors import PluginError
from bananas_core.hookspecs import hookspec
from bananas_core.job import Job, utc_now
from bananas_core.plugins import (
    add_plugin_commands,
    add_plugin_routes,
    call_job_wrappers,
    hookimpl,
    load_configured_plugins,
    load_plugins,
    notify,
    service_lifecycle,
    split_names,
)
from bananas_core.settings import load_settings
from tests.test_plugins import HANDLER_PLUGIN, install_fake_distribution


@pytest.fixture
def group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Return an entry-point group of this test's own, searched in ``tmp_path``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return f"bananas_test_{uuid.uuid4().hex[:8]}"


def new_module() -> str:
    return f"plugin_{uuid.uuid4().hex[:8]}"


def new_job(name: str = "echo") -> Job:
    return Job(id=f"job-{uuid.uuid4().hex[:6]}", name=name, created_at=utc_now())


# Allow and block lists


def test_block_list_skips_without_import(tmp_path: Path, group: str) -> None:
    broken = new_module()
    install_fake_distribution(tmp_path, group, "bananas-broken", {broken: "raise RuntimeError('imported')\n"})

    plugins = load_plugins(entry_point_group=group, block=["bananas-broken"])

    assert [info.name for info in plugins.infos] == ["bananas.builtin"]
    assert len(plugins.skipped) == 1
    assert plugins.skipped[0].name == broken
    assert plugins.skipped[0].distribution == "bananas-broken"
    assert plugins.skipped[0].reason == "blocked by PLUGINS_BLOCK"


def test_block_list_matches_entry_point_name(tmp_path: Path, group: str) -> None:
    module = new_module()
    install_fake_distribution(tmp_path, group, "bananas-resize", {module: HANDLER_PLUGIN.format(handler="resize")})

    plugins = load_plugins(entry_point_group=group, block=[module])

    assert "resize" not in plugins.registry
    assert plugins.skipped[0].name == module


def test_allow_list_loads_only_named(tmp_path: Path, group: str) -> None:
    kept, dropped = new_module(), new_module()
    install_fake_distribution(tmp_path, group, "bananas-kept", {kept: HANDLER_PLUGIN.format(handler="kept")})
    (tmp_path / "other").mkdir()
    install_fake_distribution(tmp_path / "other", group, "bananas-dropped", {dropped: HANDLER_PLUGIN.format(handler="dropped")})
    import sys

    sys.path.insert(0, str(tmp_path / "other"))
    try:
        plugins = load_plugins(entry_point_group=group, allow=["bananas-kept"])
    finally:
        sys.path.remove(str(tmp_path / "other"))

    assert "kept" in plugins.registry
    assert "dropped" not in plugins.registry
    assert [(s.name, s.reason) for s in plugins.skipped] == [(dropped, "not in PLUGINS_ALLOW")]


def test_block_wins_over_allow(tmp_path: Path, group: str) -> None:
    module = new_module()
    install_fake_distribution(tmp_path, group, "bananas-both", {module: HANDLER_PLUGIN.format(handler="both")})

    plugins = load_plugins(entry_point_group=group, allow=["bananas-both"], block=[module])

    assert "both" not in plugins.registry
    assert plugins.skipped[0].reason == "blocked by PLUGINS_BLOCK"


def test_block_list_applies_to_plugins_modules() -> None:
    plugins = load_plugins(["tests.handlers"], entry_point_group="bananas_test_none", block=["tests.handlers"])

    assert "echo" not in plugins.registry
    assert plugins.skipped[0].name == "tests.handlers"


def test_unmatched_list_name_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bananas_core.plugins"):
        load_plugins(entry_point_group="bananas_test_none", block=["bananas-typo"])

    assert "PLUGINS_BLOCK names 'bananas-typo', which matches no installed plugin" in caplog.text


def test_settings_select_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGINS", "tests.handlers")
    monkeypatch.setenv("PLUGINS_BLOCK", " tests.handlers , bananas-nothing")

    plugins = load_configured_plugins(load_settings())

    assert "echo" not in plugins.registry
    assert split_names(" a, ,b ") == ["a", "b"]


# Tracing


def test_trace_hooks_logs_calls(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bananas.hooks"):
        plugins = load_plugins(["tests.handlers"], entry_point_group="bananas_test_none", trace_hooks=True)
        plugins.manager.hook.bananas_retry_delay(job=new_job("flaky"), error=RuntimeError("x"))
        plugins.manager.hook.bananas_backend(url="redis://user:secret@localhost:6379/0", settings=load_settings())

    assert "Calling bananas_register_handlers of plugin tests.handlers(registry=" in caplog.text
    assert "Calling bananas_retry_delay(job=Job(" in caplog.text
    assert ":flaky), error=RuntimeError('x')) on plugins bananas.builtin" in caplog.text
    assert "Hook bananas_retry_delay returned" in caplog.text
    assert "secret" not in caplog.text
    assert "redis://***@localhost:6379/0" in caplog.text


@pytest.mark.anyio
async def test_trace_hooks_logs_observers(caplog: pytest.LogCaptureFixture) -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none", trace_hooks=True)

    class Observer:
        @hookimpl
        def bananas_job_started(self, job: Job) -> None:
            pass

    plugins.manager.register(Observer(), name="observer")
    with caplog.at_level(logging.INFO, logger="bananas.hooks"):
        await notify(plugins.manager, "bananas_job_started", job=new_job())

    assert "Calling bananas_job_started of plugin observer(job=Job(" in caplog.text


def test_tracing_is_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bananas.hooks"):
        plugins = load_plugins(entry_point_group="bananas_test_none")
        plugins.manager.hook.bananas_retry_delay(job=new_job(), error=RuntimeError("x"))

    assert caplog.text == ""


# Deprecations


class DeprecatedSpecs:
    @hookspec(warn_on_impl=deprecation("bananas_old_hook", removal="0.4", instead="bananas_new_hook"))
    def bananas_old_hook(self, job: Job) -> None:
        """Observe something the old way."""


def test_deprecated_hook_warns_with_version(caplog: pytest.LogCaptureFixture) -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.add_hookspecs(DeprecatedSpecs)

    class OldPlugin:
        @hookimpl
        def bananas_old_hook(self, job: Job) -> None:
            pass

    from bananas_core.plugins import _register

    with caplog.at_level(logging.WARNING, logger="bananas_core.plugins"), pytest.warns(BananasDeprecationWarning) as warned:
        _register(plugins.manager, OldPlugin(), "old-plugin", "bananas-old")

    message = str(warned[0].message)
    assert message == "bananas_old_hook is deprecated and will be removed in bananas 0.4; use bananas_new_hook instead"
    assert "Plugin old-plugin from bananas-old: bananas_old_hook is deprecated" in caplog.text


def test_warn_deprecated_points_at_caller() -> None:
    def old_function() -> None:
        warn_deprecated("old_function()", removal="1.0")

    with pytest.warns(DeprecationWarning, match=r"old_function\(\) is deprecated and will be removed in bananas 1.0$") as warned:
        old_function()

    assert warned[0].filename == __file__


# Hook forms


def test_async_register_handlers_is_rejected(tmp_path: Path, group: str) -> None:
    module = new_module()
    source = "from bananas_core import hookimpl\n\n@hookimpl\nasync def bananas_register_handlers(registry):\n    pass\n"
    install_fake_distribution(tmp_path, group, "bananas-async", {module: source})

    with pytest.raises(PluginError, match=f"plugin '{module}' implements bananas_register_handlers as a coroutine function"):
        load_plugins(entry_point_group=group)


def test_sync_wrap_job_is_rejected(tmp_path: Path, group: str) -> None:
    module = new_module()
    source = "from bananas_core import hookimpl\n\n@hookimpl\ndef bananas_wrap_job(job, call_next):\n    return call_next()\n"
    install_fake_distribution(tmp_path, group, "bananas-sync-wrap", {module: source})

    with pytest.raises(PluginError, match=f"plugin '{module}' implements bananas_wrap_job as a plain function"):
        load_plugins(entry_point_group=group)


# Job wrappers


class Recorder:
    """A wrapper plugin that records the order of calls and can change the outcome."""

    def __init__(self, name: str, calls: list[str], replace: Any = None, skip: bool = False) -> None:
        self.name, self.calls, self.replace, self.skip = name, calls, replace, skip

    @hookimpl
    async def bananas_wrap_job(self, job: Job, call_next: Any) -> Any:
        self.calls.append(f"{self.name} before")
        if self.skip:
            return {"skipped by": self.name}
        try:
            result = await call_next()
        except RuntimeError:
            self.calls.append(f"{self.name} saw error")
            raise
        self.calls.append(f"{self.name} after")
        return self.replace if self.replace is not None else result


def context_for(job: Job) -> JobContext:
    return JobContext(job=job, logger=job_logger(job))


@pytest.mark.anyio
async def test_wrappers_nest_last_registered_outermost() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    calls: list[str] = []
    plugins.manager.register(Recorder("inner", calls), name="inner")
    plugins.manager.register(Recorder("outer", calls), name="outer")
    job = new_job()

    async def handler() -> str:
        calls.append("handler")
        return "done"

    result = await call_job_wrappers(plugins.manager, job, context_for(job), handler)

    assert result == "done"
    assert calls == ["outer before", "inner before", "handler", "inner after", "outer after"]


@pytest.mark.anyio
async def test_wrapper_changes_result() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(Recorder("changer", [], replace={"changed": True}), name="changer")
    job = new_job()

    async def handler() -> str:
        return "original"

    assert await call_job_wrappers(plugins.manager, job, context_for(job), handler) == {"changed": True}


@pytest.mark.anyio
async def test_wrapper_skips_handler() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(Recorder("cache", [], skip=True), name="cache")
    job = new_job()
    ran = []

    async def handler() -> str:
        ran.append(True)
        return "original"

    result = await call_job_wrappers(plugins.manager, job, context_for(job), handler)

    assert result == {"skipped by": "cache"}
    assert ran == []


@pytest.mark.anyio
async def test_wrapper_sees_handler_error() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    calls: list[str] = []
    plugins.manager.register(Recorder("observer", calls), name="observer")
    job = new_job()

    async def handler() -> None:
        raise RuntimeError("handler broke")

    with pytest.raises(RuntimeError, match="handler broke"):
        await call_job_wrappers(plugins.manager, job, context_for(job), handler)

    assert calls == ["observer before", "observer saw error"]


@pytest.mark.anyio
async def test_call_next_twice_is_error() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")

    class Twice:
        @hookimpl
        async def bananas_wrap_job(self, call_next: Any) -> Any:
            await call_next()
            return await call_next()

    plugins.manager.register(Twice(), name="twice")
    job = new_job()

    async def handler() -> int:
        return 1

    with pytest.raises(RuntimeError, match="plugin 'twice' called call_next twice"):
        await call_job_wrappers(plugins.manager, job, context_for(job), handler)


@pytest.mark.anyio
async def test_no_wrappers_runs_handler() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    job = new_job()

    async def handler() -> int:
        return 7

    assert await call_job_wrappers(plugins.manager, job, context_for(job), handler) == 7


# Start-up and shutdown


class Service:
    def __init__(self, events: list[str], fail_startup: bool = False, fail_shutdown: bool = False) -> None:
        self.events, self.fail_startup, self.fail_shutdown = events, fail_startup, fail_shutdown

    @hookimpl
    async def bananas_worker_startup(self, worker: Any) -> None:
        self.events.append(f"startup {worker}")
        if self.fail_startup:
            raise ConnectionError("pool unreachable")

    @hookimpl
    def bananas_worker_shutdown(self, worker: Any) -> None:
        self.events.append(f"shutdown {worker}")
        if self.fail_shutdown:
            raise RuntimeError("close failed")


@pytest.mark.anyio
async def test_service_hooks_wrap_the_service() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    events: list[str] = []
    plugins.manager.register(Service(events), name="pool")

    async with service_lifecycle(plugins.manager, "worker", worker="w1"):
        events.append("serving")

    assert events == ["startup w1", "serving", "shutdown w1"]


@pytest.mark.anyio
async def test_failed_startup_names_plugin_and_shuts_down() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    events: list[str] = []
    plugins.manager.register(Service(events, fail_startup=True), name="pool")

    with pytest.raises(PluginError) as raised:
        async with service_lifecycle(plugins.manager, "worker", worker="w1"):
            events.append("serving")

    assert "plugin 'pool' failed in bananas_worker_startup" in str(raised.value)
    assert "ConnectionError: pool unreachable" in str(raised.value)
    assert events == ["startup w1", "shutdown w1"]


@pytest.mark.anyio
async def test_failing_shutdown_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    events: list[str] = []
    plugins.manager.register(Service(events, fail_shutdown=True), name="first")
    plugins.manager.register(Service(events), name="second")

    with caplog.at_level(logging.ERROR, logger="bananas_core.plugins"):
        async with service_lifecycle(plugins.manager, "worker", worker="w1"):
            pass

    assert events.count("shutdown w1") == 2
    assert "Plugin first raised in bananas_worker_shutdown; ignored" in caplog.text


@pytest.mark.anyio
async def test_api_lifecycle_gets_app() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    seen: list[object] = []

    class ApiPlugin:
        @hookimpl
        def bananas_api_startup(self, app: Any) -> None:
            seen.append(("startup", app))

        @hookimpl
        async def bananas_api_shutdown(self, app: Any) -> None:
            seen.append(("shutdown", app))

    plugins.manager.register(ApiPlugin(), name="api-plugin")
    app = FastAPI()

    async with service_lifecycle(plugins.manager, "api", app=app):
        pass

    assert seen == [("startup", app), ("shutdown", app)]


# API routes


def api_key_check(x_key: str = Header("")) -> None:
    if x_key != "secret":
        raise HTTPException(401, "missing key")


def app_with_core_route() -> FastAPI:
    app = FastAPI()

    @app.get("/jobs")
    def list_jobs() -> dict[str, str]:
        return {"from": "bananas"}

    return app


def routes_plugin(router_factory: Any) -> object:
    class RoutesPlugin:
        @hookimpl
        def bananas_api_routes(self) -> Any:
            return router_factory()

    return RoutesPlugin()


@pytest.mark.anyio
async def test_plugin_routes_are_served_with_key_check() -> None:
    def make() -> APIRouter:
        router = APIRouter(prefix="/reports")

        @router.get("/latest")
        def latest() -> dict[str, str]:
            return {"report": "ok"}

        return router

    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(routes_plugin(make), name="reports")
    app = app_with_core_route()

    added = add_plugin_routes(app, plugins.manager, load_settings(), [Depends(api_key_check)])

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        allowed = await client.get("/reports/latest", headers={"x-key": "secret"})
        rejected = await client.get("/reports/latest")

    assert added == ["GET /reports/latest (reports)"]
    assert allowed.json() == {"report": "ok"}
    assert rejected.status_code == 401


def test_plugin_route_conflict_is_rejected() -> None:
    def make() -> APIRouter:
        router = APIRouter()

        @router.get("/jobs")
        def shadow() -> None:
            pass

        return router

    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(routes_plugin(make), name="shadow")

    with pytest.raises(PluginError, match="plugin 'shadow' adds the route GET /jobs, which bananas already serves"):
        add_plugin_routes(app_with_core_route(), plugins.manager, load_settings())


def test_plain_starlette_route_is_rejected() -> None:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def make() -> APIRouter:
        router = APIRouter()
        router.routes.append(Route("/open", lambda request: PlainTextResponse("open")))
        return router

    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(routes_plugin(make), name="open")

    with pytest.raises(PluginError, match="plain Starlette route"):
        add_plugin_routes(FastAPI(), plugins.manager, load_settings())


def test_non_router_value_is_rejected() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(routes_plugin(lambda: {"path": "/x"}), name="wrong")

    with pytest.raises(PluginError, match="plugin 'wrong' returned .* return a fastapi.APIRouter"):
        add_plugin_routes(FastAPI(), plugins.manager, load_settings())


# CLI commands


def core_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(prog="bananas")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("worker").set_defaults(handler=lambda settings, args: 0)
    return parser, commands


def command_plugin(name: str, with_handler: bool = True) -> object:
    class CommandPlugin:
        @hookimpl
        def bananas_cli_commands(self, subparsers: Any) -> None:
            command = subparsers.add_parser(name, help="export jobs")
            command.add_argument("--format", default="csv")
            if with_handler:
                command.set_defaults(handler=lambda settings, args: f"exported as {args.format}")

    return CommandPlugin()


def test_plugin_command_is_added() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(command_plugin("export"), name="exporter")
    parser, commands = core_parser()

    added = add_plugin_commands(plugins.manager, commands)
    args = parser.parse_args(["export", "--format", "json"])

    assert added == ["export"]
    assert args.handler(None, args) == "exported as json"


def test_plugin_command_conflict_names_owner() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(command_plugin("worker"), name="exporter")
    _, commands = core_parser()

    with pytest.raises(PluginError, match="plugin 'exporter' adds the command 'worker', which bananas already has"):
        add_plugin_commands(plugins.manager, commands)


def test_plugin_command_without_handler_is_rejected() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(command_plugin("export", with_handler=False), name="exporter")
    _, commands = core_parser()

    with pytest.raises(PluginError, match="added the command 'export' without a handler"):
        add_plugin_commands(plugins.manager, commands)


def test_no_warnings_from_plain_load() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_plugins(["tests.handlers"], entry_point_group="bananas_test_none")
