"""Plugin discovery through entry points, handler registration and hook calls."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import logging
import textwrap
import uuid
from pathlib import Path

import pytest

from bananas_core.errors import PluginError
from bananas_core.job import Job, utc_now
from bananas_core.plugins import load_plugins, log_plugins, notify
from bananas_core.registry import HandlerRegistry


def install_fake_distribution(root: Path, group: str, name: str, modules: dict[str, str]) -> None:
    """Write a distribution with ``modules`` and an entry point per module into ``root``.

    importlib.metadata finds it through its .dist-info folder like any installed package.
    """
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = [f"[{group}]"]
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        lines.append(f"{module} = {module}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Return an entry-point group of this test's own, searched in ``tmp_path``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return f"bananas_test_{uuid.uuid4().hex[:8]}"


HANDLER_PLUGIN = """
from bananas_core import hookimpl

def {handler}(payload):
    return payload

@hookimpl
def bananas_register_handlers(registry):
    registry.register("{handler}", {handler})
"""


def test_entry_point_plugin_registers_handlers(tmp_path: Path, group: str, caplog: pytest.LogCaptureFixture) -> None:
    module = f"plugin_{uuid.uuid4().hex[:8]}"
    install_fake_distribution(tmp_path, group, "bananas-resize", {module: HANDLER_PLUGIN.format(handler="resize")})

    plugins = load_plugins(entry_point_group=group)
    with caplog.at_level(logging.INFO, logger="bananas_core.plugins"):
        log_plugins(plugins)

    handler = plugins.registry.get("resize")
    assert handler is not None
    assert handler.plugin == module
    info = next(info for info in plugins.infos if info.name == module)
    assert (info.distribution, info.version) == ("bananas-resize", "1.2.3")
    assert info.handlers == ["resize"]
    assert info.hooks == ["bananas_register_handlers"]
    assert f"Loaded plugin {module} (bananas-resize 1.2.3), handlers: resize" in caplog.text


def test_duplicate_handler_names_both_plugins(tmp_path: Path, group: str) -> None:
    first, second = (f"plugin_{uuid.uuid4().hex[:8]}" for _ in range(2))
    install_fake_distribution(tmp_path, group, "bananas-one", {first: HANDLER_PLUGIN.format(handler="resize")})
    (tmp_path / "second").mkdir()
    install_fake_distribution(tmp_path / "second", group, "bananas-two", {second: HANDLER_PLUGIN.format(handler="resize")})
    sys.path.insert(0, str(tmp_path / "second"))
    try:
        with pytest.raises(PluginError) as raised:
            load_plugins(entry_point_group=group)
    finally:
        sys.path.remove(str(tmp_path / "second"))

    message = str(raised.value)
    assert "'resize' is registered twice" in message
    assert first in message
    assert second in message


def test_plugin_import_failure_names_cause(tmp_path: Path, group: str) -> None:
    module = f"plugin_{uuid.uuid4().hex[:8]}"
    install_fake_distribution(tmp_path, group, "bananas-broken", {module: "import does_not_exist_anywhere\n"})

    with pytest.raises(PluginError) as raised:
        load_plugins(entry_point_group=group)

    message = str(raised.value)
    assert f"plugin {module!r} failed to import" in message
    assert "bananas-broken 1.2.3" in message
    assert "No module named 'does_not_exist_anywhere'" in message
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)


def test_plugins_setting_module_is_loaded() -> None:
    plugins = load_plugins(["tests.handlers"], entry_point_group="bananas_test_none")

    assert "echo" in plugins.registry
    assert plugins.registry.get("flaky").takes_context
    assert not plugins.registry.get("echo").takes_context
    assert plugins.registry.get("async_sleep").is_async


def test_missing_plugins_module_is_plugin_error() -> None:
    with pytest.raises(PluginError, match="'no_such_module_here' from PLUGINS failed to import"):
        load_plugins(["no_such_module_here"], entry_point_group="bananas_test_none")


def test_invalid_handler_name_is_rejected(tmp_path: Path, group: str) -> None:
    module = f"plugin_{uuid.uuid4().hex[:8]}"
    install_fake_distribution(tmp_path, group, "bananas-bad", {module: HANDLER_PLUGIN.format(handler="bad").replace('"bad"', '"bad name"')})

    with pytest.raises(PluginError, match="invalid handler name 'bad name'"):
        load_plugins(entry_point_group=group)


RETRY_AND_OBSERVER_PLUGIN = """
from bananas_core import hookimpl

SEEN = []

@hookimpl
def bananas_retry_delay(job, error):
    return 42.0 if job.name == "custom" else None

