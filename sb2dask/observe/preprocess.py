"""Pure preprocessing of observed spectra onto a model's pixel grid.

Steps per spectrum: non-finite pixels are treated as missing; the upper quartile (Q3) of the flux in
three continuum regions (8475-8495, 8561-8582, 8627-8648 Å; Guiglion et al. 2024, Sect. 2.1)
replaces them; the spectrum is linearly interpolated onto the model grid (both are sampled at
R ≈ 11 500, so this is point sampling of a well-sampled spectrum, as in the simulator); the
continuum-region median (:func:`continuum_level`) is checked against 1 (Gaia RVS spectra are
delivered normalised; the one exception, DR4 epoch spectra of double-lined transits on their raw
flux scale, is divided by that same level when read: :func:`normalise_to_continuum`); and an S/N
estimate is taken from the flux errors. Problems are recorded as :class:`QualityFlag` bits, and
every input row yields an output row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flags import UNUSABLE, QualityFlag

__all__ = ["CONTINUUM_REGIONS", "Preprocessed", "preprocess", "continuum_level",
           "normalise_to_continuum"]

#: Continuum regions [Å] of Guiglion et al. (2024) used for the Q3 fill and the normalisation check.
CONTINUUM_REGIONS = ((8475.0, 8495.0), (8561.0, 8582.0), (8627.0, 8648.0))


@dataclass(frozen=True)
class Preprocessed:
    """Spectra on the model grid and what was found on the way."""

    flux: np.ndarray  # float32 (n, n_model); rows of unusable spectra are filled with 1.0
    quality_flags: np.ndarray  # int32 (n,)
    nan_fraction: np.ndarray  # float32 (n,)
    snr_estimate: np.ndarray  # float32 (n,)
    #: float32 (n, n_model), with ``preprocess(carry_errors=True)`` (else None): the input
    #: errors carried to the model grid through the same linear interpolation (σ = (1−t) σ₀ +
    #: t σ₁: correlated neighbours, see ``_one_grid``); NaN where the pixel was filled (a
    #: missing input pixel, off the observed grid after a shift) or its error is not positive,
    #: for unusable rows and where the input had no errors. The evidence fits weight by it (a
    #: filled pixel is no data).
    flux_error: np.ndarray | None = None
    #: bool (n, n_model): pixels filled rather than measured (interpolated from a missing input
    #: pixel, or off the observed grid after a shift); all True for unusable rows. The bulk
    #: velocity's cross-correlation leaves them out (:func:`~sb2dask.observe.rv_bulk.estimate_rv`).
    filled: np.ndarray | None = None

    @property
    def usable(self) -> np.ndarray:
        return (self.quality_flags & int(UNUSABLE)) == 0


def _continuum_mask(wave: np.ndarray) -> np.ndarray:
    m = np.zeros(wave.shape, dtype=bool)
    for lo, hi in CONTINUUM_REGIONS:
        m |= (wave >= lo) & (wave <= hi)
    return m


def continuum_level(wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Median flux over the continuum regions (:data:`CONTINUUM_REGIONS`), NaN pixels ignored.

    The level that preprocessing checks against 1 (``QualityFlag.NOT_NORMALISED``): the training
    spectra are continuum-normalised, so a normalised input has a level within a few per cent
    of 1 (weak lines and noise in the regions move it slightly).

    Parameters
    ----------
    wave : ndarray (n_pix,)
        Air wavelengths [Å], shared by the rows.
    flux : ndarray (n, n_pix)

    Returns
    -------
    ndarray of float64, shape (n,); NaN where a row has no finite continuum pixel
    """
    cmask = _continuum_mask(np.asarray(wave, dtype=np.float64))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, flagged elsewhere
        return np.nanmedian(np.asarray(flux, dtype=np.float64)[:, cmask], axis=1)


