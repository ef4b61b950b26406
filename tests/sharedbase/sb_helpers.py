"""Helpers shared by the SharedBase tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import hashlib


def obj_id(n: int | str) -> bytes:
    """A deterministic 32-byte obj_id."""
    return hashlib.sha256(str(n).encode()).digest()
