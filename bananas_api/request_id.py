"""The id of the HTTP request being served, for responses and log lines."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"

# An incoming id is reused only if it is this safe to echo in headers and log lines.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")

# Outside a request the value is "-", so a log format that prints it still has a value.
request_id_var: ContextVar[str] = ContextVar("bananas_request_id", default="-")


def choose_request_id(incoming: str | None) -> str:
    """Return ``incoming`` if it is a safe request id, or a new random one."""
    if incoming is not None and _SAFE_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def current_request_id() -> str:
    """Return the id of the request being served in this context, or "-" outside one."""
    return request_id_var.get()


class RequestIdLogFilter(logging.Filter):
    """Logging filter that sets ``record.request_id`` to the id of the current request.

    The library never adds it to a handler. An application that wants ``%(request_id)s``
    in its log format attaches it to its own handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True