def normalise_to_continuum(wave: np.ndarray, flux: np.ndarray, flux_error: np.ndarray | None
                           = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Spectra on any flux scale divided by their :func:`continuum_level`, errors likewise.

    Brings spectra delivered on a raw flux scale to the scale the training spectra and the
    normalisation check of :func:`preprocess` use.

    Parameters
    ----------
    wave : ndarray (n_pix,)
        Air wavelengths [Å].
    flux : ndarray (n, n_pix)
    flux_error : ndarray (n, n_pix) or None

    Returns
    -------
    flux, flux_error : float32 ndarrays (n, n_pix) (flux_error None when given None)
        New arrays; rows whose level is not finite and positive are returned unchanged.
    level : ndarray of float64 (n,)
        The divisor; NaN where it could not be measured (those rows are unchanged).
    """
    level = continuum_level(wave, flux)
    ok = np.isfinite(level) & (level > 0)
    level = np.where(ok, level, np.nan)
    scale = np.where(ok, level, 1.0)[:, None]
    out = (np.asarray(flux, dtype=np.float64) / scale).astype(np.float32)
    err = None if flux_error is None else \
        (np.asarray(flux_error, dtype=np.float64) / scale).astype(np.float32)
    return out, err, level


def _one_grid(wave: np.ndarray, flux: np.ndarray, err: np.ndarray | None,
              model_wave: np.ndarray, max_nan_fraction: float,
              factor: np.ndarray | None = None, carry_errors: bool = True):
    """Preprocess rows that share one input grid ``wave``; ``factor`` (n,) are Doppler factors
    λ_obs / λ_rest to undo while resampling (None: no shift)."""
    n = flux.shape[0]
    flags = np.zeros(n, dtype=np.int32)
    out = np.ones((n, len(model_wave)), dtype=np.float32)
    nan_frac = np.ones(n, dtype=np.float32)
    snr = np.full(n, np.nan, dtype=np.float32)
    err_out = np.full((n, len(model_wave)), np.nan, dtype=np.float32)
    filled = np.ones((n, len(model_wave)), dtype=bool)
    if np.any(np.diff(wave) <= 0):
        order = np.argsort(wave, kind="stable")
        wave, flux = wave[order], flux[:, order]
        err = err[:, order] if err is not None else None
        flags |= int(QualityFlag.WAVE_UNSORTED)
    if wave[0] > model_wave[0] + 1e-6 or wave[-1] < model_wave[-1] - 1e-6:
        flags |= int(QualityFlag.WAVE_COVERAGE)
        return out, flags, nan_frac, snr, err_out, filled
    # only pixels that matter for the model window (plus one neighbour each side); the missing-
    # pixel statistics refer to the model window itself
    d_lo, d_hi = (1.0, 1.0) if factor is None else (min(1.0, factor.min()), max(1.0, factor.max()))
    lo = max(0, int(np.searchsorted(wave, model_wave[0] * d_lo)) - 1)
    hi = min(len(wave), int(np.searchsorted(wave, model_wave[-1] * d_hi, side="right")) + 1)
    w, f = wave[lo:hi], flux[:, lo:hi].astype(np.float64)
    bad = ~np.isfinite(f)
    in_window = (w >= model_wave[0]) & (w <= model_wave[-1])
    nan_frac = bad[:, in_window].mean(axis=1).astype(np.float32)
    f = np.where(bad, np.nan, f)
    all_null = bad.all(axis=1)
    flags[all_null] |= int(QualityFlag.ALL_NULL)
    flags[bad.any(axis=1) & ~all_null] |= int(QualityFlag.NAN_FILLED)
    flags[(nan_frac > max_nan_fraction) & ~all_null] |= int(QualityFlag.TOO_MANY_NAN)
    cmask = _continuum_mask(w)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are flagged already
            q3 = np.nanpercentile(f[:, cmask], 75, axis=1)
    cmed = continuum_level(w, f)
    q3 = np.where(np.isfinite(q3), q3, 1.0)
    f = np.where(bad, q3[:, None], f)
    flags[np.nanmin(np.where(bad, np.inf, f), axis=1) < -0.05] |= int(QualityFlag.NEGATIVE_FLUX)
    flags[np.isfinite(cmed) & (np.abs(cmed - 1.0) > 0.1)] |= int(QualityFlag.NOT_NORMALISED)
    e_in = None
    if err is not None and carry_errors:
        e_in = err[:, lo:hi].astype(np.float64)
        e_in = np.where(np.isfinite(e_in) & (e_in > 0) & ~bad, e_in, np.nan)

    def carry(e0, e1, t):
        """σ of (1−t)·x₀ + t·x₁ for fully correlated neighbours, (1−t)·σ₀ + t·σ₁: Gaia's
        resampled pixels nearly are (issue 14: second differences 0.3-0.65 of the quoted
        errors), and for independent ones it is an upper bound (≤ √2 too large); NaN where a
        pixel with weight is missing."""
        v0 = np.where(1.0 - t > 0, (1.0 - t) * e0, 0.0)
        v1 = np.where(t > 0, t * e1, 0.0)
        return v0 + v1

    if factor is None:
        # Linear interpolation as a gather, shared by all rows of this grid.
        pos = np.interp(model_wave, w, np.arange(len(w), dtype=np.float64))
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(w) - 2)
        t = pos - i0
        out[:] = (1.0 - t) * f[:, i0] + t * f[:, i0 + 1]
        filled[:] = ((bad[:, i0] & (1.0 - t > 0)) | (bad[:, i0 + 1] & (t > 0))
                     if bad.any() else False)
        if e_in is not None:
            err_out[:] = carry(e_in[:, i0], e_in[:, i0 + 1], t[None, :])
    else:
        # The rest-frame spectrum at λ is the observed one at λ·D; what falls off the observed
        # grid is filled like a missing pixel (the continuum's Q3).
        x = model_wave[None, :] * factor[:, None]
        pos = np.interp(x.ravel(), w, np.arange(len(w), dtype=np.float64)).reshape(x.shape)
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(w) - 2)
        t = pos - i0
        rows = np.arange(n)[:, None]
        shifted = (1.0 - t) * f[rows, i0] + t * f[rows, i0 + 1]
        outside = (x < w[0]) | (x > w[-1])
        out[:] = np.where(outside, q3[:, None], shifted)
        filled[:] = outside
        if bad.any():  # the gathers only where some input pixel is missing
            filled |= (bad[rows, i0] & (1.0 - t > 0)) | (bad[rows, i0 + 1] & (t > 0))
        if e_in is not None:
            err_out[:] = np.where(outside, np.nan, carry(e_in[rows, i0], e_in[rows, i0 + 1], t))
        edge = outside.any(axis=1)
        flags[edge] |= int(QualityFlag.NAN_FILLED)
        nan_frac = np.maximum(nan_frac, outside.mean(axis=1).astype(np.float32))
    if err is not None:
        e = err[:, lo:hi].astype(np.float64)
        with np.errstate(all="ignore"):
            ratio = np.where(np.isfinite(e) & (e > 0) & ~bad, f / e, np.nan)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                snr = np.nanmedian(ratio, axis=1).astype(np.float32)
    unusable = (flags & int(UNUSABLE)) != 0
    out[unusable] = 1.0
    err_out[unusable] = np.nan
    filled[unusable] = True
    return out, flags, nan_frac, snr, err_out, filled


def preprocess(waves: list[np.ndarray], fluxes: list[np.ndarray], errors: list | None,
               model_wave: np.ndarray, max_nan_fraction: float = 0.2,
               rv_kms: np.ndarray | None = None, carry_errors: bool = False) -> Preprocessed:
    """Bring spectra onto ``model_wave``.

    Parameters
    ----------
    waves, fluxes : lists of 1-D arrays, one per spectrum (wavelengths in Å, air); rows sharing
        the same wavelength array *object* are processed together
    errors : list of 1-D arrays or None (per row or overall)
    model_wave : the model's input grid [Å]
    max_nan_fraction : above this fraction of missing pixels a spectrum is unusable
    rv_kms : (n,) radial velocities [km/s] to remove, optional
        Each spectrum is resampled into the frame moving at its velocity (its rest frame when
        the velocity is the star's); pixels that then fall off the observed grid are filled.
    carry_errors : also carry the errors to the model grid (:attr:`Preprocessed.flux_error`;
        None otherwise): only the evidence fits need them, and they cost ~100 kB per row
    """
    n = len(fluxes)
    model_wave = np.asarray(model_wave, dtype=np.float64)
    flux_out = np.ones((n, len(model_wave)), dtype=np.float32)
    flags = np.zeros(n, dtype=np.int32)
    nan_frac = np.ones(n, dtype=np.float32)
    snr = np.full(n, np.nan, dtype=np.float32)
    err_out = np.full((n, len(model_wave)), np.nan, dtype=np.float32) if carry_errors else None
    filled = np.ones((n, len(model_wave)), dtype=bool)
    groups: dict = {}
    for i in range(n):
        w = waves[i]
        f = fluxes[i]
        if w is None or f is None or len(np.asarray(w)) != len(np.asarray(f)) or len(f) < 2:
            flags[i] |= int(QualityFlag.WAVE_MISMATCH)
            continue
        groups.setdefault((id(w), len(f)), (w, []))[1].append(i)
    for w, rows in groups.values():
        rows = np.asarray(rows)
        f = np.stack([np.asarray(fluxes[i], dtype=np.float64) for i in rows])
        e = None
        if errors is not None:
            errs = [errors[i] for i in rows]
            if all(x is not None and len(x) == f.shape[1] for x in errs):
                e = np.stack([np.asarray(x, dtype=np.float64) for x in errs])
        factor = None
        if rv_kms is not None:
            from .rv_bulk import velocity_to_factor

            factor = velocity_to_factor(np.nan_to_num(np.asarray(rv_kms, float)[rows]))
        o, fl, nf, s, er, fi = _one_grid(np.asarray(w, dtype=np.float64), f, e, model_wave,
                                         max_nan_fraction, factor, carry_errors)
        flux_out[rows], flags[rows], nan_frac[rows], snr[rows], filled[rows] = o, fl, nf, s, fi
        if carry_errors:
            err_out[rows] = er
    return Preprocessed(flux_out, flags, nan_frac, snr, err_out if carry_errors else None,
                        filled)