@hookimpl
def bananas_job_started(job):
    raise RuntimeError("observer broke")

class Second:
    @hookimpl
    async def bananas_job_started(self, job):
        SEEN.append(job.id)
"""


@pytest.mark.anyio
async def test_observer_error_does_not_stop_others(tmp_path: Path, group: str, caplog: pytest.LogCaptureFixture) -> None:
    module = f"plugin_{uuid.uuid4().hex[:8]}"
    install_fake_distribution(tmp_path, group, "bananas-observer", {module: RETRY_AND_OBSERVER_PLUGIN})
    plugins = load_plugins(entry_point_group=group)
    loaded = importlib.import_module(module)
    plugins.manager.register(loaded.Second(), name="second")
    job = Job(id="job-1", name="custom", created_at=utc_now())

    with caplog.at_level(logging.ERROR, logger="bananas_core.plugins"):
        await notify(plugins.manager, "bananas_job_started", job=job)

    assert loaded.SEEN == ["job-1"]
    assert f"Plugin {module} raised in bananas_job_started; ignored (job job-1)" in caplog.text


def test_retry_policy_plugin_overrides_default(tmp_path: Path, group: str) -> None:
    module = f"plugin_{uuid.uuid4().hex[:8]}"
    install_fake_distribution(tmp_path, group, "bananas-observer", {module: RETRY_AND_OBSERVER_PLUGIN})
    plugins = load_plugins(entry_point_group=group)
    hook = plugins.manager.hook.bananas_retry_delay
    error = RuntimeError("x")

    custom = hook(job=Job(id="a", name="custom", created_at=utc_now()), error=error)
    default = hook(job=Job(id="b", name="other", created_at=utc_now()), error=error)
    used_up = hook(job=Job(id="c", name="other", retries=3, max_retries=3, created_at=utc_now()), error=error)

    assert custom == 42.0
    assert 2.0 <= default <= 2.2
    assert used_up is False


def test_context_goes_to_required_second_parameter() -> None:
    registry = HandlerRegistry()

    registry.register("plain", lambda payload: payload)
    registry.register("with_context", lambda payload, ctx: payload)
    registry.register("with_default", lambda payload, retries=3: payload)
    registry.register("star_args", lambda *args: args)
    registry.register("optional_ctx", lambda payload, ctx=None: payload)

    assert not registry.get("plain").takes_context
    assert registry.get("with_context").takes_context
    assert not registry.get("with_default").takes_context
    assert registry.get("star_args").takes_context
    assert registry.get("optional_ctx").takes_context


def test_process_isolation_needs_importable_function() -> None:
    registry = HandlerRegistry()

    with pytest.raises(PluginError, match="must be a function defined at module level"):
        registry.register("inline", lambda payload: payload, isolation="process")
    with pytest.raises(PluginError, match="invalid isolation 'fork'"):
        registry.register("echo", print, isolation="fork")


def test_misspelled_hook_is_plugin_error(tmp_path: Path, group: str) -> None:
    module = f"plugin_{uuid.uuid4().hex[:8]}"
    source = "from bananas_core import hookimpl\n\n@hookimpl\ndef bananas_job_sucess(job):\n    pass\n"
    install_fake_distribution(tmp_path, group, "bananas-typo", {module: source})

    with pytest.raises(PluginError) as raised:
        load_plugins(entry_point_group=group)

    assert f"plugin {module!r} implements a hook that bananas does not define" in str(raised.value)
    assert "bananas_job_sucess" in str(raised.value)


def test_plugin_adds_cli_command() -> None:
    env = {**os.environ, "PLUGINS": "tests.cli_plugin", "PYTHONPATH": str(Path(__file__).parent.parent)}

    completed = subprocess.run(
        [sys.executable, "-c", "from bananas_core.cli import main; main()", "hello", "Ada"],
        env=env, capture_output=True, text=True, timeout=60,
    )

    assert completed.stdout == "hello Ada from queue default\n"
    assert completed.returncode == 7


def test_failing_worker_startup_hook_exits_3_with_one_line() -> None:
    env = {
        **os.environ,
        "PLUGINS": "tests.failing_startup_plugin",
        "REDIS_URL": "memory://startup-test",
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "LOG_LEVEL": "ERROR",
    }

    completed = subprocess.run(
        [sys.executable, "-c", "from bananas_core.cli import main; main()", "worker"],
        env=env, capture_output=True, text=True, timeout=60,
    )

    assert completed.returncode == 3
    assert "Traceback" not in completed.stderr
    assert "plugin 'tests.failing_startup_plugin' failed in bananas_worker_startup" in completed.stderr
    assert "cannot reach the reports database" in completed.stderr
