"""The test kit of bananas_core.testing and its pytest fixtures."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from pydantic import BaseModel

from bananas_core import JobContext, JobStatus, PermanentError, Schedule
from bananas_core.errors import InvalidPayload
from bananas_core.plugins import Plugins, hookimpl, load_plugins
from bananas_core.testing import FakeClock, MemoryQueue


@pytest.fixture
def bananas_plugins() -> Plugins:
    """Use no installed plugin, so these tests see only the handlers they register."""
    return load_plugins(entry_point_group="bananas_test_none")


def test_pytest_plugin_is_registered() -> None:
    names = {entry_point.name: entry_point.value for entry_point in entry_points(group="pytest11")}

    assert names.get("bananas") == "bananas_core.pytest_plugin"


@pytest.mark.anyio
async def test_job_runs_to_completion(bananas_queue: MemoryQueue) -> None:
    bananas_queue.register("double", lambda payload: payload["n"] * 2)
    job = await bananas_queue.enqueue("double", {"n": 21})

    ran = await bananas_queue.run_all()

    assert [each.id for each in ran] == [job.id]
    assert ran[0].status is JobStatus.completed
    assert ran[0].result == 42


@pytest.mark.anyio
async def test_retry_runs_after_clock_advances(bananas_queue: MemoryQueue) -> None:
    attempts: list[int] = []

    def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return "ok"

    bananas_queue.register("flaky", flaky, retry_policy="fixed:30s")
    job = await bananas_queue.enqueue("flaky")

    await bananas_queue.run_all()
    waiting = await bananas_queue.get(job.id)
    bananas_queue.clock.advance(10)
    still_waiting = await bananas_queue.run_all()
    bananas_queue.clock.advance(25)
    await bananas_queue.run_all()
    finished = await bananas_queue.get(job.id)

    assert waiting.status is JobStatus.scheduled
    assert still_waiting == []
    assert finished.status is JobStatus.completed
    assert attempts == [1, 2]


@pytest.mark.anyio
async def test_permanent_error_goes_dead(bananas_queue: MemoryQueue) -> None:
    def reject(payload: dict[str, Any]) -> None:
        raise PermanentError("bad input")

    bananas_queue.register("reject", reject)
    job = await bananas_queue.enqueue("reject")

    (dead,) = await bananas_queue.run_all()

    assert dead.id == job.id
    assert dead.status is JobStatus.dead
    assert dead.error is not None
    assert dead.error.message == "bad input"


@pytest.mark.anyio
async def test_unknown_handler_goes_dead(bananas_queue: MemoryQueue) -> None:
    await bananas_queue.enqueue("nobody")

    (dead,) = await bananas_queue.run_all()

    assert dead.status is JobStatus.dead
    assert dead.error is not None
    assert dead.error.type == "UnknownHandler"


class Order(BaseModel):
    item: str
    count: int


@pytest.mark.anyio
async def test_schema_model_reaches_handler(bananas_queue: MemoryQueue) -> None:
    received: list[object] = []

    def ship(order: Order) -> int:
        received.append(order)
        return order.count

    bananas_queue.register("ship", ship, schema=Order)
    await bananas_queue.enqueue("ship", {"item": "banana", "count": "3"})

    (job,) = await bananas_queue.run_all()

    assert job.result == 3
    assert received == [Order(item="banana", count=3)]
    with pytest.raises(InvalidPayload, match="count: Field required"):
        await bananas_queue.enqueue("ship", {"item": "banana"})


@pytest.mark.anyio
async def test_schema_model_is_context_payload(bananas_queue: MemoryQueue) -> None:
    received: list[tuple[object, object]] = []

    def ship(order: Order, ctx: JobContext) -> int:
        received.append((order, ctx.job.payload))
        return order.count

    bananas_queue.register("ship", ship, schema=Order)
    await bananas_queue.enqueue("ship", {"item": "banana", "count": 3})

    await bananas_queue.run_all()

    [(order, context_payload)] = received
    assert order is context_payload


@pytest.mark.anyio
async def test_handler_defaults_route_to_queue(bananas_queue: MemoryQueue) -> None:
    bananas_queue.register("bill", lambda payload: "billed", queue="billing", max_retries=0, priority="high")

    job = await bananas_queue.enqueue("bill")
    (ran,) = await bananas_queue.run_all()

    assert job.queue == "billing"
    assert job.max_retries == 0
    assert job.priority.value == "high"
    assert ran.result == "billed"


@pytest.mark.anyio
async def test_progress_and_cancel_are_recorded(bananas_queue: MemoryQueue) -> None:
    async def steps(payload: dict[str, Any], ctx: JobContext) -> bool:
        await ctx.report_progress(0.5, "half")
        return ctx.cancel_requested

    bananas_queue.register("steps", steps)
    job = await bananas_queue.enqueue("steps")
    bananas_queue.request_cancel(job.id)

    (ran,) = await bananas_queue.run_all()

    assert bananas_queue.progress[job.id] == [(0.5, "half")]
    assert ran.result is True


@pytest.mark.anyio
async def test_hooks_run_around_jobs(bananas_plugins: Plugins) -> None:
    events: list[str] = []

    class Observer:
        @hookimpl
        def bananas_job_enqueued(self, job: Any) -> None:
            events.append(f"enqueued {job.name}")

        @hookimpl
        async def bananas_wrap_job(self, job: Any, call_next: Any) -> Any:
            events.append("wrap before")
            result = await call_next()
            events.append("wrap after")
            return {"wrapped": result}

        @hookimpl
        def bananas_job_succeeded(self, job: Any, result: Any) -> None:
            events.append(f"succeeded {result}")

    bananas_plugins.manager.register(Observer(), name="observer")
    queue = MemoryQueue(bananas_plugins)
    queue.register("echo", lambda payload: payload["x"])
    await queue.enqueue("echo", {"x": 1})

    (job,) = await queue.run_all()

    assert job.result == {"wrapped": 1}
    assert events == ["enqueued echo", "wrap before", "wrap after", "succeeded {'wrapped': 1}"]


@pytest.mark.anyio
async def test_endless_jobs_hit_max_runs(bananas_queue: MemoryQueue) -> None:
    async def again(payload: dict[str, Any]) -> None:
        await bananas_queue.enqueue("again")

    bananas_queue.register("again", again)
    await bananas_queue.enqueue("again")

    with pytest.raises(RuntimeError, match="run_jobs ran 5 jobs and more are due"):
        await bananas_queue.run_all(max_runs=5)


@pytest.mark.anyio
async def test_schedules_follow_the_clock(bananas_queue: MemoryQueue) -> None:
    bananas_queue.register("tick", lambda payload: "tock")
    schedule = Schedule("every-minute", "* * * * *", "tick")

    first = await bananas_queue.run_schedules([schedule])
    bananas_queue.clock.advance(61)
    second = await bananas_queue.run_schedules([schedule])
    ran = await bananas_queue.run_all()

    assert first == []
    assert len(second) == 1
    assert [job.result for job in ran] == ["tock"]


def test_clock_only_moves_forward() -> None:
    clock = FakeClock()
    before = clock.now()

    later = clock.advance(3600)

    assert 3600 <= (later - before).total_seconds() < 3605
    with pytest.raises(ValueError, match="the clock never goes back"):
        clock.advance(-1)
