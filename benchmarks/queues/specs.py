"""The queues under test: the environment of each and the command of its usual worker.

Every worker runs 10 jobs at once (CONCURRENCY).

The harness imports this module in the bananas environment, so it names the peer libraries
but never imports them. Worker commands run with the working directory at the repository root
and ``PYTHONPATH`` pointing there, so ``benchmarks.queues.*`` imports in every environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CONCURRENCY = 10
BANANAS_KEY_PREFIX = "bench"


@dataclass(frozen=True)
class QueueSpec:
    """One queue under test."""

    name: str
    module: str  # defines the benchmark job and a ``Producer`` class
    # File under benchmarks/requirements/ that its virtual environment installs.
    requirements: str
    distributions: tuple[str, ...]  # whose versions the report lists
    # argv of one worker process. The first item is a script in the environment's bin/.
    # "{redis_url}" is replaced by the URL of the private Redis server.
    worker: tuple[str, ...]
    settings: str  # the worker's settings, as the report lists them
    extra_env: dict[str, str] = field(default_factory=dict)
    # The directory under benchmarks/.venvs/, the queue's name by default. None means the
    # environment the harness itself runs in.
    environment: str | None = ""
    # The environment also installs this repository, editable: bananas itself.
    install_project: bool = False

    @property
    def venv_name(self) -> str | None:
        """Return the directory name of the queue's environment, or None for the harness's own."""
        return None if self.environment is None else self.environment or self.name


_BANANAS_ENV = {
    "KEY_PREFIX": BANANAS_KEY_PREFIX,
    "WORKER_CONCURRENCY": str(CONCURRENCY),
    "PLUGINS": "benchmarks.queues.bananas_app",
    "LOG_LEVEL": "WARNING",
    # The producer's batches: the peers' bulk APIs take all 10,000 jobs in one call.
    "MAX_BATCH_JOBS": "1000",
}

SPECS: dict[str, QueueSpec] = {
    "bananas": QueueSpec(
        name="bananas",
        module="benchmarks.queues.bananas_app",
        requirements="bananas.txt",
        install_project=True,
        distributions=("bananas", "redis", "hiredis", "orjson", "anyio", "pydantic"),
        worker=("bananas", "worker"),
        settings=(
            f"WORKER_CONCURRENCY={CONCURRENCY}, LOG_LEVEL=WARNING, async handler, "
            "its own environment with no plugin installed, "
            "MAX_BATCH_JOBS=1000 (the bulk API sends batches of 1,000 jobs), other settings "
            "default (WORKER_PREFETCH=0, LEASE_TIMEOUT=30s, COMPLETED_TTL=1d); no scheduler running"
        ),
        extra_env=_BANANAS_ENV,
    ),
    "arq": QueueSpec(
        name="arq",
        module="benchmarks.queues.arq_app",
        requirements="arq.txt",
        distributions=("arq", "redis", "hiredis"),
        worker=(
            "arq",
            "benchmarks.queues.arq_app.WorkerSettings",
            "--custom-log-dict",
            "benchmarks.queues.arq_app.LOG_CONFIG",
        ),
        settings=(
            f"max_jobs={CONCURRENCY}, async handler, arq loggers at WARNING, other settings "
            "default (poll_delay=0.5s, keep_result=3600s)"
        ),
    ),
    "saq": QueueSpec(
        name="saq",
        module="benchmarks.queues.saq_app",
        requirements="saq.txt",
        distributions=("saq", "redis"),
        worker=("saq", "benchmarks.queues.saq_app.settings", "--workers", "1"),
        settings=(
            f"1 process, concurrency={CONCURRENCY}, async handler, log level WARNING "
            "(saq's default), other settings default"
        ),
    ),
    "rq": QueueSpec(
        name="rq",
        module="benchmarks.queues.rq_app",
        requirements="rq.txt",
        distributions=("rq", "redis"),
        worker=(
            "rq",
            "worker-pool",
            "bench",
            "--num-workers",
            str(CONCURRENCY),
            "--url",
            "{redis_url}",
            "--logging-level",
            "WARNING",
        ),
        settings=(
            f"`rq worker-pool` with {CONCURRENCY} worker processes (RQ runs one job at a time "
            "per worker), each forking a work horse per job (the default Worker class), "
            "logging WARNING"
        ),
    ),
    "dramatiq": QueueSpec(
        name="dramatiq",
        module="benchmarks.queues.dramatiq_app",
        requirements="dramatiq.txt",
        distributions=("dramatiq", "redis"),
        worker=(
            "dramatiq",
            "benchmarks.queues.dramatiq_app",
            "--processes",
            "1",
            "--threads",
            str(CONCURRENCY),
            "--skip-logging",
        ),
        settings=(
            f"1 process, {CONCURRENCY} threads, default middleware, --skip-logging (Python's "
            "default WARNING), RedisBroker defaults"
        ),
    ),
    "celery": QueueSpec(
        name="celery",
        module="benchmarks.queues.celery_app",
        requirements="celery.txt",
        distributions=("celery", "kombu", "redis"),
        worker=(
            "celery",
            "-A",
            "benchmarks.queues.celery_app",
            "worker",
            "--concurrency",
            str(CONCURRENCY),
            "--loglevel",
            "WARNING",
        ),
        settings=(
            f"prefork pool (the default) with {CONCURRENCY} child processes, prefetch multiplier 4 "
            "(default), no result backend, loglevel WARNING"
        ),
    ),
    "huey": QueueSpec(
        name="huey",
        module="benchmarks.queues.huey_app",
        requirements="huey.txt",
        distributions=("huey", "redis"),
        worker=(
            "huey_consumer",
            "benchmarks.queues.huey_app.huey",
            "--workers",
            str(CONCURRENCY),
            "--worker-type",
            "thread",
            "--quiet",
        ),
        settings=(
            f"{CONCURRENCY} worker threads, RedisHuey defaults (blocking BRPOP reads), "
            "--quiet (WARNING)"
        ),
    ),
    "taskiq": QueueSpec(
        name="taskiq",
        module="benchmarks.queues.taskiq_app",
        requirements="taskiq.txt",
        distributions=("taskiq", "taskiq-redis", "redis"),
        worker=(
            "taskiq",
            "worker",
            "benchmarks.queues.taskiq_app:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(CONCURRENCY),
            "--log-level",
            "WARNING",
        ),
        settings=(
            f"1 worker process, --max-async-tasks {CONCURRENCY}, RedisStreamBroker, no result "
            "backend, log level WARNING"
        ),
    ),
}

# The same worker, leasing up to 20 jobs beyond its free slots. Celery's workers prefetch 4 jobs
# per unit of concurrency by default.
SPECS["bananas-prefetch"] = replace(
    SPECS["bananas"],
    name="bananas-prefetch",
    environment="bananas",
    settings=f"as bananas, with WORKER_PREFETCH={2 * CONCURRENCY}",
    extra_env={**_BANANAS_ENV, "WORKER_PREFETCH": str(2 * CONCURRENCY)},
)


def in_harness_environment(spec: QueueSpec) -> QueueSpec:
    """Return ``spec`` running in the harness's own environment instead of a new one.

    The project's development environment installs the plugins under plugins/, so they are
    blocked: a worker would otherwise trace and meter every job.
    """
    return replace(
        spec,
        environment=None,
        install_project=False,
        settings=spec.settings.replace(
            "its own environment with no plugin installed",
            "the harness's environment with PLUGINS_BLOCK=otel,email,http,data",
        ),
        extra_env={**spec.extra_env, "PLUGINS_BLOCK": "otel,email,http,data"},
    )
