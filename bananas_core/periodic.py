"""Periodic jobs: cron schedules whose ticks the schedulers of a queue enqueue once between them.

A schedule names a cron expression in an IANA time zone and the job to submit at each tick.
Schedules come from the ``bananas_periodic_jobs`` hook and the PERIODIC_JOBS setting. Each
scheduler tick calls ``run_due_schedules``, which for every schedule that is not paused:

1. reads the last enqueued tick from the sorted set ``{prefix}:{@periodic}:last``
   (schedule name scored by the tick's time in ms), or records the current time there the
   first time it sees the schedule, so a new schedule never runs for ticks before it existed;
2. submits one job per due tick with the id ``periodic:NAME:TICK_MS``, where a submission of
   an id that exists returns the existing job, so two schedulers that see the same tick
   create one job;
3. advances the last tick with ``ZADD GT``, which only ever moves it forward.

A crash between 2 and 3 makes the next scheduler submit the same id again, which creates
nothing while the first job's record exists.

NOTE: the last-tick set is shared by every queue under a prefix, but job ids are looked up
in one queue. Schedulers of two queues that reach the same tick of a schedule that names no
queue each create a job, one in each queue.

Ticks that are more than ``grace`` seconds late count as missed: with ``catch_up``
they run once, as one job for the latest of them, and without it they are skipped.

Cron times are wall-clock times of the schedule's time zone. Around daylight saving time
changes, a 5-field expression with a fixed minute and hour (such as ``30 2 * * *``) runs
once on each day: a time that the clock skips runs when the clock jumps past it, and a time
that the clock repeats runs at its first occurrence. Expressions with ``*`` in the minute
or hour field run at every real time that matches, as Debian's cron does. A 6-field
expression (seconds first) follows the same rules for its minute and hour.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from redis.exceptions import RedisError

from bananas_core.backends.base import Backend
from bananas_core.errors import (
    BackendError,
    ConfigError,
    InvalidPayload,
    PluginError,
    ScheduleNotFound,
)
from bananas_core.job import Job, Priority, from_ms, new_job
from bananas_core.registry import HANDLER_NAME, HANDLER_NAME_RULE, QUEUE_NAME, HandlerRegistry
from bananas_core.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_GRACE = 60.0  # seconds a tick may be late and still count as on time
MAX_GRACE = 86400.0
MAX_TICKS_PER_CALL = 1000  # on-time ticks of one schedule per call; later ones wait a call
SCHEDULE_NAME = HANDLER_NAME  # the same characters as a handler name

# Nicknames of common schedules, as cron implementations accept them.
_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SECONDS_TERM = re.compile(r"^(\*|\d{1,2}(?:-\d{1,2})?)(?:/(\d{1,2}))?$")
_ONE_SECOND = timedelta(seconds=1)


# Redis keys of the periodic jobs, shared by every queue under a prefix. Their hash tag
# starts with "@", which queue names cannot contain, as for the workers' keys.


def last_ticks_key(prefix: str) -> str:
    """Return the sorted set of schedule names scored by their last enqueued tick (ms)."""
    return f"{prefix}:{{@periodic}}:last"


def paused_key(prefix: str) -> str:
    """Return the set of the names of paused schedules."""
    return f"{prefix}:{{@periodic}}:paused"


@dataclass(frozen=True)
class Schedule:
    """A job submitted at every tick of a cron expression in a time zone.

    ``cron`` has five fields (minute, hour, day of month, month, day of week), six with a
    seconds field first, or is a nickname such as ``@daily``. ``queue``, ``priority``,
    ``timeout`` (seconds) and ``max_retries`` left as None take the handler's defaults, then
    the settings'. ``grace`` is how many seconds late a tick may be before it counts as
    missed, and ``catch_up`` runs missed ticks once instead of skipping them.
    """

    name: str
    cron: str
    job: str  # the handler name
    payload: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    catch_up: bool = False
    grace: float = DEFAULT_GRACE
    queue: str | None = None
    priority: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _cron: _Cron = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"schedule {self.name!r}"
        if not isinstance(self.name, str) or not SCHEDULE_NAME.fullmatch(self.name):
            raise ConfigError(f"invalid schedule name {self.name!r}: use {HANDLER_NAME_RULE}")
        if not isinstance(self.job, str) or not HANDLER_NAME.fullmatch(self.job):
            raise ConfigError(f"{where} has an invalid job {self.job!r}: give a handler name")
        if not isinstance(self.payload, dict):
            raise ConfigError(f"{where} has an invalid payload {self.payload!r}: give a JSON object")

        try:
            json.dumps(self.payload, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where} has a payload that is not JSON: {error}") from None

        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigError(
                f"{where} has an invalid timezone {self.timezone!r}: give an IANA name such as "
                "'Europe/Berlin' or 'UTC'"
            ) from None

        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_cron", _parse_cron(self.cron, where))

        if isinstance(self.grace, bool) or not isinstance(self.grace, (int, float)) or not 0 <= self.grace <= MAX_GRACE:
            raise ConfigError(f"{where} has an invalid grace {self.grace!r}: give 0 to 86400 seconds")
        if not isinstance(self.catch_up, bool):
            raise ConfigError(f"{where} has an invalid catch_up {self.catch_up!r}: give true or false")

        if self.queue is not None and not (isinstance(self.queue, str) and QUEUE_NAME.fullmatch(self.queue)):
            raise ConfigError(f"{where} has an invalid queue {self.queue!r}: use 1 to 64 letters, digits, '-', '_' or '.'")
        if self.priority is not None and self.priority not in ("high", "normal", "low"):
            raise ConfigError(f"{where} has an invalid priority {self.priority!r}: use high, normal or low")
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0):
            raise ConfigError(f"{where} has an invalid timeout {self.timeout!r}: give seconds greater than 0")
        if self.max_retries is not None and (isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 100):
            raise ConfigError(f"{where} has an invalid max_retries {self.max_retries!r}: give 0 to 100")

    def next_tick(self, after: datetime) -> datetime:
        """Return the first tick strictly after ``after`` (an aware datetime), in UTC."""
        return self._cron.next_after(_utc(after), self._zone)

    def previous_tick(self, at_or_before: datetime) -> datetime:
        """Return the last tick at or before ``at_or_before`` (an aware datetime), in UTC."""
        return self._cron.last_until(_utc(at_or_before), self._zone)

    def job_id(self, tick: datetime) -> str:
        """Return the id of the job of ``tick``: the same in every scheduler, so it is created once."""
        return f"periodic:{self.name}:{_ms(tick)}"


@dataclass(frozen=True)
class ScheduleState:
    """A schedule as ``GET /schedules`` shows it: its definition and its state in Redis."""

    name: str
    cron: str
    timezone: str
    job: str
    queue: str | None
    catch_up: bool
    paused: bool
    last_tick: datetime | None  # the last tick enqueued, None before the first
    next_tick: datetime  # the next tick after now, also while paused


@dataclass(frozen=True)
class _Cron:
    """A parsed cron expression: five fields for cronsim, and the seconds of each matching minute."""

    minutes_expression: str
    seconds: tuple[int, ...] | None  # None for a 5-field expression: second 0 only, as cron

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        if self.seconds is None:
            return _utc(next(CronSim(self.minutes_expression, after.astimezone(zone))))
        minute = after.replace(second=0, microsecond=0)
        if self._is_minute_tick(minute, zone):
            for second in self.seconds:
                if minute + timedelta(seconds=second) > after:
                    return minute + timedelta(seconds=second)
        following = _utc(next(CronSim(self.minutes_expression, minute.astimezone(zone))))
        return following + timedelta(seconds=self.seconds[0])

    def last_until(self, at_or_before: datetime, zone: ZoneInfo) -> datetime:
        if self.seconds is None:
            # cronsim's reverse iteration returns ticks strictly before its start.
            start = at_or_before.replace(microsecond=0) + _ONE_SECOND
            return _utc(next(CronSim(self.minutes_expression, start.astimezone(zone), reverse=True)))
        minute = at_or_before.replace(second=0, microsecond=0)
        if self._is_minute_tick(minute, zone):
            for second in reversed(self.seconds):
                if minute + timedelta(seconds=second) <= at_or_before:
                    return minute + timedelta(seconds=second)
        earlier = _utc(next(CronSim(self.minutes_expression, minute.astimezone(zone), reverse=True)))
        return earlier + timedelta(seconds=self.seconds[-1])

    def _is_minute_tick(self, minute: datetime, zone: ZoneInfo) -> bool:
        start = (minute - _ONE_SECOND).astimezone(zone)
        return _utc(next(CronSim(self.minutes_expression, start))) == minute


def _parse_cron(expression: object, where: str) -> _Cron:
    if not isinstance(expression, str):
        raise ConfigError(f"{where} has an invalid cron expression {expression!r}: give a string such as '0 3 * * *'")
    text = _NICKNAMES.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) not in (5, 6):
        raise ConfigError(
            f"{where} has an invalid cron expression {expression!r}: give 5 fields (minute hour "
            "day-of-month month day-of-week), 6 with seconds first, or a nickname such as @daily"
        )
    seconds = None
    if len(parts) == 6:
        seconds = _parse_seconds(parts[0], expression, where)
        parts = parts[1:]
    minutes_expression = " ".join(parts)
    try:
        CronSim(minutes_expression, datetime(2000, 1, 1, tzinfo=timezone.utc))
    except CronSimError as error:
        raise ConfigError(f"{where} has an invalid cron expression {expression!r}: {error}") from None
    return _Cron(minutes_expression, seconds)


def _parse_seconds(text: str, expression: str, where: str) -> tuple[int, ...]:
    seconds: set[int] = set()
    for term in text.split(","):
        match = _SECONDS_TERM.match(term)
        if match is None:
            raise ConfigError(
                f"{where} has an invalid seconds field {text!r} in {expression!r}: use *, a number "
                "from 0 to 59, a range such as 10-20, a step such as */15, or a list of these"
            )
        span, step = match.group(1), int(match.group(2) or 1)
        if span == "*":
            first, last = 0, 59
        elif "-" in span:
            first, last = (int(part) for part in span.split("-"))
        else:
            first = int(span)
            last = 59 if match.group(2) else first
        if not (0 <= first <= last <= 59) or step == 0:
            raise ConfigError(f"{where} has an invalid seconds field {text!r} in {expression!r}: seconds are 0 to 59")
        seconds.update(range(first, last + 1, step))
    return tuple(sorted(seconds))


# Collecting schedules from plugins and settings.


def schedules_from_setting(text: str) -> list[Schedule]:
    """Parse the PERIODIC_JOBS setting: a JSON list of objects with the fields of Schedule.

    Raises ConfigError naming PERIODIC_JOBS and the problem.
    """
    if not text.strip():
        return []
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"invalid PERIODIC_JOBS: not JSON ({error}); give a list of schedule objects") from None
    if not isinstance(entries, list):
        raise ConfigError("invalid PERIODIC_JOBS: give a JSON list of schedule objects")
    known = {each.name for each in fields(Schedule) if each.init}
    schedules = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"invalid PERIODIC_JOBS: item {index} is not an object")
        unknown = sorted(set(entry) - known)
        missing = sorted({"name", "cron", "job"} - set(entry))
        if unknown or missing:
            raise ConfigError(
                f"invalid PERIODIC_JOBS: item {index} has unknown keys {unknown} or misses {missing}; "
                f"the keys are {', '.join(sorted(known))}"
            )
        try:
            schedules.append(Schedule(**entry))
        except ConfigError as error:
            raise ConfigError(f"invalid PERIODIC_JOBS: item {index}: {error}") from None
    return schedules


def collect_schedules(manager: Any, settings: Settings, registry: HandlerRegistry | None = None) -> list[Schedule]:
    """Gather the schedules of the ``bananas_periodic_jobs`` hook and of PERIODIC_JOBS.

    With ``registry``, a schedule's payload is checked against its handler's schema, and a
    schedule whose handler is not registered here is logged as a warning. Raises PluginError
    naming the plugin that raised or returned something else than Schedule objects, and
    ConfigError for an invalid PERIODIC_JOBS, two schedules with one name, or an invalid
    payload.
    """
    sources: list[tuple[str, Schedule]] = []
    for impl in reversed(manager.hook.bananas_periodic_jobs.get_hookimpls()):
        try:
            returned = impl.function(**{name: {"settings": settings}[name] for name in impl.argnames})
        except Exception as error:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in bananas_periodic_jobs:\n"
                f"  cause: {type(error).__name__}: {error}"
            ) from error
        for schedule in returned or ():
            if not isinstance(schedule, Schedule):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {schedule!r} from bananas_periodic_jobs: "
                    "return a list of bananas_core.periodic.Schedule objects"
                )
            sources.append((f"plugin {impl.plugin_name!r}", schedule))
    sources += [("PERIODIC_JOBS", schedule) for schedule in schedules_from_setting(settings.PERIODIC_JOBS)]

    seen: dict[str, str] = {}
    for source, schedule in sources:
        if schedule.name in seen:
            raise ConfigError(
                f"schedule {schedule.name!r} is declared twice: by {seen[schedule.name]} and by "
                f"{source}; rename one of them"
            )
        seen[schedule.name] = source
        if registry is None:
            continue
        handler = registry.get(schedule.job)
        if handler is None:
            logger.warning(
                "Schedule %s from %s names handler %s, which no plugin in this process registers",
                schedule.name, source, schedule.job,
            )
        else:
            try:
                handler.validate_payload(schedule.payload)
            except InvalidPayload as error:
                raise ConfigError(f"schedule {schedule.name!r} from {source} has {error}") from None
    return [schedule for _, schedule in sources]


# Running the schedules. Each function takes a RedisBackend (or the memory:// backend).


async def run_due_schedules(
    backend: Backend,
    schedules: Iterable[Schedule],
    now: datetime | None = None,
    *,
    registry: HandlerRegistry | None = None,
    settings: Settings | None = None,
) -> list[Job]:
    """Submit the due ticks of every schedule that is not paused. Returns the jobs created.

    ``now`` defaults to the Redis server's clock, which every scheduler shares. ``registry``
    and ``settings`` supply the job options a schedule leaves out. A job that another
    scheduler created for the same tick is not created again and not returned. Raises
    BackendError when Redis fails; the ticks not yet enqueued are then enqueued by a later
    call.
    """
    client, prefix = _redis(backend)
    now = _utc(now) if now is not None else await server_time(backend)
    created = []
    try:
        paused = set(await client.smembers(paused_key(prefix)))
    except RedisError as error:
        raise _backend_error(backend, "read the paused schedules", error) from error

    for schedule in schedules:
        if schedule.name in paused:
            continue
        last = await _last_tick(backend, schedule, now)
        for tick in _due_ticks(schedule, last, now):
            job, new = await _submit_tick(backend, schedule, tick, registry, settings)
            try:
                await client.zadd(last_ticks_key(prefix), {schedule.name: _ms(tick)}, gt=True)
            except RedisError as error:
                raise _backend_error(backend, f"record the tick of schedule {schedule.name}", error) from error
            if new:
                created.append(job)
                logger.info(
                    "Enqueued job %s:%s for schedule %s, tick %s",
                    job.id, job.name, schedule.name, tick.isoformat(),
                )
    return created


async def list_schedules(backend: Backend, schedules: Iterable[Schedule], now: datetime | None = None) -> list[ScheduleState]:
    """Return each schedule with its paused flag, its last enqueued tick and its next tick."""
    client, prefix = _redis(backend)
    schedules = list(schedules)
    now = _utc(now) if now is not None else await server_time(backend)
    try:
        paused = set(await client.smembers(paused_key(prefix)))
        lasts = await client.zmscore(last_ticks_key(prefix), [s.name for s in schedules]) if schedules else []
    except RedisError as error:
        raise _backend_error(backend, "read the schedules", error) from error
    return [
        ScheduleState(
            name=schedule.name,
            cron=schedule.cron,
            timezone=schedule.timezone,
            job=schedule.job,
            queue=schedule.queue,
            catch_up=schedule.catch_up,
            paused=schedule.name in paused,
            last_tick=None if last is None else from_ms(last),
            next_tick=schedule.next_tick(now),
        )
        for schedule, last in zip(schedules, lasts)
    ]


async def pause_schedule(backend: Backend, name: str) -> bool:
    """Stop submitting jobs of schedule ``name``. Returns False if it was already paused."""
    client, prefix = _redis(backend)
    try:
        changed = bool(await client.sadd(paused_key(prefix), name))
    except RedisError as error:
        raise _backend_error(backend, f"pause schedule {name}", error) from error
    if changed:
        logger.info("Paused schedule %s", name)
    return changed


async def resume_schedule(backend: Backend, name: str, now: datetime | None = None) -> bool:
    """Submit jobs of schedule ``name`` again, from its first tick after ``now``.

    The ticks that passed while it was paused are skipped, also with ``catch_up``. Returns
    False if it was not paused.
    """
    client, prefix = _redis(backend)
    now = _utc(now) if now is not None else await server_time(backend)
    try:
        # Advanced before the schedule leaves the paused set, so no scheduler finds the pause's ticks due.
        await client.zadd(last_ticks_key(prefix), {name: _ms(now)}, gt=True)
        changed = bool(await client.srem(paused_key(prefix), name))
    except RedisError as error:
        raise _backend_error(backend, f"resume schedule {name}", error) from error
    if changed:
        logger.info("Resumed schedule %s", name)
    return changed


async def set_schedule_paused(
    backend: Backend, schedules: Iterable[Schedule], name: str, paused: bool
) -> ScheduleState:
    """Pause or resume the schedule ``name`` among ``schedules`` and return its new state.

    Raises ScheduleNotFound naming the known schedules when none has this name.
    """
    by_name = {schedule.name: schedule for schedule in schedules}
    if name not in by_name:
        known = ", ".join(by_name) or "none"
        raise ScheduleNotFound(f"schedule {name!r} not found; known schedules: {known}")
    if paused:
        await pause_schedule(backend, name)
    else:
        await resume_schedule(backend, name)
    [state] = await list_schedules(backend, [by_name[name]])
    return state


async def server_time(backend: Backend) -> datetime:
    """Return the Redis server's clock as an aware UTC datetime."""
    client, _ = _redis(backend)
    try:
        seconds, microseconds = await client.time()
    except RedisError as error:
        raise _backend_error(backend, "read the server time", error) from error
    return datetime.fromtimestamp(seconds, timezone.utc) + timedelta(microseconds=microseconds)


