"""Schemathesis against the OpenAPI schema that a running ``bananas api`` serves: no 5xx, and
every response matches the schema."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from tests.conftest import delete_keys
from tests.services import Services, make_services

pytestmark = pytest.mark.redis

# Examples per operation: enough to reach every parameter and error path, while the whole
# run stays near half a minute on two cores.
MAX_EXAMPLES = 30
API_KEY = "schema-test-key"


@pytest.fixture(scope="module")
def served_api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    prefix = f"bananas-test-{uuid.uuid4().hex[:12]}"
    log_dir: Path = tmp_path_factory.mktemp("schema-api")
    # A short maximum wait keeps generated wait requests from holding the run up.
    services = make_services(
        redis_url,
        prefix,
        log_dir,
        WAIT_TIMEOUT_MAX="1",
        MAX_BATCH_JOBS="5",
        API_KEYS=f"sha256:{hashlib.sha256(API_KEY.encode()).hexdigest()}",
        # High enough never to reject this run, so every request still goes through the limiter.
        RATE_LIMIT="10000",
        RATE_LIMIT_BURST="10000",
    )
    try:
        services.start("api")
        services.wait_until_api_answers()
        yield services
    finally:
        services.close()
        delete_keys(redis_url, prefix)


def test_api_matches_its_schema(served_api: Services) -> None:
    # NOTE: schemathesis 4.32's pytest integration (schemathesis.pytest.from_fixture) fails
    # on pytest 9 with "'Function' object has no attribute '_nodeid'", so each operation runs
    # through hypothesis here instead.
    schema = schemathesis.openapi.from_url(f"{served_api.base_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14

    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def check(case: schemathesis.Case) -> None:
            # Rules that depend on settings or on other fields (MAX_BATCH_JOBS, one queue per
            # batch, run_at at most a year ahead) reject some schema-valid requests with a 422,
            # as documented, so that check is left out.
            case.call_and_validate(
                headers={"Authorization": f"Bearer {API_KEY}"},
                excluded_checks=[positive_data_acceptance],
            )

        try:
            check()
        except Exception as error:  # noqa: BLE001 - every operation runs, then all failures show
            failures.append(f"{operation.label}: {error}")

    assert not failures, "\n\n".join(failures)
