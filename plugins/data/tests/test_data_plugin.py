"""Registration of process_data through the ``bananas`` entry point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from bananas_data import process_data

from bananas_core.plugins import load_plugins


def test_entry_point_names_plugin_module() -> None:
    by_name = {entry_point.name: entry_point for entry_point in entry_points(group="bananas")}

    assert "data" in by_name
    assert by_name["data"].value == "bananas_data.plugin"
    assert by_name["data"].dist is not None
    assert by_name["data"].dist.name == "bananas-data"


def test_load_plugins_registers_process_data() -> None:
    plugins = load_plugins()

    handler = plugins.registry.get("process_data")
    assert handler is not None
    assert handler.plugin == "data"
    assert handler.function is process_data
    assert handler.takes_context
    assert not handler.is_async
    info = next(info for info in plugins.infos if info.name == "data")
    assert info.distribution == "bananas-data"
    assert info.version == "0.1.0"
    assert info.handlers == ["process_data"]
    assert info.hooks == ["bananas_register_handlers"]
