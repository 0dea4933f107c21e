"""Bit flags of the inference outputs: ``flag_boundary`` (defined here) and ``quality_flags``
(:class:`sb2dask.observe.flags.QualityFlag`, re-exported)."""

from __future__ import annotations

from enum import IntFlag

# preprocessing owns the quality flags; they are part of the inference outputs too
from ..observe.flags import UNUSABLE, QualityFlag

__all__ = ["QualityFlag", "BoundaryFlag", "UNUSABLE"]


class BoundaryFlag(IntFlag):
    """Reasons to treat a prediction with caution (``flag_boundary``), after the training-boundary
    flag of Guiglion et al. (2024)."""

    TEFF_EDGE = 1  #: a predicted Teff within 2 % of the training range's edge, or beyond it
    LOGG_EDGE = 2  #: a predicted logg at/beyond the library's coverage at that Teff
    FEH_EDGE = 4  #: a predicted [Fe/H] at/beyond the training range's edges
    VSINI_EDGE = 8  #: a predicted v sin i at/beyond the training range's edges
    LOW_SNR = 16  #: estimated S/N below the training set's minimum
    TRAINING_UNLIKE = 32  #: features far from the training set (ood_distance > 1)
    LARGE_SPREAD = 64  #: ensemble spread above 3x the validation RMSE
    LIKELY_SINGLE = 128  #: p_binary < 0.5: the SB2 parameters are probably meaningless
    NO_LINES = 256  #: no stellar absorption lines detected (ccf_peak below noise level)
