"""The ``process_data`` handler: validate a list of records and aggregate one numeric field."""

from __future__ import annotations

import logging
from typing import Any

from bananas_core import JobContext
from bananas_data.aggregate import aggregate
from bananas_data.payload import DataPayload, check_record_limit, parse_payload
from bananas_data.settings import load_data_settings

logger = logging.getLogger(__name__)


def process_data(
    payload: DataPayload | dict[str, Any], ctx: JobContext | None = None
) -> dict[str, Any]:
    """Validate the payload's records and return the statistics of its ``value`` field.

    ``payload`` is the DataPayload that the worker builds from the stored payload, or a
    dict, whose shape is validated here. Invalid records do not fail the job: they are
    counted in ``invalid`` and the first 20 are described in ``errors``. When every record
    is invalid it still returns the result, with ``count`` 0 and null statistics.
    DATA_MAX_RECORDS is read on every call and applies to both kinds of payload.

    Raises PermanentError for an invalid payload shape or setting, or when the statistics
    exceed the float range.
    """
    settings = load_data_settings()
    if isinstance(payload, DataPayload):
        data = payload
        check_record_limit(data, settings.DATA_MAX_RECORDS)
    else:
        data = parse_payload(payload, max_records=settings.DATA_MAX_RECORDS)

    result = aggregate(data.records, data.value, group_by=data.group_by, required=data.required)

    # The context's logger already names the job; a direct call has no job to name.
    job_logger = ctx.logger if ctx is not None else logger
    if result["count"] == 0:
        job_logger.warning(
            "Aggregated no records of field %s: all %d records are invalid",
            data.value,
            result["invalid"],
        )
    else:
        job_logger.info(
            "Aggregated %d records of field %s, %d invalid",
            result["count"],
            data.value,
            result["invalid"],
        )
    return result
