"""Periodic jobs: cron ticks in a time zone, enqueued once per tick by any number of schedulers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from pydantic import BaseModel

from bananas_core.backends.base import Backend
from bananas_core.backends.memory import memory_backend
from bananas_core.backends.redis import RedisBackend
from bananas_core.errors import ConfigError, PluginError
from bananas_core.job import Job, JobStatus
from bananas_core.periodic import (
    Schedule,
    collect_schedules,
    list_schedules,
    pause_schedule,
    resume_schedule,
    run_due_schedules,
    schedules_from_setting,
    server_time,
)
from bananas_core.plugins import hookimpl, load_plugins
from bananas_core.settings import load_settings

UTC = timezone.utc
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Backend]:
    """Yield a memory:// backend, or one on the real Redis server, under this test's prefix."""
    if request.param == "memory":
        store = memory_backend(f"memory://periodic-{uuid.uuid4().hex}", prefix=key_prefix, queue="default")
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisBackend.from_url(url, prefix=key_prefix, queue="default")
    yield store
    await store.close()


async def stored_jobs(backend: Backend, queue: str = "default") -> list[Job]:
    page = await backend.list_jobs(queue, status=None, name=None, cursor=None, limit=1000)
    return sorted(page.jobs, key=lambda job: job.id)


def at(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone)  # type: ignore[misc]


async def simulate(backend: Backend, schedules: list[Schedule], start: datetime, end: datetime, step: timedelta) -> None:
    """Call run_due_schedules at every step from start to end, as a scheduler's ticks would."""
    # In UTC, because adding to an aware local time moves the wall clock, not real time.
    now, end = start.astimezone(UTC), end.astimezone(UTC)
    while now <= end:
        await run_due_schedules(backend, schedules, now)
        now += step


# Schedule definitions


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"name": "bad name"}, "invalid schedule name 'bad name'"),
        ({"name": "nightly\n"}, "invalid schedule name 'nightly.n': use 1 to 128"),
        ({"cron": "* * *"}, "invalid cron expression '* * *': give 5 fields"),
        ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *': Bad minute"),
        ({"cron": "70 * * * * *"}, "invalid seconds field '70'"),
        ({"timezone": "Mars/Olympus"}, "invalid timezone 'Mars/Olympus'"),
        ({"grace": -1}, "invalid grace -1"),
        ({"payload": {"when": datetime(2025, 1, 1)}}, "payload that is not JSON"),
        ({"priority": "urgent"}, "invalid priority 'urgent'"),
        ({"queue": "a b"}, "invalid queue 'a b'"),
    ],
)
def test_invalid_schedule_names_problem(options: dict[str, Any], expected: str) -> None:
    definition = {"name": "nightly", "cron": "0 3 * * *", "job": "echo", **options}

    with pytest.raises(ConfigError, match=expected.replace("*", r"\*").replace("(", r"\(")):
        Schedule(**definition)


def test_ticks_of_five_and_six_fields() -> None:
    every_20s = Schedule("fast", "*/20 * * * * *", "echo")
    daily = Schedule("daily", "@daily", "echo", timezone="Europe/Berlin")
    start = at(UTC, 2025, 1, 1, 0, 0, 5)

    assert every_20s.next_tick(start) == at(UTC, 2025, 1, 1, 0, 0, 20)
    assert every_20s.next_tick(at(UTC, 2025, 1, 1, 0, 0, 40)) == at(UTC, 2025, 1, 1, 0, 1, 0)
    assert every_20s.previous_tick(at(UTC, 2025, 1, 1, 0, 0, 59)) == at(UTC, 2025, 1, 1, 0, 0, 40)
    assert every_20s.previous_tick(at(UTC, 2025, 1, 1, 0, 1, 0)) == at(UTC, 2025, 1, 1, 0, 1, 0)
    assert daily.next_tick(start) == at(BERLIN, 2025, 1, 2, 0, 0)
    assert daily.previous_tick(start) == at(BERLIN, 2025, 1, 1, 0, 0)
    assert daily.job_id(at(UTC, 2025, 1, 1)) == "periodic:daily:1735689600000"


