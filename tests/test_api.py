"""The HTTP API, in process on the embedded backend and on real Redis, and served by uvicorn."""

from __future__ import annotations

import functools
import logging
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

import bananas_core
from bananas_api import create_app, run_api, serve_api
from bananas_core import hookimpl
from bananas_core.backends import create_backend
from bananas_core.backends.base import Backend
from bananas_core.job import Job
from bananas_core.plugins import Plugins, load_plugins
from bananas_core.settings import Settings

pytestmark = pytest.mark.anyio

MAX_REQUEST_BYTES = 2048

# A closed port on loopback: connecting fails at once, like a Redis server that is down.
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"

JSON_HEADERS = {"Content-Type": "application/json"}


def make_settings(url: str, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "REDIS_URL": url,
        "KEY_PREFIX": prefix,
        "QUEUE": "default",
        "MAX_REQUEST_BYTES": MAX_REQUEST_BYTES,
        "MAX_RETRIES": 3,
        "JOB_TIMEOUT": 300.0,
        "SHUTDOWN_GRACE": 2.0,
        "PLUGINS": "tests.handlers",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(["tests.handlers"])


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def settings(request: pytest.FixtureRequest) -> AsyncIterator[Settings]:
    prefix = f"bananas-test-{uuid.uuid4().hex}"
    if request.param == "memory":
        yield make_settings(f"memory://test-{uuid.uuid4().hex}", prefix)
        return

    url = request.getfixturevalue("redis_url")
    yield make_settings(url, prefix)

    # Only the keys this test wrote: everything under its own prefix.
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def backend(settings: Settings, plugins: Plugins) -> AsyncIterator[Backend]:
    store = create_backend(plugins.manager, settings)
    yield store
    await store.close()


@pytest.fixture
async def client(
    settings: Settings, backend: Backend, plugins: Plugins
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, backend, plugins)
    async with make_client(app) as http:
        yield http


def make_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the one error shape and return its ``error`` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# POST /jobs


async def test_post_job_returns_201_with_location(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "payload": {"to": "ada"}})

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"/jobs/{body['id']}"
    assert len(body["id"]) == 32
    assert body["name"] == "echo"
    assert body["payload"] == {"to": "ada"}
    assert body["queue"] == "default"
    assert body["status"] == "pending"
    assert body["attempts"] == 0
    assert body["run_at"] is None
    assert "token" not in body
    assert "worker" not in body


async def test_post_job_applies_defaults(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["priority"] == "normal"
    assert body["payload"] == {}
    assert body["max_retries"] == 3
    assert body["timeout"] == 300.0


async def test_post_job_takes_options(client: httpx.AsyncClient) -> None:
    request = {"name": "echo", "priority": "high", "max_retries": 0, "timeout": "90s"}

    response = await client.post("/jobs", json=request)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["priority"] == "high"
    assert body["max_retries"] == 0
    assert body["timeout"] == 90.0


@pytest.mark.parametrize("delay", ["30s", 30, 30.0])
async def test_post_job_with_delay_is_scheduled(client: httpx.AsyncClient, delay: object) -> None:
    response = await client.post("/jobs", json={"name": "echo", "delay": delay})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "scheduled"
    waited = datetime.fromisoformat(body["run_at"]) - datetime.fromisoformat(body["created_at"])
    assert timedelta(seconds=29) < waited < timedelta(seconds=31)


async def test_post_job_with_zero_delay_is_pending(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "delay": 0})

    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    assert response.json()["run_at"] is None


async def test_post_job_logs_and_notifies(
    client: httpx.AsyncClient, plugins: Plugins, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Job] = []

    class Observer:
        @hookimpl
        def bananas_job_enqueued(self, job: Job) -> None:
            seen.append(job)

    plugins.manager.register(Observer(), name="test-observer")
    caplog.set_level(logging.INFO, logger="bananas_core.client")

    response = await client.post("/jobs", json={"name": "echo", "priority": "low"})

    job_id = response.json()["id"]
    assert [job.id for job in seen] == [job_id]
    assert f"Enqueued job {job_id}:echo with priority low" in caplog.messages


