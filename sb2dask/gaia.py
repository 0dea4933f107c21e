"""Facts about the Gaia RVS data products that more than one stage uses: the published pixel grids
(DR3 mean spectra, DR4 epoch spectra), the DR4 epoch-spectrum conventions, and the HEALPix index
inside source identifiers.

DR3 mean spectra are published on a vacuum grid in nm, 846-870 nm in steps of 0.01 nm, 2401 pixels
(Gaia DR3 documentation, datamodel section 20.12.1 ``rvs_mean_spectrum``; the medium was checked
on real spectra, see :mod:`sb2dask.infer.readers.base`). DR4 epoch spectra (``rvs_epoch_spectrum``,
one per transit) use 961 pixels, ``846.0 + 0.025·i`` nm in vacuum, in the solar barycentric frame
(DR4 pre-release data model, as quoted in issue 11; to be verified on release). sb2dask works in
air Å, so :data:`RVS_WAVE` and :data:`DR4_EPOCH_WAVE` are those grids converted with
:func:`sb2dask.library.wavelength.vac_to_air`.
"""

from __future__ import annotations

import numpy as np

from .library.wavelength import vac_to_air

__all__ = ["RVS_N_PIX", "RVS_WAVE_START_NM", "RVS_WAVE_END_NM", "RVS_WAVE_STEP_NM",
           "RVS_WAVE_VAC_NM", "RVS_WAVE", "HEALPIX_LEVEL8_SHIFT", "N_HEALPIX_LEVEL8",
           "DR4_EPOCH_N_PIX", "DR4_EPOCH_WAVE_STEP_NM", "DR4_EPOCH_WAVE_VAC_NM", "DR4_EPOCH_WAVE",
           "OBS_TIME_RV_ZERO_BJD", "OBS_TIME_RV_UNIT", "DR4_NORMALISATION_METHODS",
           "FRAME_REST", "FRAME_BARYCENTRIC", "FRAME_UNKNOWN", "FRAMES", "gaia_grid",
           "RVS_RESOLVING_POWER",
           "median_normalise"]

#: Nominal resolving power of Gaia RVS, as the paper simulates it (the per-CCD values measured on
#: real spectra range 10 983-12 587, mean ≈ 11 900; the realistic recipe draws R per spectrum).
RVS_RESOLVING_POWER = 11_500.0

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

#: Gaia DR4 RVS epoch spectra (``rvs_epoch_spectrum``, DataLink ``EPOCH_SPECTRUM_RVS``; pre-release
#: data model, to be checked on release): 961 pixels, ``846.0 + 0.025 i`` nm, vacuum, in the solar
#: barycentric frame. Fluxes and squared errors of the CCD spectra of a transit are linearly
#: interpolated onto this grid and averaged, so neighbouring pixels are correlated.
DR4_EPOCH_N_PIX = 961
DR4_EPOCH_WAVE_STEP_NM = 0.025
# Rounded to three decimals, the precision of the grid's definition.
DR4_EPOCH_WAVE_VAC_NM = np.round(RVS_WAVE_START_NM + DR4_EPOCH_WAVE_STEP_NM
                                 * np.arange(DR4_EPOCH_N_PIX), 3)
#: The DR4 epoch grid in air [Å] (one shared object, like :data:`RVS_WAVE`).
DR4_EPOCH_WAVE = vac_to_air(DR4_EPOCH_WAVE_VAC_NM * 10.0)
DR4_EPOCH_WAVE_VAC_NM.setflags(write=False)
DR4_EPOCH_WAVE.setflags(write=False)

#: ``obs_time_rv`` of DR4 epoch products is BJD(TCB) − 2455197.5 d (Gaia's time origin,
#: 2010-01-01T00:00:00 TCB at the solar-system barycentre).
OBS_TIME_RV_ZERO_BJD = 2455197.5
OBS_TIME_RV_UNIT = "d"

#: ``normalisation_method`` of DR4 epoch spectra (pre-release data model): what each code
#: means. Codes outside this table are kept and flagged by the readers
#: (``ReadFlag.UNKNOWN_NORMALISATION``).
DR4_NORMALISATION_METHODS = {
    0: "double-lined transit: not normalised (raw flux scale)",
    3: "flux and flux_error divided by the median of the combined spectrum",
    4: "negative median: not normalised, poor quality",
}

#: Reference frames of input spectra (the readers' ``frame`` column): the stellar rest frame
#: (DR3 mean spectra, to about a km/s), the solar barycentric frame (DR4 epoch spectra), or not
#: known from the file (inference then follows the models' own frame).
FRAME_REST = "rest"
FRAME_BARYCENTRIC = "barycentric"
FRAME_UNKNOWN = "unknown"
FRAMES = (FRAME_REST, FRAME_BARYCENTRIC, FRAME_UNKNOWN)


def gaia_grid(wave_nm: np.ndarray | None = None, n_pix: int | None = None
              ) -> tuple[np.ndarray, str] | None:
    """The published Gaia RVS grid that wavelengths (or a pixel count) identify.

    Parameters
    ----------
    wave_nm : ndarray, optional
        Vacuum wavelengths [nm] of one spectrum, sorted; matched to within 10⁻⁴ nm (1 % of a
        pixel, 0.04 km/s), so that wavelengths stored as float32 still match.
    n_pix : int, optional
        A pixel count alone (formats without a wavelength column): 2401 is the DR3 mean-spectrum
        grid, 961 the DR4 epoch grid.

    Returns
    -------
    (air grid [Å], frame) or None
        :data:`RVS_WAVE` with :data:`FRAME_REST`, :data:`DR4_EPOCH_WAVE` with
        :data:`FRAME_BARYCENTRIC`; None when neither grid matches.
    """
    grids = ((RVS_WAVE_VAC_NM, RVS_WAVE, FRAME_REST),
             (DR4_EPOCH_WAVE_VAC_NM, DR4_EPOCH_WAVE, FRAME_BARYCENTRIC))
    for vac, air, frame in grids:
        if wave_nm is not None:
            if wave_nm.size == vac.size and np.allclose(wave_nm, vac, rtol=0, atol=1e-4):
                return air, frame
        elif n_pix == vac.size:
            return air, frame
    return None


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
