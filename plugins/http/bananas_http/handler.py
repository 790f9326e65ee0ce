"""The ``http_request`` handler: send one HTTP request and fail in the way that fits the reply."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from bananas_core import JobContext, PermanentError
from bananas_core.registry import parse_payload
from bananas_http.payload import HttpRequest

logger = logging.getLogger(__name__)

MAX_BODY_CHARS = 65_536  # of the response body kept in the job's result
ERROR_BODY_CHARS = 500  # of the response body quoted in an error message
# 4xx replies that another attempt may turn into a success.
RETRIED_CLIENT_ERRORS = frozenset({408, 425, 429})
USER_AGENT = "bananas-http/0.1.0"


class HttpRequestError(Exception):
    """Raised when the request got no reply (connection failure, timeout) or a reply that a
    retry may fix: 5xx, 408, 425 or 429. The worker retries the job with its retry policy."""


async def http_request(request: HttpRequest | dict[str, Any], ctx: JobContext | None = None) -> dict[str, Any]:
    """Send the request and return ``{"status": int, "headers": {...}, "body": ...}``.

    ``body`` is the decoded JSON of a JSON reply, else its text, cut to 65,536 characters.
    Raises PermanentError for an invalid payload or a 4xx reply other than 408, 425 and 429,
    and HttpRequestError, which the worker retries, for every other failure.
    """
    if not isinstance(request, HttpRequest):
        request = _parse(request)
    target = _display(request.url)
    job_id = ctx.job_id if ctx is not None else "-"
    headers = {"user-agent": USER_AGENT, **request.headers}
    json_body = {} if request.body is None else {"json": request.body}

    try:
        async with httpx.AsyncClient(timeout=request.timeout, follow_redirects=request.follow_redirects) as client:
            response = await client.request(request.method, request.url, headers=headers, **json_body)
    except httpx.TimeoutException as error:
        raise HttpRequestError(
            f"{request.method} {target} timed out after {request.timeout:g}s ({type(error).__name__})"
        ) from error
    except httpx.HTTPError as error:
        raise HttpRequestError(f"{request.method} {target} failed: {type(error).__name__}: {error}") from error

    status = response.status_code
    logger.info("Sent %s %s: %d (job %s)", request.method, target, status, job_id)
    if status >= 500 or status in RETRIED_CLIENT_ERRORS:
        raise HttpRequestError(f"{request.method} {target} returned {status}: {_excerpt(response)}")
    if status >= 400:
        raise PermanentError(
            f"{request.method} {target} returned {status}, which a retry cannot fix: {_excerpt(response)}"
        )
    return {"status": status, "headers": dict(response.headers), "body": _body(response)}


def _parse(payload: dict[str, Any]) -> HttpRequest:
    # A worker that applies handler schemas passes a validated HttpRequest. A plain dict, from
    # a direct call or an older worker, is validated here the same way.
    return parse_payload(HttpRequest, payload, handler="http_request")  # type: ignore[return-value]


def _display(url: str) -> str:
    # Webhook URLs often carry a secret in the path or query, so logs and errors show the
    # scheme, host and port only.
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}/..."


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip()
    if len(text) > ERROR_BODY_CHARS:
        return text[:ERROR_BODY_CHARS] + "..."
    return text or "(empty body)"


def _body(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").split(";")[0].strip().endswith("json"):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text[:MAX_BODY_CHARS]
