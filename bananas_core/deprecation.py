"""Deprecation warnings that name the bananas version in which a feature goes away."""

from __future__ import annotations

import warnings


class BananasDeprecationWarning(DeprecationWarning):
    """Warned when a plugin or caller uses a feature that a later bananas version removes."""


def deprecation(subject: str, *, removal: str, instead: str | None = None) -> BananasDeprecationWarning:
    """Build the warning for a deprecated ``subject``, naming the version of its removal.

    Pass it to a hook spec as ``@hookspec(warn_on_impl=deprecation(...))``, or per argument in
    ``warn_on_impl_args``: pluggy then warns when a plugin that implements the hook is
    registered, pointing at the implementation.
    """
    message = f"{subject} is deprecated and will be removed in bananas {removal}"
    if instead:
        message += f"; use {instead} instead"
    return BananasDeprecationWarning(message)


def warn_deprecated(subject: str, *, removal: str, instead: str | None = None, stacklevel: int = 2) -> None:
    """Warn that ``subject`` is deprecated and goes away in bananas ``removal``.

    ``stacklevel=2`` points the warning at the caller of the function that calls this.
    """
    warnings.warn(deprecation(subject, removal=removal, instead=instead), stacklevel=stacklevel + 1)
