"""The HTTP API's batch, idempotency, listing, control, wait, workers, auth, rate limit and
metrics endpoints, on the embedded backend and on real Redis."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from bananas_api import create_app, serve_api
from bananas_core.backends import create_backend
from bananas_core.backends.base import Backend, WorkerInfo
from bananas_core.errors import ConfigError
from bananas_core.job import JobError, now_ms
from bananas_core.metrics import Outcome
from bananas_core.plugins import Plugins, load_plugins
from bananas_core.settings import Settings
from tests.test_api import UNREACHABLE_REDIS_URL, assert_error, make_client, make_settings

pytestmark = pytest.mark.anyio

READ_KEY = "read-key-for-tests"
WRITE_KEY = "write-key-for-tests"
BOTH_KEY = "both-key-for-tests"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


API_KEYS = (
    f"sha256:{digest(READ_KEY)}:read,sha256:{digest(WRITE_KEY)}:write,sha256:{digest(BOTH_KEY)}"
)


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(["tests.handlers"])


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """Yield a backend URL and a key prefix of this test's own; delete its keys afterwards."""
    prefix = f"bananas-test-{uuid.uuid4().hex}"
    if request.param == "memory":
        yield f"memory://test-{uuid.uuid4().hex}", prefix
        return
    url = request.getfixturevalue("redis_url")
    yield url, prefix
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class Api:
    """An in-process API with its backend, built from settings overrides."""

    def __init__(self, settings: Settings, backend: Backend, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.backend = backend
        self.http = http


@pytest.fixture
async def make_api(
    store: tuple[str, str], plugins: Plugins
) -> AsyncIterator[Any]:
    opened: list[tuple[Backend, httpx.AsyncClient]] = []

    async def make(**overrides: Any) -> Api:
        settings = make_settings(store[0], store[1], **overrides)
        backend = create_backend(plugins.manager, settings)
        http = make_client(create_app(settings, backend, plugins))
        opened.append((backend, http))
        return Api(settings, backend, http)

    yield make
    for backend, http in opened:
        await http.aclose()
        await backend.close()


@pytest.fixture
async def api(make_api: Any) -> Api:
    return await make_api()


async def submit(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.http.post("/jobs", json={"name": "echo", **body})
    assert response.status_code == 201, response.text
    return response.json()


async def make_dead(api: Api, name: str = "echo", queue: str = "default") -> str:
    """Submit a job on ``queue``, claim it and fail it for good; return its id."""
    job_id = (await submit(api, name=name, queue=queue))["id"]
    worker_backend = create_backend(load_plugins(["tests.handlers"]).manager,
                                    api.settings.model_copy(update={"QUEUE": queue}))
    try:
        [job] = await worker_backend.claim(1, "test-worker", 30)
        assert job.id == job_id
        await worker_backend.fail(job, JobError(type="RuntimeError", message="boom"), None)
    finally:
        await worker_backend.close()
    return job_id


# Per-job options and the queue field


async def test_submit_takes_queue_and_run_at(api: Api) -> None:
    run_at = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)

    body = await submit(api, queue="email", run_at=run_at.isoformat(), priority="high")

    assert body["queue"] == "email"
    assert body["status"] == "scheduled"
    assert datetime.fromisoformat(body["run_at"]) == run_at
    assert body["priority"] == "high"


async def test_submit_run_at_in_past_runs_now(api: Api) -> None:
    body = await submit(api, run_at="2001-01-01T00:00:00")

    assert body["status"] == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"queue": "bad queue"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"delay": 5, "run_at": "2001-01-01T00:00:00Z"}, "body"),
        ({"run_at": "2999-01-01T00:00:00Z"}, "run_at"),
        ({"unique_key": "has space"}, "unique_key"),
        ({"priority": 5}, "priority"),
    ],
)
async def test_submit_invalid_option_is_422(api: Api, body: dict[str, Any], field: str) -> None:
    response = await api.http.post("/jobs", json={"name": "echo", **body})

    error = assert_error(response, 422, "invalid_request")
    assert error["details"][0]["field"] == field


# Idempotency