# Daylight saving time: a daily run is never skipped or repeated


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("zone", "cron", "first_day", "expected_local"),
    [
        # New York springs forward at 02:00 on 9 March 2025: 02:30 does not exist that day.
        (NEW_YORK, "30 2 * * *", date(2025, 3, 8), ["2025-03-08 02:30", "2025-03-09 03:00", "2025-03-10 02:30"]),
        # New York falls back at 02:00 on 2 November 2025: 01:30 happens twice that day.
        (NEW_YORK, "30 1 * * *", date(2025, 11, 1), ["2025-11-01 01:30", "2025-11-02 01:30", "2025-11-03 01:30"]),
        # Berlin springs forward at 02:00 on 30 March 2025.
        (BERLIN, "30 2 * * *", date(2025, 3, 29), ["2025-03-29 02:30", "2025-03-30 03:00", "2025-03-31 02:30"]),
        # Berlin falls back at 03:00 on 26 October 2025: 02:30 happens twice that day.
        (BERLIN, "30 2 * * *", date(2025, 10, 25), ["2025-10-25 02:30", "2025-10-26 02:30", "2025-10-27 02:30"]),
        # Seconds do not change the rule.
        (BERLIN, "15 30 2 * * *", date(2025, 10, 25), ["2025-10-25 02:30", "2025-10-26 02:30", "2025-10-27 02:30"]),
    ],
)
async def test_daily_run_once_across_dst(
    backend: Backend, zone: ZoneInfo, cron: str, first_day: date, expected_local: list[str]
) -> None:
    schedule = Schedule("daily", cron, "echo", timezone=str(zone), grace=900)
    start = datetime.combine(first_day, datetime.min.time(), zone)
    await run_due_schedules(backend, [schedule], start)

    await simulate(backend, [schedule], start, start + timedelta(days=3), timedelta(minutes=10))

    jobs = await stored_jobs(backend)
    ticks = sorted(int(job.id.rsplit(":", 1)[1]) for job in jobs)
    local = [datetime.fromtimestamp(tick / 1000, zone).strftime("%Y-%m-%d %H:%M") for tick in ticks]
    assert local == expected_local


@pytest.mark.anyio
@pytest.mark.parametrize(("day", "runs"), [(date(2025, 3, 9), 23), (date(2025, 11, 2), 25)])
async def test_hourly_runs_every_real_hour(backend: Backend, day: date, runs: int) -> None:
    schedule = Schedule("hourly", "15 * * * *", "echo", timezone="America/New_York", grace=900)
    start = datetime.combine(day, datetime.min.time(), NEW_YORK)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), NEW_YORK)
    await run_due_schedules(backend, [schedule], start)

    await simulate(backend, [schedule], start, end, timedelta(minutes=10))

    ticks = [int(job.id.rsplit(":", 1)[1]) for job in await stored_jobs(backend)]
    assert len(ticks) == runs
    gaps = {later - earlier for earlier, later in zip(sorted(ticks), sorted(ticks)[1:])}
    assert gaps == {3_600_000}


# Exactly once per tick


@pytest.mark.anyio
async def test_concurrent_schedulers_create_one_job(backend: Backend) -> None:
    schedule = Schedule("minutely", "* * * * *", "echo")
    start = at(UTC, 2030, 1, 1, 12, 0, 30)
    await run_due_schedules(backend, [schedule], start)
    created: list[Job] = []

    async def scheduler(now: datetime) -> None:
        created.extend(await run_due_schedules(backend, [schedule], now))

    async with anyio.create_task_group() as schedulers:
        for offset_ms in range(8):
            schedulers.start_soon(scheduler, at(UTC, 2030, 1, 1, 12, 1, 0) + timedelta(milliseconds=offset_ms * 100))

    jobs = await stored_jobs(backend)
    assert [job.id for job in jobs] == [schedule.job_id(at(UTC, 2030, 1, 1, 12, 1))]
    assert [job.id for job in created] == [jobs[0].id]


