"""process_data: statistics on hand-computed examples, grouping, invalid records and payloads."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

import bananas_data.handler
import pytest
from bananas_data import DataPayload, process_data
from bananas_data.aggregate import MAX_REPORTED_ERRORS

from bananas_core import Job, JobContext, JobStatus, PermanentError
from bananas_core.context import job_logger
from bananas_core.testing import MemoryQueue


@pytest.fixture(autouse=True)
def clean_data_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove DATA_MAX_RECORDS of the calling shell, so every test starts from the default."""
    monkeypatch.delenv("DATA_MAX_RECORDS", raising=False)


def amounts(*values: Any) -> list[dict[str, Any]]:
    return [{"amount": value} for value in values]


def make_context(job_id: str) -> JobContext:
    job = Job(id=job_id, name="process_data", created_at=datetime.now(timezone.utc), attempts=1)
    return JobContext(job=job, logger=job_logger(job))


def test_statistics_hand_computed() -> None:
    # Sum 40, mean 5. Squared deviations 9+1+1+1+0+0+4+16 = 32, population variance
    # 32/8 = 4, stddev 2. Sorted middle pair 4 and 5, median 4.5.
    result = process_data({"records": amounts(2, 4, 4, 4, 5, 5, 7, 9), "value": "amount"})

    assert result == {
        "count": 8,
        "invalid": 0,
        "errors": [],
        "sum": 40,
        "min": 2,
        "max": 9,
        "mean": 5.0,
        "median": 4.5,
        "stddev": 2.0,
    }
    assert "groups" not in result


def test_statistics_odd_count_and_floats() -> None:
    # Sum 7.5, mean 2.5, median 1.5. Deviations -1.5, 2.5, -1: variance (2.25+6.25+1)/3.
    result = process_data({"records": amounts(1.0, 5.0, 1.5), "value": "amount"})

    assert result["sum"] == 7.5
    assert result["min"] == 1.0
    assert result["max"] == 5.0
    assert result["mean"] == 2.5
    assert result["median"] == 1.5
    assert result["stddev"] == pytest.approx((9.5 / 3) ** 0.5)


def test_sum_of_floats_is_exactly_rounded() -> None:
    # Adding 0.1 ten times one by one gives 0.9999999999999999.
    result = process_data({"records": amounts(*[0.1] * 10), "value": "amount"})

    assert result["sum"] == 1.0
    assert result["mean"] == 0.1


def test_single_record_has_zero_stddev() -> None:
    result = process_data({"records": amounts(-3), "value": "amount"})

    assert result["count"] == 1
    assert result["median"] == -3
    assert result["stddev"] == 0.0


def test_integer_sum_stays_exact() -> None:
    big = 2**60 + 1  # not representable as a float

    result = process_data({"records": amounts(big, 1), "value": "amount"})

    assert result["sum"] == big + 1
    assert isinstance(result["sum"], int)


def test_groups_by_field() -> None:
    records = [
        {"region": "north", "amount": 10},
        {"region": "south", "amount": 4},
        {"region": "north", "amount": 20},
        {"region": "south", "amount": 5.5},
        {"region": "north", "amount": 30},
    ]

    result = process_data({"records": records, "value": "amount", "group_by": "region"})

    assert list(result["groups"]) == ["north", "south"]
    assert result["groups"]["north"] == {"count": 3, "sum": 60, "min": 10, "max": 30, "mean": 20.0}
    assert result["groups"]["south"] == {"count": 2, "sum": 9.5, "min": 4, "max": 5.5, "mean": 4.75}
    assert result["count"] == 5
    assert result["sum"] == 69.5


def test_group_keys_of_non_strings() -> None:
    records = [
        {"shop": 1, "amount": 1},
        {"shop": "1", "amount": 2},
        {"shop": None, "amount": 3},
        {"shop": True, "amount": 4},
        {"shop": 2.5, "amount": 5},
    ]

    result = process_data({"records": records, "value": "amount", "group_by": "shop"})

    assert list(result["groups"]) == ["1", "null", "true", "2.5"]
    assert result["groups"]["1"]["count"] == 2


