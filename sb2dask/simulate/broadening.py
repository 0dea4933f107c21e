"""Line-profile kernels as Fourier transforms on a uniform ln(λ) (velocity) grid.

On a grid uniform in ``x = c·ln(λ)`` [km/s], rotation, the instrumental profile at constant R and a
Doppler shift are all convolutions with fixed kernels, so the simulator applies them as products of
analytic Fourier transforms (one inverse FFT per spectrum). The rotation kernel is Gray's (2005)
profile with linear limb darkening ε, the same function :func:`PyAstronomy.pyasl.rotBroad` samples:

    G(v) = [2(1-ε)·sqrt(1-u²) + (π ε / 2)·(1-u²)] / [π v_L (1-ε/3)],   u = v / v_L,  v_L = v sin i

whose transform (``a = 2π f v_L``, ``f`` in cycles per km/s) is

    Ĝ(f) = [2(1-ε)·J1(a)/a + 2ε·(sin a - a cos a)/a³] / (1-ε/3),

exactly 1 at v sin i = 0 and smooth in v sin i, so slow rotators need no special case.
"""

from __future__ import annotations

import numpy as np
from scipy.special import j1

from ..constants import C_KMS

__all__ = ["rotation_kernel_ft", "gaussian_lsf_ft", "added_resolution", "doppler_shift_ft",
           "doppler_factor", "rotational_broadening"]


def rotation_kernel_ft(freq: np.ndarray, vsini, epsilon: float = 0.6) -> np.ndarray:
    """Fourier transform of the rotation profile.

    Parameters
    ----------
    freq : ndarray, shape (n_freq,)
        Frequencies [cycles per km/s].
    vsini : float or ndarray, shape (n,)
        Projected rotational velocities [km/s].
    epsilon : float
        Linear limb-darkening coefficient.

    Returns
    -------
    ndarray, shape (n, n_freq) (or (n_freq,) for scalar vsini), real.
    """
    vsini = np.asarray(vsini, dtype=np.float64)
    a = 2.0 * np.pi * np.multiply.outer(vsini, np.asarray(freq, dtype=np.float64))
    small = np.abs(a) < 1e-3
    a_safe = np.where(small, 1.0, a)
    # Series limits for a -> 0: J1(a)/a -> 1/2 - a²/16, (sin a - a cos a)/a³ -> 1/3 - a²/30.
    t1 = np.where(small, 0.5 - a * a / 16.0, j1(a_safe) / a_safe)
    t2 = np.where(small, 1.0 / 3.0 - a * a / 30.0,
                  (np.sin(a_safe) - a_safe * np.cos(a_safe)) / a_safe ** 3)
    return (2.0 * (1.0 - epsilon) * t1 + 2.0 * epsilon * t2) / (1.0 - epsilon / 3.0)


def gaussian_lsf_ft(freq: np.ndarray, resolution: float) -> np.ndarray:
    """Fourier transform of a Gaussian line-spread function of resolving power R = λ/FWHM."""
    sigma = C_KMS / resolution / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return np.exp(-2.0 * (np.pi * sigma * np.asarray(freq)) ** 2)


def added_resolution(resolution, native: float):
    """Resolving power of the Gaussian that brings a spectrum of resolving power ``native`` to
    ``resolution`` (Gaussian widths add in quadrature): ``resolution`` itself for a library
    at infinite resolution, ``inf`` (no kernel) where ``native`` is not above ``resolution``: such
    a spectrum is already as broad or broader and cannot be sharpened. Scalar or array."""
    if not np.isfinite(native):
        return resolution
    target = np.asarray(resolution, dtype=np.float64)
    d = 1.0 / target ** 2 - 1.0 / float(native) ** 2
    out = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), np.inf)
    return float(out) if out.ndim == 0 else out


def doppler_factor(rv) -> np.ndarray:
    """Relativistic Doppler factor λ_obs/λ_rest for radial velocity ``rv`` [km/s]."""
    beta = np.asarray(rv, dtype=np.float64) / C_KMS
    return np.sqrt((1.0 + beta) / (1.0 - beta))


def doppler_shift_ft(freq: np.ndarray, rv) -> np.ndarray:
    """Phase factor that shifts a spectrum on the velocity grid by ``rv`` [km/s], shape
    (n, n_freq)."""
    dx = C_KMS * np.log(doppler_factor(rv))
    return np.exp(-2j * np.pi * np.multiply.outer(dx, np.asarray(freq)))


def rotational_broadening(flux: np.ndarray, dv: float, vsini, epsilon: float = 0.6) -> np.ndarray:
    """Rotationally broaden spectra sampled uniformly in velocity (``dv`` km/s per pixel).

    ``flux`` has shape ``(n_pix,)`` or ``(n, n_pix)`` and is treated as continuum-normalised: the
    line depth ``1 - flux`` is convolved (periodically), so the first and last ``v sin i / dv``
    pixels are affected by wrap-around and should lie in a margin.
    """
    flux = np.asarray(flux, dtype=np.float64)
    n = flux.shape[-1]
    freq = np.fft.rfftfreq(n, d=dv)
    depth = np.fft.rfft(1.0 - flux, axis=-1)
    return 1.0 - np.fft.irfft(depth * rotation_kernel_ft(freq, vsini, epsilon), n=n, axis=-1)
