"""CPU time that processes outside the harness use during a run, sampled from /proc (Linux).

The load average counts the benchmark's own workers and servers too. So it cannot show
whether someone else's tests ran at the same time, and this sampler can.
"""

from __future__ import annotations

import os
import threading
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _read_processes() -> dict[int, tuple[int, int]]:
    """Return pid -> (parent pid, CPU ticks used so far, user and system) for every process."""
    processes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                data = file.read()
        except OSError:
            continue  # the process exited between listdir and open
        # The command name in brackets may contain spaces, so fields are counted after it.
        fields = data.rsplit(")", 1)[1].split()
        processes[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return processes


def _descends_from(pid: int, root: int, processes: dict[int, tuple[int, int]]) -> bool:
    for _ in range(100):  # bounded: a parent chain is never this deep
        if pid == root:
            return True
        if pid not in processes or pid <= 1:
            return False
        pid = processes[pid][0]
    return False


class ForeignLoad:
    """Samples, every ``interval`` seconds, the CPU time of processes not started by this one.

    Call ``start()`` and ``stop()`` around the measurements; ``summary()`` then returns the
    mean and the maximum over the samples, in cores (CPU seconds per second).
    """

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        root = os.getpid()
        previous = _read_processes()
        started = time.monotonic()
        while not self._stop.wait(self.interval):
            current = _read_processes()
            elapsed = time.monotonic() - started
            started = time.monotonic()
            ticks = 0
            for pid, (_, used) in current.items():
                if _descends_from(pid, root, current):
                    continue
                # A process that started within the interval counts from zero.
                ticks += used - previous.get(pid, (0, 0))[1] if pid in previous else used
            self.samples.append(ticks / CLOCK_TICKS / elapsed)
            previous = current

    def summary(self) -> dict[str, float]:
        """Return the mean and maximum foreign load in cores, and the number of samples."""
        if not self.samples:
            return {"mean_cores": 0.0, "max_cores": 0.0, "samples": 0}
        return {
            "mean_cores": sum(self.samples) / len(self.samples),
            "max_cores": max(self.samples),
            "samples": len(self.samples),
        }
