"""The differentiable forward model: one or two stars on a spectrum's pixel grid, in torch.

This is the simulator's renderer (:class:`sb2dask.simulate.spectra.SpectrumRenderer`) made
differentiable and batched, not a second renderer: the node spectra's Fourier transforms, the
working ln(λ) grid, the LSF transform and the node properties (main-sequence mass, radius and
continuum flux at 8600 Å, :class:`sb2dask.simulate.systems.GridSampler`) are taken from the
simulator's own objects, and the rotation kernel is the simulator's
:func:`~sb2dask.simulate.broadening.rotation_kernel_ft` tabulated in v sin i. Two things differ,
both because a fit needs gradients in every label:

* the library is interpolated *trilinearly* in (Teff, logg, [Fe/H]) over the grid nodes (the
  simulator interpolates along one axis per star; trilinear interpolation agrees with it exactly
  when two labels sit on nodes). Interpolation is linear, so it commutes with the Fourier
  transform, and the node transforms are interpolated directly. Nodes the library lacks (hot,
  high-gravity corners) are filled with the nearest available node in logg at the same Teff and
  [Fe/H], so the model is flat in logg beyond the library's coverage rather than undefined;
* v sin i enters through a table of the rotation kernel's transform on a 0.25 km/s grid,
  interpolated linearly (the transform is smooth in v sin i; the table error is < 1e-4).

A component's spectrum is ``1 - irfft(T(θ) · G(v sin i) · D(rv) · LSF)`` resampled linearly
from the working grid to the pixels, as in the simulator; a blend sums the components'
transforms weighted by their light fractions. With ``light_fraction=None`` the light fraction
follows from the labels, as the simulator draws it: L = R² · F_c(8600 Å), with R from logg and
the main-sequence mass at Teff (:mod:`sb2dask.library.mainsequence`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..constants import C_KMS
from ..gaia import RVS_RESOLVING_POWER
from ..library.base import SpectralLibrary
from ..simulate.broadening import rotation_kernel_ft
from ..simulate.config import SimulationConfig
from ..simulate.spectra import SpectrumRenderer
from ..simulate.systems import GridSampler

__all__ = ["ForwardModel", "VSINI_TABLE_STEP", "fill_missing_nodes"]

#: Step [km/s] of the tabulated rotation-kernel transform.
VSINI_TABLE_STEP = 0.25


def fill_missing_nodes(values: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Copy of ``values`` ``(n_teff, n_logg, n_feh, ...)`` whose unavailable nodes hold the
    nearest available node along logg (same Teff and [Fe/H]); nodes with no available logg at
    all stay as they are."""
    out = values.copy()
    for i, k in zip(*np.nonzero(~available.all(axis=1))):
        have = np.flatnonzero(available[i, :, k])
        if have.size == 0:
            continue
        for j in np.flatnonzero(~available[i, :, k]):
            out[i, j, k] = values[i, have[np.argmin(np.abs(have - j))], k]
    return out


