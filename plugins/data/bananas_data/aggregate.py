"""Validation of records and the statistics of one numeric field, overall and per group."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from bananas_core import PermanentError

MAX_REPORTED_ERRORS = 20  # invalid records beyond this are counted but not described

Number = int | float


def aggregate(
    records: Iterable[Any],
    value_field: str,
    group_by: str | None = None,
    required: Sequence[str] = (),
) -> dict[str, Any]:
    """Validate each record and summarise the numbers in ``value_field``.

    Returns ``count`` (valid records), ``invalid``, ``errors`` (index and reason of the first
    20 invalid records), and ``sum``, ``min``, ``max``, ``mean``, ``median`` and ``stddev``
    (population) of the valid values. When no record is valid these statistics are None.
    With ``group_by``, ``groups`` maps each group key to its count, sum, min, max and mean,
    in order of first appearance. ``group_key`` describes how the keys are written.

    Raises PermanentError when a statistic of the valid, finite values exceeds the float
    range, which no retry can change.
    """
    values: list[Number] = []
    groups: dict[str, list[Number]] = {}
    invalid = 0
    errors: list[dict[str, Any]] = []

    for index, record in enumerate(records):
        reason = check_record(record, value_field, group_by, required)
        if reason is not None:
            invalid += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append({"index": index, "reason": reason})
            continue

        value = record[value_field]
        values.append(value)
        if group_by is not None:
            groups.setdefault(group_key(record[group_by]), []).append(value)

    try:
        result: dict[str, Any] = {
            "count": len(values),
            "invalid": invalid,
            "errors": errors,
            **summarise(values),
        }
        if group_by is not None:
            result["groups"] = {key: summarise_group(group) for key, group in groups.items()}
    except OverflowError as error:
        raise PermanentError(
            f"the statistics of field {value_field!r} exceed the float range (about 1.8e308): "
            "scale the values down before sending them"
        ) from error
    return result


def check_record(
    record: Any, value_field: str, group_by: str | None, required: Sequence[str]
) -> str | None:
    """Return why ``record`` cannot be aggregated, or None when it can."""
    if not isinstance(record, dict):
        return f"record is {_json_type(record)}, not an object"

    missing = [name for name in required if name not in record]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        return f"missing required field{'s' if len(missing) > 1 else ''} {names}"

    if value_field not in record:
        return f"missing value field {value_field!r}"
    value = record[value_field]
    # bool is a subclass of int in Python, but true and false are not amounts.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"value field {value_field!r} is {_json_type(value)}, not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"value field {value_field!r} is {value!r}, not a finite number"
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        return f"value field {value_field!r} is an integer too large to convert to a float"

    if group_by is not None:
        if group_by not in record:
            return f"missing group field {group_by!r}"
        key = record[group_by]
        if isinstance(key, (dict, list)):
            return (
                f"group field {group_by!r} is {_json_type(key)}; expected a string, number, "
                "boolean or null"
            )
        if isinstance(key, float) and not math.isfinite(key):
            return f"group field {group_by!r} is {key!r}, not a finite number"
    return None


def group_key(value: Any) -> str:
    """Write a group field's value as a JSON object key.

    A string is used as it is. Numbers, booleans and null are written as JSON, so the number
    1 and the string "1" fall into the same group "1", and true becomes "true".
    """
    if isinstance(value, str):
        return value
    return json.dumps(value)


def summarise(values: list[Number]) -> dict[str, Any]:
    """Return sum, min, max, mean, median and population stddev, all None for no values."""
    if not values:
        return dict.fromkeys(("sum", "min", "max", "mean", "median", "stddev"))
    total = _sum(values)
    stats = {
        "sum": total,
        "min": min(values),
        "max": max(values),
        "mean": total / len(values),
        "median": statistics.median(values),
        "stddev": statistics.pstdev(values),
    }
    # The median of two floats above half the float maximum overflows to inf silently,
    # and inf has no JSON form.
    if not all(math.isfinite(stat) for stat in stats.values()):
        raise OverflowError("a statistic is not finite")
    return stats


def summarise_group(values: list[Number]) -> dict[str, Any]:
    """Return count, sum, min, max and mean of a non-empty group."""
    total = _sum(values)
    return {
        "count": len(values),
        "sum": total,
        "min": min(values),
        "max": max(values),
        "mean": total / len(values),
    }


def _sum(values: list[Number]) -> Number:
    # Integers are summed exactly. fsum avoids the rounding errors that add up over many
    # floats, and raises OverflowError where sum() would return inf.
    if all(isinstance(value, int) for value in values):
        return sum(values)
    return math.fsum(values)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
