"""Fit-based evidence for SB2 claims: single- and two-star forward-model fits of each spectrum,
component radial velocities, Δχ² / ΔBIC and a combined class (issue 12; docs/evidence.md).

:mod:`.model` is the differentiable, batched forward model (the simulator's Fourier-space
renderer in torch), :mod:`.scan` the coarse correlation scan that starts the RVs, and :mod:`.fit`
the batched fits, the partition-level core :func:`~.fit.fit_partition` and the information
limit :func:`~.fit.cramer_rao_bounds`.
"""

from __future__ import annotations

from .fit import (
    CRB_PARAMETERS,
    FIT_COLUMNS,
    EvidenceFlag,
    FitConfig,
    classify,
    cramer_rao_bounds,
    evidence_flags,
    fit_partition,
    fit_spectra,
)
from .model import ForwardModel

__all__ = ["CRB_PARAMETERS", "FIT_COLUMNS", "EvidenceFlag", "FitConfig", "ForwardModel",
           "classify", "cramer_rao_bounds", "evidence_flags", "fit_partition", "fit_spectra"]