def test_invalid_records_are_reported() -> None:
    records = [
        {"amount": 1, "id": "a"},
        [1, 2],
        {"id": "c"},
        {"amount": "12", "id": "d"},
        {"amount": True, "id": "e"},
        {"amount": None, "id": "f"},
        {"amount": float("nan"), "id": "g"},
        {"amount": float("inf"), "id": "h"},
        {"amount": 10**400, "id": "i"},
        {"amount": 2},
        {"amount": 3, "id": "k", "region": ["x"]},
        {"amount": 4, "id": "l"},
        {"amount": 5, "id": "m", "region": "west"},
    ]

    result = process_data(
        {"records": records, "value": "amount", "required": ["id"], "group_by": "region"}
    )

    assert result["count"] == 1
    assert result["invalid"] == 12
    assert result["errors"] == [
        {"index": 0, "reason": "missing group field 'region'"},
        {"index": 1, "reason": "record is an array, not an object"},
        {"index": 2, "reason": "missing value field 'amount'"},
        {"index": 3, "reason": "value field 'amount' is a string, not a number"},
        {"index": 4, "reason": "value field 'amount' is a boolean, not a number"},
        {"index": 5, "reason": "value field 'amount' is null, not a number"},
        {"index": 6, "reason": "value field 'amount' is nan, not a finite number"},
        {"index": 7, "reason": "value field 'amount' is inf, not a finite number"},
        {
            "index": 8,
            "reason": "value field 'amount' is an integer too large to convert to a float",
        },
        {"index": 9, "reason": "missing required field 'id'"},
        {
            "index": 10,
            "reason": "group field 'region' is an array; expected a string, number, "
            "boolean or null",
        },
        {"index": 11, "reason": "missing group field 'region'"},
    ]
    assert result["groups"] == {"west": {"count": 1, "sum": 5, "min": 5, "max": 5, "mean": 5.0}}


def test_missing_required_fields_listed_together() -> None:
    result = process_data(
        {"records": [{"amount": 1}], "value": "amount", "required": ["id", "date"]}
    )

    assert result["errors"] == [{"index": 0, "reason": "missing required fields 'id', 'date'"}]


def test_errors_keep_first_twenty() -> None:
    records = amounts(*["x"] * (MAX_REPORTED_ERRORS + 5), 1)

    result = process_data({"records": records, "value": "amount"})

    assert result["invalid"] == MAX_REPORTED_ERRORS + 5
    assert len(result["errors"]) == MAX_REPORTED_ERRORS
    assert result["errors"][-1]["index"] == MAX_REPORTED_ERRORS - 1
    assert result["count"] == 1


def test_all_records_invalid_returns_null_statistics() -> None:
    result = process_data(
        {"records": [{"amount": "1"}, {"other": 2}], "value": "amount", "group_by": "region"}
    )

    assert result["count"] == 0
    assert result["invalid"] == 2
    for name in ("sum", "min", "max", "mean", "median", "stddev"):
        assert result[name] is None, name
    assert result["groups"] == {}


def test_result_is_strict_json() -> None:
    records = [{"amount": 1.5, "g": "a"}, {"amount": float("nan"), "g": "b"}, [], {"amount": 2}]

    result = process_data({"records": records, "value": "amount", "group_by": "g"})

    json.dumps(result, allow_nan=False)


def test_sum_overflow_is_permanent() -> None:
    records = amounts(1.7e308, 1.7e308)

    with pytest.raises(PermanentError) as raised:
        process_data({"records": records, "value": "amount"})

    assert "exceed the float range" in str(raised.value)


def test_median_overflow_is_permanent() -> None:
    # Summed in this order the running total stays below the float maximum of about
    # 1.8e308, but the median adds the middle two values, 0.95e308 + 0.95e308, first.
    records = amounts(-1.79e308, 0.95e308, 0.95e308, 0.95e308)

    with pytest.raises(PermanentError) as raised:
        process_data({"records": records, "value": "amount"})

    assert "exceed the float range" in str(raised.value)


def test_logs_job_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    process_data({"records": amounts(1, "x"), "value": "amount"}, make_context("job-9"))

    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["job job-9:process_data: Aggregated 1 records of field amount, 1 invalid"]


def test_logs_warning_when_all_invalid(caplog: pytest.LogCaptureFixture) -> None:
    process_data({"records": amounts("x"), "value": "amount"}, make_context("job-10"))

    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "job job-10" in warnings[0].getMessage()


VALID = {"records": amounts(1), "value": "amount"}


