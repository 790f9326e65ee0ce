"""API keys with read and write scopes, and rate limiting per key.

Keys are configured as SHA-256 digests (API_KEYS), so the settings never hold a usable key.
A presented bearer token is hashed and compared with every configured digest in constant
time, so the response time does not tell how much of a digest matched.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bananas_api.errors import ApiError
from bananas_api.request_id import current_request_id
from bananas_core.backends.base import Backend
from bananas_core.errors import ConfigError
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

READ = "read"
WRITE = "write"

# auto_error=False: a missing token gets the API's own 401 body instead of FastAPI's.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key from API_KEYS. Read endpoints need the read scope, the others write.",
)


def find_key(settings: Settings, token: str) -> tuple[str, frozenset[str]] | None:
    """Return the digest and scopes of the configured key that ``token`` is, or None."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    found = None
    # Every digest is compared, with no early exit, so timing shows neither which nor how many.
    for configured, scopes in settings.api_keys:
        if hmac.compare_digest(digest, configured):
            found = (configured, scopes)
    return found


def require_scope(
    settings: Settings, backend: Backend, scope: str
) -> Callable[..., Awaitable[None]]:
    """Return a dependency that authenticates the request for ``scope`` and rate-limits it."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
    ) -> None:
        client_id = await authenticate(settings, request, credentials, scope)
        await limit_rate(settings, backend, client_id)

    return dependency


async def authenticate(
    settings: Settings,
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    scope: str,
) -> str:
    """Check the bearer key for ``scope``. Returns the id that rate limiting counts under.

    Without API_KEYS every request is allowed and counted under its client address.
    """
    if not settings.api_keys:
        host = request.client.host if request.client else "unknown"
        return f"address:{host}"

    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "unauthorized",
            "This endpoint needs an API key. Send it as 'Authorization: Bearer KEY'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = find_key(settings, credentials.credentials)
    if key is None:
        logger.info("Request %s rejected: unknown API key", current_request_id())
        raise ApiError(
            401,
            "unauthorized",
            "The API key is not valid. Check the key, or ask the operator to add its SHA-256 "
            "to API_KEYS.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    digest, scopes = key
    # The first 12 digits of the digest name the key in logs and limits without revealing it.
    key_id = digest[:12]
    if scope not in scopes:
        logger.info("Request %s rejected: key %s lacks the %s scope", current_request_id(), key_id, scope)
        raise ApiError(
            403,
            "forbidden",
            f"The API key lacks the {scope} scope that this endpoint needs. "
            f"Use a key with the {scope} scope in API_KEYS.",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )
    return f"key:{key_id}"


async def limit_rate(settings: Settings, backend: Backend, client_id: str) -> None:
    """Raise a 429 ApiError when ``client_id`` is over RATE_LIMIT. Does nothing when it is 0."""
    if settings.RATE_LIMIT <= 0:
        return
    wait = await backend.rate_limit(client_id, settings.RATE_LIMIT, settings.RATE_LIMIT_BURST)
    if wait > 0:
        retry_after = max(math.ceil(wait), 1)
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests: the limit is {settings.RATE_LIMIT:g} per second with bursts of "
            f"{settings.RATE_LIMIT_BURST}. Retry after {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


def check_exposure(settings: Settings) -> None:
    """Raise ConfigError when the API would serve without keys on a non-loopback address."""
    if settings.api_keys or settings.API_INSECURE or is_loopback(settings.API_HOST):
        return
    raise ConfigError(
        f"refusing to serve the API on API_HOST={settings.API_HOST!r} without API_KEYS: anyone "
        "who reaches that address could submit and cancel jobs. Set API_KEYS, bind a loopback "
        "address such as 127.0.0.1, or set API_INSECURE=true to serve without keys anyway"
    )


def is_loopback(host: str) -> bool:
    """Return True for localhost and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
