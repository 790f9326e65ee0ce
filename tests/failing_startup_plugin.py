"""A plugin module whose worker start-up hook fails, as a plugin that cannot reach its database."""

from __future__ import annotations

from typing import Any

from bananas_core import hookimpl


@hookimpl
def bananas_worker_startup(worker: Any) -> None:
    raise ConnectionError("cannot reach the reports database")
