"""The job commands of the ``bananas`` CLI against real Redis: output, --json and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import pytest

from bananas_core.cli import EXIT_BACKEND, EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_USAGE, main

pytestmark = pytest.mark.redis


@pytest.fixture
def run(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    monkeypatch.setenv("PLUGINS", "tests.handlers")
    monkeypatch.setenv("LOG_LEVEL", "ERROR")

    def invoke(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.out, captured.err

    return invoke


def test_enqueue_with_options_then_list(run: Any) -> None:
    code, out, _ = run("enqueue", "echo", "--queue", "email", "--unique-key", "k1", "--json")
    job = json.loads(out)
    _, again, _ = run("enqueue", "echo", "--queue", "email", "--unique-key", "k1")

    code_list, listing, _ = run("list", "--queue", "email", "--json")

    assert code == 0
    assert job["queue"] == "email"
    assert again.strip() == job["id"]
    assert code_list == 0
    assert [each["id"] for each in json.loads(listing)["jobs"]] == [job["id"]]


@pytest.mark.parametrize("log_level", [None, "INFO"])
def test_enqueue_logs_steps_only_on_request(redis_url: str, key_prefix: str, log_level: str | None) -> None:
    environment = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": key_prefix, "PLUGINS": "tests.handlers"}
    environment.pop("LOG_LEVEL", None)
    if log_level is not None:
        environment["LOG_LEVEL"] = log_level

    completed = subprocess.run(
        [sys.executable, "-c", "from bananas_core.cli import main; main()", "enqueue", "echo"],
        env=environment, capture_output=True, text=True, timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    assert len(completed.stdout.strip()) == 32
    if log_level is None:
        assert completed.stderr == ""
    else:
        assert "INFO bananas_core.client: Enqueued job" in completed.stderr


def test_cancel_then_cancel_again_conflicts(run: Any) -> None:
    _, job_id, _ = run("enqueue", "echo")

    first = run("cancel", job_id.strip(), "--json")
    second = run("cancel", job_id.strip())

    assert first[0] == 0
    assert json.loads(first[1])["outcome"] == "cancelled"
    assert second[0] == EXIT_CONFLICT
    assert "already cancelled" in second[2]


def test_wait_prints_status(run: Any) -> None:
    _, job_id, _ = run("enqueue", "echo", "--delay", "60")

    code, out, _ = run("wait", job_id.strip(), "--timeout", "0.1")

    assert code == 0
    assert out.strip() == "scheduled"


def test_queues_and_workers_json(run: Any) -> None:
    run("enqueue", "echo", "--priority", "high")

    code, out, _ = run("queues", "--json")
    code_workers, workers, _ = run("workers", "--json")

    assert code == 0
    assert json.loads(out)[0]["high"] == 1
    assert code_workers == 0
    assert json.loads(workers) == []


def test_dead_commands_count(run: Any) -> None:
    requeue = run("dead", "requeue", "--name", "echo", "--json")
    purge = run("dead", "purge")

    assert requeue[0] == 0
    assert json.loads(requeue[1]) == {"count": 0}
    assert purge[1].strip() == "purged 0 dead jobs"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("status", "0" * 32), EXIT_NOT_FOUND),
        (("cancel", "0" * 32), EXIT_NOT_FOUND),
        (("dead", "retry", "0" * 32), EXIT_NOT_FOUND),
        (("list", "--cursor", "nonsense"), EXIT_USAGE),
        (("list", "--status", "lost"), EXIT_USAGE),
        (("enqueue", "echo", "--queue", "bad queue"), EXIT_USAGE),
        (("enqueue", "echo", "--run-at", "tomorrow"), EXIT_USAGE),
    ],
)
def test_exit_codes(run: Any, argv: tuple[str, ...], expected: int) -> None:
    code, _, err = run(*argv)

    assert code == expected
    assert err.startswith("bananas: ")
    assert err.count("\n") == 1


def test_dead_retry_of_live_job_conflicts(run: Any) -> None:
    _, job_id, _ = run("enqueue", "echo")

    code, _, err = run("dead", "retry", job_id.strip())

    assert code == EXIT_CONFLICT
    assert "not dead" in err


def test_unreachable_redis_exits_5(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")

    code, _, err = run("queues")

    assert code == EXIT_BACKEND
    assert "127.0.0.1:1" in err


def test_schedules_list_pause_resume(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PERIODIC_JOBS", '[{"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "job": "echo"}]'
    )

    listed = run("schedules", "--json")
    paused = run("schedules", "pause", "nightly", "--json")
    resumed = run("schedules", "resume", "nightly", "--json")
    missing = run("schedules", "pause", "weekly")

    assert listed[0] == 0
    [entry] = json.loads(listed[1])
    assert (entry["name"], entry["paused"]) == ("nightly", False)
    assert json.loads(paused[1])[0]["paused"] is True
    assert json.loads(resumed[1])[0]["paused"] is False
    assert missing[0] == EXIT_NOT_FOUND
    assert "schedule 'weekly' not found; known schedules: nightly" in missing[2]


def test_enqueue_takes_duration_strings(run: Any) -> None:
    code, out, _ = run("enqueue", "echo", "--delay", "10m", "--timeout", "1500ms", "--json")
    job = json.loads(out)

    assert code == 0
    due = datetime.fromisoformat(job["run_at"]) - datetime.fromisoformat(job["created_at"])
    assert job["status"] == "scheduled"
    assert job["timeout"] == 1.5
    assert due == timedelta(minutes=10)


def test_enqueue_rejects_bad_duration(run: Any) -> None:
    code, _, err = run("enqueue", "echo", "--delay", "5x")

    assert code == EXIT_USAGE
    assert "invalid duration '5x'" in err
    assert "30s, 5m" in err


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("send email", "invalid name 'send email' of job: expected a handler name of 1 to 128"),
        ("no_such_handler", "unknown handler 'no_such_handler': installed handlers are"),
    ],
)
def test_enqueue_names_bad_handler_name(run: Any, name: str, expected: str) -> None:
    code, out, err = run("enqueue", name)

    assert code == EXIT_USAGE
    assert out == ""
    assert expected in err