async def test_idempotency_header_returns_first_job(api: Api) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = await api.http.post("/jobs", json={"name": "echo"}, headers=headers)
    second = await api.http.post("/jobs", json={"name": "echo"}, headers=headers)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["Location"] == f"/jobs/{first.json()['id']}"
    counts = (await api.http.get("/queues")).json()["queues"][0]
    assert counts["normal"] == 1


async def test_idempotency_body_key_matches_header(api: Api) -> None:
    first = await submit(api, unique_key="k-1")
    second = await api.http.post("/jobs", json={"name": "echo"}, headers={"Idempotency-Key": "k-1"})

    assert second.json()["id"] == first["id"]


async def test_idempotency_header_and_body_differ(api: Api) -> None:
    response = await api.http.post(
        "/jobs", json={"name": "echo", "unique_key": "a"}, headers={"Idempotency-Key": "b"}
    )

    assert_error(response, 422, "invalid_request")


async def test_idempotency_window_expires(make_api: Any) -> None:
    api = await make_api(IDEMPOTENCY_WINDOW=1)
    first = await submit(api, unique_key="short")
    await anyio.sleep(1.2)

    second = await submit(api, unique_key="short")

    assert second["id"] != first["id"]


# Batches


async def test_batch_stores_every_job(api: Api) -> None:
    jobs = [{"name": "echo", "payload": {"n": n}} for n in range(3)]
    jobs.append({"name": "echo", "unique_key": "dup"})
    jobs.append({"name": "echo", "unique_key": "dup"})

    response = await api.http.post("/jobs/batch", json={"jobs": jobs})

    assert response.status_code == 201, response.text
    items = response.json()["jobs"]
    assert [item["created"] for item in items] == [True, True, True, True, False]
    assert [item["job"]["payload"] for item in items[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert items[4]["job"]["id"] == items[3]["job"]["id"]
    assert (await api.http.get("/queues")).json()["queues"][0]["normal"] == 4


async def test_batch_with_unknown_handler_stores_nothing(api: Api) -> None:
    jobs = [{"name": "echo"}, {"name": "nope"}]

    response = await api.http.post("/jobs/batch", json={"jobs": jobs})

    error = assert_error(response, 422, "unknown_handler")
    assert error["details"][0]["field"] == "jobs.1.name"
    assert (await api.http.get("/queues")).json()["queues"][0]["normal"] == 0


async def test_batch_over_limit_is_422(make_api: Any) -> None:
    api = await make_api(MAX_BATCH_JOBS=2)

    response = await api.http.post("/jobs/batch", json={"jobs": [{"name": "echo"}] * 3})

    error = assert_error(response, 422, "invalid_request")
    assert "MAX_BATCH_JOBS=2" in error["message"]


async def test_batch_across_queues_is_422(api: Api) -> None:
    jobs = [{"name": "echo", "queue": "a"}, {"name": "echo", "queue": "b"}]

    response = await api.http.post("/jobs/batch", json={"jobs": jobs})

    error = assert_error(response, 422, "invalid_request")
    assert "a, b" in error["message"]


async def test_batch_empty_is_422(api: Api) -> None:
    response = await api.http.post("/jobs/batch", json={"jobs": []})

    assert_error(response, 422, "invalid_request")


# Listing with a cursor


async def test_list_pages_through_every_job(api: Api) -> None:
    created = {(await submit(api, payload={"n": n}))["id"] for n in range(7)}

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await api.http.get("/jobs", params=params)).json()
        assert len(page["jobs"]) <= 3
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(seen) == sorted(created)


async def test_list_filters_by_status_name_queue(api: Api) -> None:
    scheduled = await submit(api, delay="1h")
    await submit(api)
    other_name = await submit(api, name="record", payload={"tag": "x"})
    other_queue = await submit(api, queue="email")

    by_status = (await api.http.get("/jobs", params={"status": "scheduled"})).json()
    by_name = (await api.http.get("/jobs", params={"name": "record"})).json()
    by_queue = (await api.http.get("/jobs", params={"queue": "email"})).json()

    assert [job["id"] for job in by_status["jobs"]] == [scheduled["id"]]
    assert [job["id"] for job in by_name["jobs"]] == [other_name["id"]]
    assert [job["id"] for job in by_queue["jobs"]] == [other_queue["id"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"cursor": "nonsense"}, "cursor"), ({"limit": 0}, "limit"), ({"status": "lost"}, "status")],
)
async def test_list_invalid_parameter_is_422(api: Api, params: dict[str, Any], field: str) -> None:
    response = await api.http.get("/jobs", params=params)

    error = assert_error(response, 422, "invalid_request")
    assert error["details"][0]["field"] == field


