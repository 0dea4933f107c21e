"""Gaia DR4 epoch spectra as DPAC makes them: CCD spectra combined onto the survey grid.

A DR4 epoch spectrum (one transit) is the average of up to three CCD spectra (``combined_ccds``),
each sampled at ~0.0245 nm per CCD pixel at its own pixel phase. DPAC interpolates the flux *and
the squared error* of each CCD spectrum linearly onto the 961-pixel 0.025 nm grid and averages
them (DR4 pre-release data model, issue 11). This module does the same with simulated CCD spectra:
white noise is drawn per CCD sample, so the noise on the grid is what the interpolation makes of
it, and the quoted error is computed the way DPAC computes it.

What that does to the noise, for a grid pixel at fractional position ``t`` between two samples of
a CCD with per-sample σ: the interpolated noise has variance ``((1 - t)² + t²)·σ²`` (between σ²/2
and σ²; 2/3 σ² on average), while the interpolated squared error stays σ². So

- the quoted ``flux_error`` is *larger* than the true per-pixel scatter, by ``sqrt(N / A)`` with
  ``A`` the sum over the N CCDs of ``(1 - t)² + t²`` averaged over the grid (≈ 1.22 for uniform
  phases: :func:`quoted_to_true_sigma`);
- neighbouring pixels share samples, so their noise is positively correlated (lag-1 correlation
  ≈ 0.25), and what the errors do not say is that correlation: the scatter of a sum over several
  pixels is larger than the per-pixel scatter and independence would give (over ≳ 5 pixels the
  quoted errors describe it again, within a few per cent).

The simulated S/N (label ``snr``) is the true per-pixel continuum S/N of the combined spectrum on
the output grid: the per-sample σ is set from the drawn phases so that the grid-averaged true
variance of the continuum is 1/snr² exactly (:func:`continuum_sample_sigma`). The S/N a user would
compute from the quoted errors (median flux / flux_error) is lower by the factor above.

The S/N of a transit follows G_RVS (:data:`SNR_PER_TRANSIT`): a training set that looks like the
DR4 SB2 candidates draws G_RVS from a power law in flux and the S/N from it
(:func:`draw_grvs_snr`). Pure numpy: the renderer (:mod:`.spectra`) calls these functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_CCDS", "SNR_PER_TRANSIT", "snr_per_transit", "draw_grvs_snr", "n_samples",
           "sample_positions", "grid_weights", "to_grid", "continuum_sample_sigma",
           "quoted_to_true_sigma", "combine_transit"]

#: A transit crosses at most three RVS CCDs.
MAX_CCDS = 3

#: Expected S/N per transit at G_RVS (DR4 pre-release, as quoted in issue 11): (G_RVS, S/N).
SNR_PER_TRANSIT = ((6.0, 133.0), (8.0, 52.0), (10.0, 18.0), (12.0, 4.6))


def snr_per_transit(grvs) -> np.ndarray:
    """Expected S/N of a three-CCD transit at ``grvs`` [mag]: log-linear interpolation of
    :data:`SNR_PER_TRANSIT`, extrapolated along the end segments."""
    g = np.asarray(SNR_PER_TRANSIT)[:, 0]
    lg = np.log10(np.asarray(SNR_PER_TRANSIT)[:, 1])
    x = np.asarray(grvs, dtype=np.float64)
    inner = np.interp(x, g, lg)
    lo = lg[0] + (x - g[0]) * (lg[1] - lg[0]) / (g[1] - g[0])
    hi = lg[-1] + (x - g[-1]) * (lg[-1] - lg[-2]) / (g[-1] - g[-2])
    return 10.0 ** np.where(x < g[0], lo, np.where(x > g[-1], hi, inner))


def draw_grvs_snr(rng: np.random.Generator, grvs_range: tuple, slope: float, scatter: float,
                  n_ccd: int, snr_range: tuple, max_tries: int = 1000) -> tuple[float, float]:
    """One transit's (G_RVS, S/N).

    G_RVS is drawn with dN/dG ∝ 10^(slope·G) inside ``grvs_range`` (slope 0: uniform); the S/N is
    :func:`snr_per_transit` scaled by sqrt(n_ccd / 3) (fewer CCDs, fewer photons) and by a
    log-normal scatter of ``scatter`` dex (scan direction, crowding, window truncation). Draws whose
    S/N falls outside ``snr_range`` are redrawn, so the magnitudes are those of transits *at* that
    S/N.
    """
    lo, hi = grvs_range
    for _ in range(max_tries):
        u = rng.random()
        if slope == 0 or hi == lo:
            g = lo + u * (hi - lo)
        else:  # inverse CDF of the exponential density on [lo, hi]
            k = slope * np.log(10.0)
            g = lo + np.log1p(u * np.expm1(k * (hi - lo))) / k
        snr = float(snr_per_transit(g)) * np.sqrt(n_ccd / MAX_CCDS)
        snr *= 10.0 ** (scatter * rng.standard_normal()) if scatter > 0 else 1.0
        if snr_range[0] <= snr <= snr_range[1]:
            return float(g), float(snr)
    raise ValueError(f"no G_RVS in {grvs_range} gives an S/N in {snr_range}")


def n_samples(ratio: float, n_out: int) -> int:
    """CCD samples per CCD that cover an ``n_out``-pixel grid with one sample to spare at each
    end; ``ratio`` is the CCD pixel over the grid step."""
    return int(np.ceil((n_out - 1) / ratio)) + 3


def sample_positions(phase: np.ndarray, ratio: float, n_out: int) -> np.ndarray:
    """Positions of the CCD samples in output-pixel units: sample ``j`` of a CCD with ``phase``
    (in CCD pixels, [0, 1)) sits at ``(j - 1 + phase)·ratio``; shape ``phase.shape + (n_s,)``."""
    j = np.arange(n_samples(ratio, n_out), dtype=np.float64)
    return (j - 1.0 + np.asarray(phase, dtype=np.float64)[..., None]) * ratio


def grid_weights(phase: np.ndarray, ratio: float, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from each CCD's samples onto the grid: for grid pixel ``i`` the lower
    sample ``j`` and the weight ``t`` of sample ``j + 1``, each of shape ``phase.shape +
    (n_out,)``."""
    phase = np.nan_to_num(np.asarray(phase, np.float64))  # an unused CCD may carry NaN
    q = np.arange(n_out, dtype=np.float64) / ratio + 1.0 - phase[..., None]
    j = np.floor(q).astype(np.int64)
    return j, q - j


