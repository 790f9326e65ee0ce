"""Process isolation: run a handler in a child process that can be killed at the timeout.

A thread cannot be stopped, so a sync handler stuck in a CPU loop or a blocking call keeps
its thread busy after the timeout. A handler registered with ``isolation="process"`` runs in
a new Python process instead, killed when the job times out or the worker shuts down.

The parent sends the job as JSON on the child's stdin, and the child writes one JSON outcome
to its stdout. Anything the handler prints goes to the worker's stderr. Each run starts a new
interpreter, which costs tens of milliseconds, so use it for long or untrusted handlers.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import subprocess
import sys
import traceback
from typing import Any

import anyio

from bananas_core.context import JobContext, job_logger
from bananas_core.errors import PermanentError
from bananas_core.job import Job
from bananas_core.registry import Handler, parse_payload

logger = logging.getLogger(__name__)


class HandlerFailed(Exception):
    """Raised in the worker when an isolated handler raised; carries the child's error."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.traceback = traceback


class PermanentHandlerFailure(HandlerFailed, PermanentError):
    """Raised in the worker when an isolated handler raised PermanentError."""


async def run_in_process(handler: Handler, context: JobContext) -> Any:
    """Run ``handler`` in a child process and return its result.

    Raises HandlerFailed with the child's error. The caller enforces the timeout by
    cancelling, and a cancelled call kills the child.
    """
    job = context.job
    request = json.dumps({
        "module": handler.function.__module__,
        "qualname": handler.function.__qualname__,
        "takes_context": handler.takes_context,
        "schema": _import_path(handler.schema) if handler.schema is not None else None,
        "job": job.to_record(),
    }).encode()
    # The child must import the handler's module from the same places the worker does.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}

    process = await anyio.open_process(
        [sys.executable, "-m", "bananas_core.isolation"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(request)
        await process.stdin.aclose()
        output = b"".join([chunk async for chunk in process.stdout])
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
            logger.warning("Killed the process of job %s:%s (pid %d)", job.id, job.name, process.pid)

    if not output:
        raise HandlerFailed(
            "ProcessDied",
            f"the process running job {job.id} exited with status {process.returncode} "
            "without an outcome",
            "",
        )
    outcome = json.loads(output)
    if outcome["ok"]:
        return outcome["result"]
    error_class = PermanentHandlerFailure if outcome["permanent"] else HandlerFailed
    raise error_class(outcome["type"], outcome["message"], outcome["traceback"])


def _child_main() -> None:
    # The handler may print; keep stdout for the one JSON outcome.
    outcome_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    request = json.loads(sys.stdin.read())
    job = Job.from_record(request["job"])
    try:
        function = _import(request["module"], request["qualname"])
        payload: Any = job.payload
        if request["schema"] is not None:
            # The same check the worker makes for a handler that is not isolated.
            schema = _import(*request["schema"])
            payload = parse_payload(schema, job.payload, handler=job.name)
        arguments: tuple[Any, ...] = (payload,)
        if request["takes_context"]:
            arguments += (JobContext(job=job, logger=job_logger(job)),)
        result = function(*arguments)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except Exception as error:  # every handler error goes back to the worker
        text = _failure(type(error).__name__, str(error), traceback.format_exc(), isinstance(error, PermanentError))
    else:
        try:
            text = json.dumps({"ok": True, "result": result}, allow_nan=False)
        except (TypeError, ValueError) as error:
            text = _failure(
                "InvalidResult",
                f"handler {job.name!r} returned {type(result).__name__}, which is not JSON "
                f"serialisable ({error}); return a dict, list, str, finite number, bool or None",
                "",
                True,
            )
    outcome_stream.write(text)
    outcome_stream.flush()


def _import_path(target: Any) -> tuple[str, str]:
    return target.__module__, target.__qualname__


def _import(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _failure(type_name: str, message: str, trace: str, permanent: bool) -> str:
    return json.dumps(
        {"ok": False, "permanent": permanent, "type": type_name, "message": message, "traceback": trace}
    )


async def _await(awaitable: Any) -> Any:
    return await awaitable


if __name__ == "__main__":
    _child_main()
