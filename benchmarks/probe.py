"""The benchmark job's body, shared by every queue, and the harness side that reads it.

Each queue runs the same handler: it reads the wall clock first, then reports to a second
private Redis server, the probe server. So the queue's own Redis server receives only the
queue's traffic, and ``INFO commandstats`` and ``INFO memory`` measure the queue alone.

Two payload shapes, both small JSON objects:

- ``{"key": K, "total": N}``, a drain job: INCR ``K``. The runs that make the count 1 and
  N // 10 store the probe server's time under ``K:first`` and ``K:mark``, and the run that
  makes it N pushes that time to ``K:done``. A Lua script does this in one command.
- ``{"key": K, "i": I}``, a latency job: RPUSH ``"I TIME"`` to ``K``, TIME being the
  handler's wall clock at its start.

Reports are sent without waiting for a reply (``CLIENT REPLY OFF``). A blocking round trip
inside an asyncio handler would stall the whole event loop, which costs asyncio workers far
more than threaded or forking ones: in a py-spy profile on 2 cores it took about a third of
the bananas worker's time. Sending one command costs one socket write on any worker.

This module imports only the standard library and redis-py, so it loads in every queue's
virtual environment. Both servers run on the same host, so the handler's clock and the
probe server's clock are the same clock.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis

PROBE_URL_VARIABLE = "BENCH_PROBE_URL"

# KEYS[1]: counter; ARGV[1]: total jobs; ARGV[2]: the mark, total // 10 (at least 1).
# Times are the probe server's, in seconds.
_DRAIN_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local total = tonumber(ARGV[1])
local mark = tonumber(ARGV[2])
if count == 1 or count == mark or count == total then
  local now = redis.call('TIME')
  local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
  if count == 1 then redis.call('SET', KEYS[1] .. ':first', stamp) end
  if count == mark then redis.call('SET', KEYS[1] .. ':mark', stamp) end
  if count == total then redis.call('RPUSH', KEYS[1] .. ':done', stamp) end
end
"""


def _encode(*parts: str) -> bytes:
    """Encode one command in RESP, the Redis wire protocol."""
    chunks = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode()
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)


class _ProbeSender:
    """A connection to the probe server that sends commands and never reads replies."""

    def __init__(self, url: str) -> None:
        address = urlsplit(url)
        self.sock = socket.create_connection(
            (address.hostname or "127.0.0.1", address.port or 6379)
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        # The server sends no reply to this command nor to any later one on this connection.
        self.sock.sendall(_encode("CLIENT", "REPLY", "OFF"))

    def send(self, *parts: str) -> None:
        message = _encode(*parts)
        with self.lock:
            self.sock.sendall(message)


_senders: dict[int, _ProbeSender] = {}
_senders_lock = threading.Lock()


def _sender() -> _ProbeSender:
    # Keyed by process id because some workers (RQ, Celery prefork) fork after import, and a
    # forked child must not write to its parent's socket.
    pid = os.getpid()
    sender = _senders.get(pid)
    if sender is None:
        with _senders_lock:
            sender = _senders.get(pid)
            if sender is None:
                sender = _ProbeSender(os.environ[PROBE_URL_VARIABLE])
                _senders[pid] = sender
    return sender


def record_run(payload: dict[str, Any]) -> None:
    """Report one run of the benchmark job to the probe server; see the module docstring."""
    started = time.time()
    key = payload["key"]
    if "i" in payload:
        _sender().send("RPUSH", key, f"{payload['i']} {started!r}")
    else:
        total = payload["total"]
        _sender().send("EVAL", _DRAIN_SCRIPT, "1", key, str(total), str(drain_mark(total)))


def drain_mark(total: int) -> int:
    """Return the run count from which drain rates are measured: a tenth of the jobs.

    Rates from there on leave out the ramp-up of workers that start their processes or
    connections one after another (Celery's and RQ's pools, several bananas workers).
    """
    return max(1, total // 10)


def drain_payload(key: str, total: int) -> dict[str, Any]:
    """Return the payload of one of ``total`` drain jobs that report under ``key``."""
    return {"key": key, "total": total}


def latency_payload(key: str, index: int) -> dict[str, Any]:
    """Return the payload of latency job number ``index``, which reports under ``key``."""
    return {"key": key, "i": index}


def wait_for_stamps(client: redis.Redis, key: str, count: int, timeout: float) -> dict[int, float]:
    """Collect ``count`` latency stamps from ``key``: job index to handler start time.

    Returns early with fewer stamps when ``timeout`` seconds pass first.
    """
    stamps: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(stamps) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        # BLPOP takes whole or fractional seconds and blocks forever on 0.
        item = client.blpop([key], timeout=max(min(left, 1.0), 0.01))
        if item is None:
            continue
        index, started = item[1].decode().split()
        stamps[int(index)] = float(started)
    return stamps
