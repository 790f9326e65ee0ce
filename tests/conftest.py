"""Fixtures shared by the test suite: real Redis access with per-test key prefixes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("BANANAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Return the URL of the real Redis server; skip locally and fail in CI if none responds."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as error:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is not reachable in CI: {error}")
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {error}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """Yield a key prefix of this test's own, and delete the keys under it afterwards."""
    prefix = f"bananas-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    if "redis_url" in request.fixturenames:
        delete_keys(request.getfixturevalue("redis_url"), prefix)


def delete_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix``: only data this test wrote."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