# Counts


async def test_queues_lists_every_queue(api: Api) -> None:
    await submit(api, queue="email", priority="high")
    await submit(api)

    queues = (await api.http.get("/queues")).json()["queues"]

    assert [queue["queue"] for queue in queues] == ["default", "email"]
    assert queues[1]["high"] == 1
    assert queues[0]["normal"] == 1


# Cancellation


@pytest.mark.parametrize("options", [{}, {"delay": "1h"}])
async def test_cancel_queued_job_never_starts(api: Api, options: dict[str, Any]) -> None:
    job_id = (await submit(api, **options))["id"]

    response = await api.http.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "cancelled"
    assert response.json()["job"]["status"] == "cancelled"
    assert await api.backend.claim(10, "test-worker", 30) == []
    counts = (await api.http.get("/queues")).json()["queues"][0]
    assert counts["cancelled"] == 1
    assert counts["normal"] == 0
    assert counts["scheduled"] == 0


async def test_cancel_running_job_stores_request(api: Api) -> None:
    job_id = (await submit(api))["id"]
    [job] = await api.backend.claim(1, "test-worker", 30)

    response = await api.http.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "requested"
    assert response.json()["job"]["cancel_requested_at"] is not None
    assert await api.backend.cancel_requests([job]) == [job_id]
    assert (await api.http.get(f"/jobs/{job_id}")).json()["cancel_requested_at"] is not None

    assert await api.backend.finish_cancelled(job)
    assert (await api.http.get(f"/jobs/{job_id}")).json()["status"] == "cancelled"
    assert await api.backend.cancel_requests([job]) == []


async def test_cancel_finished_job_is_409(api: Api) -> None:
    job_id = (await submit(api))["id"]
    await api.http.post(f"/jobs/{job_id}/cancel")

    response = await api.http.post(f"/jobs/{job_id}/cancel")

    error = assert_error(response, 409, "conflict")
    assert "already cancelled" in error["message"]


async def test_cancel_unknown_job_is_404(api: Api) -> None:
    response = await api.http.post(f"/jobs/{uuid.uuid4().hex}/cancel")

    assert_error(response, 404, "not_found")


# Dead letter queue


async def test_retry_dead_job_requeues_it(api: Api) -> None:
    job_id = await make_dead(api)

    response = await api.http.post(f"/jobs/{job_id}/retry")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    assert response.json()["retries"] == 0
    counts = (await api.http.get("/queues")).json()["queues"][0]
    assert counts["dead"] == 0
    assert counts["normal"] == 1


async def test_retry_job_not_dead_is_409(api: Api) -> None:
    job_id = (await submit(api))["id"]

    response = await api.http.post(f"/jobs/{job_id}/retry")

    error = assert_error(response, 409, "conflict")
    assert "pending" in error["message"]


async def test_retry_unknown_job_is_404(api: Api) -> None:
    assert_error(await api.http.post(f"/jobs/{uuid.uuid4().hex}/retry"), 404, "not_found")


async def test_requeue_dead_filters_by_name(api: Api) -> None:
    await make_dead(api, name="echo")
    await make_dead(api, name="fail")
    await make_dead(api, name="echo")

    response = await api.http.post("/queues/default/dead/requeue", params={"name": "echo"})

    assert response.json() == {"count": 2}
    counts = (await api.http.get("/queues")).json()["queues"][0]
    assert counts["dead"] == 1
    assert counts["normal"] == 2


