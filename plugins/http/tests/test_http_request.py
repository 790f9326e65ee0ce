"""http_request against a real HTTP server on 127.0.0.1 that the tests start."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from typing import Any

import pytest
from bananas_http import HttpRequest, HttpRequestError, http_request

from bananas_core import InvalidPayload, JobStatus, PermanentError
from bananas_core.plugins import Plugins, load_plugins
from bananas_core.testing import MemoryQueue


class RecordingHandler(BaseHTTPRequestHandler):
    """Reply by path: /status/CODE with CODE, /slow/SECONDS after a wait, any other with an echo."""

    received: list[dict[str, Any]]  # set on the subclass that each server gets

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.received.append({"method": self.command, "path": self.path, "headers": headers, "body": body})

        status = 200
        if self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        elif self.path.startswith("/slow/"):
            time.sleep(float(self.path.rsplit("/", 1)[1]))
        reply = json.dumps({"method": self.command, "body": json.loads(body) if body else None}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests read self.received instead of the server's access log


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the timeout test closes its connection while /slow still sleeps


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield the base URL of a server on 127.0.0.1 and the list of requests it received."""
    received: list[dict[str, Any]] = []
    handler = type("Handler", (RecordingHandler,), {"received": received})
    httpd = QuietServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.anyio
async def test_post_sends_json_and_headers(server: tuple[str, list[dict[str, Any]]]) -> None:
    base, received = server

    result = await http_request({"url": f"{base}/hook", "json": {"event": "paid"}, "headers": {"X-Signature": "abc"}})

    assert result["status"] == 200
    assert result["body"] == {"method": "POST", "body": {"event": "paid"}}
    assert received[0]["method"] == "POST"
    assert received[0]["headers"]["x-signature"] == "abc"
    assert received[0]["headers"]["user-agent"] == "bananas-http/0.1.0"


@pytest.mark.anyio
async def test_get_without_body(server: tuple[str, list[dict[str, Any]]]) -> None:
    base, received = server

    result = await http_request(HttpRequest(url=f"{base}/ping", method="get"))

    assert result["status"] == 200
    assert received[0]["method"] == "GET"
    assert received[0]["body"] == ""


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_retryable_status_raises_for_retry(server: tuple[str, list[dict[str, Any]]], status: int) -> None:
    base, _ = server

    with pytest.raises(HttpRequestError, match=f"returned {status}"):
        await http_request({"url": f"{base}/status/{status}"})


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_client_error_is_permanent(server: tuple[str, list[dict[str, Any]]], status: int) -> None:
    base, _ = server

    with pytest.raises(PermanentError, match=f"returned {status}, which a retry cannot fix"):
        await http_request({"url": f"{base}/status/{status}"})


@pytest.mark.anyio
async def test_timeout_raises_for_retry(server: tuple[str, list[dict[str, Any]]]) -> None:
    base, _ = server

    with pytest.raises(HttpRequestError, match=r"timed out after 0.2s \(ReadTimeout\)"):
        await http_request({"url": f"{base}/slow/2", "timeout": 0.2})


@pytest.mark.anyio
async def test_refused_connection_raises_for_retry() -> None:
    with pytest.raises(HttpRequestError, match="failed: ConnectError"):
        await http_request({"url": f"http://127.0.0.1:{free_port()}/hook"})


@pytest.mark.anyio
async def test_secret_path_stays_out_of_errors(server: tuple[str, list[dict[str, Any]]]) -> None:
    base, _ = server

    with pytest.raises(HttpRequestError) as raised:
        await http_request({"url": f"{base}/status/500?token=s3cret"})

    assert "s3cret" not in str(raised.value)
    assert "/status" not in str(raised.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, "url: Field required"),
        ({"url": "ftp://example.com/file"}, "url: Value error, give an absolute http:// or https:// URL"),
        ({"url": "/relative"}, "give an absolute http:// or https:// URL"),
        ({"url": "http://127.0.0.1:9/", "method": "BREW"}, "method: Input should be"),
        ({"url": "http://127.0.0.1:9/", "timeout": 0}, "timeout: Input should be greater than 0"),
        ({"url": "http://127.0.0.1:9/", "headers": {"X-A": "1\r\nX-B: 2"}}, "contains a line break"),
        ({"url": "http://127.0.0.1:9/", "body": {}}, "body: Extra inputs are not permitted"),
        ({"url": "http://127.0.0.1:9/", "json": {"a": 1}, "verbose": True}, "verbose: Extra inputs are not permitted"),
    ],
)
@pytest.mark.anyio
async def test_invalid_payload_is_permanent(payload: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidPayload) as raised:
        await http_request(payload)

    assert expected in str(raised.value)


def test_entry_point_registers_handler_with_schema() -> None:
    by_name = {entry_point.name: entry_point for entry_point in entry_points(group="bananas")}
    plugins = load_plugins()

    handler = plugins.registry.get("http_request")
    assert by_name["http"].value == "bananas_http.plugin"
    assert handler is not None
    assert handler.schema is HttpRequest
    assert handler.is_async
    assert handler.validate_payload({"url": "http://127.0.0.1:9/", "json": [1]}) == {
        "url": "http://127.0.0.1:9/",
        "json": [1],
    }


@pytest.fixture
def bananas_plugins() -> Plugins:
    """Load the installed plugins, bananas-http among them, as a worker does."""
    return load_plugins()


@pytest.mark.anyio
async def test_queue_outcomes_by_status(bananas_queue: MemoryQueue, server: tuple[str, list[dict[str, Any]]]) -> None:
    base, _ = server
    ok = await bananas_queue.enqueue("http_request", {"url": f"{base}/ok", "json": {"n": 1}})
    flaky = await bananas_queue.enqueue("http_request", {"url": f"{base}/status/503"})
    missing = await bananas_queue.enqueue("http_request", {"url": f"{base}/status/404"})

    await bananas_queue.run_all()

    assert (await bananas_queue.get(ok.id)).status is JobStatus.completed
    assert (await bananas_queue.get(flaky.id)).status is JobStatus.scheduled
    assert (await bananas_queue.get(missing.id)).status is JobStatus.dead
