"""The Python clients without HTTP: the sync wrapper and the batch rules, on real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bananas_core.client import JobSpec, SyncClient
from bananas_core.errors import BackendError, BananasError, JobConflict, JobNotFound, PayloadTooLarge
from bananas_core.settings import Settings

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str, key_prefix: str) -> SyncClient:
    settings = Settings(REDIS_URL=redis_url, KEY_PREFIX=key_prefix, PLUGINS="tests.handlers", MAX_BATCH_JOBS=3)
    with SyncClient(settings) as sync_client:
        yield sync_client


def test_sync_client_runs_every_operation(client: SyncClient) -> None:
    job = client.submit("echo", {"n": 1}, queue="email", unique_key="once")
    repeat = client.submit("echo", {"n": 1}, queue="email", unique_key="once")
    page = client.list_jobs(queue="email")
    outcome, cancelled = client.cancel(job.id)

    assert repeat.id == job.id
    assert [each.id for each in page.jobs] == [job.id]
    assert outcome == "cancelled"
    assert client.get_job(job.id).status.value == "cancelled"
    assert client.wait(job.id, 1).status.value == "cancelled"
    assert {counts.queue for counts in client.all_counts()} == {"default", "email"}
    assert client.workers() == []
    assert client.requeue_dead(queue="email") == 0
    assert client.purge_dead(queue="email") == 0


def test_sync_client_raises_core_errors(client: SyncClient) -> None:
    job = client.submit("echo")

    with pytest.raises(JobConflict, match="not dead"):
        client.retry_dead(job.id)
    with pytest.raises(JobNotFound):
        client.get_job("0" * 32)


def test_wait_takes_duration_or_names_bad_timeout(client: SyncClient) -> None:
    job = client.submit("echo")

    waited = client.wait(job.id, "100ms")

    assert waited.status.value == "pending"
    with pytest.raises(BananasError, match="invalid duration 'soon'"):
        client.wait(job.id, "soon")


_UNCLOSED_CLIENT = """
import sys
from bananas_core.client import SyncClient
from bananas_core.settings import Settings
client = SyncClient(Settings(REDIS_URL=sys.argv[1], KEY_PREFIX=sys.argv[2], PLUGINS="tests.handlers"))
print(client.submit("echo", {}).id)
"""


def test_unclosed_sync_client_lets_process_exit(redis_url: str, key_prefix: str) -> None:
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(root)}

    finished = subprocess.run(
        [sys.executable, "-c", _UNCLOSED_CLIENT, redis_url, key_prefix],
        env=environment, capture_output=True, text=True, timeout=30,
    )

    assert finished.returncode == 0, finished.stderr
    assert len(finished.stdout.strip()) == 32


def test_sync_client_close_twice_is_harmless(client: SyncClient) -> None:
    client.close()

    client.close()


def test_closed_sync_clients_are_not_kept(redis_url: str, key_prefix: str) -> None:
    from bananas_core.client import _open_sync_clients

    settings = Settings(REDIS_URL=redis_url, KEY_PREFIX=key_prefix, PLUGINS="tests.handlers")
    before = len(_open_sync_clients)

    for _ in range(3):
        SyncClient(settings).close()

    assert len(_open_sync_clients) == before


def test_failed_submit_suggests_unique_key(key_prefix: str) -> None:
    settings = Settings(REDIS_URL="redis://127.0.0.1:1/0", KEY_PREFIX=key_prefix, PLUGINS="tests.handlers")

    with SyncClient(settings) as unreachable, pytest.raises(BackendError) as raised:
        unreachable.submit("echo", {})

    message = str(raised.value)
    assert "The jobs may have been stored even so" in message
    assert "unique key (unique_key, or --unique-key on the command line)" in message
    assert ".." not in message
    assert ".;" not in message


def test_keyed_submit_failure_has_no_advice(key_prefix: str) -> None:
    settings = Settings(REDIS_URL="redis://127.0.0.1:1/0", KEY_PREFIX=key_prefix, PLUGINS="tests.handlers")

    with SyncClient(settings) as unreachable, pytest.raises(BackendError) as raised:
        unreachable.submit("echo", {}, unique_key="order-1")

    assert "may have been stored" not in str(raised.value)


def _contains_itself() -> dict:
    payload: dict = {"name": "loop"}
    payload["self"] = payload
    return payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"a": [1, {"b": float("nan")}]}, r"payload\.a\[1\]\.b is nan, which is not a JSON number"),
        ({"when": object()}, r"payload\.when is of type object, which is not a JSON type"),
        ({"text": "ok\ud800"}, r"payload\.text is a string with a lone surrogate at character 2"),
        (_contains_itself(), "or it contains itself"),
    ],
)
def test_non_json_payload_error_names_value(client: SyncClient, payload: dict, message: str) -> None:
    with pytest.raises(BananasError, match=message):
        client.submit("echo", payload)

    assert all(counts.normal == 0 for counts in client.all_counts())


def _deep_tuple(levels: int) -> tuple:
    value: tuple = ()
    for _ in range(levels - 1):
        value = (value,)
    return value


def _deep_json_array(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _tuple_cycle() -> dict:
    items: list = []
    items.append((items,))
    return {"items": items}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_tuple_cycle(), "or it contains itself"),
        ({"n": _deep_tuple(64)}, "nested more than 64 levels deep"),  # 65 with the payload
        ({"n": _deep_tuple(5000)}, "nested more than 64 levels deep"),
    ],
)
def test_tuples_count_as_arrays(client: SyncClient, payload: dict, message: str) -> None:
    with pytest.raises(BananasError, match=message):
        client.submit("echo", payload)

    assert all(counts.normal == 0 for counts in client.all_counts())


def test_nested_tuples_are_stored_as_arrays(client: SyncClient) -> None:
    job = client.submit("echo", {"n": _deep_tuple(63)})

    assert client.get_job(job.id).payload == {"n": _deep_json_array(63)}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (7, {}, "invalid name 7 of job: expected a handler name"),
        ("echo", {"payload": {1: "x"}}, "its key 1 is of type int; the keys of a payload are strings"),
        ("echo", {"max_retries": 2.5}, "invalid max_retries 2.5 of job: expected a whole number"),
        ("echo", {"max_retries": True}, "invalid max_retries True of job"),
        ("echo", {"timeout": "30"}, "invalid timeout '30' of job: expected a number of seconds"),
        ("echo", {"delay": True}, "invalid delay True of job"),
        ("echo", {"priority": "urgent"}, "invalid priority 'urgent' of job: expected high, normal or low"),
        ("echo", {"priority": ["high"]}, "invalid priority \\['high'\\] of job"),
        ("ok\ud800", {}, "expected a handler name of 1 to 128 letters"),
        ("send email", {}, "invalid name .send email. of job: expected a handler name"),
        ("echo\n", {}, "invalid name 'echo\\\\n' of job: expected a handler name"),
        ("echo", {"queue": "email\n"}, "invalid queue 'email\\\\n' of job"),
        ("echo", {"queue": 5}, "invalid queue 5 of job: expected a string"),
        ("echo", {"unique_key": 5}, "invalid unique key 5 of job: expected a string"),
        ("echo", {"run_at": "2027-01-01T00:00:00Z"}, "invalid run_at '2027-01-01T00:00:00Z' of job"),
        ("echo", {"delay": None}, "invalid delay None of job: expected a number of seconds"),
    ],
)
def test_wrong_types_store_nothing(client: SyncClient, name: object, options: dict, message: str) -> None:
    payload = options.pop("payload", {})

    with pytest.raises(BananasError, match=message):
        client.submit(name, payload, **options)  # type: ignore[arg-type]

    assert all(counts.normal == 0 and counts.scheduled == 0 for counts in client.all_counts())


def _nested(levels: int) -> dict:
    payload: dict = {}
    for _ in range(levels - 1):
        payload = {"n": payload}
    return payload


@pytest.mark.parametrize("levels", [65, 100_000])
def test_too_deep_payload_is_rejected(client: SyncClient, levels: int) -> None:
    # 100,000 levels is beyond what the json module can encode.
    with pytest.raises(BananasError, match="nested more than 64 levels deep"):
        client.submit("echo", _nested(levels))

    assert all(counts.normal == 0 for counts in client.all_counts())


def test_payload_at_depth_limit_is_stored(client: SyncClient) -> None:
    job = client.submit("echo", _nested(64))

    assert client.get_job(job.id).payload == _nested(64)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([JobSpec("echo")] * 4, "MAX_BATCH_JOBS=3"),
        ([JobSpec("echo", queue="a"), JobSpec("echo", queue="b")], "one batch per queue"),
        ([JobSpec("echo", payload=[1])], "expected a JSON object"),  # type: ignore[arg-type]
        ([JobSpec("echo", unique_key="has space")], "invalid unique key"),
        ([JobSpec("echo", timeout=0), JobSpec("echo")], "invalid timeout 0 of job 0: expected"),
        ([JobSpec("echo"), JobSpec("echo", delay=-1)], "invalid delay -1 of job 1: expected 0 to 31,622,400 seconds"),
    ],
)
def test_batch_rules_store_nothing(client: SyncClient, specs: list[JobSpec], message: str) -> None:
    with pytest.raises(BananasError, match=message):
        client.submit_batch(specs)

    assert all(counts.normal == 0 for counts in client.all_counts())


@pytest.mark.parametrize(
    "payload",
    [
        {"big": 2**70, "negative": -(2**65)},
        {"text": "é ☃ \U0001f34c", "nested": {"list": [1.5, None, True]}},
        {"1": "string key", "float": 1e16},
    ],
)
def test_payload_round_trips_exactly(client: SyncClient, payload: dict) -> None:
    job = client.submit("echo", payload)

    stored = client.get_job(job.id)

    assert stored.payload == payload


def test_payload_size_limit_boundary(redis_url: str, key_prefix: str) -> None:
    # Sizes count the compact UTF-8 JSON: {"text":"..."} is 11 bytes around the text.
    settings = Settings(REDIS_URL=redis_url, KEY_PREFIX=key_prefix, PLUGINS="tests.handlers", MAX_PAYLOAD_BYTES=64)
    with SyncClient(settings) as client:
        stored = client.submit("echo", {"text": "x" * 53})
        with pytest.raises(PayloadTooLarge, match="65 bytes as JSON, over MAX_PAYLOAD_BYTES=64"):
            client.submit("echo", {"text": "x" * 54})
        with pytest.raises(PayloadTooLarge, match="67 bytes"):
            client.submit("echo", {"text": "é" * 28})  # 56 bytes of UTF-8 text
        counts = client.all_counts()

    assert stored.payload == {"text": "x" * 53}
    assert sum(each.normal for each in counts) == 1
