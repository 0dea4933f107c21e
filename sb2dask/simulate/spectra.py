"""Rendering observed epoch spectra from drawn systems, batched in Fourier space.

The library is resampled once onto a uniform ln(λ) grid (step ``config.working_dv`` km/s) and the
line depth ``1 - flux`` of every node is Fourier transformed. A component's transform is then the
interpolation of its two bracketing nodes' transforms (interpolation is linear, so it commutes
with the transform), multiplied by the rotation kernel, the Doppler phase of its RV and the
instrument's Gaussian LSF; the blend is the light-weighted sum of both components, and one inverse
FFT per spectrum gives the observed flux, which is resampled to the output pixels and given noise.
Frequencies where the LSF transform is below 1e-12 are dropped: they carry nothing after the
instrument.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline

from ..constants import C_KMS
from ..library.base import SpectralLibrary
from .broadening import doppler_shift_ft, gaussian_lsf_ft, rotation_kernel_ft
from .config import SimulationConfig
from .realism import (
    NUISANCE_FIELDS,
    continuum_factor,
    correlated_unit_noise,
    gap_mask,
    noise_sigma,
    scale_line_depths,
)

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
        # the sharpest LSF a spectrum may get decides which frequencies carry anything
        r_max = max(config.resolution, config.realism.resolution[1])
        self.n_freq = int(np.flatnonzero(gaussian_lsf_ft(freq, r_max) > 1e-12)[-1]) + 1
        self.freq = freq[: self.n_freq]
        self.lsf = gaussian_lsf_ft(self.freq, config.resolution)
        self.out_wave = np.asarray(config.wave, dtype=np.float64)

        out_wave = config.wave
        if out_wave[0] < self.wave_work[0] or out_wave[-1] > self.wave_work[-1]:
            raise ValueError(f"output grid {out_wave[0]:.1f}-{out_wave[-1]:.1f} Å exceeds the "
                             f"library's {wave[0]:.1f}-{wave[-1]:.1f} Å")
        pos = (C_KMS * np.log(out_wave) - x0) / self.dv
        self._i0 = np.floor(pos).astype(np.int64)
        self._f = (pos - self._i0)[None, :]

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
            for c in range(2):
                lo = interp["lo"][s:e, c]
                hi = interp["hi"][s:e, c]
                w = interp["w"][s:e, c, None]
                comp = ((1.0 - w) * self._cube[lo[:, 0], lo[:, 1], lo[:, 2]]
                        + w * self._cube[hi[:, 0], hi[:, 1], hi[:, 2]])
                comp *= rotation_kernel_ft(self.freq, vsini[s:e, c], eps)
                comp *= doppler_shift_ft(self.freq, rv[s:e, c])
                ft += frac[s:e, c, None] * comp
            if paper:
                ft *= self.lsf
            else:
                ft *= gaussian_lsf_ft(self.freq, labels["resolution"][s:e, None].astype(
                    np.float64))
            depth = np.fft.irfft(ft, n=self.n_work, axis=-1)
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

    def _nuisances(self, obs, labels, s, e, rv, frac, noise):
        """Line-depth and Ca II scaling, continuum error, correlated noise and gaps
        (:mod:`sb2dask.simulate.realism`) for rows ``s:e``."""
        lab = {k: labels[k][s:e] for k in NUISANCE_FIELDS}
        centre = (rv[s:e] * frac[s:e]).sum(axis=1) / np.maximum(frac[s:e].sum(axis=1), 1e-12)
        obs = scale_line_depths(obs, self.out_wave, lab["weak_line_scale"], lab["ca_ii_scale"],
                                rv=centre)
        obs = obs * continuum_factor(self.out_wave, lab["continuum_offset"],
                                     lab["continuum_c1"], lab["continuum_c2"])
        if noise is not None:
            sigma = noise_sigma(obs, labels["snr"][s:e], lab["noise_exponent"])
            obs = obs + sigma * correlated_unit_noise(noise, lab["noise_correlation"])
        missing = gap_mask(obs.shape[1], lab["gap_start"], lab["gap_width"])
        return np.where(missing, np.nan, obs)