@pytest.mark.anyio
async def test_tick_submitted_before_crash_is_not_repeated(backend: Backend) -> None:
    schedule = Schedule("minutely", "* * * * *", "echo")
    await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 0, 30))
    tick = at(UTC, 2030, 1, 1, 12, 1)
    # A scheduler that submitted the tick's job and died before recording the tick.
    from bananas_core.job import new_job

    orphan = new_job("echo", {}, queue="default", max_retries=3, timeout=300).model_copy(update={"id": schedule.job_id(tick)})
    await backend.submit_jobs([orphan], [None], 0.0)

    created = await run_due_schedules(backend, [schedule], tick + timedelta(seconds=1))
    again = await run_due_schedules(backend, [schedule], tick + timedelta(seconds=2))

    assert created == []
    assert again == []
    assert [job.id for job in await stored_jobs(backend)] == [orphan.id]


@pytest.mark.anyio
async def test_restart_resumes_from_stored_tick(backend: Backend) -> None:
    schedule = Schedule("minutely", "* * * * *", "echo")
    await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 0, 30))
    first = await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 1, 5))

    restarted = Schedule("minutely", "* * * * *", "echo")
    repeat = await run_due_schedules(backend, [restarted], at(UTC, 2030, 1, 1, 12, 1, 10))
    following = await run_due_schedules(backend, [restarted], at(UTC, 2030, 1, 1, 12, 2, 1))

    assert len(first) == 1
    assert repeat == []
    assert [job.id for job in following] == [schedule.job_id(at(UTC, 2030, 1, 1, 12, 2))]


@pytest.mark.anyio
async def test_new_schedule_skips_past_ticks(backend: Backend) -> None:
    schedule = Schedule("minutely", "* * * * *", "echo", catch_up=True)

    first = await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 0, 30))

    assert first == []


# Missed ticks


@pytest.mark.anyio
@pytest.mark.parametrize(("catch_up", "expected_minutes"), [(False, [20]), (True, [19, 20])])
async def test_missed_ticks_per_catch_up(backend: Backend, catch_up: bool, expected_minutes: list[int]) -> None:
    schedule = Schedule("minutely", "* * * * *", "echo", catch_up=catch_up, grace=60)
    await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 0, 30))

    # No scheduler ran from 12:00:30 to 12:20:10, so the ticks 12:01 to 12:19:10 are more
    # than a minute late: missed. With catch_up the latest of them, 12:19, runs once.
    created = await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 20, 10))
    later = await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 20, 30))

    minutes = [int(job.id.rsplit(":", 1)[1]) // 60_000 % 60 for job in created]
    assert minutes == expected_minutes
    assert later == []


# Job options, pause and listing


class Report(BaseModel):
    pages: int


@pytest.mark.anyio
async def test_job_options_come_from_handler_and_settings(backend: Backend) -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.registry.register("report", lambda payload: None, priority="high", timeout=45, schema=Report)
    settings = load_settings(MAX_RETRIES=7)
    schedule = Schedule("reports", "* * * * *", "report", payload={"pages": "3"})
    await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 0, 30))

    (job,) = await run_due_schedules(
        backend, [schedule], at(UTC, 2030, 1, 1, 12, 1, 1), registry=plugins.registry, settings=settings
    )

    assert job.priority.value == "high"
    assert job.timeout == 45.0
    assert job.max_retries == 7
    assert job.payload == {"pages": 3}
    assert job.status is JobStatus.pending


@pytest.mark.anyio
async def test_paused_schedule_skips_ticks(backend: Backend) -> None:
    schedule = Schedule("minutely", "* * * * *", "echo", catch_up=True)
    await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 0, 30))

    assert await pause_schedule(backend, "minutely") is True
    assert await pause_schedule(backend, "minutely") is False
    while_paused = await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 5, 1))
    assert await resume_schedule(backend, "minutely", at(UTC, 2030, 1, 1, 12, 5, 30)) is True
    after_resume = await run_due_schedules(backend, [schedule], at(UTC, 2030, 1, 1, 12, 6, 1))

    assert while_paused == []
    assert [job.id for job in after_resume] == [schedule.job_id(at(UTC, 2030, 1, 1, 12, 6))]
    assert await resume_schedule(backend, "minutely", at(UTC, 2030, 1, 1, 12, 7)) is False


