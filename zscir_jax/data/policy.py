"""The one raise-or-skip rule for bad input (a malformed record, a missing or undecodable image).

``"raise"``: the error propagates, its message naming the file and the record. ``"skip"``: the item is dropped and
the skip handed to a counter, never silently. The triplet readers (``on_error``), the Grain transforms
(``on_error``) and the benchmark readers (``on_missing``) all decide through it.
"""
from __future__ import annotations

from typing import Callable

POLICIES = ("raise", "skip")


def check(policy: str, name: str = "on_error") -> str:
    if policy not in POLICIES:
        raise ValueError(f"{name} must be one of {POLICIES}, got {policy!r}")
    return policy


def raise_or_skip(policy: str, error: Exception, count: Callable[[str], None]) -> None:
    """Raise ``error`` under "raise"; under "skip" pass its message to ``count`` and return."""
    if policy == "raise":
        raise error
    count(str(error))
