"""The bulk radial velocity of an observed spectrum, so that inference can work in its rest frame.

Gaia DR4 epoch spectra are in the solar barycentric frame (systemic velocities of tens to hundreds
of km/s) and DR3 mean spectra are in the stellar rest frame only to about a km/s, while the networks
were trained on spectra whose lines sit where the simulator put them. Inference therefore measures
one bulk shift per spectrum and resamples the spectrum into that frame before the networks see it.

The estimator is a cross-correlation with a small bank of template spectra (main-sequence stars of
the embedded grid at Gaia's resolving power, different temperatures) on a uniform ln-λ grid: the
template with the highest normalised peak wins and the peak is refined by a parabola through its
three highest samples. For an SB2 whose components are resolved the peak is that of the component
that dominates the correlation (usually the brighter star); for a blend it lies between them. The
same estimator is meant to be applied to the training spectra, so the networks learn exactly the
residual frame that inference produces (stores written before 2026-12-01 measured spectra with
missing pixels without :func:`estimate_rv`'s ``missing``: for those rows the frame differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..constants import C_KMS
from ..gaia import RVS_RESOLVING_POWER
from .preprocess import Preprocessed, preprocess

__all__ = ["TEMPLATE_LABELS", "LINE_DETECTION_PEAK", "RVEstimate", "TemplateBank",
           "template_bank", "estimate_rv", "velocity_to_factor", "preprocess_in_frame"]

#: (Teff [K], logg, [Fe/H]) of the correlation templates: cool to warm dwarfs of solar metallicity.
TEMPLATE_LABELS = ((4000.0, 4.5, 0.0), (4800.0, 4.5, 0.0), (5500.0, 4.5, 0.0),
                   (6200.0, 4.5, 0.0))

#: ln-λ step of the correlation grid, as a velocity [km/s].
CCF_STEP_KMS = 2.0

#: Normalised correlation peak below which a spectrum shows no stellar absorption lines: the
#: peak of pure noise (white or correlated over ~1 pixel, any S/N 5-300, resampled onto the
#: models' grid) reached at most 0.21 in 4800 trials (median 0.08-0.09, 99.9th percentile
#: 0.15-0.20), while simulated stars of the realistic recipe (singles and SB2s, any Teff and
#: v sin i) fall below 0.25 in ~1 % of cases at S/N 50 and more often below: their lines are not
#: detectable either (``docs/inference.md``, "Flags"). Below it the velocity is noise and the
#: networks' output is unconstrained.
LINE_DETECTION_PEAK = 0.25

#: Floor of the share of a template's power on measured pixels by which the correlation of a
#: spectrum with filled pixels is renormalised (:func:`estimate_rv`): at most a 1.8× boost, so
#: that a correlation of noise over a few measured lines cannot pass for a detection (pure noise
#: with a 3-40 Å gap anywhere, white or correlated, S/N 5 and 100: peak at most 0.24 in 4000
#: trials, as without the gap). Filling the three Ca II cores (±1 Å) leaves 0.38-0.44 of the
#: templates' power at the true lag: above the floor (0.5 held it back, and simulated stars with
#: their cores filled then came out tens of km/s off).
MIN_MEASURED_SHARE = 0.3


def velocity_to_factor(rv_kms) -> np.ndarray:
    """Relativistic Doppler factor λ_obs / λ_emit of radial velocities [km/s]."""
    beta = np.asarray(rv_kms, dtype=np.float64) / C_KMS
    return np.sqrt((1.0 + beta) / (1.0 - beta))


def _factor_to_velocity(d: np.ndarray) -> np.ndarray:
    d2 = np.asarray(d, dtype=np.float64) ** 2
    return C_KMS * (d2 - 1.0) / (d2 + 1.0)


@dataclass(frozen=True)
class TemplateBank:
    """Line-depth templates on a uniform ln-λ grid (zero-mean, tapered, unit norm)."""

    ln_wave: np.ndarray  # (n_x,) ln of air wavelengths [Å]
    depth: np.ndarray  # (n_templates, n_x) float64
    labels: tuple
    resolution: float


def _taper(n: int, fraction: float = 0.05) -> np.ndarray:
    """Cosine taper over ``fraction`` of the samples at each end (suppresses edge steps)."""
    w = np.ones(n)
    m = max(1, int(n * fraction))
    ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(m) + 0.5) / m))
    w[:m], w[-m:] = ramp, ramp[::-1]
    return w


def _prepare(depth: np.ndarray) -> np.ndarray:
    d = depth - depth.mean(axis=-1, keepdims=True)
    d = d * _taper(d.shape[-1])
    norm = np.sqrt((d ** 2).sum(axis=-1, keepdims=True))
    return d / np.where(norm > 0, norm, 1.0)


@lru_cache(maxsize=4)
def template_bank(wave_lo: float, wave_hi: float, resolution: float = RVS_RESOLVING_POWER,
                  library: str = "embedded") -> TemplateBank:
    """Templates covering ``wave_lo``-``wave_hi`` Å (air), built once per process."""
    from scipy.ndimage import gaussian_filter1d

    from ..library import load_library

    lib = load_library(library)
    step = CCF_STEP_KMS / C_KMS
    ln_wave = np.arange(np.log(wave_lo), np.log(wave_hi), step)
    # the library is at R = ∞ on its own grid: sample finely in ln λ, smooth to R, then decimate
    fine = 8
    ln_fine = np.arange(np.log(wave_lo), np.log(wave_hi), step / fine)
    sigma = (1.0 / resolution) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / (step / fine)
    depth = []
    for teff, logg, feh in TEMPLATE_LABELS:
        f = np.interp(np.exp(ln_fine), lib.wave, lib.flux(teff, logg, feh))
        smooth = gaussian_filter1d(1.0 - f, sigma, mode="nearest")
        depth.append(np.interp(ln_wave, ln_fine, smooth))
    return TemplateBank(ln_wave, _prepare(np.asarray(depth)), TEMPLATE_LABELS, resolution)


@dataclass(frozen=True)
class RVEstimate:
    """Per-spectrum outcome of :func:`estimate_rv`."""

    rv: np.ndarray  # (n,) km/s; NaN where no peak could be measured
    peak: np.ndarray  # (n,) normalised correlation at the peak (≈ 1 for a perfect match)
    template: np.ndarray  # (n,) index into TEMPLATE_LABELS

    @property
    def lines_detected(self) -> np.ndarray:
        """(n,) bool: the peak rises above what noise reaches (:data:`LINE_DETECTION_PEAK`)."""
        return np.nan_to_num(self.peak) >= LINE_DETECTION_PEAK

    @property
    def rv_if_detected(self) -> np.ndarray:
        """(n,) km/s: :attr:`rv`, NaN where no lines were detected (a velocity of noise)."""
        return np.where(self.lines_detected, self.rv, np.nan)


def estimate_rv(wave: np.ndarray, flux: np.ndarray, bank: TemplateBank | None = None,
                max_rv: float = 500.0, batch: int = 256,
                missing: np.ndarray | None = None) -> RVEstimate:
    """Bulk radial velocities [km/s] of spectra on one wavelength grid.

    Parameters
    ----------
    wave : (n_pix,) air wavelengths [Å], increasing
    flux : (n, n_pix) continuum-normalised flux without NaN (preprocessed)
    bank : the templates (default: :func:`template_bank` over ``wave``'s range)
    max_rv : largest |velocity| searched [km/s]
    missing : (n, n_pix) bool, optional
        Pixels that were filled, not measured (:attr:`Preprocessed.filled
        <sb2dask.observe.preprocess.Preprocessed.filled>`). They are left out of the
        correlation, and at each lag it is divided by the square root of the share of the
        template's power that falls on measured pixels (a correlation coefficient over the
        measured pixels alone; the share floored at :data:`MIN_MEASURED_SHARE`). Without this a
        filled line core reads as a line split in two, and the peak jumps by tens of km/s.
        Rows without a missing pixel are computed exactly as without ``missing``.
    """
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    bank = bank or template_bank(float(wave[0]), float(wave[-1]))
    n_x = bank.ln_wave.size
    from scipy import fft as sfft

    max_lag = int(np.ceil(max_rv / CCF_STEP_KMS))
    n_fft = sfft.next_fast_len(n_x + max_lag + 1, real=True)  # no wrap-around within ±max_lag
    t_ft = np.conj(sfft.rfft(bank.depth.astype(np.float32), n=n_fft))  # (n_t, n_f)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    if missing is not None:
        missing = np.atleast_2d(np.asarray(missing, dtype=bool))
        if missing.shape != flux.shape:
            raise ValueError(f"missing has shape {missing.shape}, the flux {flux.shape}")
    power = None  # per template: its squared depth's transform and its power at each lag
    rv = np.full(len(flux), np.nan)
    peak = np.full(len(flux), np.nan)
    best_t = np.zeros(len(flux), dtype=np.int64)
    x = np.exp(bank.ln_wave)
    for s in range(0, len(flux), batch):
        f = flux[s:s + batch]
        # linear interpolation onto the ln-λ grid as one gather shared by the batch
        pos = np.interp(x, wave, np.arange(wave.size, dtype=np.float64))
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, wave.size - 2)
        t = pos - i0
        obs = (1.0 - t) * f[:, i0] + t * f[:, i0 + 1]
        d = _prepare(1.0 - obs)
        holes = np.zeros(len(f), dtype=bool)
        if missing is not None:
            m = missing[s:s + batch]
            gone = (m[:, i0] & (1.0 - t > 0)) | (m[:, i0 + 1] & (t > 0))  # on the ln-λ grid
            holes = gone.any(axis=1)
            if holes.any():
                h = np.where(gone[holes], 0.0, d[holes])
                norm = np.sqrt((h ** 2).sum(axis=1, keepdims=True))
                d[holes] = h / np.where(norm > 0, norm, 1.0)
        d = d.astype(np.float32)
        o_ft = sfft.rfft(d, n=n_fft)
        # ccf[k] = Σ_x obs(x) tpl(x - k): positive k = the observed lines sit redward
        ccf = sfft.irfft(o_ft[:, None, :] * t_ft[None], n=n_fft)  # (b, n_t, n_fft)
        ccf = ccf[..., lags]  # lags -max..max rearranged below
        if holes.any():
            if power is None:
                t2_ft = np.conj(sfft.rfft(bank.depth ** 2, n=n_fft))
                power = (t2_ft, sfft.irfft(sfft.rfft(np.ones(n_x), n=n_fft)[None] * t2_ft,
                                           n=n_fft)[..., lags])
            t2_ft, total = power
            kept = sfft.irfft(sfft.rfft((~gone[holes]).astype(np.float64), n=n_fft)[:, None, :]
                              * t2_ft[None], n=n_fft)[..., lags]  # (h, n_t, n_lags)
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(total[None] > 1e-12, kept / total[None], 1.0)
            ccf[holes] = ccf[holes] / np.sqrt(np.clip(share, MIN_MEASURED_SHARE, 1.0))
        order = np.argsort(lags)
        ccf, lag_sorted = ccf[..., order], lags[order]
        flat = ccf.reshape(len(f), -1)
        arg = np.argmax(flat, axis=1)
        t_idx, k = np.divmod(arg, ccf.shape[-1])
        rows = np.arange(len(f))
        peak[s:s + len(f)] = flat[rows, arg]
        best_t[s:s + len(f)] = t_idx
        inner = (k > 0) & (k < ccf.shape[-1] - 1)
        km = np.clip(k, 1, ccf.shape[-1] - 2)
        y0 = ccf[rows, t_idx, km - 1]
        y1 = ccf[rows, t_idx, km]
        y2 = ccf[rows, t_idx, km + 1]
        den = y0 - 2 * y1 + y2
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(inner & (den < 0), 0.5 * (y0 - y2) / den, 0.0)
        lag = lag_sorted[k] + np.clip(frac, -0.5, 0.5)
        v = _factor_to_velocity(np.exp(lag * CCF_STEP_KMS / C_KMS))
        ok = inner & np.isfinite(v) & (peak[s:s + len(f)] > 0)
        rv[s:s + len(f)] = np.where(ok, v, np.nan)
    return RVEstimate(rv=rv, peak=peak, template=best_t)


def preprocess_in_frame(waves: list[np.ndarray], fluxes: list[np.ndarray], errors: list | None,
                        model_wave: np.ndarray, remove_bulk: bool | np.ndarray,
                        max_nan_fraction: float = 0.2,
                        carry_errors: bool = False) -> tuple[Preprocessed, np.ndarray, np.ndarray]:
    """:func:`~sb2dask.observe.preprocess.preprocess` into the frame the networks expect: each
    spectrum where ``remove_bulk`` is true is moved to its bulk radial velocity's frame, the
    others are left where they are (what :func:`sb2dask.infer.predict.predict_partition` and
    ``benchmarks/bench_source_evidence.py`` feed the networks).

    Parameters
    ----------
    waves, fluxes, errors, max_nan_fraction, carry_errors : as for ``preprocess``
    model_wave : (n_pix,) the models' input grid [Å, air]
    remove_bulk : bool, or array_like of bool (n,)
        Which spectra to move (:meth:`sb2dask.infer.predict.ModelSet.uses_rest_frame` with the
        spectra's frames).

    Returns
    -------
    pre : Preprocessed
        The spectra on ``model_wave``, in the frame asked for.
    rv_bulk : ndarray (n,)
        The velocity removed [km/s]: :func:`~sb2dask.observe.rv_bulk.estimate_rv`'s where lines
        were detected and a move was asked for, NaN elsewhere (those spectra are not moved).
    ccf_peak : ndarray (n,)
        The cross-correlation peak of every usable spectrum (NaN for unusable ones).
    """
    n = len(fluxes)
    pre = preprocess(waves, fluxes, errors, model_wave, max_nan_fraction,
                     carry_errors=carry_errors)
    rv_bulk = np.full(n, np.nan)
    ccf_peak = np.full(n, np.nan)
    # cheap next to the networks: 4700-5900 against 47-48 spectra/s (shipped two-member set, one
    # thread, 512 simulated spectra, two repeats), i.e. ~1 % of a partition's time
    if pre.usable.any():
        est = estimate_rv(model_wave, pre.flux[pre.usable], missing=pre.filled[pre.usable])
        ccf_peak[pre.usable] = est.peak
        shift = np.broadcast_to(np.asarray(remove_bulk, bool), (n,)) & pre.usable
        if shift.any():
            # remove each spectrum's bulk velocity (none where no lines were detected: that
            # velocity is noise) by resampling again, into that frame, from the observed pixels
            # (one interpolation, not two); the others keep velocity 0
            rv_bulk[pre.usable] = est.rv_if_detected
            rv_bulk[~shift] = np.nan
            pre = preprocess(waves, fluxes, errors, model_wave, max_nan_fraction,
                             rv_kms=np.nan_to_num(rv_bulk), carry_errors=carry_errors)
    return pre, rv_bulk, ccf_peak
