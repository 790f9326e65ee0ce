"""The FastAPI application: submit, read, control and wait for jobs, and report on queues,
workers and health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import bananas_core
from bananas_api.auth import READ, WRITE, require_scope
from bananas_api.errors import (
    ApiError,
    ErrorDetail,
    ErrorResponse,
    UnknownHandler,
    install_error_handlers,
    sentence,
)
from bananas_api.metrics import ApiMetrics, RejectionCounterMiddleware
from bananas_api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from bananas_api.models import (
    DURATION_PATTERN,
    QUEUE_PATTERN,
    UNIQUE_KEY_PATTERN,
    BatchRequest,
    BatchResponse,
    CancelResponse,
    CountResponse,
    JobListResponse,
    JobRequest,
    JobResponse,
    QueueLengths,
    QueuesResponse,
    ScheduleListResponse,
    ScheduleResponse,
    StatusResponse,
    SubmittedJob,
    WorkerResponse,
    WorkersResponse,
)
from bananas_core.backends.base import Backend
from bananas_core.client import MAX_LIST_LIMIT, Client, JobSpec
from bananas_core.durations import parse_duration
from bananas_core.errors import (
    BackendError,
    BananasError,
    InvalidPayload,
    JobConflict,
    PayloadTooLarge,
    ScheduleNotFound,
)
from bananas_core.job import Job, JobStatus, now_ms
from bananas_core.periodic import collect_schedules, list_schedules, set_schedule_paused
from bananas_core.plugins import Plugins, add_plugin_routes, service_lifecycle
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

# Readiness probes time out after a few seconds (a Kubernetes probe's timeoutSeconds
# defaults to 1), so a ping that hangs on an unreachable host must not outlive them by much.
READY_TIMEOUT_SECONDS = 2.0


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorResponse, "description": description}


_BACKEND_DOWN = {503: _error("The backend (Redis) is unreachable or failed. Retry later.")}
_GUARDED = {
    401: _error("API_KEYS is set and the request has no valid bearer key."),
    403: _error("The key lacks the scope this endpoint needs."),
    429: {
        "model": ErrorResponse,
        "description": "The key is over RATE_LIMIT. Retry after the Retry-After seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
    },
    **_BACKEND_DOWN,
}
_INVALID = {422: _error("A parameter or the body is invalid.")}
_NOT_FOUND = {404: _error("No job has this id.")}

QueueName = Annotated[str, Path(pattern=QUEUE_PATTERN, description="Name of a queue.")]
NameFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=128, description="Only the jobs of this handler name."),
]


def create_app(settings: Settings, backend: Backend, plugins: Plugins) -> FastAPI:
    """Build the API application on ``backend``, accepting jobs for the handlers in ``plugins``.

    The caller owns ``backend`` and closes it after the server stops.
    """
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifecycle(plugins.manager, "api", app=app):
            yield

    app = FastAPI(
        lifespan=lifespan,
        title="bananas",
        version=bananas_core.__version__,
        description=(
            "Submit jobs for handlers provided by plugins, follow and control them. "
            "When API_KEYS is set, every endpoint except /healthz and /readyz needs a bearer "
            "key: GET endpoints the read scope, the others the write scope."
        ),
    )
    client = Client(settings, plugins=plugins, backend=backend)
    metrics = ApiMetrics()
    install_error_handlers(app, list(JobRequest.model_fields))
    # Middleware added last runs first: request ids wrap everything, including the 413, and
    # the rejection counter counts the 413 too.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.MAX_REQUEST_BYTES)
    app.add_middleware(RejectionCounterMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)

    read = [Depends(require_scope(settings, backend, READ))]
    write = [Depends(require_scope(settings, backend, WRITE))]
    _add_submit_routes(app, settings, client, plugins, write)
    _add_read_routes(app, settings, client, read)
    _add_control_routes(app, client, write)
    _add_operation_routes(app, settings, client, metrics, read)
    _add_schedule_routes(app, settings, backend, plugins, read, write)
    add_plugin_routes(app, plugins.manager, settings, write)
    _list_handler_names(app, plugins)
    return app


def _add_schedule_routes(
    app: FastAPI, settings: Settings, backend: Backend, plugins: Plugins,
    read: list[object], write: list[object],
) -> None:
    schedules = collect_schedules(plugins.manager, settings, plugins.registry)

    @app.get(
        "/schedules",
        response_model=ScheduleListResponse,
        summary="List the periodic schedules with their last and next run",
        dependencies=read,
        responses=_GUARDED,
    )
    async def get_schedules() -> ScheduleListResponse:
        states = await list_schedules(backend, schedules)
        return ScheduleListResponse(schedules=[ScheduleResponse.from_state(state) for state in states])

    async def set_paused(name: str, paused: bool) -> ScheduleResponse:
        try:
            state = await set_schedule_paused(backend, schedules, name, paused)
        except ScheduleNotFound as error:
            raise ApiError(404, "not_found", sentence(str(error))) from error
        return ScheduleResponse.from_state(state)

    @app.post(
        "/schedules/{name}/pause",
        response_model=ScheduleResponse,
        summary="Pause a schedule: its ticks enqueue nothing until it is resumed",
        dependencies=write,
        responses={404: _error("No schedule has this name."), **_GUARDED},
    )
    async def pause(name: str) -> ScheduleResponse:
        return await set_paused(name, True)

    @app.post(
        "/schedules/{name}/resume",
        response_model=ScheduleResponse,
        summary="Resume a paused schedule from its next tick",
        dependencies=write,
        responses={404: _error("No schedule has this name."), **_GUARDED},
    )
    async def resume(name: str) -> ScheduleResponse:
        return await set_paused(name, False)


def _list_handler_names(app: FastAPI, plugins: Plugins) -> None:
    # The schema lists the installed handler names, so clients and schema-driven tools see
    # which names this API accepts.
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_schema()
            name = schema["components"]["schemas"]["JobRequest"]["properties"]["name"]
            name["enum"] = plugins.registry.names()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_submit_routes(
    app: FastAPI, settings: Settings, client: Client, plugins: Plugins, guard: list[object]
) -> None:
    def to_spec(index: int, body: JobRequest, unique_key: str | None) -> JobSpec:
        if body.name not in plugins.registry:
            if index < 0:
                raise UnknownHandler(body.name, plugins.registry.names())
            raise ApiError(
                422,
                "unknown_handler",
                f"Job {index}: no installed plugin registers a handler named {body.name!r}. "
                f"Installed handlers: {', '.join(plugins.registry.names()) or 'none'}.",
                details=[ErrorDetail(field=f"jobs.{index}.name", message=f"Unknown handler {body.name!r}.")],
            )
        return JobSpec(
            body.name,
            body.payload,
            queue=body.queue,
            priority=body.priority,
            delay=body.delay or 0.0,
            run_at=body.run_at,
            max_retries=body.max_retries,
            timeout=body.timeout,
            unique_key=unique_key,
        )

    @app.post(
        "/jobs",
        status_code=201,
        response_model=JobResponse,
        summary="Submit a job",
        dependencies=guard,
        responses={
            200: {"model": JobResponse, "description": "The idempotency key was used before: "
                  "this is the job the first submission created."},
            201: {
                "description": "The job is stored.",
                "headers": {
                    "Location": {"description": "Path of the job.", "schema": {"type": "string"}}
                },
            },
            409: _error("The idempotency key was used before for another name or payload."),
            413: _error("The body is over MAX_REQUEST_BYTES, or a payload is over MAX_PAYLOAD_BYTES."),
            422: _error("The body is invalid, or no installed plugin handles the job name."),
            **_GUARDED,
        },
    )
    async def submit_job(
        body: JobRequest,
        request: Request,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                pattern=UNIQUE_KEY_PATTERN,
                description="Same as unique_key in the body.",
            ),
        ] = None,
    ) -> JobResponse:
        if idempotency_key and body.unique_key and idempotency_key != body.unique_key:
            raise ApiError(
                422,
                "invalid_request",
                "The Idempotency-Key header and unique_key differ. Send one of them, or the same "
                "value in both.",
                details=[ErrorDetail(field="unique_key", message="Differs from Idempotency-Key.")],
            )
        spec = to_spec(-1, body, idempotency_key or body.unique_key)
        submission = (await _submit(client, [spec]))[0]
        if not submission.created:
            response.status_code = 200
        root_path = request.scope.get("root_path", "")
        job_path = app.url_path_for("get_job", job_id=submission.job.id)
        response.headers["Location"] = f"{root_path}{job_path}"
        return JobResponse.from_job(submission.job)

    @app.post(
        "/jobs/batch",
        status_code=201,
        response_model=BatchResponse,
        summary="Submit a batch of jobs: all are stored, or none is",
        dependencies=guard,
        responses={
            409: _error("A unique key was used before for another name or payload."),
            413: _error("The body is over MAX_REQUEST_BYTES, or a payload is over MAX_PAYLOAD_BYTES."),
            422: _error("A job is invalid, the batch is over MAX_BATCH_JOBS, or its jobs name "
                        "different queues. Nothing was stored."),
            **_GUARDED,
        },
    )
    async def submit_batch(body: BatchRequest) -> BatchResponse:
        if len(body.jobs) > settings.MAX_BATCH_JOBS:
            raise ApiError(
                422,
                "invalid_request",
                f"The batch has {len(body.jobs)} jobs, over the limit of MAX_BATCH_JOBS="
                f"{settings.MAX_BATCH_JOBS}. Split it into smaller batches.",
                details=[ErrorDetail(field="jobs", message=f"At most {settings.MAX_BATCH_JOBS} jobs.")],
            )
        specs = [to_spec(index, job, job.unique_key) for index, job in enumerate(body.jobs)]
        submissions = await _submit(client, specs)
        return BatchResponse(
            jobs=[SubmittedJob(created=s.created, job=JobResponse.from_job(s.job)) for s in submissions]
        )


def _payload_field(path: object) -> str:
    # A rule on the whole payload (a model validator) has an empty path.
    return f"payload.{path}" if path else "payload"


async def _submit(client: Client, specs: list[JobSpec]) -> list:  # type: ignore[type-arg]
    try:
        return await client.submit_batch(specs)
    except (BackendError, JobConflict):
        raise
    except InvalidPayload as error:
        # The handler's schema rejected the payload: name each field, as for any 422.
        raise ApiError(
            422,
            "invalid_payload",
            sentence(str(error)),
            details=[
                ErrorDetail(field=_payload_field(problem["field"]), message=str(problem["message"]))
                for problem in error.errors
            ],
        ) from error
    except PayloadTooLarge as error:
        raise ApiError(413, "payload_too_large", sentence(str(error))) from error
    except BananasError as error:
        raise ApiError(422, "invalid_request", sentence(str(error))) from error


def _add_read_routes(app: FastAPI, settings: Settings, client: Client, guard: list[object]) -> None:
    @app.get(
        "/jobs",
        response_model=JobListResponse,
        summary="List the jobs of a queue, filtered by status and name, one page at a time",
        dependencies=guard,
        responses={**_INVALID, **_GUARDED},
    )
    async def list_jobs(
        queue: Annotated[
            str | None, Query(pattern=QUEUE_PATTERN, description="Queue to list. Defaults to QUEUE.")
        ] = None,
        status: Annotated[JobStatus | None, Query(description="Only jobs with this status.")] = None,
        name: NameFilter = None,
        cursor: Annotated[
            str | None,
            Query(max_length=64, description="next_cursor of the previous page; omit for the first."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="Jobs per page, at most.")] = 100,
    ) -> JobListResponse:
        try:
            page = await client.list_jobs(
                queue=queue, status=status, name=name, cursor=cursor, limit=limit
            )
        except BackendError:
            raise
        except BananasError as error:
            raise ApiError(
                422,
                "invalid_request",
                sentence(str(error)),
                details=[ErrorDetail(field="cursor", message="Invalid cursor.")],
            ) from error
        return JobListResponse(
            jobs=[JobResponse.from_job(job) for job in page.jobs], next_cursor=page.next_cursor
        )

    @app.get(
        "/jobs/{job_id}",
        response_model=JobResponse,
        summary="Read a job",
        dependencies=guard,
        responses={**_NOT_FOUND, **_GUARDED},
    )
    async def get_job(job_id: str) -> JobResponse:
        return await _job_response(client, await client.get_job(job_id))

    @app.get(
        "/jobs/{job_id}/wait",
        response_model=JobResponse,
        summary="Wait until a job is completed, dead or cancelled, or the timeout passes",
        description="Returns the job as soon as it reaches a final status, or when the timeout "
        "passes with the job as it is then: check status. Results stay readable for "
        "COMPLETED_TTL.",
        dependencies=guard,
        responses={**_NOT_FOUND, **_INVALID, **_GUARDED},
    )
    async def wait_for_job(
        job_id: str,
        # A plain default, because the Annotated form is a string under postponed annotations
        # and cannot name the local settings.
        timeout: str = Query(
            f"{min(30.0, settings.WAIT_TIMEOUT_MAX):g}",
            pattern=DURATION_PATTERN,
            description="Time to wait, at most WAIT_TIMEOUT_MAX: a number of seconds or a "
            "duration such as 500ms or 30s.",
        ),
    ) -> JobResponse:
        try:
            seconds = parse_duration(timeout)
        except ValueError:
            seconds = float("inf")  # a number too large for a float
        if seconds > settings.WAIT_TIMEOUT_MAX:
            message = (
                f"invalid timeout {timeout[:64]!r}: expected at most WAIT_TIMEOUT_MAX="
                f"{settings.WAIT_TIMEOUT_MAX:g} seconds"
            )
            raise ApiError(
                422, "invalid_request", sentence(message),
                details=[ErrorDetail(field="timeout", message=sentence(message))],
            )
        return await _job_response(client, await client.wait(job_id, seconds))

    @app.get(
        "/queues",
        response_model=QueuesResponse,
        summary="Count the jobs in each place of every queue",
        dependencies=guard,
        responses=_GUARDED,
    )
    async def get_queues() -> QueuesResponse:
        counts = await client.all_counts()
        return QueuesResponse(queues=[QueueLengths.from_counts(each) for each in counts])

    @app.get(
        "/workers",
        response_model=WorkersResponse,
        summary="List the live workers with their handlers, concurrency and last heartbeat",
        dependencies=guard,
        responses=_GUARDED,
    )
    async def get_workers() -> WorkersResponse:
        workers = await client.workers()
        return WorkersResponse(workers=[WorkerResponse.from_info(info) for info in workers])


async def _job_response(client: Client, job: Job) -> JobResponse:
    response = JobResponse.from_job(job)
    response.cancel_requested_at = await client.cancel_requested_at(job)
    return response


def _add_control_routes(app: FastAPI, client: Client, guard: list[object]) -> None:
    @app.post(
        "/jobs/{job_id}/cancel",
        response_model=CancelResponse,
        summary="Cancel a queued or scheduled job, or ask for a running job to stop",
        dependencies=guard,
        responses={
            **_NOT_FOUND,
            409: _error("The job already completed, died or was cancelled."),
            **_GUARDED,
        },
    )
    async def cancel_job(job_id: str) -> CancelResponse:
        outcome, job = await client.cancel(job_id)
        if outcome == "finished":
            raise ApiError(
                409,
                "conflict",
                f"Job {job_id!r} is already {job.status.value}, so it cannot be cancelled.",
            )
        return CancelResponse(outcome=outcome, job=await _job_response(client, job))  # type: ignore[arg-type]

    @app.post(
        "/jobs/{job_id}/retry",
        response_model=JobResponse,
        summary="Move a dead job back to its queue with fresh retries",
        dependencies=guard,
        responses={**_NOT_FOUND, 409: _error("The job is not dead."), **_GUARDED},
    )
    async def retry_job(job_id: str) -> JobResponse:
        return JobResponse.from_job(await client.retry_dead(job_id))

    @app.post(
        "/queues/{queue}/dead/requeue",
        response_model=CountResponse,
        summary="Move every dead job of a queue back to it, optionally only one handler's",
        dependencies=guard,
        responses={**_INVALID, **_GUARDED},
    )
    async def requeue_dead(queue: QueueName, name: NameFilter = None) -> CountResponse:
        return CountResponse(count=await client.requeue_dead(queue=queue, name=name))

    @app.delete(
        "/queues/{queue}/dead",
        response_model=CountResponse,
        summary="Delete every dead job of a queue, optionally only one handler's",
        dependencies=guard,
        responses={**_INVALID, **_GUARDED},
    )
    async def purge_dead(queue: QueueName, name: NameFilter = None) -> CountResponse:
        return CountResponse(count=await client.purge_dead(queue=queue, name=name))


def _add_operation_routes(
    app: FastAPI, settings: Settings, client: Client, metrics: ApiMetrics, guard: list[object]
) -> None:
    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Metrics in the Prometheus text format",
        dependencies=guard,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **_GUARDED},
    )
    async def get_metrics() -> Response:
        await _take_snapshot(client, metrics)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=StatusResponse, summary="Check that the process is alive")
    async def healthz() -> StatusResponse:
        return StatusResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=StatusResponse,
        summary="Check that the backend responds to a ping",
        responses=_BACKEND_DOWN,
    )
    async def readyz() -> StatusResponse:
        try:
            with anyio.fail_after(READY_TIMEOUT_SECONDS):
                await client.backend.ping()
        except TimeoutError as error:
            raise BackendError(f"ping timed out after {READY_TIMEOUT_SECONDS:g}s") from error
        return StatusResponse(status="ready")


async def _take_snapshot(client: Client, metrics: ApiMetrics) -> None:
    backend = client.backend
    counts = await client.all_counts()
    now = now_ms()
    oldest_age = {}
    for each in counts:
        for priority, created in (await backend.oldest_pending(each.queue)).items():
            oldest_age[(each.queue, priority)] = max(now - created, 0) / 1000
    snapshot = metrics.stored.snapshot.__class__()
    snapshot.counts = counts
    snapshot.oldest_age = oldest_age
    snapshot.workers = await client.workers()
    snapshot.job_counters = await backend.job_metrics()
    metrics.stored.snapshot = snapshot
