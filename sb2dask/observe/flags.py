"""Bit flags of what preprocessing found in a spectrum (the ``quality_flags`` output column)."""

from __future__ import annotations

from enum import IntFlag

__all__ = ["QualityFlag", "UNUSABLE"]


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
