"""The single error response shape of the API, and the handlers that produce it.

Every error body is ``{"error": {"code", "message", "request_id", "details"?}}``: ``code`` is
a stable snake_case string for programs, ``message`` a sentence for people.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from bananas_api.request_id import current_request_id
from bananas_core.client import MAX_DELAY_SECONDS, MAX_PAYLOAD_DEPTH, MAX_TIMEOUT_SECONDS, MIN_TIMEOUT_SECONDS
from bananas_core.errors import BackendError, JobConflict, JobNotFound
from bananas_core.registry import HANDLER_NAME_RULE

logger = logging.getLogger(__name__)

# Codes of the statuses that Starlette raises itself. Other statuses get the snake_case of
# their reason phrase.
_CODES_BY_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    500: "internal_error",
    503: "backend_unavailable",
}


class ErrorDetail(BaseModel):
    """One invalid field of a request and what is wrong with it."""

    field: str
    message: str


class ErrorInfo(BaseModel):
    """The code and message of one error response, with the request id."""

    code: str
    message: str
    request_id: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorInfo


class ApiError(Exception):
    """Raised by an endpoint or dependency to send an error response in the one shape."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: list[ErrorDetail] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


class UnknownHandler(Exception):
    """Raised when a job names a handler that no installed plugin registered."""

    def __init__(self, name: str, installed: list[str]) -> None:
        super().__init__(f"no installed plugin registers a handler named {name!r}")
        self.name = name
        self.installed = installed


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build an error response in the one shape, with the current request id."""
    info = ErrorInfo(code=code, message=message, request_id=current_request_id(), details=details)
    body = ErrorResponse(error=info).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI, accepted_fields: list[str]) -> None:
    """Register the handlers that turn validation, HTTP and backend errors into error responses.

    ``accepted_fields`` are the fields of the job request, listed when a request has an
    unknown one. ``RequestIdMiddleware`` turns errors that no handler matches into a 500.
    """

    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error_response(request, error, accepted_fields)

    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_response)  # type: ignore[arg-type]
    app.add_exception_handler(JobNotFound, job_not_found_response)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownHandler, unknown_handler_response)  # type: ignore[arg-type]
    outage_log = OutageLog()

    async def on_backend_error(request: Request, error: BackendError) -> JSONResponse:
        outage_log.failed(request, error)
        return backend_error_response(request, error)

    app.add_exception_handler(BackendError, on_backend_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, api_error_response)  # type: ignore[arg-type]
    app.add_exception_handler(JobConflict, job_conflict_response)  # type: ignore[arg-type]


def validation_error_response(
    request: Request, error: RequestValidationError, accepted_fields: list[str]
) -> JSONResponse:
    """Build the 422 response: one detail per invalid field, or ``invalid_json`` for bad JSON."""
    errors = list(error.errors())

    for item in errors:
        if item.get("type") == "json_invalid":
            position = item["loc"][-1] if item.get("loc") else "?"
            reason = (item.get("ctx") or {}).get("error", "invalid syntax")
            message = (
                f"The request body is not valid JSON: {reason} at character {position}. "
                "Send a JSON object with Content-Type: application/json."
            )
            return error_response(422, "invalid_json", message)

    details = [
        ErrorDetail(field=_field_path(item), message=_describe(item, request, accepted_fields))
        for item in errors
    ]
    message = f"{details[0].field}: {details[0].message}"
    others = len(details) - 1
    if others == 1:
        message += ". 1 more invalid field is listed in details."
    elif others > 1:
        message += f". {others} more invalid fields are listed in details."
    return error_response(422, "invalid_request", message, details=details)


def http_error_response(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Build the response of an HTTP error raised by routing or an endpoint, such as 404 or 405."""
    status_code = error.status_code
    code = _CODES_BY_STATUS.get(status_code) or _code_from_status(status_code)
    headers = dict(error.headers or {})

    if status_code == 404 and error.detail == HTTPStatus.NOT_FOUND.phrase:
        message = (
            f"No endpoint matches {request.method} {request.url.path}. "
            "The endpoints are listed at /openapi.json."
        )
    elif status_code == 405:
        allowed = headers.get("Allow") or headers.get("allow") or "none"
        message = (
            f"Method {request.method} is not allowed on {request.url.path}. "
            f"Use one of: {allowed}."
        )
    elif status_code == 400 and error.__cause__ is not None:
        # FastAPI returns 400 with a bare message when reading the JSON body fails other than
        # by a syntax error: bytes that are not UTF-8, or nesting too deep to parse.
        return _unreadable_body_response(error.__cause__)
    else:
        message = str(error.detail)
    return error_response(status_code, code, message, headers=headers or None)


