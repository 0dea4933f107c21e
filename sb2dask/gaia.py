"""Facts about the Gaia RVS data products that more than one stage uses: the published pixel grid
and the HEALPix index inside source identifiers.

RVS spectra are published on a vacuum grid in nm, 846-870 nm in steps of 0.01 nm, 2401 pixels
(Gaia DR3 documentation, datamodel section 20.12.1 ``rvs_mean_spectrum``; the medium was checked
on real spectra, see :mod:`sb2dask.infer.readers.base`). sb2dask works in air Å, so
:data:`RVS_WAVE` is that grid converted with :func:`sb2dask.library.wavelength.vac_to_air`.
"""

from __future__ import annotations

import numpy as np

from .library.wavelength import vac_to_air

__all__ = ["RVS_N_PIX", "RVS_WAVE_START_NM", "RVS_WAVE_END_NM", "RVS_WAVE_STEP_NM",
           "RVS_WAVE_VAC_NM", "RVS_WAVE", "HEALPIX_LEVEL8_SHIFT", "N_HEALPIX_LEVEL8"]

#: Gaia RVS grid as published: 846-870 nm in steps of 0.01 nm, vacuum.
RVS_N_PIX = 2401
RVS_WAVE_START_NM = 846.0
RVS_WAVE_END_NM = 870.0
RVS_WAVE_STEP_NM = 0.01
# Rounded to the published two decimals: equal to gaia_rvs_wavelength.fits bit for bit.
RVS_WAVE_VAC_NM = np.round(RVS_WAVE_START_NM + RVS_WAVE_STEP_NM * np.arange(RVS_N_PIX), 2)
#: The Gaia RVS grid in air [Å]: what readers of Gaia products put in ``wave`` (one shared object).
RVS_WAVE = vac_to_air(RVS_WAVE_VAC_NM * 10.0)
RVS_WAVE_VAC_NM.setflags(write=False)
RVS_WAVE.setflags(write=False)

#: ``source_id >> 43`` is the HEALPix level-8 (nested) index of a Gaia source; bulk files are
#: split by it.
HEALPIX_LEVEL8_SHIFT = 43
#: Number of HEALPix level-8 pixels on the sky (12 · 4⁸).
N_HEALPIX_LEVEL8 = 12 * 4 ** 8
