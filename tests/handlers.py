"""Job handlers that the tests load as a plugin module through the PLUGINS setting."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import anyio
import redis
import redis.asyncio
from pydantic import BaseModel

from bananas_core import JobContext, PermanentError, hookimpl


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


async def async_sleep(payload: dict[str, Any]) -> float:
    await anyio.sleep(payload["seconds"])
    return payload["seconds"]


def blocking_sleep(payload: dict[str, Any]) -> float:
    time.sleep(payload["seconds"])
    return payload["seconds"]


# Tags of ``record`` runs in the order they ran, for tests whose worker runs in-process.
RECORDED: list[str] = []


def record(payload: dict[str, Any]) -> str:
    RECORDED.append(payload["tag"])
    return payload["tag"]


def stamp(payload: dict[str, Any]) -> str:
    """Append the tag and the time to the Redis list ``key``, then fail if ``fail`` is set.

    End-to-end tests read the list to see when and in which order runs started in another
    process.
    """
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        client.rpush(payload["key"], json.dumps({"tag": payload.get("tag"), "time": time.time()}))
    finally:
        client.close()
    if payload.get("fail"):
        raise RuntimeError(f"stamp {payload.get('tag')} failed on purpose")
    return payload.get("tag", "")


async def stamp_pid(payload: dict[str, Any]) -> int:
    """Add this worker's pid to the Redis set ``key``, then sleep ``seconds``."""
    client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"])
    try:
        await client.sadd(payload["key"], os.getpid())
    finally:
        await client.aclose()
    await anyio.sleep(payload.get("seconds", 0))
    return os.getpid()


def fail(payload: dict[str, Any]) -> None:
    time.sleep(payload.get("seconds", 0))
    raise RuntimeError(payload.get("message", "handler failed on purpose"))


def flaky(payload: dict[str, Any], ctx: JobContext) -> int:
    """Fail the first ``failures`` attempts, then return the attempt number."""
    if ctx.attempt <= payload["failures"]:
        raise RuntimeError(f"attempt {ctx.attempt} failed on purpose")
    return ctx.attempt


def exit(payload: dict[str, Any]) -> None:
    raise SystemExit(3)


def reject(payload: dict[str, Any]) -> None:
    raise PermanentError("payload rejected on purpose")


def not_json(payload: dict[str, Any]) -> object:
    return object() if payload.get("kind") != "nan" else float("nan")


async def report_progress(payload: dict[str, Any], ctx: JobContext) -> int:
    steps = payload["steps"]
    for step in range(1, steps + 1):
        await ctx.report_progress(step / steps, f"step {step} of {steps}")
    return steps


def wait_for_cancel_flag(payload: dict[str, Any], ctx: JobContext) -> str:
    """Poll the cancel flag as a long sync handler would between batches."""
    deadline = time.monotonic() + 20
    while not ctx.cancel_requested and time.monotonic() < deadline:
        time.sleep(0.05)
    return "cancelled" if ctx.cancel_requested else "timed out"


def cpu_loop(payload: dict[str, Any]) -> None:
    """Spin without ever yielding, as a handler stuck in a computation does."""
    while True:
        pass


def isolated_echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    print("isolated handlers may print; stdout goes to the worker's stderr")
    if payload.get("fail"):
        raise RuntimeError(f"isolated failure in attempt {ctx.attempt}")
    if payload.get("reject"):
        raise PermanentError("isolated rejection")
    return {"payload": payload, "attempt": ctx.attempt, "pid": os.getpid()}


class Greeting(BaseModel):
    """Payload schema of the ``greet`` handler."""

    name: str
    times: int = 1


def greet(payload: Greeting) -> str:
    return " ".join([f"hello {payload.name}"] * payload.times)


@hookimpl
def bananas_register_handlers(registry: Any) -> None:
    for handler in (echo, record, stamp, async_sleep, blocking_sleep, fail, flaky, exit, reject, not_json,
                    report_progress, wait_for_cancel_flag, stamp_pid):
        registry.register(handler.__name__, handler)
    registry.register("cpu_loop", cpu_loop, isolation="process")
    registry.register("blocking_sleep_isolated", blocking_sleep, isolation="process")
    registry.register("isolated_echo", isolated_echo, isolation="process")
    registry.register("greet", greet, schema=Greeting, priority="high", max_retries=7, timeout=12)