def _due_ticks(schedule: Schedule, last: datetime, now: datetime) -> list[datetime]:
    # On time: the ticks after last that are at most grace late. Missed: those before that.
    on_time_from = max(last, now - timedelta(seconds=schedule.grace))
    ticks = []
    tick = schedule.next_tick(on_time_from)
    while tick <= now and len(ticks) < MAX_TICKS_PER_CALL:
        ticks.append(tick)
        tick = schedule.next_tick(tick)

    if last < on_time_from and schedule.next_tick(last) <= on_time_from:
        latest_missed = schedule.previous_tick(on_time_from)
        if schedule.catch_up:
            logger.info(
                "Schedule %s missed ticks up to %s; running it once for them",
                schedule.name, latest_missed.isoformat(),
            )
            ticks.insert(0, latest_missed)
        else:
            logger.info(
                "Schedule %s skipped its missed ticks from %s to %s (catch_up is off)",
                schedule.name, schedule.next_tick(last).isoformat(), latest_missed.isoformat(),
            )
    return ticks


async def _last_tick(backend: Backend, schedule: Schedule, now: datetime) -> datetime:
    client, prefix = _redis(backend)
    key = last_ticks_key(prefix)
    try:
        # NX: the first scheduler to see a new schedule starts it from now; the others read that.
        await client.zadd(key, {schedule.name: _ms(now)}, nx=True)
        score = await client.zscore(key, schedule.name)
    except RedisError as error:
        raise _backend_error(backend, f"read the last tick of schedule {schedule.name}", error) from error
    return from_ms(score if score is not None else _ms(now))  # type: ignore[return-value]


