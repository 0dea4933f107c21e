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
from ..simulate.broadening import gaussian_lsf_ft, rotation_kernel_ft
from ..simulate.config import SimulationConfig
from ..simulate.spectra import SpectrumRenderer
from ..simulate.systems import GridSampler

__all__ = ["ForwardModel", "VSINI_MAX", "VSINI_TABLE_STEP", "fill_missing_nodes"]

#: Step [km/s] of the tabulated rotation-kernel transform.
VSINI_TABLE_STEP = 0.25

#: The largest v sin i [km/s] the forward model renders: the simulator's range.
VSINI_MAX = float(SimulationConfig.paper().vsini_range[1])


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
        Real dtype of the computation (the fits use float32: their own arithmetic, the
        continuum, χ² and Fisher matrices, is float64 whatever the model's dtype).
    band_cut : float
        Frequencies where the LSF's transform falls below this are dropped (the renderer keeps
        down to 1e-12); pixel values change by < 1e-7.
    """

    def __init__(self, library: SpectralLibrary, wave: np.ndarray,
                 resolution: float = RVS_RESOLVING_POWER, working_dv: float = 1.0,
                 dtype: torch.dtype = torch.float64, band_cut: float = 1e-6):
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
        # the band the LSF lets through: frequencies where its transform exceeds band_cut
        # (1e-6 keeps 792 of the renderer's 1120 at R = 11 500; pixel values change by < 1e-7)
        # (the instrument's LSF, not the part the renderer adds to a finite-resolution library)
        n_freq = int(np.flatnonzero(gaussian_lsf_ft(renderer.freq, resolution)
                                    > band_cut)[-1]) + 1
        cube = fill_missing_nodes(renderer._cube[..., :n_freq], avail)
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
        freq = renderer.freq[:n_freq]
        self.freq = torch.from_numpy(freq).to(dtype)
        self.lsf = torch.from_numpy(renderer.lsf[:n_freq]).to(dtype)
        self.vsini_max = VSINI_MAX  # config.vsini_range[1]: the paper recipe's range
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
        self._pix = self._pixel_matrix()

    # -- pieces ------------------------------------------------------------------------------
    def _corners(self, labels: torch.Tensor):
        """Trilinear corner indices and weights of ``labels`` (b, 3) = (Teff, logg, [Fe/H]),
        clamped to the grid: indices (b, 3) of the low corner, fractions (b, 3), and the
        fractions' derivatives (b, 3) in each label (0 where the label is clamped)."""
        labels = labels.to(self.dtype)
        lo, frac, dfrac = [], [], []
        for a in range(3):
            nodes = self.nodes[a]
            raw = labels[:, a]
            v = raw.clamp(nodes[0], nodes[-1])
            j = torch.searchsorted(nodes, v.detach().contiguous(), right=True) - 1
            j = j.clamp(0, len(nodes) - 2)
            width = nodes[j + 1] - nodes[j]
            lo.append(j)
            frac.append((v - nodes[j]) / width)
            inside = (raw.detach() >= nodes[0]) & (raw.detach() <= nodes[-1])
            dfrac.append(torch.where(inside, 1.0 / width, torch.zeros_like(width)))
        return torch.stack(lo, 1), torch.stack(frac, 1), torch.stack(dfrac, 1)

    def _corner_rows(self, lo: torch.Tensor) -> torch.Tensor:
        """Flat node indices (b, 8) of the cell corners above the low corners ``lo`` (b, 3)."""
        _, n_g, n_z = self._shape
        bits = self._corner_bits  # (8, 3) of 0/1
        return ((lo[:, None, 0] + bits[:, 0]) * n_g + lo[:, None, 1] + bits[:, 1]) * n_z \
            + lo[:, None, 2] + bits[:, 2]

    def _weights(self, labels: torch.Tensor, derivatives: bool = False):
        """Flat node indices (b, 8) and trilinear weights (b, 8) of ``labels`` (b, 3); with
        ``derivatives`` the weights' derivatives in each label too, stacked after them:
        (b, 4, 8), row 0 the weights, rows 1-3 d/dTeff, d/dlogg, d/d[Fe/H]."""
        labels = labels.to(self.dtype)
        lo, frac, dfrac = self._corners(labels)
        node = self._corner_rows(lo)
        bits = self._corner_bits.bool()
        f = frac[:, None, :]
        g = torch.where(bits, f, 1.0 - f)  # (b, 8, 3): each axis' factor of each corner
        w = g.prod(-1)
        if not derivatives:
            return node, w
        sign = torch.where(bits, 1.0, -1.0).to(labels.dtype)  # d g / d frac
        dw = []
        for a in range(3):
            others = [x for x in range(3) if x != a]
            dw.append(sign[:, a] * g[..., others[0]] * g[..., others[1]] * dfrac[:, a:a + 1])
        return node, torch.stack([w] + dw, 1)

    def _interp(self, table: torch.Tensor, labels: torch.Tensor,
                derivatives: bool = False) -> torch.Tensor:
        """Rows of ``table`` (n_nodes, m), nodes in C order of (Teff, logg, [Fe/H]),
        interpolated trilinearly at ``labels`` (b, 3); returns (b, m), or with
        ``derivatives`` (b, 4, m): the value and its derivatives in Teff, logg, [Fe/H]."""
        node, w = self._weights(labels, derivatives)
        rows = table.index_select(0, node.reshape(-1)).reshape(len(labels), 8, -1)
        # one batched product instead of eight multiply-adds: the interpolation was the largest
        # cost of a fit (forward-mode tangents double every elementwise operation)
        if derivatives:
            return torch.bmm(w, rows)
        return torch.bmm(w[:, None, :], rows)[:, 0]

    def rotation_ft(self, vsini: torch.Tensor, derivative: bool = False):
        """Rotation kernel transform (b, n_freq) at ``vsini`` (b,) [km/s] from the table; with
        ``derivative`` also its derivative in v sin i (0 where v sin i is clamped)."""
        vsini = vsini.to(self.dtype)
        pos = vsini.clamp(0.0, self.vsini_max) / VSINI_TABLE_STEP
        j = pos.detach().floor().long().clamp(0, self.rot_table.shape[0] - 2)
        f = (pos - j)[:, None]
        t0 = self.rot_table.index_select(0, j)
        t1 = self.rot_table.index_select(0, j + 1)
        value = (1.0 - f) * t0 + f * t1
        if not derivative:
            return value
        inside = ((vsini.detach() >= 0.0) & (vsini.detach() <= self.vsini_max))[:, None]
        return value, torch.where(inside, (t1 - t0) / VSINI_TABLE_STEP, torch.zeros_like(t0))

    def doppler_ft(self, rv: torch.Tensor) -> torch.Tensor:
        """Phase factor (b, n_freq) of a relativistic shift by ``rv`` (b,) [km/s], as
        :func:`sb2dask.simulate.broadening.doppler_shift_ft`: x shifts by c·atanh(v/c)."""
        rv = rv.to(self.dtype)
        dx = C_KMS * torch.atanh(rv / C_KMS)
        phase = -2.0 * np.pi * dx[:, None] * self.freq[None, :]
        return torch.polar(torch.ones_like(phase), phase)

    def component_ft(self, labels: torch.Tensor, vsini: torch.Tensor,
                     rv: torch.Tensor) -> torch.Tensor:
        """Line-depth transform (b, n_freq) of stars with ``labels`` (b, 3), ``vsini`` (b,),
        ``rv`` (b,), before the LSF."""
        t = self._interp(self.cube, labels)
        t = torch.view_as_complex(t.reshape(len(t), -1, 2).contiguous())
        return t * (self.rotation_ft(vsini) * self.doppler_ft(rv))

    def component_ft_jac(self, labels: torch.Tensor, vsini: torch.Tensor,
                         rv: torch.Tensor) -> torch.Tensor:
        """:meth:`component_ft` and its derivatives, analytically: (b, 6, n_freq) complex,
        row 0 the transform, rows 1-5 its derivatives in Teff, logg, [Fe/H], v sin i, RV.

        The fits' Jacobians are built from these (:meth:`single_jac`, :meth:`binary_jac`):
        every derivative shares the interpolation's gathered corner rows and the rotation and
        Doppler factors, where forward-mode autodiff recomputed all of them per parameter."""
        b = len(labels)
        t = self._interp(self.cube, labels, derivatives=True)  # (b, 4, 2 n_freq)
        t = torch.view_as_complex(t.reshape(b, 4, -1, 2).contiguous())
        rot, drot = self.rotation_ft(vsini, derivative=True)
        dop = self.doppler_ft(rv)
        rd = rot * dop
        value = t[:, 0] * rd
        # d x / d rv of the relativistic shift, times the phase's -2πi f
        ddx = 1.0 / (1.0 - (rv.to(self.dtype) / C_KMS) ** 2)
        d_rv = value * (-2j * np.pi * self.freq[None, :] * ddx[:, None])
        return torch.cat([value[:, None], t[:, 1:] * rd[:, None], (t[:, 0] * drot * dop)[:, None],
                          d_rv[:, None]], 1)

    def to_pixels(self, ft: torch.Tensor) -> torch.Tensor:
        """Line depth (..., n_pix) on the pixels from depth transforms (..., n_freq): LSF, inverse
        FFT and linear resampling from the working grid, as the renderer does, in one product
        with the precomputed real matrix of that linear map (:meth:`_pixel_matrix`)."""
        re = torch.view_as_real(ft.contiguous()).reshape(*ft.shape[:-1], -1)
        return re @ self._pix

    def _pixel_matrix(self) -> torch.Tensor:
        """The real (2 n_freq, n_pix) matrix taking interleaved (Re, Im) transform coefficients
        to pixel depths: the LSF, ``irfft(·, n_work)`` (only the first n_freq coefficients are
        non-zero: the renderer's band limit) and the linear resampling to the pixels, composed.
        Exact to rounding, and ~5× cheaper than the FFT and gathers it replaces (the inverse
        FFT's length is the working grid's ~10⁴ points; the pixels are ~10³)."""
        k = np.arange(len(self.freq))
        i0 = self._i0.numpy()
        f = self._f.numpy()
        weight = np.where(k == 0, 1.0, 2.0) / self.n_work * self.lsf.numpy().real
        a0 = 2.0 * np.pi * np.outer(k, i0) / self.n_work
        a1 = 2.0 * np.pi * np.outer(k, i0 + 1) / self.n_work
        re = weight[:, None] * ((1.0 - f) * np.cos(a0) + f * np.cos(a1))
        im = -weight[:, None] * ((1.0 - f) * np.sin(a0) + f * np.sin(a1))
        mat = np.stack([re, im], 1).reshape(2 * len(k), len(i0))
        return torch.from_numpy(mat).to(self.dtype)

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
        f2 = light_fraction.to(self.dtype)[:, None]
        ft = ((1.0 - f2) * self.component_ft(labels1, vsini[:, 0], rv[:, 0])
              + f2 * self.component_ft(labels2, vsini[:, 1], rv[:, 1]))
        return 1.0 - self.to_pixels(ft)

    # -- spectra with analytic Jacobians ------------------------------------------------------
    def _luminosity_jac(self, labels: torch.Tensor) -> torch.Tensor:
        """L = R² F_c(8600 Å) (b,) and its derivatives in Teff, logg, [Fe/H]: (b, 4)."""
        p = self._interp(self.props, labels, derivatives=True)  # (b, 4, 2): value, d/dlabel
        r, fc = p[:, 0, 0:1], p[:, 0, 1:2]
        lum = r[:, 0] ** 2 * fc[:, 0]
        dlum = 2.0 * r * fc * p[:, 1:, 0] + r ** 2 * p[:, 1:, 1]
        return torch.cat([lum[:, None], dlum], 1)

    def single_jac(self, labels: torch.Tensor, vsini: torch.Tensor, rv: torch.Tensor):
        """:meth:`single` (b, n_pix) and its Jacobian (b, n_pix, 5) in Teff, logg, [Fe/H],
        v sin i, RV."""
        depth = self.to_pixels(self.component_ft_jac(labels, vsini, rv))  # (b, 6, n_pix)
        return 1.0 - depth[:, 0], -depth[:, 1:].transpose(1, 2)

    def binary_jac(self, labels1: torch.Tensor, labels2: torch.Tensor, vsini: torch.Tensor,
                   rv: torch.Tensor, light_fraction: torch.Tensor | None = None):
        """:meth:`binary` (b, n_pix), its Jacobian and the light fraction of star 2 (b,).

        The Jacobian (b, n_pix, 10) is in star 1's Teff, logg, [Fe/H], v sin i, RV, then star
        2's; with a given ``light_fraction`` an eleventh column holds d/d(light fraction).
        With ``light_fraction=None`` the labels' columns include the light ratio's dependence
        on them (the main-sequence relation of :meth:`light_fraction`); a model sharing one
        [Fe/H] between the stars adds the two [Fe/H] columns (the chain rule).
        """
        b = len(labels1)
        ft = self.to_pixels(torch.cat([self.component_ft_jac(labels1, vsini[:, 0], rv[:, 0]),
                                       self.component_ft_jac(labels2, vsini[:, 1], rv[:, 1])],
                                      1))  # (b, 12, n_pix): depth and derivatives, each star
        d1, d2 = ft[:, 0], ft[:, 6]
        diff = d2 - d1
        if light_fraction is None:
            lum1, lum2 = self._luminosity_jac(labels1), self._luminosity_jac(labels2)
            total = lum1[:, 0] + lum2[:, 0]
            f2 = lum2[:, 0] / total
            # d f2 / d labels of each star (b, 3)
            df1 = -lum2[:, 0:1] * lum1[:, 1:] / total[:, None] ** 2
            df2 = lum1[:, 0:1] * lum2[:, 1:] / total[:, None] ** 2
        else:
            f2 = light_fraction.to(self.dtype)
            df1 = df2 = torch.zeros(b, 3, dtype=ft.dtype)
        w2 = f2[:, None, None]
        cols1 = (1.0 - w2) * ft[:, 1:6]
        cols2 = w2 * ft[:, 7:12]
        cols1[:, :3] += df1[:, :, None] * diff[:, None]
        cols2[:, :3] += df2[:, :, None] * diff[:, None]
        cols = [cols1, cols2]
        if light_fraction is not None:
            cols.append(diff[:, None])
        jac = -torch.cat(cols, 1).transpose(1, 2)
        depth = (1.0 - w2[:, 0]) * d1 + w2[:, 0] * d2
        return 1.0 - depth, jac, f2
