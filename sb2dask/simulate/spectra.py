"""Rendering observed epoch spectra from drawn systems, batched in Fourier space.

The library is resampled once onto a uniform ln(λ) grid (step ``config.working_dv`` km/s) and the
line depth ``1 - flux`` of every node is Fourier transformed. A component's transform is then the
interpolation of its two bracketing nodes' transforms (interpolation is linear, so it commutes
with the transform), multiplied by the rotation kernel, the Doppler phase of its RV and the
instrument's Gaussian LSF; the blend is the light-weighted sum of both components, and one inverse
FFT per spectrum gives the observed flux, which is resampled to the output pixels and given noise.
Frequencies where the LSF transform is below 1e-12 are dropped: they carry nothing after the
instrument. With CCD sampling (the DR4 recipe) the inverse FFT is sampled at each CCD's pixels
instead, and the CCD spectra are combined onto the output pixels as DPAC does
(:mod:`.transits`).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.interpolate import CubicSpline

from ..constants import C_KMS
from ..gaia import median_normalise
from ..library.base import SpectralLibrary
from ..library.wavelength import vac_to_air
from . import transits
from .broadening import added_resolution, doppler_shift_ft, gaussian_lsf_ft, rotation_kernel_ft
from .config import OUTPUT_GRIDS, SimulationConfig
from .realism import (
    NUISANCE_FIELDS,
    continuum_factor,
    correlated_unit_noise,
    gap_mask,
    line_depth_field,
    noise_sigma,
    scale_line_depths,
)

logger = logging.getLogger(__name__)

__all__ = ["SpectrumRenderer"]


class SpectrumRenderer:
    """Renders batches of epoch spectra for one (library, configuration) pair.

    Parameters
    ----------
    library : SpectralLibrary
    config : SimulationConfig
    """

    def __init__(self, library: SpectralLibrary, config: SimulationConfig):
        self.config = config
        wave = library.wave
        x0, x1 = C_KMS * np.log(wave[0]), C_KMS * np.log(wave[-1])
        self.dv = config.working_dv
        self.n_work = int(np.floor((x1 - x0) / self.dv)) + 1
        self.x = x0 + self.dv * np.arange(self.n_work)
        self.wave_work = np.exp(self.x / C_KMS)
        freq = np.fft.rfftfreq(self.n_work, d=self.dv)
        # a library of finite resolving power (PHOENIX files) gets only the Gaussian that takes
        # it to the instrument's: widths add in quadrature
        self.native_resolution = float(library.resolution)
        # the sharpest total LSF a spectrum may get decides which frequencies carry anything (the
        # instrument's: a library of finite resolution only narrows the band further)
        r_max = max(config.resolution, config.realism.resolution[1])
        if self.native_resolution <= r_max:
            logger.warning("library %s is at R = %g, at or below the R = %g asked for: spectra "
                           "keep the library's resolution (their resolution labels say what "
                           "was asked)", library.name, self.native_resolution, r_max)
        self.n_freq = int(np.flatnonzero(gaussian_lsf_ft(freq, r_max) > 1e-12)[-1]) + 1
        self.freq = freq[: self.n_freq]
        self.lsf = gaussian_lsf_ft(self.freq, added_resolution(config.resolution,
                                                               self.native_resolution))
        self.out_wave = np.asarray(config.wave, dtype=np.float64)

        out_wave = config.wave
        if out_wave[0] < self.wave_work[0] or out_wave[-1] > self.wave_work[-1]:
            raise ValueError(f"output grid {out_wave[0]:.1f}-{out_wave[-1]:.1f} Å exceeds the "
                             f"library's {wave[0]:.1f}-{wave[-1]:.1f} Å")
        pos = (C_KMS * np.log(out_wave) - x0) / self.dv
        self._i0 = np.floor(pos).astype(np.int64)
        self._f = (pos - self._i0)[None, :]
        self._x0 = x0
        # output pixels in the layout's own medium, from which CCD sample wavelengths follow
        lo, hi, n, native = OUTPUT_GRIDS[config.output_grid]
        self._native = (lo, (hi - lo) / (n - 1), native)
        self._ccd = bool(config.realism.ccd_weights)

        avail = library.available
        shape = avail.shape
        self._cube = np.zeros(shape + (self.n_freq,), dtype=np.complex128)
        ax = library.axes
        for idx in zip(*np.nonzero(avail)):
            f = library.flux(ax.teff[idx[0]], ax.logg[idx[1]], ax.feh[idx[2]])
            depth = 1.0 - CubicSpline(wave, f)(self.wave_work)
            self._cube[idx] = np.fft.rfft(depth)[: self.n_freq]

    def render(self, labels: dict, interp: dict, noise: np.ndarray | None,
               batch: int = 256) -> np.ndarray:
        """Observed spectra, float32 ``(n, n_out)``; noise-free when ``noise`` is None.

        ``labels`` and ``interp`` are the first two outputs of
        :func:`sb2dask.simulate.systems.draw_systems`.
        """
        n = len(labels["snr"])
        out = np.empty((n, len(self._f[0])), dtype=np.float32)
        frac = np.nan_to_num(labels["light_fraction"].astype(np.float64))
        vsini = np.nan_to_num(labels["vsini"].astype(np.float64))
        rv = np.nan_to_num(labels["rv"].astype(np.float64))
        eps = self.config.limb_darkening
        paper = self.config.realism.is_paper
        for s in range(0, n, batch):
            e = min(n, s + batch)
            ft = np.zeros((e - s, self.n_freq), dtype=np.complex128)
            field = None if paper else self._line_field(labels, s, e)
            for c in range(2):
                lo = interp["lo"][s:e, c]
                hi = interp["hi"][s:e, c]
                w = interp["w"][s:e, c, None]
                comp = ((1.0 - w) * self._cube[lo[:, 0], lo[:, 1], lo[:, 2]]
                        + w * self._cube[hi[:, 0], hi[:, 1], hi[:, 2]])
                if field is not None:  # line-by-line depth errors, in the star's rest frame
                    rows, f = field
                    depth = np.fft.irfft(comp[rows], n=self.n_work, axis=-1)
                    # no flux below 1 % of the continuum made by the field (a saturated core
                    # made deeper would be negative flux); lines deeper already stay as they are
                    depth = np.minimum(depth * f, np.maximum(depth, 0.99))
                    comp[rows] = np.fft.rfft(depth, axis=-1)[:, : self.n_freq]
                comp *= rotation_kernel_ft(self.freq, vsini[s:e, c], eps)
                comp *= doppler_shift_ft(self.freq, rv[s:e, c])
                ft += frac[s:e, c, None] * comp
            if paper:
                ft *= self.lsf
            else:
                ft *= gaussian_lsf_ft(self.freq, added_resolution(
                    labels["resolution"][s:e, None].astype(np.float64), self.native_resolution))
            depth = np.fft.irfft(ft, n=self.n_work, axis=-1)
            if self._ccd:
                out[s:e] = self._transit(depth, labels, s, e, rv, frac,
                                         None if noise is None else noise[s:e])
                continue
            obs = 1.0 - ((1.0 - self._f) * depth[:, self._i0] + self._f * depth[:, self._i0 + 1])
            snr = labels["snr"][s:e, None].astype(np.float64)
            if paper:
                if noise is not None:
                    obs = obs + noise[s:e] * np.sqrt(np.clip(obs, 0.0, None)) / snr
            else:
                obs = self._nuisances(obs, labels, s, e, rv, frac,
                                      None if noise is None else noise[s:e])
            out[s:e] = obs
        return out

    def _line_field(self, labels, s, e):
        """(rows, factors) of the line-depth field (:func:`.realism.line_depth_field`) for the
        rows of ``s:e`` that have one, or None (stores written before it existed have none)."""
        if "line_depth_scatter" not in labels:
            return None
        scatter = np.asarray(labels["line_depth_scatter"][s:e], np.float64)
        rows = np.flatnonzero(scatter > 0)
        if rows.size == 0:
            return None
        return rows, line_depth_field(self.n_work, self.dv, scatter[rows],
                                      labels["line_field_seed"][s:e][rows],
                                      self.config.realism.line_depth_length)

    def _nuisances(self, obs, labels, s, e, rv, frac, noise):
        """Line-depth and Ca II scaling, continuum error, correlated noise, normalisation and
        gaps (:mod:`sb2dask.simulate.realism`) for rows ``s:e``."""
        lab = {k: labels[k][s:e] for k in NUISANCE_FIELDS}
        obs = self._shape(obs, self.out_wave, lab, rv[s:e], frac[s:e])
        if noise is not None:
            sigma = noise_sigma(obs, labels["snr"][s:e], lab["noise_exponent"])
            obs = obs + sigma * correlated_unit_noise(noise, lab["noise_correlation"])
        return self._finish(obs, lab)

    def _shape(self, flux, wave, lab, rv, frac):
        """Line-depth and Ca II scaling and the continuum error of spectra ``flux`` (n, m)
        sampled at ``wave`` [Å, air] ((m,) or (n, m)); the continuum polynomial spans the output
        grid."""
        centre = (rv * frac).sum(axis=1) / np.maximum(frac.sum(axis=1), 1e-12)
        flux = scale_line_depths(flux, wave, lab["weak_line_scale"], lab["ca_ii_scale"],
                                 rv=centre)
        return flux * continuum_factor(wave, lab["continuum_offset"], lab["continuum_c1"],
                                       lab["continuum_c2"],
                                       span=(self.out_wave[0], self.out_wave[-1]))

    @staticmethod
    def _finish(obs, lab):
        """Missing pixels (NaN) and DPAC's median normalisation of the rows it applies to."""
        obs = np.where(gap_mask(obs.shape[1], lab["gap_start"], lab["gap_width"]), np.nan, obs)
        rows = np.asarray(lab["median_normalised"], dtype=bool)
        if rows.any():
            obs[rows] = median_normalise(obs[rows])
        return obs

    def _transit(self, depth, labels, s, e, rv, frac, noise):
        """Rows ``s:e`` as DR4 epoch spectra: the observed line depth ``depth`` (b, n_work)
        sampled at each CCD's pixels, the nuisances applied there, white noise per sample, and
        the CCD spectra combined onto the output pixels (:func:`.transits.combine_transit`)."""
        lab = {k: labels[k][s:e] for k in NUISANCE_FIELDS}
        b, n_out = e - s, len(self.out_wave)
        n_ccd = lab["combined_ccds"].astype(np.int64)
        phase = lab["ccd_phase"].astype(np.float64)
        ratio = self.config.ccd_ratio
        pos = transits.sample_positions(np.nan_to_num(phase), ratio, n_out)  # (b, 3, n_s)
        lo, step, native = self._native
        wave = lo + step * pos.reshape(b, -1)
        wave = vac_to_air(wave) if native == "vacuum" else wave
        x = (C_KMS * np.log(wave) - self._x0) / self.dv
        i0 = np.clip(np.floor(x).astype(np.int64), 0, self.n_work - 2)
        f = x - i0
        samples = 1.0 - ((1.0 - f) * np.take_along_axis(depth, i0, axis=1)
                         + f * np.take_along_axis(depth, i0 + 1, axis=1))
        samples = self._shape(samples, wave, lab, rv[s:e], frac[s:e]).reshape(pos.shape)
        if noise is None:
            sigma, white = np.zeros_like(samples), None
        else:
            c = transits.continuum_sample_sigma(phase, n_ccd, ratio, n_out,
                                                labels["snr"][s:e].astype(np.float64))
            alpha = lab["noise_exponent"].astype(np.float64)[:, None, None]
            sigma = c[:, None, None] * np.clip(samples, 0.0, None) ** alpha
            white = noise.reshape(pos.shape).astype(np.float64)
        obs, _ = transits.combine_transit(samples, sigma, white, phase, n_ccd, ratio, n_out)
        return self._finish(obs, lab)
