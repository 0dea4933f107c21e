"""Bit flags of the inference outputs (``quality_flags`` and ``flag_boundary`` columns)."""

from __future__ import annotations

from enum import IntFlag

__all__ = ["QualityFlag", "BoundaryFlag", "UNUSABLE"]


class QualityFlag(IntFlag):
    """Spectrum-level problems found in preprocessing (``quality_flags``)."""

    ALL_NULL = 1  #: no finite flux at all
    NAN_FILLED = 2  #: some null/NaN/inf pixels were replaced by the Q3 of the continuum
    TOO_MANY_NAN = 4  #: more than the allowed fraction of pixels missing: unusable
    NEGATIVE_FLUX = 8  #: flux below -0.05 (beyond noise) in the model window
    NOT_NORMALISED = 16  #: continuum-region median differs from 1 by more than 0.1
    WAVE_COVERAGE = 32  #: input wavelengths do not cover the model grid: unusable
    WAVE_UNSORTED = 64  #: input wavelengths not increasing (sorted before resampling)
    WAVE_MISMATCH = 128  #: flux and wavelength arrays differ in length: unusable
    READ_PROBLEM = 256  #: the reader flagged the row (see read_flags)


#: Flags that make a spectrum unusable (its parameters are NaN).
UNUSABLE = (QualityFlag.ALL_NULL | QualityFlag.TOO_MANY_NAN | QualityFlag.WAVE_COVERAGE
            | QualityFlag.WAVE_MISMATCH)


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
