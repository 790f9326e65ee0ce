"""Handler options of the registry, payload schemas, named retry policies, and the progress
and cancellation parts of JobContext."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, Field

from bananas_core.context import JobContext, job_logger
from bananas_core.errors import InvalidPayload, PermanentError, PluginError
from bananas_core.job import Job, Priority, utc_now
from bananas_core.plugins import load_plugins
from bananas_core.registry import HandlerRegistry
from bananas_core.retry_policies import POLICY_NAMES, RetryPolicy, get_policy


class Recipient(BaseModel):
    name: str
    address: str


class Invoice(BaseModel):
    customer: str
    amount: float = Field(gt=0)
    recipients: list[Recipient] = []
    due_in_days: int = 30


def handle(payload: Any) -> Any:
    return None


def job_with(retries: int = 0, max_retries: int = 3, name: str = "h") -> Job:
    return Job(id="job-1", name=name, retries=retries, max_retries=max_retries, created_at=utc_now())


# Handler options


def test_register_stores_job_defaults() -> None:
    registry = HandlerRegistry()

    registry.register(
        "invoice", handle, queue="billing", priority="high", timeout=30, max_retries=5,
        retry_policy="fixed:10s", schema=Invoice,
    )

    handler = registry.get("invoice")
    assert handler is not None
    assert handler.queue == "billing"
    assert handler.priority is Priority.high
    assert handler.timeout == 30.0
    assert handler.max_retries == 5
    assert handler.retry_policy == RetryPolicy("fixed", 10.0)
    assert handler.schema is Invoice
    assert handler.isolation == "none"
    assert handler.job_defaults() == {"queue": "billing", "priority": Priority.high, "timeout": 30.0, "max_retries": 5}


def test_register_without_options_keeps_old_fields() -> None:
    registry = HandlerRegistry()

    registry.register("plain", handle)

    handler = registry.get("plain")
    assert handler is not None
    assert handler.job_defaults() == {}
    assert handler.retry_policy is None
    assert handler.schema is None
    assert handler.validate_payload({"any": 1}) == {"any": 1}
    assert handler.prepare_payload({"any": 1}) == {"any": 1}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"queue": "has space"}, "invalid queue 'has space'"),
        ({"priority": "urgent"}, "invalid priority 'urgent': use high, normal or low"),
        ({"timeout": 0}, "invalid timeout 0: use a number of seconds greater than 0"),
        ({"timeout": float("inf")}, "invalid timeout inf"),
        ({"timeout": True}, "invalid timeout True"),
        ({"max_retries": -1}, "invalid max_retries -1: use a whole number from 0 to 100"),
        ({"max_retries": 2.5}, "invalid max_retries 2.5"),
        ({"retry_policy": "sometimes"}, "invalid retry policy 'sometimes': expected one of exponential, fixed, linear, none"),
        ({"retry_policy": "fixed:soon"}, "the base delay after ':' must be"),
        ({"schema": dict}, "invalid schema <class 'dict'>: use a subclass of pydantic.BaseModel"),
    ],
)
def test_invalid_option_names_plugin_and_value(options: dict[str, Any], expected: str) -> None:
    registry = HandlerRegistry()
    registry.current_plugin = "acme"

    with pytest.raises(PluginError) as raised:
        registry.register("invoice", handle, **options)

    assert "plugin 'acme' registered handler 'invoice' with" in str(raised.value)
    assert expected in str(raised.value)
    assert "invoice" not in registry


# Payload schemas


def test_validate_payload_returns_normalised_payload() -> None:
    registry = HandlerRegistry()
    registry.register("invoice", handle, schema=Invoice)
    handler = registry.get("invoice")
    assert handler is not None

    stored = handler.validate_payload({"customer": "ada", "amount": "12.5", "_bananas_trace": {"traceparent": "x"}})

    assert stored == {"customer": "ada", "amount": 12.5, "_bananas_trace": {"traceparent": "x"}}


def test_validate_payload_names_each_field() -> None:
    registry = HandlerRegistry()
    registry.register("invoice", handle, schema=Invoice)
    handler = registry.get("invoice")
    assert handler is not None

    with pytest.raises(InvalidPayload) as raised:
        handler.validate_payload({"amount": -1, "recipients": [{"name": "ada"}]})

    error = raised.value
    assert isinstance(error, PermanentError)
    assert str(error).startswith("invalid payload for handler 'invoice': ")
    assert "customer: Field required" in str(error)
    assert "amount: Input should be greater than 0" in str(error)
    assert "recipients[0].address: Field required" in str(error)
    assert [problem["field"] for problem in error.errors] == ["customer", "amount", "recipients[0].address"]
    assert error.errors[1]["input"] == -1


def test_prepare_payload_returns_model() -> None:
    registry = HandlerRegistry()
    registry.register("invoice", handle, schema=Invoice)
    handler = registry.get("invoice")
    assert handler is not None

    invoice = handler.prepare_payload({"customer": "ada", "amount": 3, "_bananas_trace": {}})

    assert isinstance(invoice, Invoice)
    assert invoice.amount == 3.0
    assert invoice.due_in_days == 30
    assert handler.prepare_payload(invoice) is invoice
    with pytest.raises(InvalidPayload, match="amount: Input should be a valid number"):
        handler.prepare_payload({"customer": "ada", "amount": "lots"})


# Retry policies


@pytest.mark.parametrize(
    ("spec", "delays"),
    [
        ("fixed", [2.0, 2.0, 2.0, False]),
        ("fixed:30s", [30.0, 30.0, 30.0, False]),
        ("linear", [2.0, 4.0, 6.0, False]),
        ("linear:1m", [60.0, 120.0, 180.0, False]),
        ("none", [False, False, False, False]),
    ],
)
def test_policy_delays_by_retry(spec: str, delays: list[float | bool]) -> None:
    policy = get_policy(spec)

    assert [policy.delay(job_with(retries=n)) for n in range(4)] == delays


@pytest.mark.parametrize(("spec", "base"), [("exponential", 2.0), ("exponential:10s", 10.0)])
def test_exponential_policy_has_jitter(spec: str, base: float) -> None:
    policy = get_policy(spec)

    for retries in range(3):
        delay = policy.delay(job_with(retries=retries))
        assert base * 2**retries <= delay <= base * 2**retries * 1.1
    assert policy.delay(job_with(retries=3)) is False


def test_get_policy_rejects_bad_specs() -> None:
    assert get_policy(RetryPolicy("fixed", 5.0)) == RetryPolicy("fixed", 5.0)
    assert str(get_policy("linear:90")) == "linear:90s"
    assert POLICY_NAMES == ("exponential", "fixed", "linear", "none")
    with pytest.raises(ValueError, match="'none' takes no base delay"):
        get_policy("none:5s")
    with pytest.raises(ValueError, match="invalid retry policy 3"):
        get_policy(3)  # type: ignore[arg-type]


def test_builtin_applies_handler_policy() -> None:
    plugins = load_plugins(entry_point_group="bananas_test_none")
    plugins.registry.register("steady", handle, retry_policy="fixed:7s")
    plugins.registry.register("never", handle, retry_policy="none")
    plugins.registry.register("default", handle)
    hook = plugins.manager.hook.bananas_retry_delay
    error = RuntimeError("x")

    steady = hook(job=job_with(retries=1, name="steady"), error=error)
    never = hook(job=job_with(name="never"), error=error)
    default = hook(job=job_with(retries=1, name="default"), error=error)
    unknown = hook(job=job_with(name="not-registered"), error=error)

    assert steady == 7.0
    assert never is False
    assert 4.0 <= default <= 4.4
    assert 2.0 <= unknown <= 2.2


# Progress and cancellation


def context_with(**options: Any) -> JobContext:
    job = job_with()
    return JobContext(job=job, logger=job_logger(job), **options)


@pytest.mark.anyio
async def test_report_progress_reaches_sink() -> None:
    reports: list[tuple[float, str | None]] = []

    async def sink(fraction: float, message: str | None) -> None:
        reports.append((fraction, message))

    context = context_with(progress_sink=sink)

    await context.report_progress(0.25, "a quarter")
    await context.report_progress(1)

    assert reports == [(0.25, "a quarter"), (1.0, None)]


@pytest.mark.anyio
async def test_report_progress_checks_values() -> None:
    reports: list[tuple[float, str | None]] = []
    context = context_with(progress_sink=lambda fraction, message: reports.append((fraction, message)))

    for bad in (-0.1, 1.5, float("nan"), True, "half"):
        with pytest.raises(ValueError, match="expected a number from 0.0 to 1.0"):
            await context.report_progress(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a string or None"):
        await context.report_progress(0.5, 42)  # type: ignore[arg-type]
    await context.report_progress(0.5, "x" * 600)

    assert reports == [(0.5, "x" * 500)]


@pytest.mark.anyio
async def test_report_progress_without_sink_is_dropped() -> None:
    context = context_with()

    await context.report_progress(0.5, "ignored")

    assert context.cancel_requested is False


@pytest.mark.anyio
async def test_sync_progress_from_worker_thread() -> None:
    reports: list[tuple[float, str | None, bool]] = []
    loop_thread = threading.get_ident()

    async def sink(fraction: float, message: str | None) -> None:
        reports.append((fraction, message, threading.get_ident() == loop_thread))

    context = context_with(progress_sink=sink)

    await anyio.to_thread.run_sync(context.report_progress_sync, 0.5, "half")

    assert reports == [(0.5, "half", True)]


def test_sync_progress_outside_worker_thread_fails() -> None:
    context = context_with(progress_sink=lambda fraction, message: None)

    with pytest.raises(RuntimeError):
        context.report_progress_sync(0.5)


def test_cancel_requested_reads_flag() -> None:
    requested = threading.Event()
    context = context_with(cancel_flag=requested.is_set)

    before = context.cancel_requested
    requested.set()

    assert before is False
    assert context.cancel_requested is True