@pytest.mark.anyio
async def test_list_schedules_shows_state(backend: Backend) -> None:
    nightly = Schedule("nightly", "0 3 * * *", "echo", timezone="Europe/Berlin")
    minutely = Schedule("minutely", "* * * * *", "echo")
    await run_due_schedules(backend, [minutely], at(UTC, 2030, 1, 1, 12, 0, 30))
    await run_due_schedules(backend, [minutely], at(UTC, 2030, 1, 1, 12, 1, 1))
    await pause_schedule(backend, "nightly")

    states = await list_schedules(backend, [nightly, minutely], at(UTC, 2030, 1, 1, 12, 1, 2))

    assert [(s.name, s.paused) for s in states] == [("nightly", True), ("minutely", False)]
    assert states[0].last_tick is None
    assert states[0].next_tick == at(BERLIN, 2030, 1, 2, 3, 0)
    assert states[1].last_tick == at(UTC, 2030, 1, 1, 12, 1)
    assert states[1].next_tick == at(UTC, 2030, 1, 1, 12, 2)


@pytest.mark.anyio
async def test_default_now_is_server_time(backend: Backend) -> None:
    before = datetime.now(UTC)

    now = await server_time(backend)

    assert abs((now - before).total_seconds()) < 5


# Collecting schedules


class PeriodicPlugin:
    @hookimpl
    def bananas_periodic_jobs(self) -> list[Schedule]:
        return [Schedule("nightly", "0 3 * * *", "echo")]


def test_collect_joins_hook_and_setting() -> None:
    plugins = load_plugins(["tests.handlers"], entry_point_group="bananas_test_none")
    plugins.manager.register(PeriodicPlugin(), name="periodic")
    settings = load_settings(PERIODIC_JOBS='[{"name": "hourly", "cron": "0 * * * *", "job": "echo", "catch_up": true}]')

    schedules = collect_schedules(plugins.manager, settings, plugins.registry)

    assert [(s.name, s.catch_up) for s in schedules] == [("nightly", False), ("hourly", True)]


def test_collect_rejects_duplicate_names() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(PeriodicPlugin(), name="periodic")
    settings = load_settings(PERIODIC_JOBS='[{"name": "nightly", "cron": "0 4 * * *", "job": "echo"}]')

    with pytest.raises(ConfigError, match="schedule 'nightly' is declared twice: by plugin 'periodic' and by PERIODIC_JOBS"):
        collect_schedules(plugins.manager, settings)


def test_collect_rejects_wrong_hook_value() -> None:
    class Wrong:
        @hookimpl
        def bananas_periodic_jobs(self) -> list[str]:
            return ["0 3 * * *"]

    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.manager.register(Wrong(), name="wrong")

    with pytest.raises(PluginError, match="plugin 'wrong' returned '0 3 \\* \\* \\*' from bananas_periodic_jobs"):
        collect_schedules(plugins.manager, load_settings())


def test_collect_checks_payload_schema() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.registry.register("report", lambda payload: None, schema=Report)
    settings = load_settings(PERIODIC_JOBS='[{"name": "r", "cron": "0 3 * * *", "job": "report"}]')

    with pytest.raises(ConfigError, match="schedule 'r' from PERIODIC_JOBS has invalid payload for handler 'report': pages: Field required"):
        collect_schedules(plugins.manager, settings, plugins.registry)


def test_collect_warns_about_unknown_handler(caplog: pytest.LogCaptureFixture) -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    settings = load_settings(PERIODIC_JOBS='[{"name": "r", "cron": "0 3 * * *", "job": "missing"}]')

    collect_schedules(plugins.manager, settings, plugins.registry)

    assert "Schedule r from PERIODIC_JOBS names handler missing, which no plugin in this process registers" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "invalid PERIODIC_JOBS: not JSON"),
        ('{"name": "x"}', "give a JSON list of schedule objects"),
        ('["x"]', "item 0 is not an object"),
        ('[{"name": "x", "cron": "* * * * *"}]', "misses ['job']"),
        ('[{"name": "x", "cron": "* * * * *", "job": "e", "every": 5}]', "unknown keys ['every']"),
        ('[{"name": "x", "cron": "nope", "job": "e"}]', "item 0: schedule 'x' has an invalid cron expression"),
    ],
)
def test_invalid_periodic_jobs_setting(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        schedules_from_setting(text)

    assert expected in str(raised.value)

