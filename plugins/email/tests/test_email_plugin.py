"""Registration of send_email, and the check of its payload at submission."""

from __future__ import annotations

import json
import uuid
from importlib.metadata import entry_points
from typing import Any

import httpx
import pytest
from bananas_email import EmailPayload, parse_payload, send_email

from bananas_api import create_app
from bananas_core import InvalidPayload
from bananas_core.backends import create_backend
from bananas_core.client import Client
from bananas_core.plugins import load_plugins
from bananas_core.settings import Settings


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
    assert handler.schema is EmailPayload
    assert handler.takes_context
    assert not handler.is_async
    info = next(info for info in plugins.infos if info.name == "email")
    assert info.distribution == "bananas-email"
    assert info.version == "0.1.0"
    assert info.handlers == ["send_email"]
    assert info.hooks == ["bananas_register_handlers"]


@pytest.fixture
def settings() -> Settings:
    """Return settings of an embedded memory:// backend of this test's own."""
    return Settings(REDIS_URL=f"memory://email-{uuid.uuid4().hex}", KEY_PREFIX="email-test")


@pytest.mark.anyio
async def test_client_submit_rejects_invalid_payload(settings: Settings) -> None:
    payload = {"to": ["ada@example.com", "not-an-address"], "body": "x", "bcc": "eve@example.com"}

    async with Client(settings, plugins=load_plugins()) as client:
        with pytest.raises(InvalidPayload) as raised:
            await client.submit("send_email", payload)
        page = await client.list_jobs()

    fields = [problem["field"] for problem in raised.value.errors]
    assert fields == ["to[1]", "subject", "bcc"]
    assert "'not-an-address' is not an email address" in str(raised.value)
    assert page.jobs == []


async def post_send_email(settings: Settings, payload: dict[str, Any]) -> httpx.Response:
    plugins = load_plugins()
    backend = create_backend(plugins.manager, settings)
    app = create_app(settings, backend, plugins)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as http:
            return await http.post("/jobs", json={"name": "send_email", "payload": payload})
    finally:
        await backend.close()


@pytest.mark.anyio
async def test_api_names_payload_for_whole_payload_rule(settings: Settings) -> None:
    recipients = [f"user{n}@example.com" for n in range(101)]

    response = await post_send_email(settings, {"to": recipients, "subject": "Hi", "body": "x"})

    assert response.status_code == 422, response.text
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "payload"
    assert "101 different recipients, more than 100" in detail["message"]


@pytest.mark.anyio
async def test_api_answers_422_naming_fields(settings: Settings) -> None:
    payload = {"to": "ada@example.com", "subject": "Hi\nBcc: eve@example.com", "body": 1}

    response = await post_send_email(settings, payload)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_payload"
    assert [detail["field"] for detail in error["details"]] == ["payload.subject", "payload.body"]
    assert "contains a line break" in error["details"][0]["message"]


def test_validate_payload_stores_json_by_alias() -> None:
    handler = load_plugins().registry.get("send_email")
    assert handler is not None
    payload = {
        "to": "Zoë Ångström <zoe@example.com>",
        "subject": "Hi",
        "body": "x",
        "from": '"Lovelace, Ada" <ada@example.com>',
        "_bananas_trace": {"traceparent": "00-1-2-01"},
    }

    stored = handler.validate_payload(payload)

    assert stored == {
        "to": ['"Zoë Ångström" <zoe@example.com>'],
        "subject": "Hi",
        "body": "x",
        "from": '"Lovelace, Ada" <ada@example.com>',
        "_bananas_trace": {"traceparent": "00-1-2-01"},
    }
    assert json.loads(json.dumps(stored)) == stored
    assert handler.prepare_payload(stored) == parse_payload(payload)
