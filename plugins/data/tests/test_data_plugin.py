"""Registration of process_data, and the check of its payload at submission."""

from __future__ import annotations

import json
import uuid
from importlib.metadata import entry_points

import httpx
import pytest
from bananas_data import DataPayload, process_data

from bananas_api import create_app
from bananas_core import InvalidPayload
from bananas_core.backends import create_backend
from bananas_core.client import Client
from bananas_core.plugins import load_plugins
from bananas_core.settings import Settings


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
    assert handler.schema is DataPayload
    assert handler.takes_context
    assert not handler.is_async
    info = next(info for info in plugins.infos if info.name == "data")
    assert info.distribution == "bananas-data"
    assert info.version == "0.1.0"
    assert info.handlers == ["process_data"]
    assert info.hooks == ["bananas_register_handlers"]


@pytest.fixture
def settings() -> Settings:
    """Return settings of an embedded memory:// backend of this test's own."""
    return Settings(REDIS_URL=f"memory://data-{uuid.uuid4().hex}", KEY_PREFIX="data-test")


@pytest.mark.anyio
async def test_client_submit_rejects_invalid_payload(settings: Settings) -> None:
    payload = {"records": {"amount": 1}, "required": ["id", 7], "values": "amount"}

    async with Client(settings, plugins=load_plugins()) as client:
        with pytest.raises(InvalidPayload) as raised:
            await client.submit("process_data", payload)
        page = await client.list_jobs()

    fields = [problem["field"] for problem in raised.value.errors]
    assert fields == ["records", "value", "required[1]", "values"]
    assert "records: Input should be a valid list" in str(raised.value)
    assert page.jobs == []


@pytest.mark.anyio
async def test_api_answers_422_naming_fields(settings: Settings) -> None:
    plugins = load_plugins()
    backend = create_backend(plugins.manager, settings)
    app = create_app(settings, backend, plugins)
    payload = {"records": [], "value": "amount", "group_by": ""}

    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as http:
            response = await http.post("/jobs", json={"name": "process_data", "payload": payload})
    finally:
        await backend.close()

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_payload"
    fields = [detail["field"] for detail in error["details"]]
    assert fields == ["payload.records", "payload.group_by"]


def test_validate_payload_stores_payload_as_given() -> None:
    handler = load_plugins().registry.get("process_data")
    assert handler is not None
    payload = {
        "records": [{"amount": 1.5, "id": "a"}, ["not", "an", "object"], {"amount": 10**20}],
        "value": "amount",
        "required": ["id"],
        "_bananas_trace": {"traceparent": "00-1-2-01"},
    }

    stored = handler.validate_payload(payload)
    prepared = handler.prepare_payload(stored)

    assert stored == payload
    assert json.loads(json.dumps(stored)) == stored
    assert isinstance(prepared, DataPayload)
    assert prepared.records == payload["records"]
    assert prepared.group_by is None
