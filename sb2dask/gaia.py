"""Facts about the Gaia RVS data products that more than one stage uses: the published pixel grids
and the HEALPix index inside source identifiers.

DR3 mean spectra are published on a vacuum grid in nm, 846-870 nm in steps of 0.01 nm, 2401 pixels
(Gaia DR3 documentation, datamodel section 20.12.1 ``rvs_mean_spectrum``; the medium was checked
on real spectra, see :mod:`sb2dask.infer.readers.base`). DR4 epoch spectra (``rvs_epoch_spectrum``,
one per transit) use 961 pixels, ``846.0 + 0.025·i`` nm in vacuum, in the solar barycentric frame
(DR4 pre-release data model, as quoted in issue 11; to be verified on release). sb2dask works in
air Å, so :data:`RVS_WAVE` and :data:`RVS_DR4_WAVE` are those grids converted with
:func:`sb2dask.library.wavelength.vac_to_air`.
"""

from __future__ import annotations

import numpy as np

from .library.wavelength import vac_to_air

__all__ = ["RVS_N_PIX", "RVS_WAVE_START_NM", "RVS_WAVE_END_NM", "RVS_WAVE_STEP_NM",
           "RVS_WAVE_VAC_NM", "RVS_WAVE", "RVS_DR4_N_PIX", "RVS_DR4_WAVE_VAC_NM", "RVS_DR4_WAVE",
           "median_normalise", "HEALPIX_LEVEL8_SHIFT", "N_HEALPIX_LEVEL8"]

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

#: Gaia DR4 epoch-spectrum grid: 961 pixels, 846.0 + 0.025·i nm (846-870 nm), vacuum.
RVS_DR4_N_PIX = 961
# Rounded to three decimals: the published values, free of the float error of 0.025·i.
RVS_DR4_WAVE_VAC_NM = np.round(RVS_WAVE_START_NM + 0.025 * np.arange(RVS_DR4_N_PIX), 3)
#: The DR4 grid in air [Å].
RVS_DR4_WAVE = vac_to_air(RVS_DR4_WAVE_VAC_NM * 10.0)
RVS_DR4_WAVE_VAC_NM.setflags(write=False)
RVS_DR4_WAVE.setflags(write=False)


def median_normalise(flux: np.ndarray, error: np.ndarray | None = None):
    """DR4 ``normalisation_method`` 3: flux (and error) divided by the median of the combined
    spectrum, per row, ignoring missing pixels.

    DPAC median-normalises transits of faint (G_RVS > 12) and very cool stars instead of fitting a
    pseudo-continuum, so their continuum sits above 1 by the lines' share of the spectrum. The
    simulator applies this to the spectra it draws for that path; a reader renormalising raw-flux
    transits (method 0) the same way gives the networks what they were trained on.

    Parameters
    ----------
    flux : ndarray, shape (n, n_pix) or (n_pix,)
    error : ndarray of the same shape, optional

    Returns
    -------
    flux, or (flux, error) when ``error`` is given; rows whose median is not positive and finite
    are returned unchanged (DR4 keeps them as method 4, not normalised).
    """
    import warnings

    f = np.asarray(flux, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: left unchanged
        med = np.nanmedian(f, axis=-1, keepdims=True)
    med = np.where(np.isfinite(med) & (med > 0), med, 1.0)
    if error is None:
        return f / med
    return f / med, np.asarray(error, dtype=np.float64) / med

#: ``source_id >> 43`` is the HEALPix level-8 (nested) index of a Gaia source; bulk files are
#: split by it.
HEALPIX_LEVEL8_SHIFT = 43
#: Number of HEALPix level-8 pixels on the sky (12 · 4⁸).
N_HEALPIX_LEVEL8 = 12 * 4 ** 8
