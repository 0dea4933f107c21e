"""Shared pytest plumbing: the fault-injection summary table printed at the end of a session."""

from __future__ import annotations

import pytest

_FAULTS: list[dict] = []


@pytest.fixture
def fault_log() -> list[dict]:
    """Tests append what they injected and what came out; printed by the terminal summary."""
    return _FAULTS


def pytest_terminal_summary(terminalreporter):
    if not _FAULTS:
        return
    tr = terminalreporter
    tr.section("fault injection summary")
    cols = ("test", "fault", "completed", "rows_in", "rows_out", "recomputed")
    tr.write_line(" | ".join(cols))
    for r in _FAULTS:
        tr.write_line(" | ".join(str(r.get(c, "")) for c in cols))
    tr.write_line(f"{len(_FAULTS)} faults injected")
