"""The worker: leases jobs from the priority queues and runs them through their handlers."""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint_if_cancelled

from bananas_core.backends.base import Backend, Recorded, RunOutcome, WorkerInfo
from bananas_core.context import JobContext, job_logger
from bananas_core.errors import BackendError, PermanentError
from bananas_core.execution import (
    JobTimeout,
    UnknownHandler,
    describe_error,
    encode_result,
    run_handler,
)
from bananas_core.job import PRIORITIES, Job, JobError, JobStatus, from_ms, now_ms, utc_now
from bananas_core.metrics import JobStats, Outcome
from bananas_core.plugins import Plugins, call_job_wrappers, notify, service_lifecycle
from bananas_core.registry import Handler
from bananas_core.retry import exponential_backoff
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Exchange loops of a worker, each leasing at most its share of the slots, so that the jobs
# of one call run while the next call is on its way. Three lanes drained slower than two.
EXCHANGE_LANES = 2
IDLE_WAIT = 1.0  # seconds an idle worker blocks on the wake-up list before it claims again
CONTROL_INTERVAL = 1.0  # seconds between checks for cancel requests and metric flushes
REGISTER_RETRY = 1.0  # seconds between tries to register a worker whose registration failed
BACKOFF_MAX = 10.0  # seconds between attempts to reach an unreachable backend, at most
# Seconds a stopped worker gives Redis for its last writes: the jobs of lost lease replies, its
# counters and its deregistration.
STOP_WRITES_TIMEOUT = 5.0
# Unlike time.monotonic(), CLOCK_BOOTTIME goes on while the machine is suspended, as the Redis
# server's clock does, so lease ages measured with it include a suspend.
_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)


def _lease_clock() -> float:
    """Return seconds from a fixed point, for measuring how old a lease is."""
    if _BOOT_CLOCK is None:
        return time.monotonic()
    return time.clock_gettime(_BOOT_CLOCK)