async def _submit_tick(
    backend: Backend,
    schedule: Schedule,
    tick: datetime,
    registry: HandlerRegistry | None,
    settings: Settings | None,
) -> tuple[Job, bool]:
    handler = registry.get(schedule.job) if registry is not None else None
    defaults = handler.job_defaults() if handler is not None else {}
    payload = handler.validate_payload(schedule.payload) if handler is not None else schedule.payload
    queue = schedule.queue or defaults.get("queue") or (settings.QUEUE if settings else backend.queue)
    max_retries = _first(
        schedule.max_retries, defaults.get("max_retries"), settings.MAX_RETRIES if settings else None, 3
    )
    timeout = _first(
        schedule.timeout, defaults.get("timeout"), settings.JOB_TIMEOUT if settings else None, 300.0
    )
    job = new_job(
        schedule.job,
        payload,
        queue=queue,
        priority=Priority(schedule.priority or defaults.get("priority") or Priority.normal),
        max_retries=max_retries,
        timeout=timeout,
    ).model_copy(update={"id": schedule.job_id(tick)})
    (stored, created), = await backend.submit_jobs([job], [None], 0.0)
    return stored, created


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)


def _redis(backend: Backend) -> tuple[Any, str]:
    client = getattr(backend, "client", None)
    prefix = getattr(backend, "prefix", None)
    if client is None or prefix is None:
        raise TypeError(
            f"periodic jobs need the Redis or memory:// backend, got {type(backend).__name__}"
        )
    return client, prefix


def _backend_error(backend: Backend, action: str, error: RedisError) -> BackendError:
    where = getattr(backend, "display_url", "Redis")
    return BackendError(f"Redis at {where} failed to {action}: {type(error).__name__}: {error}")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"expected an aware datetime, got the naive {moment.isoformat()}")
    return moment.astimezone(timezone.utc)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)

