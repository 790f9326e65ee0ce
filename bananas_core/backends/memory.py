"""The embedded ``memory://`` backend: the Redis backend on fakeredis, inside this process.

It runs the same Lua scripts as Redis, so it behaves the same, but jobs live only as long as
the process. Every backend created for the same ``memory://NAME`` URL in one process shares
one store, so ``bananas dev`` runs API, worker and scheduler on the same data.
"""

from __future__ import annotations

import fakeredis
from fakeredis import aioredis as fake_aioredis

from bananas_core.backends.redis import RedisBackend

_servers: dict[str, fakeredis.FakeServer] = {}


def memory_backend(url: str, *, prefix: str, queue: str) -> RedisBackend:
    """Return a backend on the in-process store named by ``url``."""
    server = _servers.setdefault(url, fakeredis.FakeServer())
    client = fake_aioredis.FakeRedis(server=server, decode_responses=True)
    return RedisBackend(client, prefix=prefix, queue=queue, display_url=url)
