"""Registration of send_email through the ``bananas`` entry point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from bananas_email import send_email

from bananas_core.plugins import load_plugins


def test_entry_point_names_plugin_module() -> None:
    by_name = {entry_point.name: entry_point for entry_point in entry_points(group="bananas")}

    assert "email" in by_name
    assert by_name["email"].value == "bananas_email.plugin"
    assert by_name["email"].dist is not None
    assert by_name["email"].dist.name == "bananas-email"


def test_load_plugins_registers_send_email() -> None:
    plugins = load_plugins()

    handler = plugins.registry.get("send_email")
    assert handler is not None
    assert handler.plugin == "email"
    assert handler.function is send_email
    assert handler.takes_context
    assert not handler.is_async
    info = next(info for info in plugins.infos if info.name == "email")
    assert info.distribution == "bananas-email"
    assert info.version == "0.1.0"
    assert info.handlers == ["send_email"]
    assert info.hooks == ["bananas_register_handlers"]
