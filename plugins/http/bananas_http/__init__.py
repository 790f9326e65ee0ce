"""bananas-http: a bananas plugin whose ``http_request`` handler calls a webhook URL."""

from bananas_http.handler import HttpRequestError, http_request
from bananas_http.payload import HttpRequest

__version__ = "0.1.0"

__all__ = ["HttpRequest", "HttpRequestError", "http_request"]
