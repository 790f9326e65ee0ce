"""The hook reference in docs/plugins.md against bananas_core.hookspecs, and the public names
of bananas_core against its ``__all__``."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

import bananas_core
from bananas_core import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
HEADING = re.compile(r"^### (bananas_\w+)\((.*)\)\s*$", re.MULTILINE)


def spec_functions() -> dict[str, types.FunctionType]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "bananas_spec")
    }


def signature_of(function: types.FunctionType) -> str:
    return f"{function.__name__}({', '.join(inspect.signature(function).parameters)})"


def documented_sections() -> dict[str, str]:
    """Return each hook section of docs/plugins.md: its heading's signature mapped to its text."""
    text = DOCS.read_text()
    matches = list(HEADING.finditer(text))
    sections = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        following = re.search(r"^#{1,3} ", text[match.end():end], re.MULTILINE)
        body_end = match.end() + following.start() if following else end
        sections[f"{match.group(1)}({match.group(2)})"] = text[match.end():body_end]
    return sections


SPECS = spec_functions()


def test_every_spec_is_found() -> None:
    assert len(SPECS) >= 16
    assert "bananas_wrap_job" in SPECS


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_has_section_with_exact_signature(name: str) -> None:
    expected = signature_of(SPECS[name])
    documented = [signature for signature in documented_sections() if signature.startswith(f"{name}(")]

    assert documented, f"docs/plugins.md has no '### {expected}' section"
    assert documented == [expected], f"docs/plugins.md documents {documented}, the spec is {expected}"


def test_every_section_names_a_spec() -> None:
    documented = {signature.split("(")[0] for signature in documented_sections()}

    assert documented - set(SPECS) == set()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_section_states_firstresult(name: str) -> None:
    section = documented_sections()[signature_of(SPECS[name])]
    firstresult = SPECS[name].bananas_spec.get("firstresult", False)  # type: ignore[attr-defined]

    stated = re.search(r"\*\*firstresult:\*\* (yes|no)", section)

    assert stated is not None, f"the section of {name} does not state **firstresult:** yes or no"
    assert stated.group(1) == ("yes" if firstresult else "no")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_reference_table_lists_hook(name: str) -> None:
    assert f"| `{signature_of(SPECS[name])}` |" in DOCS.read_text()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_docstring_has_parts(name: str) -> None:
    docstring = inspect.getdoc(SPECS[name]) or ""
    parameters = inspect.signature(SPECS[name]).parameters

    assert "firstresult" in docstring.lower()
    for parameter in parameters:
        assert f":param {parameter}:" in docstring


def public_names() -> set[str]:
    return {
        name
        for name, value in vars(bananas_core).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_lists_every_public_name() -> None:
    # Some names are imported on first use, so they resolve without being in vars() yet.
    for name in bananas_core.__all__:
        assert getattr(bananas_core, name) is not None
    assert public_names() <= set(bananas_core.__all__)


def test_all_is_sorted_without_duplicates() -> None:
    assert list(bananas_core.__all__) == sorted(set(bananas_core.__all__))
