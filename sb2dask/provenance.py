"""Provenance helpers shared by every stage that writes outputs."""

from __future__ import annotations

import sys
import time

__all__ = ["package_versions", "utc_now"]


def package_versions(*names: str) -> dict:
    """Python's version and the installed versions of ``names`` (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("sb2dask", "numpy") + names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def utc_now() -> str:
    """ISO 8601 UTC timestamp, e.g. ``2026-11-21T21:34:35Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
