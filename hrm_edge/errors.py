"""Errors a user can cause. Each carries a one-line message; the CLI prints it and exits non-zero."""

from __future__ import annotations


class HrmEdgeError(Exception):
    """Base class: bad input from the user, reported as one line without a traceback."""


class CheckpointError(HrmEdgeError, ValueError):
    """A checkpoint file, directory or config that cannot be loaded as it is."""


class PolicyError(HrmEdgeError, ValueError):
    """A halting policy string that does not parse."""


class BundleError(HrmEdgeError):
    """A bundle that is missing, tampered with, truncated, malformed or from an unsupported schema."""
