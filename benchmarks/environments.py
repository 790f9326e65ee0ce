"""A virtual environment per queue under benchmarks/.venvs/, installed from pinned files.

bananas gets one too, holding the project and its pinned dependencies but none of the
development tools or plugins, so that its worker loads what a user's install would load.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.queues.specs import QueueSpec

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
REQUIREMENTS_DIR = BENCH_DIR / "requirements"
DEFAULT_VENVS_DIR = BENCH_DIR / ".venvs"
STAMP_NAME = ".requirements.sha256"


def bin_dir(spec: QueueSpec, venvs_dir: Path) -> Path:
    """Return the bin/ directory of the environment that runs ``spec``."""
    if spec.venv_name is None:
        return Path(sys.executable).parent
    return venvs_dir / spec.venv_name / "bin"


def ensure_environment(spec: QueueSpec, venvs_dir: Path, python: str, log_dir: Path) -> Path:
    """Create or update the environment of ``spec`` and return its bin/ directory.

    An environment whose stamp matches its requirements file is reused as it is. Raises
    RuntimeError naming the pip log when an install fails.
    """
    directory = bin_dir(spec, venvs_dir)
    if spec.venv_name is None:
        return directory

    requirements = REQUIREMENTS_DIR / spec.requirements
    installed = requirements.read_bytes()
    if spec.install_project:
        # A change of the project's dependencies reinstalls the environment.
        installed += (ROOT / "pyproject.toml").read_bytes()
    digest = hashlib.sha256(installed).hexdigest()
    venv = venvs_dir / spec.venv_name
    stamp = venv / STAMP_NAME
    if stamp.exists() and stamp.read_text().strip() == digest:
        return directory

    print(f"installing {spec.name} into {venv} from {requirements.name}", flush=True)
    log_path = log_dir / f"pip-{spec.name}.log"
    with open(log_path, "ab") as log:
        steps = [
            [python, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "-r",
                str(requirements),
                *(["--editable", str(ROOT)] if spec.install_project else []),
            ],
        ]
        for step in steps:
            if (
                subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
                != 0
            ):
                raise RuntimeError(
                    f"installing the {spec.name} environment failed at `{' '.join(step)}`; "
                    f"see {log_path}"
                )
    stamp.write_text(digest + "\n")
    return directory


def service_env(spec: QueueSpec, redis_url: str, probe_url: str) -> dict[str, str]:
    """Return the environment of a worker or driver process of ``spec``."""
    env = {
        key: value
        for key, value in os.environ.items()
        # The harness's own environment must not leak into the queues' interpreters.
        if key not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH") and not key.startswith("BENCH_")
    }
    env.update(spec.extra_env)
    env["PYTHONPATH"] = str(ROOT)
    env["BENCH_REDIS_URL"] = redis_url
    env["BENCH_PROBE_URL"] = probe_url
    env["REDIS_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    return env