def _unreadable_body_response(cause: BaseException) -> JSONResponse:
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        message = (
            f"The request body is not valid UTF-8: byte 0x{byte} at position {cause.start}. "
            "Send JSON encoded as UTF-8 with Content-Type: application/json."
        )
    elif isinstance(cause, RecursionError):
        message = (
            "The request body is nested too deeply to parse. A payload may nest at most "
            f"{MAX_PAYLOAD_DEPTH} levels; flatten it."
        )
    else:
        logger.warning("Could not read a request body as JSON: %s: %s", type(cause).__name__, cause)
        message = (
            f"The request body could not be read as JSON ({type(cause).__name__}). "
            "Send a JSON object with Content-Type: application/json."
        )
    return error_response(422, "invalid_json", message)


def unknown_handler_response(request: Request, error: UnknownHandler) -> JSONResponse:
    """Build the 422 response for a job name that no plugin handles, listing the installed ones."""
    installed = ", ".join(error.installed) or "none"
    message = (
        f"No installed plugin registers a handler named {error.name!r}. "
        f"Installed handlers: {installed}. "
        f"Install the plugin that provides {error.name!r}, or fix the name."
    )
    detail = ErrorDetail(field="name", message=f"Unknown handler {error.name!r}.")
    return error_response(422, "unknown_handler", message, details=[detail])


def job_not_found_response(request: Request, error: JobNotFound) -> JSONResponse:
    """Build the 404 response for a job id that no job has."""
    message = (
        f"No job has id {error.job_id!r}. Check the id that POST /jobs returned. "
        "Completed and dead jobs are deleted after COMPLETED_TTL and DEAD_TTL."
    )
    return error_response(404, "not_found", message)


# The routes that store jobs, and how a caller gives each job an idempotency key there.
_SUBMIT_ROUTES = {
    "/jobs": "a unique_key (or an Idempotency-Key header)",
    "/jobs/batch": "a unique_key with each job",
}