def to_grid(values: np.ndarray, phase: np.ndarray, ratio: float, n_out: int) -> np.ndarray:
    """Each CCD's samples ``values`` (..., n_s) interpolated linearly onto the grid (..., n_out)."""
    j, t = grid_weights(phase, ratio, n_out)
    lo = np.take_along_axis(values, j, axis=-1)
    hi = np.take_along_axis(values, j + 1, axis=-1)
    return (1.0 - t) * lo + t * hi


def _used(n_ccd: np.ndarray, k: int) -> np.ndarray:
    """(n, k) True for the CCDs a transit combines (the first ``n_ccd``)."""
    return np.arange(k)[None, :] < np.asarray(n_ccd)[:, None]


def continuum_sample_sigma(phase: np.ndarray, n_ccd: np.ndarray, ratio: float, n_out: int,
                           snr) -> np.ndarray:
    """Per-sample σ (n,) at continuum flux 1 for which the combined spectrum's true per-pixel
    variance, averaged over the grid, is 1/snr²: σ = N / (snr·sqrt(A)) with A the grid mean of
    Σ_k ((1 - t_k)² + t_k²) over the N combined CCDs."""
    n_ccd = np.asarray(n_ccd)
    _, t = grid_weights(phase, ratio, n_out)
    a = (((1.0 - t) ** 2 + t ** 2) * _used(n_ccd, t.shape[1])[..., None]).sum(axis=1).mean(-1)
    return n_ccd / (np.asarray(snr, np.float64) * np.sqrt(a))


def quoted_to_true_sigma(phase: np.ndarray, n_ccd: np.ndarray, ratio: float,
                         n_out: int) -> np.ndarray:
    """Ratio (n,) of the quoted continuum error to the true per-pixel continuum σ (grid r.m.s.)
    of combined spectra: sqrt(N / A) (see :func:`continuum_sample_sigma`); 1 for a grid that
    coincides with the samples, √2 at most."""
    n_ccd = np.asarray(n_ccd)
    s = continuum_sample_sigma(phase, n_ccd, ratio, n_out, 1.0)
    return s / np.sqrt(n_ccd)


def combine_transit(samples: np.ndarray, sigma: np.ndarray, white: np.ndarray | None,
                    phase: np.ndarray, n_ccd: np.ndarray, ratio: float,
                    n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A transit's epoch spectrum and its quoted error, as DPAC combines CCD spectra.

    Parameters
    ----------
    samples : ndarray, shape (n, k, n_s)
        Noise-free flux of each CCD at its samples (:func:`sample_positions`); k ≥ max(n_ccd).
    sigma : ndarray, shape (n, k, n_s)
        Noise σ of each sample.
    white : ndarray, shape (n, k, n_s), or None
        Standard-normal deviates; None gives the noise-free combination.
    phase : ndarray, shape (n, k)
        Pixel phase of each CCD in CCD pixels, [0, 1).
    n_ccd : ndarray, shape (n,)
        CCDs combined (the first ``n_ccd`` of the k), 1 to k.
    ratio : float
        CCD pixel / grid step.
    n_out : int
        Grid pixels.

    Returns
    -------
    flux : ndarray, shape (n, n_out)
        Mean over the combined CCDs of each CCD's noisy samples interpolated onto the grid.
    flux_error : ndarray, shape (n, n_out)
        sqrt(mean of the interpolated squared errors / N): the error of a mean of N independent
        spectra, from squared errors interpolated like the flux (not propagated through the
        interpolation weights, so it ignores what the interpolation does to the noise).
    """
    n_ccd = np.asarray(n_ccd)
    used = _used(n_ccd, samples.shape[1])[..., None]
    obs = samples if white is None else samples + sigma * white
    flux = (to_grid(obs, phase, ratio, n_out) * used).sum(axis=1) / n_ccd[:, None]
    var = (to_grid(sigma ** 2, phase, ratio, n_out) * used).sum(axis=1) / n_ccd[:, None] ** 2
    return flux, np.sqrt(var)