class Worker:
    """Runs up to ``WORKER_CONCURRENCY`` jobs at once until it is stopped.

    Three kinds of task share the work. One slot task per unit of concurrency runs handlers.
    The exchange loop owns every round trip of the job flow. One script call records the
    outcomes the slots finished and leases jobs for the free slots, so a busy worker makes
    about one round trip per batch of jobs. The idle waiter blocks on the
    wake-up list while the queue is empty.
    """

    def __init__(self, settings: Settings, backend: Backend, plugins: Plugins) -> None:
        self.settings = settings
        self.backend = backend
        self.plugins = plugins
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = settings.WORKER_CONCURRENCY
        self.prefetch = settings.WORKER_PREFETCH
        self.running: dict[str, Job] = {}  # leased jobs whose outcome is not recorded yet
        self._busy = 0  # jobs handed to the slots and not finished running
        self._ready: collections.deque[Job] = collections.deque()  # leased, not taken by a slot
        # By job id, for the jobs in _ready: a _lease_clock() time from before their lease, or
        # from before the last heartbeat that renewed it.
        self._leased_at: dict[str, float] = {}
        # A call that leases jobs failed, so Redis may hold leases of this worker's that it
        # does not know: the call may have run and lost only its reply.
        self._leases_unknown = False
        self._recovering = False  # a task runs _recover_leases
        # (id, token) of the deliveries whose outcome or release was given up on.
        self._unrecorded: set[tuple[str, int]] = set()
        self._closing = False  # no more jobs come: idle slots return
        self._settling = 0  # slots waiting for their outcome to be recorded, to announce it
        self._settling_sent = 0  # those of them whose outcome is in an exchange call in flight
        self._outcomes: list[_Finished] = []  # finished runs waiting for the exchange loop
        self._dry = False  # the last lease found fewer jobs than free slots
        self._run_scopes: dict[str, anyio.CancelScope] = {}  # cancelled when a lease is lost
        self._cancel_requested: set[str] = set()  # running jobs a caller asked to cancel
        self.stats = JobStats()
        self._register_failures = 0
        self._control_failures = 0
        # One count for both exchange lanes, so that an outage logs one line, not one per lane.
        self._lane_failures = 0
        self.started_at = now_ms()
        self._stopping = False
        self._blocked = False  # a task blocks in wait_and_lease: the loop or the idle waiter
        self._wakers: set[anyio.Event] = set()  # one per exchange lane, set when work arrives
        self._leasing = 0  # jobs requested by exchange calls in flight, not dispatched yet
        self._calls_sent = 0  # exchange calls sent, numbered from 0
        self._calls_dispatched = 0  # exchange calls whose jobs went to the slots, in order
        # By call number: jobs requested, jobs leased, and _lease_clock() when the call was sent.
        self._replies: dict[int, tuple[int, list[Job], float]] = {}
        self._need_jobs: anyio.Event | None = None  # set when the idle waiter should block
        self._stop_requested: anyio.Event | None = None
        # One event per idle slot, set to wake that slot when a leased job waits in _ready.
        self._idle_slots: collections.deque[anyio.Event] = collections.deque()
        self._releasing: anyio.Lock  # held while unstarted jobs go back to their queue
        self._jobs_scope: anyio.CancelScope | None = None
        # A thread abandoned at a timeout gives its token back, so the pool stays this size.
        self._threads = anyio.CapacityLimiter(self.concurrency)
        # Jobs one exchange call leases at most: the slots (and prefetch) split between lanes.
        self._lane_share = -(-(self.concurrency + self.prefetch) // EXCHANGE_LANES)

    async def run(self, handle_signals: bool = True, on_started: Callable[[], object] | None = None) -> None:
        """Fetch and run jobs until ``stop()`` or SIGTERM/SIGINT, then shut down gracefully.

        ``on_started`` is called once the worker has registered, before it leases a job.
        """
        logger.info(
            "Worker %s starting on queue %s with concurrency %d, handlers: %s",
            self.id,
            self.backend.queue,
            self.concurrency,
            ", ".join(self.plugins.registry.names()) or "none",
        )
        self._need_jobs = anyio.Event()
        self._releasing = anyio.Lock()
        self._stop_requested = anyio.Event()
        if self._stopping:
            self._stop_requested.set()
        async with anyio.create_task_group() as services:
            if handle_signals:
                # Handlers are in place before the first lease, so a SIGTERM always drains.
                await services.start(self._watch_signals)
            await self._register()
            if on_started is not None:
                on_started()
            services.start_soon(self._renew_leases)
            services.start_soon(self._control)

            async with service_lifecycle(self.plugins.manager, "worker", worker=self):
                await self._work()
            services.cancel_scope.cancel()

        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(STOP_WRITES_TIMEOUT) as writes:
                # Jobs first: they wait in Redis, the counters only feed the metrics.
                await self._release_lost_leases()
                await self._flush_stats()
                try:
                    await self.backend.deregister_worker(self.id)
                except BackendError as error:
                    logger.warning("Worker %s could not deregister: %s", self.id, error)
            if writes.cancelled_caught:
                logger.warning(
                    "Worker %s stopped before Redis replied to its last writes within %gs: jobs "
                    "still leased to it return to their queue when their lease expires, and its "
                    "registration expires after LEASE_TIMEOUT",
                    self.id, STOP_WRITES_TIMEOUT,
                )
        logger.info("Worker %s stopped", self.id)

    def stop(self) -> None:
        """Stop fetching, and let running jobs finish within SHUTDOWN_GRACE."""
        if not self._stopping:
            logger.info(
                "Worker %s stopping: waiting up to %gs for %d running jobs",
                self.id, self.settings.SHUTDOWN_GRACE, self._busy - len(self._ready),
            )
        self._stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()
        self._wake_exchange()

    def abort(self) -> None:
        """Stop at once: running jobs are cancelled and returned to the head of their queue."""
        logger.warning("Worker %s aborting %d running jobs", self.id, self._busy)
        self.stop()
        if self._jobs_scope is not None:
            self._jobs_scope.cancel()

    async def _watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for received in signals:
                if self._stopping:
                    logger.warning("Received %s again", signal.Signals(received).name)
                    self.abort()
                else:
                    logger.info("Received %s", signal.Signals(received).name)
                    self.stop()

    async def _work(self) -> None:
        async with anyio.create_task_group() as work:
            work.start_soon(self._wait_for_jobs)
            work.start_soon(self._enforce_grace)
            work.start_soon(self._run_slots)
            try:
                async with anyio.create_task_group() as lanes:
                    for _ in range(EXCHANGE_LANES):
                        lanes.start_soon(self._exchange_loop)
            finally:
                self._closing = True
                self._wake_slots()
            # Every slot is idle now, so only the waiter and the grace timer are cancelled.
            work.cancel_scope.cancel()

    async def _run_slots(self) -> None:
        with anyio.CancelScope() as self._jobs_scope:
            async with anyio.create_task_group() as slots:
                for _ in range(self.concurrency):
                    slots.start_soon(self._slot)

        # Jobs leased for slots that were cancelled before they took them go back to the head
        # of their queue.
        await self._release_unstarted()
        self._wake_exchange()

    async def _slot(self) -> None:
        # The leased jobs wait in a deque, and each idle slot waits on an event of its own: a
        # cheaper hand-over than a channel, which costs an event and a checkpoint per job.
        # A lease wakes one slot per job. One event shared by all slots woke every idle slot
        # for each job, and all but one of them found nothing to run.
        while True:
            # A stopping worker starts no more jobs: the exchange loop returns the rest.
            while self._ready and not self._stopping:
                job = self._ready.popleft()
                try:
                    await self._start_if_leased(job)
                finally:
                    self._busy -= 1
                    self._wake_exchange()
            if self._closing:
                return
            woken = anyio.Event()
            self._idle_slots.append(woken)
            try:
                await woken.wait()
            finally:
                if not woken.is_set():
                    # Cancelled while idle: a later wake-up must go to a slot that still waits.
                    self._idle_slots.remove(woken)

    async def _start_if_leased(self, job: Job) -> None:
        """Run a job that waited in ``_ready``, unless its lease was lost meanwhile.

        A heartbeat renews every lease after a third of LEASE_TIMEOUT. A job whose lease was
        last renewed more than half of LEASE_TIMEOUT ago may have waited while the worker was
        paused, suspended or cut off from Redis, and the scheduler may have given it to another
        worker. Such a job's lease is renewed first, which checks its delivery token. With a
        LEASE_TIMEOUT under 2 s, a job leased behind an idle wait (up to 1 s) may take this path.
        """
        waited = _lease_clock() - self._leased_at.pop(job.id)
        if waited > self.settings.LEASE_TIMEOUT / 2:
            try:
                lost = await self.backend.heartbeat([job], self.settings.LEASE_TIMEOUT)
            except BackendError as error:
                logger.warning(
                    "Could not renew the lease of job %s:%s, which waited %.1fs since its last "
                    "renewal, so it is returned to its queue instead of run: %s",
                    job.id, job.name, waited, error,
                )
                # The release retries for up to LEASE_TIMEOUT, and checks the delivery token.
                with anyio.CancelScope(shield=True):
                    await self._release(job)
                return
            if lost:
                logger.warning(
                    "Worker %s lost the lease of job %s before a slot took it; it does not run here",
                    self.id, job.id,
                )
                self._forget(job)
                return

        await self._run_job(job)

    def _drop_unstarted(self, deliveries: list[Job]) -> list[Job]:
        """Remove these deliveries from ``_ready`` where they wait there, and return those."""
        keys = {(job.id, job.token) for job in deliveries}
        dropped = [job for job in self._ready if (job.id, job.token) in keys]
        if not dropped:
            return []
        self._ready = collections.deque(job for job in self._ready if (job.id, job.token) not in keys)
        for job in dropped:
            del self._leased_at[job.id]
            self._forget(job)
        self._busy -= len(dropped)
        self._wake_exchange()
        return dropped

    def _forget(self, job: Job) -> None:
        """Remove this delivery of ``job`` from ``running``, but not a newer delivery of it."""
        if self._holds(job):
            del self.running[job.id]

    def _wake_slots(self, count: int | None = None) -> None:
        """Wake ``count`` idle slots, or all of them."""
        idle = len(self._idle_slots)
        for _ in range(idle if count is None else min(count, idle)):
            self._idle_slots.popleft().set()

    def _wake_exchange(self) -> None:
        for waker in self._wakers:
            waker.set()

    async def _exchange_loop(self) -> None:
        """Record finished runs and lease jobs for free slots, one script call per batch.

        ``EXCHANGE_LANES`` of these loops run. While one waits for its reply, the jobs that
        the other leased run. With one loop, the slots idled for every round trip.
        """
        wake = anyio.Event()
        try:
            while True:
                self._wakers.discard(wake)
                wake = anyio.Event()
                self._wakers.add(wake)
                # A lease call in flight may bring jobs that the recovery would find as well,
                # so the recovery waits for its reply, and no new lease goes out meanwhile.
                # A stopping worker does not run such jobs: it returns them to their queue
                # once its work is over (_release_lost_leases).
                recovering = (self._leases_unknown or self._recovering) and not self._stopping
                if recovering and not self._recovering and not self._leasing and not self._blocked:
                    if not await self._recover_leases():
                        continue
                    recovering = False
                if self._stopping and not self._leasing:
                    # Jobs that no slot has started go back at once, instead of holding the
                    # worker up for the grace period. Not while a lease is on its way: its jobs
                    # come from further down the queue, so they must go back first.
                    await self._release_unstarted()
                free = self._free_slots()
                # While the idle waiter blocks, its own lease takes the jobs that arrive. A
                # second lease here could take more jobs than there are free slots.
                lease_count = 0 if self._dry or self._blocked or recovering else min(free, self._lane_share)
                if not self._outcomes and lease_count == 0:
                    if self._stopping and self._busy == 0 and not self._blocked and not self._leasing:
                        self._wake_exchange()  # the other lanes see the end too
                        return
                    if free > 0 and self._busy == 0 and not self._blocked and not self._leasing and not recovering:
                        # Nothing runs, so no outcome can arrive: block and lease in one call.
                        # Not while the idle waiter blocks too: it would take the next token.
                        self._lane_failures = await self._wait_and_lease(free, self._lane_failures)
                        continue
                    if free > 0 and self._need_jobs is not None and not recovering:
                        self._need_jobs.set()  # the idle waiter blocks on the wake-up list
                    await wake.wait()
                    continue

                # Counted until the reply is dispatched, so that the other lane leases only
                # for the slots left.
                self._leasing += lease_count
                ticket = self._calls_sent
                self._calls_sent += 1
                leased: list[Job] = []
                failure: BackendError | None = None
                sent_at = _lease_clock()
                try:
                    leased = await self._exchange(lease_count)
                except BackendError as error:
                    failure = error
                finally:
                    self._replies[ticket] = (lease_count, leased, sent_at)
                    self._dispatch_replies()
                if failure is not None:
                    self._leases_unknown = self._leases_unknown or lease_count > 0
                    self._lane_failures += 1
                    await self._backoff("record outcomes and lease jobs", failure, self._lane_failures)
                    continue
                self._lane_failures = 0
                if lease_count:
                    # A call that only recorded outcomes read nothing of the queue. Jobs that
                    # arrived since the last lease left tokens in the wake-up list.
                    self._dry = len(leased) < lease_count
        finally:
            self._wakers.discard(wake)
            # Outcomes of runs that ended as the worker was cancelled are still recorded.
            with anyio.CancelScope(shield=True):
                await self._flush_outcomes()

    def _dispatch_replies(self) -> None:
        """Hand the jobs of the exchange calls to the slots in the order the calls were sent.

        The lanes' calls normally run in Redis in that order, but the worker can read the second
        reply first. A reply that arrives early waits here, still counted in ``_leasing``.
        """
        while self._calls_dispatched in self._replies:
            count, leased, sent_at = self._replies.pop(self._calls_dispatched)
            self._calls_dispatched += 1
            self._leasing -= count
            self._dispatch(leased, sent_at)

    def _free_slots(self) -> int:
        # A slot waiting to announce its outcome is free once the call that records the outcome
        # replies. That call records before it leases, so its own lease may count the slot.
        if self._stopping:
            return 0
        settling = self._settling - self._settling_sent
        # The sum drops below zero between an announcing slot settling and its run ending.
        return max(0, self.concurrency + self.prefetch - self._busy - self._leasing + settling)

    async def _wait_and_lease(self, free: int, failures: int) -> int:
        """Block on the wake-up list, lease up to ``free`` jobs and return the failure count.

        Either the exchange loop or the idle waiter blocks here, never both: two waits would
        take two wake-up tokens for one job.
        """
        # The wait below is shielded, and an idle worker starts the next one right after it.
        # Without this check, a worker cancelled without stop() would never see the cancellation.
        await checkpoint_if_cancelled()
        self._blocked = True
        sent_at = _lease_clock()
        try:
            # Shielded, because the lease may have run in Redis when a cancellation arrives; a
            # stop ends the wait at once through interrupt_wait.
            # NOTE: with Redis unreachable, a stop waits here for the socket timeout (10 s).
            with anyio.CancelScope(shield=True):
                leased = await self.backend.wait_and_lease(
                    IDLE_WAIT, free, self.id, self.settings.LEASE_TIMEOUT
                )
        except BackendError as error:
            self._leases_unknown = True
            self._wake_exchange()
            failures += 1
            await self._backoff("wait for jobs", error, failures)
            return failures
        finally:
            self._blocked = False
        self._dry = len(leased) < free
        self._dispatch(leased, sent_at)
        return 0

    async def _recover_leases(self) -> bool:
        """Run the jobs that failed calls leased to this worker. Returns False if Redis failed again.

        Without this, such jobs would wait for their lease to expire, and count as a crash.
        """
        # Set until the end, so that no lane leases while the jobs are looked up.
        self._recovering = True
        try:
            leased = await self.backend.leased_to(self.id)
            unknown = [job for job in leased if not self._holds(job)]
            renewed_at = _lease_clock()
            lost = await self.backend.heartbeat(unknown, self.settings.LEASE_TIMEOUT) if unknown else []
        except BackendError as error:
            self._lane_failures += 1
            await self._backoff("find the jobs leased by failed calls", error, self._lane_failures)
            return False
        finally:
            self._recovering = False
        self._leases_unknown = False

        found = [job for job in unknown if job.id not in lost and not self._holds(job)]
        if found:
            logger.warning(
                "Worker %s found %d jobs leased by calls whose replies were lost, and runs them: %s",
                self.id, len(found), ", ".join(f"{job.id}:{job.name}" for job in found),
            )
            self._dispatch(found, renewed_at)
        return True

    async def _release_lost_leases(self) -> None:
        """Return to their queue the jobs that calls with lost replies leased to this stopped worker.

        A stopping worker does not recover such jobs to run them. Without this, they would wait
        for their lease to expire, and count as a crash.
        """
        if not self._leases_unknown:
            return
        try:
            leased = await self.backend.leased_to(self.id)
            # Nothing runs any more, so a job leased here that the worker does not hold came in
            # a lost reply. A delivery whose outcome or release could not be recorded is the
            # exception: its lease is left to expire, as the error logged then announced.
            lost = [
                job for job in leased
                if not self._holds(job) and (job.id, job.token) not in self._unrecorded
            ]
            # leased_to gives the order of the leases. The last goes back first, so that the
            # LPUSHes leave the first job at the head of its list.
            # NOTE: two leases whose deadlines fall in the same millisecond (the two lanes'
            # calls, say) share their scores, and their jobs may come back interleaved.
            for job in reversed(lost):
                released = await self.backend.release(job)
                if released == Recorded.cancelled:
                    self._cancelled_on_release(job)
                elif released:
                    logger.warning(
                        "Worker %s returned job %s:%s, leased by a call whose reply was lost, "
                        "to the head of its queue",
                        self.id, job.id, job.name,
                    )
        except BackendError as error:
            logger.warning(
                "Worker %s could not return the jobs leased by calls whose replies were lost; "
                "they go back to their queue when their lease expires: %s",
                self.id, error,
            )

    def _holds(self, job: Job) -> bool:
        """Return True if this worker already has this delivery of ``job``."""
        known = self.running.get(job.id)
        return known is not None and known.token == job.token

    def _dispatch(self, leased: list[Job], leased_at: float) -> None:
        """Hand leased jobs to the slots. ``leased_at`` is a _lease_clock() time before the lease."""
        # A job found by _recover_leases may also come in the late reply of a call in flight.
        leased = [job for job in leased if not self._holds(job)]
        if not leased:
            return
        # A job leased again while an older delivery of it waits: the older token is dead.
        # After the filter above, a job id that is still in ``running`` names an older delivery.
        older = [self.running[job.id] for job in leased if job.id in self.running]
        if older:
            self._drop_unstarted(older)
        for job in leased:
            self.running[job.id] = job
            self._leased_at[job.id] = leased_at
        self._busy += len(leased)
        if self._ready:
            # Prefetched jobs wait here: a job leased later but of higher priority goes before
            # them. The sort is stable, so each priority stays FIFO.
            self._ready = collections.deque(sorted([*self._ready, *leased], key=_priority_rank))
        else:
            self._ready.extend(leased)
        self._wake_slots(len(leased))

    async def _release_unstarted(self) -> None:
        """Return the leased jobs that no slot has taken to the head of their queue, in order."""
        # NOTE: a prefetched job's lease counts toward POISON_THRESHOLD like a running one's when
        # its worker dies, although it never started.
        # One caller at a time: both lanes release at a stop, and the LPUSHes of two callers
        # could reach Redis out of order on their two connections.
        async with self._releasing:
            while self._ready:
                job = self._ready.pop()  # the last first, so LPUSH restores the queue's order
                del self._leased_at[job.id]
                with anyio.CancelScope(shield=True):
                    await self._release(job)
                self._busy -= 1

    async def _exchange(self, lease_count: int) -> list[Job]:
        """Record the waiting outcomes and lease up to ``lease_count`` jobs, in one call.

        On a BackendError the outcomes wait for the next call, unless they are older than a
        lease (see ``_still_recordable``).
        """
        finished, self._outcomes = self._outcomes, []
        # The slots of these outcomes free up only when this call's reply arrives, so the other
        # lane must not lease for them meanwhile.
        announcing = sum(1 for entry in finished if entry.settled is not None)
        self._settling_sent += announcing
        try:
            # Shielded so that a stop cannot drop the reply of a call Redis carried out.
            with anyio.CancelScope(shield=True):
                recorded, leased = await self.backend.exchange(
                    [entry.outcome for entry in finished], lease_count, self.id,
                    self.settings.LEASE_TIMEOUT,
                )
        except BackendError:
            self._outcomes = self._still_recordable(finished) + self._outcomes
            raise
        finally:
            self._settling_sent -= announcing
        for entry, was_recorded in zip(finished, recorded):
            self._forget(entry.outcome.job)
            self._settle(entry, was_recorded)
        return leased

    async def _flush_outcomes(self) -> None:
        failures = 0
        while self._outcomes:
            try:
                await self._exchange(0)
            except BackendError as error:
                failures += 1
                await self._backoff("record outcomes", error, failures)

    def _still_recordable(self, finished: list[_Finished]) -> list[_Finished]:
        """Keep the outcomes that failed to record, but drop those older than one lease.

        By then the scheduler has returned the job to its queue, and a late write would be
        rejected by its stale delivery token anyway.
        """
        now = time.monotonic()
        recordable = []
        for entry in finished:
            if now - entry.finished_at < self.settings.LEASE_TIMEOUT:
                recordable.append(entry)
                continue
            job = entry.outcome.job
            self._forget(job)
            self._unrecorded.add((job.id, job.token))
            logger.error(
                "Could not record the outcome of job %s:%s; its lease will expire and it runs again",
                job.id, job.name,
            )
        return recordable

    async def _wait_for_jobs(self) -> None:
        """While jobs run and the queue is empty, block on the wake-up list and lease.

        The exchange loop stays free to record the outcomes of the running jobs meanwhile.
        The lease travels behind the wait, so a job that arrives is leased in the same round
        trip, also when the jobs that were running have finished by then.
        """
        assert self._need_jobs is not None
        failures = 0
        while True:
            await self._need_jobs.wait()
            self._need_jobs = anyio.Event()
            free = self._free_slots()
            if self._blocked or free == 0 or self._leases_unknown or self._recovering:
                continue  # the exchange loop blocks itself or recovers leases, or the worker stops
            failures = await self._wait_and_lease(free, failures)
            if failures:
                self._dry = False  # the next lease looks at the queue again
            self._wake_exchange()

    async def _enforce_grace(self) -> None:
        # Running jobs get SHUTDOWN_GRACE to finish, and the rest are cancelled and released.
        assert self._stop_requested is not None
        await self._stop_requested.wait()
        if self._blocked:
            try:
                await self.backend.interrupt_wait(self.id)
            except BackendError as error:
                logger.warning(
                    "Worker %s could not end its wait for jobs; it ends within %gs: %s",
                    self.id, IDLE_WAIT, error,
                )
        await anyio.sleep(self.settings.SHUTDOWN_GRACE)
        if self._busy and self._jobs_scope is not None:
            logger.warning(
                "Worker %s returning %d unfinished jobs to their queue after the grace period",
                self.id, self._busy,
            )
            self._jobs_scope.cancel()

    async def _run_job(self, job: Job) -> None:
        scope = self._run_scopes[job.id] = anyio.CancelScope()
        try:
            with scope:
                finished = await self._execute(job)
        except anyio.get_cancelled_exc_class():
            self._cancel_requested.discard(job.id)
            with anyio.CancelScope(shield=True):
                await self._release(job)
            raise
        finally:
            # A newer delivery of the job may run here too, under a scope of its own.
            if self._run_scopes.get(job.id) is scope:
                del self._run_scopes[job.id]

        if scope.cancelled_caught:
            if job.id in self._cancel_requested:
                await self._finish_cancelled(job)
            else:
                logger.warning(
                    "Stopped job %s:%s: its lease was lost, so another worker may run it",
                    job.id, job.name,
                )
                self.stats.record(job.queue, job.name, Outcome.lost, None, None)
                self._forget(job)
            self._cancel_requested.discard(job.id)
            return
        self._cancel_requested.discard(job.id)

        hook_name = _OUTCOME_HOOKS[finished.outcome.kind]
        if not self._observed(hook_name):
            self._outcomes.append(finished)
            return
        # Observers run in the task that ran the job, where bananas_job_started ran, so the
        # context variables a plugin set there (a tracing span, say) are still in place. The
        # slot stays taken until the outcome is recorded.
        finished.settled = anyio.Event()
        self._outcomes.append(finished)
        self._settling += 1
        self._wake_exchange()
        try:
            await finished.settled.wait()
        finally:
            self._settling -= 1
        if finished.recorded:
            await self._announce(hook_name, finished)

    async def _release(self, job: Job) -> None:
        released = await self._record(job, lambda: self.backend.release(job))
        self._forget(job)
        if released == Recorded.cancelled:
            self._cancelled_on_release(job)
        elif released:
            logger.info("Returned job %s:%s to the head of its queue", job.id, job.name)

    def _cancelled_on_release(self, job: Job) -> None:
        logger.info(
            "Cancelled job %s:%s instead of returning it to its queue: its cancellation was "
            "requested while it was leased",
            job.id, job.name,
        )
        # No run time: the job may never have started.
        self.stats.record(job.queue, job.name, Outcome.cancelled, None, None)

    async def _execute(self, job: Job) -> _Finished:
        handler = self.plugins.registry.get(job.name)
        if handler is None:
            installed = ", ".join(self.plugins.registry.names()) or "none"
            error = UnknownHandler(
                f"no installed plugin handles job name {job.name!r} (installed handlers: "
                f"{installed}); install the plugin that provides it and retry the job"
            )
            details = describe_error(error)
            return _Finished(RunOutcome(job, "dead", details.model_dump_json()), 0.0, details=details)

        logger.info(
            "Started job %s:%s attempt %d of %d", job.id, job.name, job.attempts, job.max_retries + 1
        )
        if self._observed("bananas_job_started"):
            await notify(self.plugins.manager, "bananas_job_started", job=job)
        context = self._context(job) if self._needs_context(handler) else None
        started = time.monotonic()
        try:
            result = await call_job_wrappers(
                self.plugins.manager, job, context, lambda: run_handler(handler, job, context, self._threads)
            )
            # A wrapper may replace the handler's result, so the stored value is checked again.
            encoded = encode_result(result, f"the bananas_wrap_job plugins of job {job.name!r}")
        except anyio.get_cancelled_exc_class():
            raise
        except (Exception, SystemExit) as error:
            # SystemExit from a handler fails its job instead of ending the worker.
            return await self._failure(job, error, time.monotonic() - started)

        return _Finished(RunOutcome(job, "completed", encoded), time.monotonic() - started, result=result)

    def _needs_context(self, handler: Handler) -> bool:
        # Most handlers take only the payload. Without a wrapper, nothing else reads the context,
        # and on an idle worker's pickup, building it took about 15 us (measured here).
        return handler.takes_context or handler.isolation == "process" or self._observed("bananas_wrap_job")

    def _context(self, job: Job) -> JobContext:
        return JobContext(
            job=job,
            logger=job_logger(job),
            cancel_flag=lambda: job.id in self._cancel_requested,
            progress_sink=partial(self.backend.set_progress, job),
        )

    async def _failure(self, job: Job, error: BaseException, elapsed: float) -> _Finished:
        details = describe_error(error)
        await notify(self.plugins.manager, "bananas_job_failed", job=job, error=details)

        delay = None if isinstance(error, PermanentError) else self._retry_delay(job, error)
        if delay is None:
            return _Finished(RunOutcome(job, "dead", details.model_dump_json()), elapsed, details=details)
        return _Finished(
            RunOutcome(job, "retry", details.model_dump_json(), delay), elapsed, details=details
        )

    def _settle(self, entry: _Finished, recorded: Recorded) -> None:
        """Count and log an outcome once the backend has recorded it, and wake its slot."""
        outcome = entry.outcome
        job = outcome.job
        if entry.settled is not None:
            # A retry that gave way to a cancel request has no observer hook to announce.
            entry.recorded = recorded == Recorded.recorded
            entry.settled.set()
        if outcome.kind == "completed":
            self._settle_completed(entry, recorded)
        elif not recorded:
            logger.warning("Job %s:%s failed but its lease was lost; not retried here", job.id, job.name)
        elif recorded == Recorded.cancelled:
            logger.info(
                "Cancelled job %s:%s instead of retrying it: its cancellation was requested while "
                "attempt %d ran and failed", job.id, job.name, job.attempts,
            )
            self.stats.record(job.queue, job.name, Outcome.cancelled, entry.elapsed, _wait_seconds(job))
        elif outcome.kind == "retry":
            self._settle_retry(entry)
        else:
            self._settle_dead(entry)

    def _settle_completed(self, entry: _Finished, recorded: Recorded) -> None:
        job = entry.outcome.job
        if not recorded:
            logger.warning(
                "Job %s:%s finished in %.3fs but its lease was lost; result discarded",
                job.id, job.name, entry.elapsed,
            )
            return
        logger.info("Completed job %s:%s in %.3fs", job.id, job.name, entry.elapsed)
        self.stats.record(job.queue, job.name, Outcome.completed, entry.elapsed, _wait_seconds(job))

    def _settle_retry(self, entry: _Finished) -> None:
        job, details, delay = entry.outcome.job, entry.details, entry.outcome.retry_delay
        assert details is not None
        self.stats.record(job.queue, job.name, Outcome.retried, entry.elapsed, _wait_seconds(job))
        logger.warning(
            "Job %s:%s failed on attempt %d (%s: %s); retry %d of %d in %.1fs",
            job.id, job.name, job.attempts, details.type, details.message,
            job.retries + 1, job.max_retries, delay,
        )

    def _settle_dead(self, entry: _Finished) -> None:
        job, details = entry.outcome.job, entry.details
        assert details is not None
        self.stats.record(job.queue, job.name, Outcome.dead, entry.elapsed, _wait_seconds(job))
        logger.error(
            "Job %s:%s moved to the dead letter queue after %d attempts: %s: %s",
            job.id, job.name, job.attempts, details.type, details.message,
        )

    def _observed(self, hook_name: str) -> bool:
        # The job copy an observer receives is only built when some plugin observes the hook.
        return bool(getattr(self.plugins.manager.hook, hook_name).get_hookimpls())

    async def _announce(self, hook_name: str, entry: _Finished) -> None:
        """Call the observers of a recorded outcome with the job as the backend stored it."""
        job, details = entry.outcome.job, entry.details
        update: dict[str, object] = {"finished_at": utc_now(), "worker": None}
        arguments: dict[str, object]
        if hook_name == "bananas_job_succeeded":
            update.update(status=JobStatus.completed, result=entry.result)
            arguments = {"result": entry.result}
        elif hook_name == "bananas_job_dead":
            update.update(status=JobStatus.dead, error=details)
            arguments = {"error": details}
        else:
            # A retry due now goes straight back to its queue, and a later one waits in the
            # scheduled set.
            delay = entry.outcome.retry_delay
            due_now = delay == 0
            update.update(
                status=JobStatus.pending if due_now else JobStatus.scheduled,
                retries=job.retries + 1,
                run_at=None if due_now else from_ms(now_ms() + round(delay * 1000)),
                error=details,
            )
            arguments = {"error": details, "delay": delay}
        await notify(self.plugins.manager, hook_name, job=job.model_copy(update=update), **arguments)

    def _retry_delay(self, job: Job, error: BaseException) -> float | None:
        """Ask the retry policy plugins for the delay before the next run. None means give up."""
        if isinstance(error, JobTimeout):
            error = TimeoutError(str(error))
        try:
            decision = self.plugins.manager.hook.bananas_retry_delay(job=job, error=error)
        except Exception:
            logger.exception(
                "Retry policy raised for job %s:%s; the handler's own policy decides", job.id, job.name
            )
            decision = self._fallback_delay(job)

        if decision is False or decision is None:
            return None
        if isinstance(decision, bool) or not isinstance(decision, (int, float)) or not (
            math.isfinite(decision) and decision >= 0
        ):
            logger.error(
                "Retry policy returned %r for job %s:%s, expected seconds >= 0 or False; "
                "the built-in backoff decides", decision, job.id, job.name,
            )
            fallback = self._fallback_delay(job)
            return None if fallback is False else float(fallback)
        return float(decision)

    def _fallback_delay(self, job: Job) -> float | bool:
        handler = self.plugins.registry.get(job.name)
        if handler is not None and handler.retry_policy is not None:
            return handler.retry_policy.delay(job)
        return exponential_backoff(job)

    async def _record(self, job: Job, write: Callable[[], Awaitable[int]]) -> int:
        """Write a job's outcome, retrying while the backend is unreachable.

        Gives up after one lease period: by then the scheduler has returned the job to its
        queue, and a late write would be rejected by its stale delivery token anyway.
        """
        # The first write goes without a deadline scope: a scope costs a few microseconds on
        # every job, and it only matters once the backend fails.
        try:
            return await write()
        except BackendError as error:
            failures = 1
            await self._backoff(f"record job {job.id}", error, failures)
        with anyio.move_on_after(self.settings.LEASE_TIMEOUT):
            while True:
                try:
                    return await write()
                except BackendError as error:
                    failures += 1
                    await self._backoff(f"record job {job.id}", error, failures)
        self._unrecorded.add((job.id, job.token))
        logger.error(
            "Could not record the outcome of job %s:%s; its lease will expire and it runs again",
            job.id, job.name,
        )
        return False

    async def _renew_leases(self) -> None:
        interval = self.settings.LEASE_TIMEOUT / 3
        failures = 0
        renew_at = anyio.current_time() + interval
        while True:
            wait = renew_at - anyio.current_time()
            if self._register_failures:
                # A worker whose registration failed tries again every second, so that it is
                # listed soon after Redis is back rather than at the next renewal.
                wait = min(wait, REGISTER_RETRY)
            await anyio.sleep(max(wait, 0))
            if anyio.current_time() < renew_at:
                await self._register()
                continue

            renew_at = anyio.current_time() + interval
            await self._register()
            jobs = list(self.running.values())
            sent_at = _lease_clock()
            try:
                lost = await self.backend.heartbeat(jobs, self.settings.LEASE_TIMEOUT)
                failures = 0
            except BackendError as error:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    logger.warning(
                        "Worker %s could not renew %d leases (failure %d): %s",
                        self.id, len(jobs), failures, error,
                    )
                continue
            lost_ids = set(lost)
            for job in jobs:
                # A renewed lease expires LEASE_TIMEOUT after the heartbeat was sent.
                if job.id in self._leased_at and job.id not in lost_ids and self._holds(job):
                    self._leased_at[job.id] = sent_at
            # The deliveries that the heartbeat sent. A newer delivery of the same job, leased
            # while the heartbeat was on its way, keeps its lease.
            lost_deliveries = [job for job in jobs if job.id in lost_ids and self._holds(job)]
            for job in self._drop_unstarted(lost_deliveries):
                logger.warning(
                    "Worker %s lost the lease of job %s before a slot took it; it does not run here",
                    self.id, job.id,
                )
            for job_id in [job.id for job in lost_deliveries if self._holds(job)]:
                scope = self._run_scopes.get(job_id)
                if scope is None:
                    # The run ended during the heartbeat, and the exchange that recorded its
                    # outcome released the lease. Had the lease been lost, the outcome is
                    # rejected and logged there.
                    continue
                # Another worker owns the job now, and its run wins: stop ours. A sync thread
                # cannot stop, but its outcome is rejected by the stale delivery token.
                logger.warning("Worker %s lost the lease of job %s", self.id, job_id)
                scope.cancel()

    async def _register(self) -> None:
        # The registration lives one lease period, so a dead worker leaves the list as its
        # jobs' leases expire.
        info = WorkerInfo(
            id=self.id,
            queue=self.backend.queue,
            handlers=self.plugins.registry.names(),
            concurrency=self.concurrency,
            running=len(self.running),
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            heartbeat_at=0,
        )
        try:
            await self.backend.register_worker(info, self.settings.LEASE_TIMEOUT)
            self._register_failures = 0
        except BackendError as error:
            self._register_failures += 1
            if self._register_failures == 1 or self._register_failures % 10 == 0:
                logger.warning(
                    "Worker %s could not register (failure %d): %s", self.id, self._register_failures, error
                )

    async def _control(self) -> None:
        """Stop running jobs whose cancellation was requested, and flush the job counters."""
        while True:
            await anyio.sleep(CONTROL_INTERVAL)
            await self._flush_stats()
            if not self.running:
                continue
            try:
                requested = await self.backend.cancel_requests(list(self.running.values()))
                self._control_failures = 0
            except BackendError as error:
                self._control_failures += 1
                if self._control_failures == 1 or self._control_failures % 10 == 0:
                    logger.warning(
                        "Worker %s could not read cancel requests (failure %d): %s",
                        self.id, self._control_failures, error,
                    )
                continue
            for job_id in requested:
                scope = self._run_scopes.get(job_id)
                if scope is not None and job_id not in self._cancel_requested:
                    logger.info("Cancelling job %s at the caller's request", job_id)
                    self._cancel_requested.add(job_id)
                    scope.cancel()

    async def _finish_cancelled(self, job: Job) -> None:
        with anyio.CancelScope(shield=True):
            recorded = await self._record(job, lambda: self.backend.finish_cancelled(job))
        self._forget(job)
        if recorded:
            logger.info("Cancelled job %s:%s while it ran", job.id, job.name)
            self.stats.record(job.queue, job.name, Outcome.cancelled, _run_seconds(job), None)
        else:
            logger.warning("Job %s:%s was cancelled but its lease was lost", job.id, job.name)

    async def _flush_stats(self) -> None:
        increments = self.stats.take()
        if not increments:
            return
        try:
            await self.backend.add_job_metrics(increments)
        except BackendError as error:
            # The increments wait for the next flush; the outage is logged by the other loops.
            self.stats.restore(increments)
            logger.debug("Worker %s could not flush job metrics: %s", self.id, error)

    async def _backoff(self, action: str, error: BackendError, failures: int) -> None:
        delay = min(0.1 * 2 ** (failures - 1), BACKOFF_MAX)
        # The first failure and then every tenth is logged, so an outage does not flood the log.
        if failures == 1 or failures % 10 == 0:
            logger.warning(
                "Worker %s could not %s (failure %d), retrying in %.1fs: %s",
                self.id, action, failures, delay, error,
            )
        if self._stopping or self._stop_requested is None:
            # A stopping worker that still has outcomes to record keeps spacing out its tries.
            await anyio.sleep(delay)
            return
        # A stop ends the wait, because after an outage of a few seconds the delay is several
        # seconds long.
        with anyio.move_on_after(delay):
            await self._stop_requested.wait()


@dataclass
class _Finished:
    """A run that ended, waiting for the exchange loop to record it."""

    outcome: RunOutcome
    elapsed: float  # seconds the handler ran
    result: object = None
    details: JobError | None = None  # the error of a failed run
    finished_at: float = field(default_factory=time.monotonic)
    settled: anyio.Event | None = None  # set once recorded, when the slot waits to announce it
    recorded: bool = False  # recorded as the run ended, so its observers are called


def _priority_rank(job: Job) -> int:
    return PRIORITIES.index(job.priority)


_OUTCOME_HOOKS = {
    "completed": "bananas_job_succeeded",
    "retry": "bananas_job_retry_scheduled",
    "dead": "bananas_job_dead",
}


def _run_seconds(job: Job) -> float | None:
    if job.started_at is None:
        return None
    return max((utc_now() - job.started_at).total_seconds(), 0.0)


def _wait_seconds(job: Job) -> float | None:
    # Only a first attempt has a meaningful wait: from submission to its start.
    if job.attempts != 1 or job.started_at is None:
        return None
    return max((job.started_at - job.created_at).total_seconds(), 0.0)
