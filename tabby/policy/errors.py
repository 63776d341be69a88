"""The error type of the policy package."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy input that cannot be used; the message names the field and value."""
