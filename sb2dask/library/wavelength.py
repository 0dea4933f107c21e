"""Wavelength conventions: vacuum ↔ air conversion and uniform-in-ln(λ) grids.

The air/vacuum conversion is the IAU standard in the form of Morton (2000, ApJS 130, 403,
eq. 8), the same formula VALD and the SDSS pipelines use. It is valid above 2000 Å; all
wavelengths are in Å.
"""

from __future__ import annotations

import numpy as np

from ..constants import C_KMS

__all__ = ["vac_to_air", "air_to_vac", "log_lambda_grid"]

#: Speed of light [km s⁻¹].


def _refractive_index_minus_one(wave_vac: np.ndarray) -> np.ndarray:
    """n - 1 of standard air at vacuum wavelength ``wave_vac`` [Å] (Morton 2000, eq. 8)."""
    s2 = (1e4 / wave_vac) ** 2
    return 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vac_to_air(wave_vac: float | np.ndarray) -> np.ndarray:
    """Air wavelength of a vacuum wavelength.

    Parameters
    ----------
    wave_vac : float or array_like
        Vacuum wavelength [Å], any shape, > 2000 Å.

    Returns
    -------
    numpy.ndarray
        Air wavelength [Å], same shape (a 0-d array for a scalar input).

    Examples
    --------
    >>> round(float(vac_to_air(8544.44)), 2)
    8542.09
    """
    wave_vac = np.asarray(wave_vac, dtype=np.float64)
    return wave_vac / (1.0 + _refractive_index_minus_one(wave_vac))


def air_to_vac(wave_air: float | np.ndarray) -> np.ndarray:
    """Vacuum wavelength of an air wavelength, the exact inverse of :func:`vac_to_air`.

    The refractive index is a function of the vacuum wavelength, so the inverse is found by
    fixed-point iteration ``λ_vac = λ_air · n(λ_vac)``; ``dn/dλ`` is ~1e-8 per Å, so each step
    gains about eight digits and three steps reach float64 precision.

    Parameters
    ----------
    wave_air : float or array_like
        Air wavelength [Å], any shape, > 2000 Å.

    Returns
    -------
    numpy.ndarray
        Vacuum wavelength [Å], same shape.
    """
    wave_air = np.asarray(wave_air, dtype=np.float64)
    wave_vac = wave_air * (1.0 + _refractive_index_minus_one(wave_air))
    for _ in range(3):
        wave_vac = wave_air * (1.0 + _refractive_index_minus_one(wave_vac))
    return wave_vac


def log_lambda_grid(wmin: float, wmax: float, dv_kms: float) -> np.ndarray:
    """Wavelength grid uniform in ln(λ), one pixel per ``dv_kms`` of Doppler velocity.

    Parameters
    ----------
    wmin, wmax : float
        First pixel [Å] and the wavelength the grid must reach [Å]; the last pixel is the first
        one at or beyond ``wmax`` (to within 1e-9 of a step), so the grid covers the interval.
    dv_kms : float
        Velocity step [km s⁻¹]; the step in ln(λ) is ``dv_kms / C_KMS``.

    Returns
    -------
    numpy.ndarray
        ``wmin · exp(i · dv_kms / C_KMS)``, shape ``(n_pix,)``, Å.
    """
    if not (0 < wmin < wmax):
        raise ValueError(f"log_lambda_grid needs 0 < wmin < wmax, got wmin={wmin}, wmax={wmax}")
    if not dv_kms > 0:
        raise ValueError(f"log_lambda_grid needs dv_kms > 0, got {dv_kms}")
    step = dv_kms / C_KMS
    n = int(np.ceil(np.log(wmax / wmin) / step - 1e-9)) + 1
    return wmin * np.exp(step * np.arange(n))