async def test_post_unknown_handler_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "no.such.handler"})

    error = assert_error(response, 422, "unknown_handler")
    assert "'no.such.handler'" in error["message"]
    assert "echo" in error["message"]
    assert "Install the plugin" in error["message"]
    assert error["details"] == [{"field": "name", "message": "Unknown handler 'no.such.handler'."}]


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None])
async def test_post_payload_not_object_is_rejected(
    client: httpx.AsyncClient, payload: object
) -> None:
    response = await client.post("/jobs", json={"name": "echo", "payload": payload})

    error = assert_error(response, 422, "invalid_request")
    assert error["message"].startswith("payload: Input should be a valid dictionary")
    assert error["details"][0]["field"] == "payload"


async def test_post_unknown_priority_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "priority": "urgent"})

    error = assert_error(response, 422, "invalid_request")
    assert error["message"].startswith("priority: ")
    assert "'urgent'" in error["message"]
    assert "'high', 'normal' or 'low'" in error["message"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("delay", "soon", "invalid duration 'soon'"),
        ("delay", -5, "invalid duration -5: expected 0 or more seconds"),
        ("delay", 400 * 86400, "Expected a delay of 0 to 31,622,400 seconds (366 days), such as 10s or 2h (got 34560000)"),
        ("timeout", 0, "Expected a timeout of 0.001 to 604,800 seconds (7 days), such as 30s or 5m (got 0)"),
        ("timeout", "0.5ms", "(got '0.5ms')"),
        ("timeout", "8d", "Expected a timeout of 0.001 to 604,800 seconds"),
        ("max_retries", 101, "less than or equal to 100"),
        ("max_retries", -1, "greater than or equal to 0"),
        ("max_retries", True, "valid integer"),
        ("max_retries", 2.5, "valid integer"),
        ("name", "", "Expected a handler name of 1 to 128 letters"),
        ("name", "send email", "(got 'send email')"),
        ("queue", "bad queue!", "Expected a queue name of 1 to 64 letters, digits, '-', '_' or '.' (got 'bad queue!')"),
    ],
)
async def test_post_invalid_option_names_field(
    client: httpx.AsyncClient, field: str, value: object, expected: str
) -> None:
    response = await client.post("/jobs", json={"name": "echo", field: value})

    error = assert_error(response, 422, "invalid_request")
    assert error["message"].startswith(f"{field}: ")
    assert expected in error["message"]


async def test_post_missing_name_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"payload": {}})

    error = assert_error(response, 422, "invalid_request")
    assert error["message"] == "name: Field required"


async def test_post_extra_field_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "colour": "red"})

    error = assert_error(response, 422, "invalid_request")
    assert error["message"].startswith("colour: Unknown field.")
    assert (
        "name, payload, priority, delay, max_retries, timeout, queue, run_at, unique_key"
        in error["message"]
    )


async def test_post_lists_every_invalid_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "priority": "x", "payload": []})

    error = assert_error(response, 422, "invalid_request")
    assert sorted(detail["field"] for detail in error["details"]) == ["payload", "priority"]
    assert "1 more invalid field" in error["message"]


async def test_post_invalid_json_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs", content=b'{"name": "echo",', headers=JSON_HEADERS
    )

    error = assert_error(response, 422, "invalid_json")
    assert "not valid JSON" in error["message"]


async def test_post_non_utf8_body_is_rejected(client: httpx.AsyncClient) -> None:
    body = b'{"name": "echo", "payload": {"x": "\xff"}}'

    response = await client.post("/jobs", content=body, headers=JSON_HEADERS)

    error = assert_error(response, 422, "invalid_json")
    assert "not valid UTF-8" in error["message"]
    assert "0xff" in error["message"]


