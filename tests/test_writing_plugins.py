"""docs/writing-plugins.md followed step by step: its files, its tests and `bananas plugins`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # in the standard library from Python 3.11

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-plugins.md"
FILE_BLOCK = re.compile(r"^File `([^`]+)`:\n\n```\w*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def tutorial_files() -> dict[str, str]:
    """Return each file the tutorial shows, by its path, as the text of its code block."""
    return {path: text for path, text in FILE_BLOCK.findall(DOC.read_text())}


def code_block_after(marker: str) -> str:
    """Return the first code block after the line that contains ``marker``."""
    text = DOC.read_text()
    start = text.index(marker)
    match = re.search(r"```\w*\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, f"no code block after {marker!r}"
    return match.group(1)


def install_like_pip(project: Path) -> None:
    """Write the .dist-info that ``pip install -e`` would, from the project's pyproject.toml.

    importlib.metadata then finds the entry points with the project folder on sys.path,
    without building a wheel, which would take longer than the rest of the suite.
    """
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = project / f"{metadata['name'].replace('-', '_')}-{metadata['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {metadata['name']}\nVersion: {metadata['version']}\n"
    )
    lines = []
    for group, points in metadata["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create the tutorial's files under a temporary folder, installed as step 5 describes."""
    root = tmp_path_factory.mktemp("tutorial")
    for path, text in tutorial_files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    project = root / "bananas-slug"
    install_like_pip(project)
    return project


def run_in(project: Path, *command: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(project)}
    environment.pop("PLUGINS", None)
    return subprocess.run(
        [sys.executable, *command],
        check=False,
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tutorial_shows_every_file_of_its_tree() -> None:
    tree = code_block_after("The plugin has three files:")

    shown = set(tutorial_files())

    assert shown == {"bananas-slug/pyproject.toml", "bananas-slug/bananas_slug.py", "bananas-slug/tests/test_slugify.py"}
    for path in shown:
        assert Path(path).name in tree


def test_package_metadata_is_complete(project: Path) -> None:
    metadata = tomllib.loads((project / "pyproject.toml").read_text())

    assert metadata["project"]["entry-points"]["bananas"] == {"slug": "bananas_slug"}
    assert metadata["tool"]["setuptools"]["py-modules"] == ["bananas_slug"]
    assert (project / "bananas_slug.py").exists()


def test_tutorial_tests_pass(project: Path) -> None:
    finished = run_in(project, "-m", "pytest", "-q", "-p", "no:cacheprovider")

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "3 passed" in finished.stdout


def test_bananas_plugins_lists_it(project: Path) -> None:
    expected = code_block_after("Among the other installed plugins, the list shows:")

    finished = run_in(project, "-c", "import sys; from bananas_core.cli import main; main(sys.argv[1:])", "plugins")

    assert finished.returncode == 0, finished.stderr
    assert expected in finished.stdout