async def test_purge_dead_deletes_jobs(api: Api) -> None:
    dead_id = await make_dead(api)
    await make_dead(api, queue="email")

    response = await api.http.delete("/queues/default/dead")

    assert response.json() == {"count": 1}
    assert_error(await api.http.get(f"/jobs/{dead_id}"), 404, "not_found")
    queues = {q["queue"]: q for q in (await api.http.get("/queues")).json()["queues"]}
    assert queues["email"]["dead"] == 1


async def test_dead_invalid_queue_is_422(api: Api) -> None:
    response = await api.http.delete("/queues/bad%20queue/dead")

    assert_error(response, 422, "invalid_request")


# Waiting


async def test_wait_returns_when_job_finishes(api: Api) -> None:
    job_id = (await submit(api))["id"]
    [job] = await api.backend.claim(1, "test-worker", 30)

    async def finish_later() -> None:
        await anyio.sleep(0.3)
        await api.backend.complete(job, {"ok": True})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(finish_later)
        started = anyio.current_time()
        response = await api.http.get(f"/jobs/{job_id}/wait", params={"timeout": 5})
        waited = anyio.current_time() - started

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert response.json()["result"] == {"ok": True}
    assert waited < 2.5


async def test_wait_wakes_on_cancel_at_once(api: Api) -> None:
    job_id = (await submit(api, delay="1h"))["id"]

    async def cancel_later() -> None:
        await anyio.sleep(0.2)
        await api.http.post(f"/jobs/{job_id}/cancel")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(cancel_later)
        started = anyio.current_time()
        response = await api.http.get(f"/jobs/{job_id}/wait", params={"timeout": 5})
        waited = anyio.current_time() - started

    assert response.json()["status"] == "cancelled"
    assert waited < 0.9


async def test_wait_times_out_with_current_job(api: Api) -> None:
    job_id = (await submit(api))["id"]

    response = await api.http.get(f"/jobs/{job_id}/wait", params={"timeout": 0.2})

    assert response.status_code == 200
    assert response.json()["status"] == "pending"


async def test_wait_takes_duration_timeout(api: Api) -> None:
    job_id = (await submit(api))["id"]
    started = anyio.current_time()

    response = await api.http.get(f"/jobs/{job_id}/wait", params={"timeout": "200ms"})

    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert 0.15 < anyio.current_time() - started < 2


@pytest.mark.parametrize("timeout", [-1, 61, "soon", "2m", "9" * 400])
async def test_wait_invalid_timeout_is_422(api: Api, timeout: object) -> None:
    response = await api.http.get(f"/jobs/{uuid.uuid4().hex}/wait", params={"timeout": timeout})

    error = assert_error(response, 422, "invalid_request")
    assert error["details"][0]["field"] == "timeout"


async def test_wait_unknown_job_is_404(api: Api) -> None:
    response = await api.http.get(f"/jobs/{uuid.uuid4().hex}/wait", params={"timeout": 0})

    assert_error(response, 404, "not_found")


# Workers


async def test_workers_lists_live_registrations(api: Api) -> None:
    info = WorkerInfo("host:1:abc", "default", ["echo"], 5, 2, "host", 1, now_ms(), 0)
    await api.backend.register_worker(info, ttl=30)
    await api.backend.register_worker(
        WorkerInfo("host:2:def", "email", ["echo"], 1, 0, "host", 2, now_ms(), 0), ttl=0.05
    )
    await anyio.sleep(0.2)

    workers = (await api.http.get("/workers")).json()["workers"]

    assert [worker["id"] for worker in workers] == ["host:1:abc"]
    assert workers[0]["handlers"] == ["echo"]
    assert workers[0]["concurrency"] == 5
    assert workers[0]["running"] == 2
    assert workers[0]["last_heartbeat"]

    await api.backend.deregister_worker("host:1:abc")
    assert (await api.http.get("/workers")).json()["workers"] == []


