"""The FastAPI application: enqueue jobs, read them back, and report queue lengths and health."""

from __future__ import annotations

import logging

import anyio
from fastapi import FastAPI, Request, Response

import bananas_core
from bananas_api.errors import ErrorResponse, UnknownHandler, install_error_handlers
from bananas_api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from bananas_api.models import JobRequest, JobResponse, QueueLengths, QueuesResponse, StatusResponse
from bananas_core.backends.base import Backend
from bananas_core.client import Client
from bananas_core.errors import BackendError
from bananas_core.plugins import Plugins
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

# Readiness probes time out after a few seconds (a Kubernetes probe's timeoutSeconds
# defaults to 1), so a ping that hangs on an unreachable host must not outlive them by much.
READY_TIMEOUT_SECONDS = 2.0


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorResponse, "description": description}


_BACKEND_DOWN = {503: _error("The backend (Redis) is unreachable or failed. Retry later.")}


def create_app(settings: Settings, backend: Backend, plugins: Plugins) -> FastAPI:
    """Build the API application on ``backend``, accepting jobs for the handlers in ``plugins``.

    The caller owns ``backend`` and closes it after the server stops.
    """
    app = FastAPI(
        title="bananas",
        version=bananas_core.__version__,
        description="Enqueue jobs for handlers provided by plugins, and follow their progress.",
    )
    client = Client(settings, plugins=plugins, backend=backend)
    install_error_handlers(app, list(JobRequest.model_fields))
    # Middleware added last runs first: request ids wrap everything, including the 413.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.MAX_REQUEST_BYTES)
    app.add_middleware(RequestIdMiddleware)

    @app.post(
        "/jobs",
        status_code=201,
        response_model=JobResponse,
        summary="Enqueue a job",
        responses={
            201: {
                "description": "The job is stored.",
                "headers": {
                    "Location": {"description": "Path of the new job.", "schema": {"type": "string"}}
                },
            },
            413: _error("The body is over MAX_REQUEST_BYTES."),
            422: _error("The body is invalid, or no installed plugin handles the job name."),
            **_BACKEND_DOWN,
        },
    )
    async def enqueue_job(body: JobRequest, request: Request, response: Response) -> JobResponse:
        if body.name not in plugins.registry:
            raise UnknownHandler(body.name, plugins.registry.names())

        stored = await client.submit(
            body.name,
            body.payload,
            priority=body.priority,
            delay=body.delay or 0.0,
            max_retries=body.max_retries,
            timeout=body.timeout,
        )

        root_path = request.scope.get("root_path", "")
        response.headers["Location"] = f"{root_path}{app.url_path_for('get_job', job_id=stored.id)}"
        return JobResponse.from_job(stored)

    @app.get(
        "/jobs/{job_id}",
        response_model=JobResponse,
        summary="Read a job",
        responses={404: _error("No job has this id."), **_BACKEND_DOWN},
    )
    async def get_job(job_id: str) -> JobResponse:
        return JobResponse.from_job(await backend.get_job(job_id))

    @app.get(
        "/queues",
        response_model=QueuesResponse,
        summary="Count the jobs in each place of the queue",
        responses=_BACKEND_DOWN,
    )
    async def get_queues() -> QueuesResponse:
        counts = await backend.counts()
        return QueuesResponse(queues=[QueueLengths.from_counts(counts)])

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
                await backend.ping()
        except TimeoutError as error:
            raise BackendError(f"ping timed out after {READY_TIMEOUT_SECONDS:g}s") from error
        return StatusResponse(status="ready")

    return app