class ForwardModel:
    """Batched single- and two-star spectra on a pixel grid, differentiable in every label.

    Parameters
    ----------
    library : SpectralLibrary
    wave : ndarray (n_pix,)
        Pixel wavelengths [Å, air] of the spectra to fit (e.g. the models' grid).
    resolution : float
        Resolving power λ/FWHM of the Gaussian LSF (Gaia RVS ≈ 11 500).
    working_dv : float
        Step [km/s] of the working ln(λ) grid (the simulator's default 1 km/s).
    dtype : torch.dtype
        Real dtype of the computation (float64 default: the Fisher matrices need it).
    """

    def __init__(self, library: SpectralLibrary, wave: np.ndarray,
                 resolution: float = RVS_RESOLVING_POWER, working_dv: float = 1.0,
                 dtype: torch.dtype = torch.float64):
        config = SimulationConfig.paper(resolution=resolution, working_dv=working_dv)
        renderer = SpectrumRenderer(library, config)
        sampler = GridSampler(library, config)
        self.library_name = library.name
        self.dtype = dtype
        self.wave = np.asarray(wave, dtype=np.float64)
        self.resolution = float(resolution)
        self.limb_darkening = config.limb_darkening
        self.n_work = renderer.n_work
        self.working_dv = float(renderer.dv)
        ax = library.axes
        self.nodes = [torch.tensor(v, dtype=dtype) for v in (ax.teff, ax.logg, ax.feh)]
        self.ranges = library.ranges()
        avail = library.available
        # the renderer's node transforms (private: built once there, reused here, not redone)
        cube = fill_missing_nodes(renderer._cube, avail)
        self._shape = cube.shape[:3]
        self._corner_bits = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
        # flat (node, 2·n_freq) real/imaginary pairs: index_select on a real 2-D table is the
        # fastest gather torch has on CPU (advanced indexing of a complex 4-D one was ~10× slower)
        flat = np.ascontiguousarray(cube.reshape(-1, cube.shape[-1]))
        self.cube = torch.from_numpy(flat.view(np.float64).reshape(len(flat), -1)).to(dtype)
        props = fill_missing_nodes(sampler.props, avail)
        # radius [Rsun] and continuum at 8600 Å (scaled to O(1) for float arithmetic), each
        # interpolated before L = R² · F_c is formed, as the simulator does
        props = np.nan_to_num(props[..., 1:] / np.nanmedian(props[..., 1:], axis=(0, 1, 2)))
        self.props = torch.from_numpy(props.reshape(-1, 2)).to(dtype)  # (node, 2)
        freq = renderer.freq
        self.freq = torch.from_numpy(freq).to(dtype)
        self.lsf = torch.from_numpy(renderer.lsf).to(dtype)
        self.vsini_max = float(config.vsini_range[1])
        vgrid = np.arange(0.0, self.vsini_max + 2 * VSINI_TABLE_STEP, VSINI_TABLE_STEP)
        self.rot_table = torch.from_numpy(rotation_kernel_ft(freq, vgrid,
                                                             self.limb_darkening)).to(dtype)
        x0 = renderer.x[0]
        pos = (C_KMS * np.log(self.wave) - x0) / renderer.dv
        if pos[0] < 0 or pos[-1] > self.n_work - 1:
            raise ValueError(f"pixel grid {self.wave[0]:.1f}-{self.wave[-1]:.1f} Å exceeds the "
                             f"library's {renderer.wave_work[0]:.1f}-"
                             f"{renderer.wave_work[-1]:.1f} Å")
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, self.n_work - 2)
        self._i0 = torch.from_numpy(i0)
        self._f = torch.from_numpy(pos - i0).to(dtype)

    # -- pieces ------------------------------------------------------------------------------
    def _corners(self, labels: torch.Tensor):
        """Trilinear corner indices and weights of ``labels`` (b, 3) = (Teff, logg, [Fe/H]),
        clamped to the grid: indices (b, 3) of the low corner and fractions (b, 3)."""
        lo, frac = [], []
        for a in range(3):
            nodes = self.nodes[a]
            v = labels[:, a].clamp(nodes[0], nodes[-1])
            j = torch.searchsorted(nodes, v.detach().contiguous(), right=True) - 1
            j = j.clamp(0, len(nodes) - 2)
            lo.append(j)
            frac.append((v - nodes[j]) / (nodes[j + 1] - nodes[j]))
        return torch.stack(lo, 1), torch.stack(frac, 1)

    def _interp(self, table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Rows of ``table`` (n_nodes, m), nodes in C order of (Teff, logg, [Fe/H]),
        interpolated trilinearly at ``labels`` (b, 3); returns (b, m)."""
        lo, frac = self._corners(labels)
        _, n_g, n_z = self._shape
        bits = self._corner_bits  # (8, 3) of 0/1
        node = ((lo[:, None, 0] + bits[:, 0]) * n_g + lo[:, None, 1] + bits[:, 1]) * n_z \
            + lo[:, None, 2] + bits[:, 2]  # (b, 8)
        # weight of each corner: the product over axes of frac (bit 1) or 1 - frac (bit 0)
        f = frac[:, None, :]
        w = torch.where(bits.bool(), f, 1.0 - f).prod(-1)  # (b, 8)
        rows = table.index_select(0, node.reshape(-1)).reshape(len(labels), 8, -1)
        # one batched product instead of eight multiply-adds: the interpolation was the largest
        # cost of a fit (forward-mode tangents double every elementwise operation)
        return torch.bmm(w[:, None, :], rows)[:, 0]

    def rotation_ft(self, vsini: torch.Tensor) -> torch.Tensor:
        """Rotation kernel transform (b, n_freq) at ``vsini`` (b,) [km/s] from the table."""
        pos = vsini.clamp(0.0, self.vsini_max) / VSINI_TABLE_STEP
        j = pos.detach().floor().long().clamp(0, self.rot_table.shape[0] - 2)
        f = (pos - j)[:, None]
        return ((1.0 - f) * self.rot_table.index_select(0, j)
                + f * self.rot_table.index_select(0, j + 1))

    def doppler_ft(self, rv: torch.Tensor) -> torch.Tensor:
        """Phase factor (b, n_freq) of a relativistic shift by ``rv`` (b,) [km/s], as
        :func:`sb2dask.simulate.broadening.doppler_shift_ft`: x shifts by c·atanh(v/c)."""
        dx = C_KMS * torch.atanh(rv / C_KMS)
        phase = -2.0 * np.pi * dx[:, None] * self.freq[None, :]
        return torch.complex(torch.cos(phase), torch.sin(phase))

    def component_ft(self, labels: torch.Tensor, vsini: torch.Tensor,
                     rv: torch.Tensor) -> torch.Tensor:
        """Line-depth transform (b, n_freq) of stars with ``labels`` (b, 3), ``vsini`` (b,),
        ``rv`` (b,), before the LSF."""
        t = self._interp(self.cube, labels)
        t = torch.view_as_complex(t.reshape(len(t), -1, 2).contiguous())
        return t * (self.rotation_ft(vsini) * self.doppler_ft(rv))

    def to_pixels(self, ft: torch.Tensor) -> torch.Tensor:
        """Line depth (b, n_pix) on the pixels from a depth transform (b, n_freq): LSF, inverse
        FFT, linear resampling (as the renderer does)."""
        depth = torch.fft.irfft(ft * self.lsf, n=self.n_work, dim=-1)
        return ((1.0 - self._f) * depth.index_select(1, self._i0)
                + self._f * depth.index_select(1, self._i0 + 1))

    def light_fraction(self, labels1: torch.Tensor, labels2: torch.Tensor) -> torch.Tensor:
        """Fraction (b,) of the light at 8600 Å from star 2, from both stars' labels (b, 3) via
        the library's main-sequence masses, radii and continua (as the simulator draws it)."""
        p1 = self._interp(self.props, labels1)
        p2 = self._interp(self.props, labels2)
        l1 = p1[:, 0] ** 2 * p1[:, 1]
        l2 = p2[:, 0] ** 2 * p2[:, 1]
        return l2 / (l1 + l2)

    # -- spectra -----------------------------------------------------------------------------
    def single(self, labels: torch.Tensor, vsini: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
        """Normalised flux (b, n_pix) of single stars."""
        return 1.0 - self.to_pixels(self.component_ft(labels, vsini, rv))

    def binary(self, labels1: torch.Tensor, labels2: torch.Tensor, vsini: torch.Tensor,
               rv: torch.Tensor, light_fraction: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised flux (b, n_pix) of two-star blends.

        Parameters
        ----------
        labels1, labels2 : (b, 3) Teff [K], logg [dex], [Fe/H] [dex] of each star
        vsini, rv : (b, 2) [km/s], star 1 first
        light_fraction : (b,) fraction of the light from star 2, or None to derive it from the
            labels (:meth:`light_fraction`)
        """
        if light_fraction is None:
            light_fraction = self.light_fraction(labels1, labels2)
        f2 = light_fraction[:, None]
        ft = ((1.0 - f2) * self.component_ft(labels1, vsini[:, 0], rv[:, 0])
              + f2 * self.component_ft(labels2, vsini[:, 1], rv[:, 1]))
        return 1.0 - self.to_pixels(ft)
