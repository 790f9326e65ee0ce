"""The HTTP API of bananas: enqueue jobs, read them back, and check queues and health."""

from bananas_api.app import create_app
from bananas_api.server import run_api, serve_api

__all__ = ["create_app", "run_api", "serve_api"]
