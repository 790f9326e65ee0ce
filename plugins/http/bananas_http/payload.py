"""The ``http_request`` payload and its validation."""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
MAX_TIMEOUT = 3600.0


class HttpRequest(BaseModel):
    """One HTTP request: where to send it, how, and what to send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    # "json" is the key in the payload; the attribute has another name because BaseModel
    # has a json() method of its own.
    body: Any = Field(None, alias="json")
    timeout: float = Field(30.0, gt=0, le=MAX_TIMEOUT)  # seconds for the whole request
    follow_redirects: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as error:
            raise ValueError(f"{value!r} is not a URL: {error}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("give an absolute http:// or https:// URL such as https://example.com/hook")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            if not name or any(character in name + content for character in "\r\n"):
                raise ValueError(f"header {name!r} is empty or contains a line break")
        return value
