"""Pseudo-continuum of absorption spectra by asymmetric sigma clipping of a low-order polynomial.

Why this method: in the ~300 Å around the Gaia RVS window the true continuum of a model
spectrum is smooth (a blackbody-like slope and curvature), but up to a third of the pixels sit
in the broad wings of the Ca II triplet or, in hot stars, the Paschen series. A polynomial fit
that repeatedly discards pixels lying well *below* it (``low_sigma`` = 1) but keeps all but
extreme outliers *above* it (``high_sigma`` = 3) climbs out of the lines onto the upper envelope
within a few iterations. The scatter ``σ`` that sets these thresholds is the RMS of the
*positive* residuals of the kept pixels, because absorption lines only ever produce negative
ones. A running maximum was not chosen: on observed spectra it rides on the noise peaks.

Noise needs one more guard: clipping an unbiased noise distribution at -1σ but +3σ lifts the fit
by about σ (1 % at S/N = 100). So for noisy spectra the lower threshold is never tighter than
``noise_floor`` times the pixel noise, estimated robustly from pixel-to-pixel differences (lines
are resolved, noise is not). Noiseless model spectra pass ``noise_floor=0``, which keeps the fit
on the envelope instead of letting sharp unresolved lines pass for noise.

A Legendre basis on the wavelength range mapped to [-1, 1] keeps the normal equations well
conditioned, and all spectra of a 2-D array are solved at once as a stack of small weighted
least-squares problems.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["pseudo_continuum"]


def pseudo_continuum(wave: np.ndarray, flux: np.ndarray, *, degree: int = 3,
                     low_sigma: float = 1.0, high_sigma: float = 3.0, max_iter: int = 30,
                     min_fraction: float = 0.05, noise_floor: float = 2.0) -> np.ndarray:
    """Upper-envelope pseudo-continuum of one or many spectra.

    Parameters
    ----------
    wave : array_like, shape ``(n_pix,)``
        Wavelength [Å] shared by all spectra; any monotonic grid.
    flux : array_like, shape ``(n_pix,)`` or ``(n_spectra, n_pix)``
        Flux in any units. NaN or infinite pixels are ignored by the fit.
    degree : int
        Degree of the Legendre polynomial (3 suits windows of a few hundred Å).
    low_sigma, high_sigma : float
        Pixels more than ``low_sigma`` standard deviations below, or ``high_sigma`` above, the
        current fit are excluded from the next fit; the standard deviation is the RMS of the
        positive residuals of the pixels kept.
    max_iter : int
        Maximum number of clipping iterations; a spectrum stops early once its kept set no
        longer changes.
    min_fraction : float
        A spectrum never keeps fewer than this fraction of its finite pixels (nor fewer than
        ``degree + 2``): an iteration that would go below keeps its previous set, so a
        noiseless spectrum cannot collapse onto a handful of pixels.
    noise_floor : float
        Pixels are rejected below the fit only if they also lie more than ``noise_floor`` times
        the pixel noise below it (and above it only beyond ``high_sigma`` times the noise), the
        noise being 1.4826 · MAD of the pixel-to-pixel differences / √2. Use 2 for observed
        spectra (bias ≲ 0.1 σ from noise alone) and 0 for noiseless model spectra.

    Returns
    -------
    numpy.ndarray
        The continuum, same shape and units as ``flux``, evaluated at every pixel (NaN pixels
        included). A spectrum with too few finite pixels to fit gets an all-NaN continuum.
    """
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    one_d = flux.ndim == 1
    flux2 = np.atleast_2d(flux)
    if flux2.ndim != 2 or wave.ndim != 1 or flux2.shape[1] != wave.size:
        raise ValueError(f"pseudo_continuum needs wave (n_pix,) and flux (n_pix,) or "
                         f"(n_spectra, n_pix) with the same n_pix; got wave {wave.shape}, "
                         f"flux {flux.shape}")
    if degree < 0:
        raise ValueError(f"pseudo_continuum needs degree >= 0, got {degree}")

    finite = np.isfinite(flux2)
    with warnings.catch_warnings():
        # All-NaN spectra are allowed (they get an all-NaN continuum): silence nanmedian on them.
        warnings.simplefilter("ignore", RuntimeWarning)
        # Scale each spectrum to order unity so that the ridge term does not depend on units.
        scale = np.nanmedian(np.where(finite, np.abs(flux2), np.nan), axis=1, keepdims=True)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        y = np.where(finite, flux2, np.nan) / scale
        if noise_floor > 0:
            diff = np.diff(y, axis=1)
            mad = np.nanmedian(np.abs(diff - np.nanmedian(diff, axis=1, keepdims=True)), axis=1)
            noise = np.nan_to_num(1.4826 / np.sqrt(2.0) * mad)[:, None]
        else:
            noise = np.zeros((y.shape[0], 1))
    y = np.where(finite, y, 0.0)

    lo, hi = wave.min(), wave.max()
    x = (2.0 * wave - (lo + hi)) / (hi - lo) if hi > lo else np.zeros_like(wave)
    basis = np.polynomial.legendre.legvander(x, degree)          # (n_pix, degree + 1)

    n_finite = finite.sum(axis=1)
    min_keep = np.maximum(degree + 2, np.ceil(min_fraction * n_finite)).astype(int)
    fittable = n_finite >= degree + 2
    keep = finite & fittable[:, None]
    active = fittable.copy()
    coef = np.zeros((y.shape[0], degree + 1))
    ridge = 1e-12 * np.eye(degree + 1)
    for iteration in range(max_iter + 1):
        w = keep.astype(np.float64)
        ata = np.einsum("sp,pi,pj->sij", w, basis, basis) + ridge
        atb = np.einsum("sp,pi->si", w * y, basis)
        coef = np.where(active[:, None], np.linalg.solve(ata, atb[..., None])[..., 0], coef)
        if iteration == max_iter:
            break
        resid = y - coef @ basis.T
        up = keep & (resid > 0)
        sigma = np.sqrt((up * resid ** 2).sum(axis=1) / np.maximum(up.sum(axis=1), 1))[:, None]
        new = (finite & (resid > -np.maximum(low_sigma * sigma, noise_floor * noise))
               & (resid < high_sigma * np.maximum(sigma, noise)))
        # A spectrum whose kept set is stable, or would shrink below min_keep, is finished: the
        # solve above already used its final set.
        active &= (new.sum(axis=1) >= min_keep) & (new != keep).any(axis=1)
        if not active.any():
            break
        keep = np.where(active[:, None], new, keep)
    cont = (coef @ basis.T) * scale
    cont[~fittable] = np.nan
    return cont[0] if one_d else cont