def with_changes(**changes: Any) -> dict[str, Any]:
    """Return VALID with ``changes`` applied; a value of None removes the field."""
    payload = {**VALID, **changes}
    return {key: value for key, value in payload.items() if value is not None}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (with_changes(records=None), "missing field 'records': give a non-empty list"),
        (
            with_changes(records={"amount": 1}),
            "invalid field 'records': Input should be a valid list",
        ),
        (with_changes(records="[]"), "invalid field 'records'"),
        (with_changes(records=[]), "invalid field 'records'"),
        (with_changes(value=None), "missing field 'value': give the name of the numeric field"),
        (with_changes(value=""), "invalid field 'value'"),
        (with_changes(value=["amount"]), "invalid field 'value'"),
        (with_changes(group_by=""), "invalid field 'group_by'"),
        (with_changes(group_by=3), "invalid field 'group_by'"),
        (with_changes(required="id"), "invalid field 'required'"),
        (with_changes(required=["id", 7]), "invalid field 'required[1]'"),
        (with_changes(values="amount"), "unknown field 'values': remove it"),
    ],
)
def test_invalid_payload_is_permanent(payload: dict[str, Any], expected: str) -> None:
    with pytest.raises(PermanentError) as raised:
        process_data(payload)

    assert expected in str(raised.value)


def test_invalid_payload_says_how_to_fix() -> None:
    with pytest.raises(PermanentError) as raised:
        process_data(with_changes(records=5))

    assert "Fix: give a non-empty list of JSON objects" in str(raised.value)


def test_payload_not_an_object() -> None:
    with pytest.raises(PermanentError) as raised:
        process_data([{"amount": 1}])  # type: ignore[arg-type]

    assert "expected a JSON object with records and value" in str(raised.value)


def test_record_limit_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_MAX_RECORDS", "3")

    accepted = process_data({"records": amounts(1, 2, 3), "value": "amount"})
    with pytest.raises(PermanentError) as raised:
        process_data({"records": amounts(1, 2, 3, 4), "value": "amount"})

    assert accepted["count"] == 3
    assert "contains 4 records, more than DATA_MAX_RECORDS=3" in str(raised.value)


def test_record_limit_default_allows_100000() -> None:
    records = amounts(*range(100_000))

    result = process_data({"records": records, "value": "amount"})

    assert result["count"] == 100_000
    assert result["sum"] == 99_999 * 100_000 // 2
    assert result["median"] == 49_999.5


@pytest.mark.parametrize("setting", ["0", "many", "-5"])
def test_invalid_record_limit_setting(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("DATA_MAX_RECORDS", setting)

    with pytest.raises(PermanentError) as raised:
        process_data(VALID)

    assert f"DATA_MAX_RECORDS={setting!r}" in str(raised.value)


def test_record_limit_applies_to_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker passes a DataPayload that the core validated without the limit.
    data = DataPayload.model_validate({"records": amounts(1, 2, 3, 4), "value": "amount"})
    monkeypatch.setenv("DATA_MAX_RECORDS", "4")
    accepted = process_data(data)

    monkeypatch.setenv("DATA_MAX_RECORDS", "3")
    with pytest.raises(PermanentError) as raised:
        process_data(data)

    assert accepted["count"] == 4
    assert str(raised.value) == (
        "invalid process_data payload:\n"
        "  invalid field 'records': contains 4 records, more than DATA_MAX_RECORDS=3: "
        "split the records over several jobs, or raise DATA_MAX_RECORDS"
    )


def test_payload_ignores_reserved_keys() -> None:
    result = process_data(with_changes(_bananas_trace={"traceparent": "00-1-2-01"}))

    assert result["count"] == 1


@pytest.mark.anyio
async def test_queued_job_passes_model_to_handler(
    bananas_queue: MemoryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_on_dict(payload: object, max_records: int) -> None:
        raise AssertionError(f"process_data received a dict, not a DataPayload: {payload!r}")

    # The handler parses only a dict, so this fails the job if the worker passes one.
    monkeypatch.setattr(bananas_data.handler, "parse_payload", fail_on_dict)

    job = await bananas_queue.enqueue("process_data", {"records": amounts(2, 4), "value": "amount"})
    await bananas_queue.run_all()
    done = await bananas_queue.get(job.id)

    assert job.payload == {"records": amounts(2, 4), "value": "amount"}
    assert done.status is JobStatus.completed, done.error
    assert done.result is not None
    assert done.result["sum"] == 6


@pytest.mark.anyio
async def test_queued_job_over_record_limit_is_dead(
    bananas_queue: MemoryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_MAX_RECORDS", "3")

    # Submission does not check DATA_MAX_RECORDS, which is read in the worker.
    job = await bananas_queue.enqueue(
        "process_data", {"records": amounts(1, 2, 3, 4), "value": "amount"}
    )
    await bananas_queue.run_all()
    dead = await bananas_queue.get(job.id)

    assert dead.status is JobStatus.dead
    assert dead.attempts == 1
    assert dead.error is not None
    assert "contains 4 records, more than DATA_MAX_RECORDS=3" in dead.error.message