async def test_post_body_too_deep_to_parse_is_rejected(client: httpx.AsyncClient) -> None:
    # Within MAX_REQUEST_BYTES of the test app. Python 3.11's json module cannot parse this
    # depth (invalid_json); where it can, the payload's own depth limit applies (invalid_request).
    body = b'{"name": "echo", "payload": {"x": ' + b"[" * 995 + b"]" * 995 + b"}}"

    response = await client.post("/jobs", content=body, headers=JSON_HEADERS)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] in ("invalid_json", "invalid_request")
    assert "nested" in error["message"]


async def test_post_without_json_content_type_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs", content=b'{"name": "echo"}', headers={"Content-Type": "text/plain"}
    )

    error = assert_error(response, 422, "invalid_request")
    assert "Content-Type: application/json" in error["message"]
    assert "text/plain" in error["message"]


async def test_post_empty_body_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", headers=JSON_HEADERS)

    error = assert_error(response, 422, "invalid_request")
    assert "body is missing" in error["message"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"echo"'])
async def test_post_body_not_object_is_rejected(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/jobs", content=body, headers=JSON_HEADERS)

    error = assert_error(response, 422, "invalid_request")
    assert error["message"].startswith("body: ")


# Request body size limit


async def test_post_body_over_limit_is_rejected(client: httpx.AsyncClient) -> None:
    request = {"name": "echo", "payload": {"text": "x" * MAX_REQUEST_BYTES}}

    response = await client.post("/jobs", json=request)

    error = assert_error(response, 413, "payload_too_large")
    assert f"limit of {MAX_REQUEST_BYTES} bytes" in error["message"]
    assert "MAX_REQUEST_BYTES" in error["message"]


async def test_oversized_payload_gets_413(settings: Settings, backend: Backend, plugins: Plugins) -> None:
    # The body fits MAX_REQUEST_BYTES, but the second job's payload does not fit MAX_PAYLOAD_BYTES.
    app = create_app(settings.model_copy(update={"MAX_PAYLOAD_BYTES": 100}), backend, plugins)
    jobs = [{"name": "echo", "payload": {"text": "x" * 50}}, {"name": "echo", "payload": {"text": "x" * 100}}]

    async with make_client(app) as http:
        single = await http.post("/jobs", json=jobs[1])
        batch = await http.post("/jobs/batch", json={"jobs": jobs})

    error = assert_error(single, 413, "payload_too_large")
    assert "111 bytes as JSON, over MAX_PAYLOAD_BYTES=100" in error["message"]
    assert "raise MAX_PAYLOAD_BYTES" in error["message"]
    assert "payload of job 1: 111 bytes" in assert_error(batch, 413, "payload_too_large")["message"]
    assert (await backend.counts()).normal == 0


async def test_post_chunked_body_over_limit_is_rejected(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "echo", "payload": {"text": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}}'

    response = await client.post("/jobs", content=chunks(), headers=JSON_HEADERS)

    assert "content-length" not in response.request.headers
    error = assert_error(response, 413, "payload_too_large")
    assert f"limit of {MAX_REQUEST_BYTES} bytes" in error["message"]


async def test_post_chunked_body_under_limit_is_accepted(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "echo", '
        yield b'"payload": {"n": 1}}'

    response = await client.post("/jobs", content=chunks(), headers=JSON_HEADERS)

    assert response.status_code == 201, response.text
    assert response.json()["payload"] == {"n": 1}


# GET /jobs/{id}


async def test_get_job_returns_stored_job(client: httpx.AsyncClient) -> None:
    created = (await client.post("/jobs", json={"name": "echo", "payload": {"a": [1, {}]}})).json()

    response = await client.get(f"/jobs/{created['id']}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body == created
    assert set(body) == {
        "id", "name", "queue", "priority", "status", "attempts", "retries", "crashes", "max_retries",
        "timeout", "created_at", "started_at", "finished_at", "run_at", "error", "result",
        "payload", "progress", "progress_message", "cancel_requested_at",
    }


async def test_get_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs/0123456789abcdef0123456789abcdef")

    error = assert_error(response, 404, "not_found")
    assert "'0123456789abcdef0123456789abcdef'" in error["message"]


# GET /queues


async def test_queues_counts_jobs_by_priority(client: httpx.AsyncClient) -> None:
    for priority in ("high", "normal", "normal", "low", "low", "low"):
        await client.post("/jobs", json={"name": "echo", "priority": priority})
    await client.post("/jobs", json={"name": "echo", "delay": "1h"})

    response = await client.get("/queues")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "queues": [
            {
                "queue": "default",
                "high": 1,
                "normal": 2,
                "low": 3,
                "scheduled": 1,
                "processing": 0,
                "completed": 0,
                "dead": 0,
                "cancelled": 0,
            }
        ]
    }


# Health and readiness


async def test_healthz_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.fixture
async def unreachable_client(plugins: Plugins) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(UNREACHABLE_REDIS_URL, f"bananas-test-{uuid.uuid4().hex}")
    backend = create_backend(plugins.manager, settings)
    try:
        async with make_client(create_app(settings, backend, plugins)) as http:
            yield http
    finally:
        await backend.close()


async def test_readyz_without_redis_is_503(
    unreachable_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await unreachable_client.get("/readyz")

    error = assert_error(response, 503, "backend_unavailable")
    assert "Retry later" in error["message"]
    assert "127.0.0.1:1" in caplog.text
    assert error["request_id"] in caplog.text


async def test_outage_logs_one_warning_per_interval(
    unreachable_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("bananas_api.errors.time.monotonic", lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="bananas_api.errors")

    for _ in range(3):
        await unreachable_client.get("/readyz")
    clock[0] += 10
    last = await unreachable_client.get("/readyz")

    warnings = [record.getMessage() for record in caplog.records if record.name == "bananas_api.errors"]
    assert len(warnings) == 3
    assert warnings[1].startswith("2 more requests failed because the backend was unavailable, from ")
    assert last.headers["X-Request-ID"] in warnings[2]


async def test_readyz_times_out_as_503(
    client: httpx.AsyncClient, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hanging_ping() -> None:
        await anyio.sleep_forever()

    monkeypatch.setattr(backend, "ping", hanging_ping)
    monkeypatch.setattr("bananas_api.app.READY_TIMEOUT_SECONDS", 0.05)

    response = await client.get("/readyz")

    assert_error(response, 503, "backend_unavailable")


async def test_healthz_without_redis_is_ok(unreachable_client: httpx.AsyncClient) -> None:
    response = await unreachable_client.get("/healthz")

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "advice"),
    [
        ("POST", "/jobs", {"name": "echo"}, "send a unique_key (or an Idempotency-Key header)"),
        ("POST", "/jobs/batch", {"jobs": [{"name": "echo"}]}, "send a unique_key with each job"),
        ("POST", "/jobs/abc/cancel", None, None),
        ("GET", "/jobs/abc", None, None),
        ("GET", "/queues", None, None),
    ],
)
async def test_endpoints_without_redis_are_503(
    unreachable_client: httpx.AsyncClient, method: str, path: str, body: object, advice: str | None
) -> None:
    response = await unreachable_client.request(method, path, json=body)

    error = assert_error(response, 503, "backend_unavailable")
    if advice is None:
        assert "may have been stored" not in error["message"]
    else:
        assert advice in error["message"]


# Error shape and request ids


async def test_unknown_route_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nothing-here")

    error = assert_error(response, 404, "not_found")
    assert "GET /nothing-here" in error["message"]


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/jobs")

    error = assert_error(response, 405, "method_not_allowed")
    assert "DELETE" in error["message"]
    assert "POST" in error["message"]
    assert response.headers["Allow"] == "POST"


async def test_unexpected_error_is_500_without_traceback(
    client: httpx.AsyncClient, backend: Backend, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_get_job(job_id: str) -> Job:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(backend, "get_job", broken_get_job)

    response = await client.get("/jobs/abc")

    error = assert_error(response, 500, "internal_error")
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    assert error["request_id"] in error["message"]
    failures = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(failures) == 1
    assert error["request_id"] in failures[0].getMessage()
    assert failures[0].exc_info is not None


async def test_request_id_is_reused_when_safe(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs/missing", headers={"X-Request-ID": "trace-42.a_b"})

    assert response.headers["X-Request-ID"] == "trace-42.a_b"
    assert response.json()["error"]["request_id"] == "trace-42.a_b"


@pytest.mark.parametrize("incoming", ["has space", "x" * 129, "new\\nline", ""])
async def test_request_id_is_replaced_when_unsafe(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": incoming})

    assert response.headers["X-Request-ID"] != incoming
    assert len(response.headers["X-Request-ID"]) == 32


async def test_every_response_has_request_id(client: httpx.AsyncClient) -> None:
    first = await client.get("/healthz")
    second = await client.post("/jobs", json={"name": "echo"})

    assert len(first.headers["X-Request-ID"]) == 32
    assert len(second.headers["X-Request-ID"]) == 32
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


# OpenAPI


async def test_openapi_describes_jobs(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "bananas"
    assert schema["info"]["version"] == bananas_core.__version__
    assert "post" in schema["paths"]["/jobs"]
    assert "/jobs/{job_id}" in schema["paths"]
    request_schema = schema["components"]["schemas"]["JobRequest"]
    assert request_schema["examples"][0]["name"]
    assert request_schema["additionalProperties"] is False


# The real server


async def test_serve_api_serves_then_stops_on_cancel(plugins: Plugins) -> None:
    port = free_port()
    settings = make_settings(f"memory://test-{uuid.uuid4().hex}", "bananas-test", API_PORT=port)
    backend = create_backend(plugins.manager, settings)
    app = create_app(settings, backend, plugins)
    handler_before = signal.getsignal(signal.SIGINT)

    try:
        async with anyio.create_task_group() as services:
            start = functools.partial(serve_api, app, settings, install_signal_handlers=False)
            url = await services.start(start)

            async with httpx.AsyncClient(base_url=url) as http:
                health = await http.get("/healthz")
                created = await http.post("/jobs", json={"name": "echo"})
            services.cancel_scope.cancel()
    finally:
        await backend.close()

    assert url == f"http://127.0.0.1:{port}"
    assert health.status_code == 200
    assert created.status_code == 201
    assert not port_is_open(port)
    assert signal.getsignal(signal.SIGINT) is handler_before


async def test_serve_api_rejects_bodies_over_limit(plugins: Plugins) -> None:
    port = free_port()
    settings = make_settings(f"memory://test-{uuid.uuid4().hex}", "bananas-test", API_PORT=port)
    backend = create_backend(plugins.manager, settings)
    app = create_app(settings, backend, plugins)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "echo", "payload": {"text": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}}'

    try:
        async with anyio.create_task_group() as services:
            start = functools.partial(serve_api, app, settings, install_signal_handlers=False)
            url = await services.start(start)
            async with httpx.AsyncClient(base_url=url) as http:
                chunked = await http.post("/jobs", content=chunks(), headers=JSON_HEADERS)
                too_large = {"name": "echo", "payload": {"text": "x" * 4096}}
                declared = await http.post("/jobs", json=too_large)
                after = await http.post("/jobs", json={"name": "echo"})
            services.cancel_scope.cancel()
    finally:
        await backend.close()

    assert chunked.request.headers["Transfer-Encoding"] == "chunked"
    assert_error(chunked, 413, "payload_too_large")
    assert_error(declared, 413, "payload_too_large")
    assert after.status_code == 201


async def test_serve_api_port_in_use_raises(plugins: Plugins) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = make_settings(f"memory://test-{uuid.uuid4().hex}", "bananas-test", API_PORT=port)
        backend = create_backend(plugins.manager, settings)
        try:
            with pytest.raises(OSError, match=f"cannot listen on http://127.0.0.1:{port}"):
                app = create_app(settings, backend, plugins)
                await serve_api(app, settings, install_signal_handlers=False)
        finally:
            await backend.close()


async def test_run_api_stops_on_sigint(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = make_settings(f"memory://test-{uuid.uuid4().hex}", "bananas-test", API_PORT=port)
    caplog.set_level(logging.INFO)
    handler_before = signal.getsignal(signal.SIGINT)

    async with anyio.create_task_group() as services:
        services.start_soon(run_api, settings)
        with anyio.fail_after(10):
            while not port_is_open(port):
                await anyio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            created = await http.post("/jobs", json={"name": "echo"})

        # run_api installed its own SIGINT handler, which stops the server instead of raising.
        signal.raise_signal(signal.SIGINT)
        with anyio.fail_after(10):
            while port_is_open(port):
                await anyio.sleep(0.05)

    assert created.status_code == 201
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert f"API listening on http://127.0.0.1:{port}" in caplog.messages
    assert f"API on http://127.0.0.1:{port} stopped" in caplog.messages
    assert any("tests.handlers" in message for message in caplog.messages)


async def test_schema_invalid_payload_is_422_naming_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "greet", "payload": {"times": "many"}})

    error = assert_error(response, 422, "invalid_payload")
    fields = {detail["field"] for detail in error["details"]}
    assert fields == {"payload.name", "payload.times"}
    assert "greet" in error["message"]


async def test_handler_defaults_apply_over_http(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "greet", "payload": {"name": "Ada"}})

    assert response.status_code == 201, response.text
    assert response.json()["priority"] == "high"
    assert response.json()["max_retries"] == 7


async def test_schedules_list_pause_and_resume(settings: Settings, backend: Backend, plugins: Plugins) -> None:
    schedule = '[{"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "job": "echo"}]'
    app = create_app(settings.model_copy(update={"PERIODIC_JOBS": schedule}), backend, plugins)

    async with make_client(app) as http:
        listed = await http.get("/schedules")
        paused = await http.post("/schedules/nightly/pause")
        resumed = await http.post("/schedules/nightly/resume")
        unknown = await http.post("/schedules/weekly/pause")

    assert listed.status_code == 200, listed.text
    [entry] = listed.json()["schedules"]
    assert (entry["name"], entry["cron"], entry["timezone"], entry["paused"]) == (
        "nightly", "0 3 * * *", "Europe/Berlin", False,
    )
    assert entry["last_tick"] is None
    assert paused.json()["paused"] is True
    assert resumed.json()["paused"] is False
    error = assert_error(unknown, 404, "not_found")
    assert "'weekly'" in error["message"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"s": "\\ud800"}', "surrogate"),
        ('{"x": NaN}', "payload.x is nan, which is not a JSON number"),
        ('{"x": {"y": [1, -Infinity]}}', "payload.x.y[1] is -inf, which is not a JSON number"),
        ('{"n": ' + "[" * 100 + "]" * 100 + "}", "nested more than 64 levels deep"),
    ],
)
async def test_payload_that_is_not_plain_json_is_422(
    client: httpx.AsyncClient, payload: str, expected: str
) -> None:
    body = '{"name": "echo", "payload": ' + payload + "}"

    response = await client.post("/jobs", content=body, headers={"content-type": "application/json"})
    listed = await client.get("/queues")

    error = assert_error(response, 422, "invalid_request")
    assert expected in error["message"]
    assert listed.json()["queues"][0]["normal"] == 0


async def test_idempotency_key_reused_for_other_payload_is_409(client: httpx.AsyncClient) -> None:
    first = await client.post("/jobs", json={"name": "echo", "payload": {"order": 1}}, headers={"Idempotency-Key": "order-1"})
    again = await client.post("/jobs", json={"name": "echo", "payload": {"order": 1}}, headers={"Idempotency-Key": "order-1"})
    other = await client.post("/jobs", json={"name": "echo", "payload": {"order": 2}}, headers={"Idempotency-Key": "order-1"})

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    error = assert_error(other, 409, "conflict")
    assert "'order-1'" in error["message"]
    assert first.json()["id"] in error["message"]


async def test_timeout_below_one_millisecond_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "timeout": 0.0001})

    error = assert_error(response, 422, "invalid_request")
    assert "0.0001" in error["message"]


def test_listening_socket_disables_nagle() -> None:
    from bananas_api.server import _bind

    server = _bind("127.0.0.1", 0)
    try:
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.close()
