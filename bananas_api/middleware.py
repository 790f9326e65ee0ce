"""Pure ASGI middleware: request ids with a last-resort 500, and the request body size limit.

Both are plain ASGI rather than Starlette's BaseHTTPMiddleware, so the request id context
variable reaches the endpoint and the body is streamed through without being buffered.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bananas_api.errors import error_response
from bananas_api.request_id import REQUEST_ID_HEADER, choose_request_id, request_id_var

logger = logging.getLogger(__name__)


class RequestIdMiddleware:
    """ASGI middleware that gives every HTTP request an id and sends it in ``X-Request-ID``.

    It also logs an exception that no handler turned into a response, with the request id,
    and returns a 500 ``internal_error`` response that carries no stack trace.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = choose_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        response_started = False
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal response_started, status_code
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "Request %s %s %s failed with an unexpected error",
                request_id,
                scope.get("method", "-"),
                scope.get("path", "-"),
            )
            if response_started:
                # Part of the response is already sent, so the server must abort the connection.
                raise
            message = (
                "The server failed while handling this request. "
                f"Report request id {request_id} to the operator, "
                "who can find the error in the logs."
            )
            await error_response(500, "internal_error", message)(scope, receive, send_with_id)
        finally:
            logger.debug(
                "Request %s %s %s returned status %d in %.1f ms",
                request_id,
                scope.get("method", "-"),
                scope.get("path", "-"),
                status_code,
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)


class _BodyTooLarge(Exception):
    """Raised from ``receive`` when the streamed request body passes the limit."""


class BodySizeLimitMiddleware:
    """ASGI middleware that rejects a request body larger than ``max_bytes`` with a 413.

    A declared Content-Length over the limit is rejected before the body is read. A chunked
    body is counted as it streams in, and the request fails when the count passes the limit.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, setting_name: str = "MAX_REQUEST_BYTES"
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.setting_name = setting_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send, declared)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # The app may turn the failed read into an error response of its own (FastAPI
            # returns a 400). That response is dropped, so the client gets the 413 instead.
            if exceeded and not response_started:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if response_started:
                raise
        if exceeded and not response_started:
            await self._reject(scope, receive, send, None)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, declared: int | None
    ) -> None:
        size = f" ({declared} bytes)" if declared is not None else ""
        message = (
            f"The request body{size} is over the limit of {self.max_bytes} bytes. "
            f"Send a smaller body, or raise {self.setting_name}."
        )
        logger.debug("Request body rejected: %s", message)
        # No "Connection: close": closing a socket with unread body bytes resets it, and the
        # client loses this response. uvicorn (h11, 0.55) instead reads and drops the rest.
        response = error_response(413, "payload_too_large", message)
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        # uvicorn rejects a malformed Content-Length before the app receives the request.
        return None