class OutageLog:
    """A log of requests that failed because the backend is unavailable: a warning per interval, not per request.

    During an outage every request fails, and a line for each would flood the log. The first
    failure of an interval is logged at WARNING with its request id, and the others at DEBUG.
    The next WARNING line first counts the failures that were left out, with their times.
    NOTE: the failures after the last WARNING line of an outage are counted at DEBUG only.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._logged_at = float("-inf")  # time.monotonic() of the last WARNING line
        self._left_out = 0  # failures since then, logged at DEBUG only
        self._first_left_out = 0.0  # time.time() of the first of them
        self._last_left_out = 0.0  # time.time() of the last of them

    def failed(self, request: Request, error: BackendError) -> None:
        """Log the failure of ``request``."""
        line = "Request %s %s %s failed because the backend is unavailable: %s"
        details = (current_request_id(), request.method, request.url.path, error)
        now = time.monotonic()
        if now - self._logged_at < self.interval:
            self._last_left_out = time.time()
            if not self._left_out:
                self._first_left_out = self._last_left_out
            self._left_out += 1
            logger.debug(line, *details)
            return

        if self._left_out:
            logger.warning(
                "%d more requests failed because the backend was unavailable, from %s to %s "
                "(logged at DEBUG)",
                self._left_out, _clock_time(self._first_left_out), _clock_time(self._last_left_out),
            )
        self._logged_at = now
        self._left_out = 0
        logger.warning(line, *details)


def _clock_time(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def backend_error_response(request: Request, error: BackendError) -> JSONResponse:
    """Build the 503 response to a request that failed because the backend is unavailable."""
    message = (
        "The job store (Redis) is unreachable or failed, so the request may not have completed. "
        "Retry later. If this persists, check that the server at REDIS_URL is running."
    )
    route = getattr(request.scope.get("route"), "path", None)
    if request.method == "POST" and route in _SUBMIT_ROUTES:
        # A timeout can hide a write that Redis made. The caller cannot tell, but with an
        # idempotency key a retry returns the stored job instead of a second one.
        message += (
            f" A job may have been stored even so: send {_SUBMIT_ROUTES[route]}, so that a "
            "retried submission cannot store its job twice."
        )
    return error_response(503, "backend_unavailable", message)


def _field_path(item: dict[str, Any]) -> str:
    # FastAPI puts "body", "path" or "query" first; the field path after it is what users wrote.
    location = [str(part) for part in item.get("loc", ())]
    if len(location) > 1 and location[0] in ("body", "path", "query", "header"):
        location = location[1:]
    return ".".join(location) or "body"


def _describe(item: dict[str, Any], request: Request, accepted_fields: list[str]) -> str:
    kind = item.get("type", "")
    location = tuple(item.get("loc", ()))
    value = item.get("input")

    if location == ("body",) and kind == "missing":
        return "The request body is missing. Send a JSON object such as {\"name\": \"...\"}."
    if location == ("body",) and isinstance(value, (bytes, str)):
        return (
            "The request body must be a JSON object sent with Content-Type: application/json, "
            f"not {request.headers.get('content-type') or 'no Content-Type'}."
        )
    if kind == "extra_forbidden":
        return f"Unknown field. The accepted fields are {', '.join(accepted_fields)}."
    if kind == "value_error":
        # The ValueError's own message already names the value and the accepted forms.
        return str((item.get("ctx") or {}).get("error") or item.get("msg"))

    if kind == "string_pattern_mismatch" and location and location[-1] in _PATTERN_RULES:
        return f"Expected {_PATTERN_RULES[location[-1]]} (got {_show(value)})"
    if kind in _RANGE_ERRORS and location and location[-1] in _RANGE_RULES:
        return f"Expected {_RANGE_RULES[location[-1]]} (got {_show(value)})"

    message = str(item.get("msg", "Invalid value"))
    if kind != "missing":
        message += f" (got {_show(value)})"
    return message


# The rules behind the patterns of the request fields, in words, so that an error states the
# rule instead of a regular expression.
_PATTERN_RULES = {
    "name": f"a handler name of {HANDLER_NAME_RULE}",
    "queue": "a queue name of 1 to 64 letters, digits, '-', '_' or '.'",
    "unique_key": "1 to 255 visible ASCII characters without spaces",
    "timeout": "a number of seconds or a duration such as 500ms or 30s",
}


# The ranges of the duration fields, in words with examples, in place of pydantic's bare bound.
_RANGE_ERRORS = {"greater_than_equal", "less_than_equal"}
_RANGE_RULES = {
    "timeout": (
        f"a timeout of {MIN_TIMEOUT_SECONDS:g} to {MAX_TIMEOUT_SECONDS:,.0f} seconds "
        f"({MAX_TIMEOUT_SECONDS / 86400:g} days), such as 30s or 5m"
    ),
    "delay": (
        f"a delay of 0 to {MAX_DELAY_SECONDS:,.0f} seconds ({MAX_DELAY_SECONDS / 86400:g} days), "
        "such as 10s or 2h"
    ),
}


def _show(value: Any) -> str:
    # Scalars are shown as written, so the message names the rejected value.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 64 else value[:61] + "..."
        return repr(text)
    if isinstance(value, (list, tuple)):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    return type(value).__name__


def _code_from_status(status_code: int) -> str:
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        return "http_error"
    return "_".join(phrase.lower().replace("-", " ").split())


def api_error_response(request: Request, error: ApiError) -> JSONResponse:
    """Build the response of an ApiError raised by an endpoint or dependency."""
    return error_response(
        error.status_code, error.code, error.message, details=error.details, headers=error.headers
    )


def job_conflict_response(request: Request, error: JobConflict) -> JSONResponse:
    """Build the 409 response for an operation that the job's state does not allow."""
    return error_response(409, "conflict", sentence(str(error)))


def sentence(text: str) -> str:
    """Return ``text`` as a sentence: first letter upper case, a final full stop.

    Unlike ``str.capitalize`` it keeps the case of the rest, so names and values in the
    message stay as the caller wrote them.
    """
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
