"""The one way benchmarks record their figures: ``results/NAME.json`` with the machine and time."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from sb2dask.provenance import utc_now

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, machine: dict | None = None, **figures) -> Path:
    """Write ``figures`` to ``results/NAME.json`` beside the machine description (platform, CPU
    count, Python, plus ``machine``) and a UTC timestamp; print and return the path."""
    record = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                               python=sys.version.split()[0], **(machine or {})),
                  time=utc_now(), **figures)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out}")
    return out
