"""Fit-based evidence for SB2 claims: single- and two-star forward-model fits of each spectrum,
component radial velocities, Δχ² / ΔBIC and a combined class (issue 12; docs/evidence.md).

:mod:`.model` is the differentiable, batched forward model (the simulator's Fourier-space
renderer in torch), :mod:`.scan` the coarse correlation scan that starts the RVs, and :mod:`.fit`
the batched fits and the partition-level core :func:`~.fit.fit_partition`.
"""

from __future__ import annotations

from .fit import (
    FIT_COLUMNS,
    EvidenceFlag,
    FitConfig,
    classify,
    evidence_flags,
    fit_partition,
    fit_spectra,
)
from .model import ForwardModel

__all__ = ["FIT_COLUMNS", "EvidenceFlag", "FitConfig", "ForwardModel", "classify",
           "evidence_flags", "fit_partition", "fit_spectra"]
