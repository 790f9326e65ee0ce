"""``bananas worker --processes N``: N worker processes that share nothing but Redis.

The supervisor starts each worker as its own ``bananas worker`` process, forwards SIGTERM and
SIGINT to all of them, and starts a worker again if it exits while the supervisor is running
(a crash or an OOM kill). The jobs of a worker that died return through their leases.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

logger = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds before a worker that exited is started again
POLL_INTERVAL = 0.2


def supervise(processes: int, worker_arguments: list[str]) -> int:
    """Run ``processes`` workers until SIGTERM or SIGINT, then wait for them. Returns 0."""
    command = [sys.executable, "-c", "from bananas_core.cli import main; main()", "worker", *worker_arguments]
    stopping = False

    def forward(received: int, frame: object) -> None:
        nonlocal stopping
        name = signal.Signals(received).name
        logger.info("Supervisor received %s; forwarding it to %d workers", name, len(children))
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(received)

    children: list[subprocess.Popen[bytes]] = []
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        children = [subprocess.Popen(command) for _ in range(processes)]
        logger.info("Supervisor started %d worker processes: %s", processes, [c.pid for c in children])
        while not stopping:
            for index, child in enumerate(children):
                if child.poll() is not None and not stopping:
                    logger.warning(
                        "Worker process %d exited with status %d; starting another in %gs",
                        child.pid, child.returncode, RESTART_DELAY,
                    )
                    time.sleep(RESTART_DELAY)
                    if not stopping:
                        children[index] = subprocess.Popen(command)
            time.sleep(POLL_INTERVAL)
        for child in children:
            child.wait()
        logger.info("Supervisor stopped: all %d workers exited", processes)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