# Authentication


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("GET", "/queues", None, 401),
        ("GET", "/queues", "wrong", 401),
        ("GET", "/queues", READ_KEY, 200),
        ("GET", "/queues", WRITE_KEY, 403),
        ("GET", "/queues", BOTH_KEY, 200),
        ("POST", "/jobs", READ_KEY, 403),
        ("POST", "/jobs", WRITE_KEY, 201),
        ("GET", "/metrics", None, 401),
        ("GET", "/healthz", None, 200),
        ("GET", "/readyz", None, 200),
    ],
)
async def test_auth_checks_key_and_scope(
    make_api: Any, method: str, path: str, key: str | None, status: int
) -> None:
    api = await make_api(API_KEYS=API_KEYS)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    response = await api.http.request(method, path, json={"name": "echo"}, headers=headers)

    assert response.status_code == status, response.text
    if status == 401:
        error = assert_error(response, 401, "unauthorized")
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert "Bearer" in error["message"] or "API_KEYS" in error["message"]
    if status == 403:
        assert_error(response, 403, "forbidden")


async def test_serve_refuses_public_address_without_keys(store: tuple[str, str], plugins: Plugins) -> None:
    settings = make_settings(store[0], store[1], API_HOST="0.0.0.0")
    backend = create_backend(plugins.manager, settings)
    try:
        with pytest.raises(ConfigError, match="API_INSECURE=true"):
            await serve_api(create_app(settings, backend, plugins), settings, install_signal_handlers=False)
    finally:
        await backend.close()


# Rate limiting


async def test_rate_limit_returns_429_with_retry_after(make_api: Any) -> None:
    api = await make_api(RATE_LIMIT=0.5, RATE_LIMIT_BURST=2, API_KEYS=API_KEYS)
    headers = {"Authorization": f"Bearer {READ_KEY}"}

    statuses = [(await api.http.get("/queues", headers=headers)).status_code for _ in range(3)]
    limited = await api.http.get("/queues", headers=headers)
    other_key = await api.http.get("/queues", headers={"Authorization": f"Bearer {BOTH_KEY}"})

    assert statuses == [200, 200, 429]
    error = assert_error(limited, 429, "rate_limited")
    assert "Retry after" in error["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    assert other_key.status_code == 200


# Metrics


async def test_metrics_exports_queue_state_and_counters(api: Api) -> None:
    job_id = (await submit(api, priority="high"))["id"]
    await submit(api, queue="email")
    await api.http.get("/jobs/missing")
    job = await api.backend.get_job(job_id)
    await api.backend.record_job(job, Outcome.completed.value, 0.2, 3.0)

    response = await api.http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'bananas_queue_jobs{queue="default",state="high"} 1.0' in text
    assert 'bananas_queue_jobs{queue="email",state="normal"} 1.0' in text
    assert 'bananas_queue_oldest_job_age_seconds{priority="high",queue="default"}' in text
    assert 'bananas_api_rejections_total{status="404"} 1.0' in text
    assert 'bananas_jobs_total{name="echo",outcome="completed",queue="default"} 1.0' in text
    assert 'bananas_job_run_seconds_bucket{le="0.5",name="echo",queue="default"} 1.0' in text
    assert 'bananas_job_run_seconds_bucket{le="0.1",name="echo",queue="default"} 0.0' in text
    assert 'bananas_job_wait_seconds_sum{name="echo",queue="default"} 3.0' in text
    assert job_id not in text


# Backend failures


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/jobs/batch"),
        ("GET", "/jobs"),
        ("GET", "/jobs/abc/wait"),
        ("POST", "/jobs/abc/cancel"),
        ("POST", "/jobs/abc/retry"),
        ("POST", "/queues/default/dead/requeue"),
        ("DELETE", "/queues/default/dead"),
        ("GET", "/workers"),
        ("GET", "/metrics"),
    ],
)
async def test_new_endpoints_without_redis_are_503(plugins: Plugins, method: str, path: str) -> None:
    settings = make_settings(UNREACHABLE_REDIS_URL, f"bananas-test-{uuid.uuid4().hex}")
    backend = create_backend(plugins.manager, settings)
    try:
        async with make_client(create_app(settings, backend, plugins)) as http:
            response = await http.request(method, path, json={"jobs": [{"name": "echo"}]})
    finally:
        await backend.close()

    assert_error(response, 503, "backend_unavailable")
