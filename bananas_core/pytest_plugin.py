"""pytest fixtures for testing bananas handlers and plugins, loaded through the ``pytest11`` entry point.

- ``bananas_clock``: a FakeClock, real time plus what the test advanced.
- ``bananas_plugins``: the plugins a worker would load (``load_plugins()``). Override this
  fixture in a conftest.py to test with other plugins.
- ``bananas_queue``: a MemoryQueue on those plugins and that clock. ``await
  bananas_queue.run_all()`` runs the queued jobs inside the test.

The queue's methods are coroutines, so mark the tests that use it with
``@pytest.mark.anyio``.
"""

from __future__ import annotations

import pytest

from bananas_core.plugins import Plugins, load_plugins
from bananas_core.testing import FakeClock, MemoryQueue


@pytest.fixture
def bananas_clock() -> FakeClock:
    """Return a clock that runs with real time plus the seconds the test advances it by."""
    return FakeClock()


@pytest.fixture
def bananas_plugins() -> Plugins:
    """Return the built-in plugin and every installed entry-point plugin, as a worker loads them."""
    return load_plugins()


@pytest.fixture
def bananas_queue(bananas_plugins: Plugins, bananas_clock: FakeClock) -> MemoryQueue:
    """Return an empty in-memory queue of its own, with the handlers of ``bananas_plugins``."""
    return MemoryQueue(bananas_plugins, clock=bananas_clock)
