"""Coarse correlation scans that start the fits' radial velocities (TODCOR-like, batched).

A network start can be wrong by more than a line width, and a least-squares fit started there
stays in the wrong valley. Before fitting, each spectrum is therefore scanned over a velocity
grid: one template per star (the networks' labels, rendered by the forward model at rest), moved
by whole steps of the working ln(λ) grid (a Doppler shift is a translation there), and the
observed line depth ``1 - flux`` is regressed on the template depths at every velocity (single
star) or every velocity pair (two stars). Both sides are mean-subtracted over the used pixels, so
a constant continuum error does not bias the scan. The two-star scan is Zucker & Mazeh's (1994)
TODCOR in least-squares form: with ``Y_k = <y, d_k(v_k)>``, ``S_kl = <d_k(v_k), d_l(v_l)>`` the
amplitudes ``(a_1, a_2) = S⁻¹ Y`` and the χ² gain ``Yᵀ S⁻¹ Y`` are evaluated for every pair at
once; pairs with a negative amplitude are not physical and are skipped.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import ForwardModel

__all__ = ["velocity_grid", "scan_single", "scan_binary"]


def velocity_grid(rv_max: float, step: float, model: ForwardModel) -> np.ndarray:
    """Velocities [km/s] from ``-rv_max`` to ``rv_max`` in whole working-grid steps near
    ``step``."""
    n = max(1, int(round(step / model.working_dv)))
    k = int(np.floor(rv_max / (n * model.working_dv)))
    return np.arange(-k, k + 1) * n * model.working_dv


def _shifted_depths(model: ForwardModel, labels: torch.Tensor, vsini: torch.Tensor,
                    grid: np.ndarray) -> torch.Tensor:
    """Template line depths (b, g, n_pix) at every velocity of ``grid``: one render at rest,
    then translations by whole working-grid samples."""
    zero = torch.zeros(len(labels), dtype=model.dtype)
    ft = model.component_ft(labels, vsini, zero) * model.lsf
    depth = torch.fft.irfft(ft, n=model.n_work, dim=-1)  # (b, n_work), periodic
    shift = torch.from_numpy(np.round(grid / model.working_dv).astype(np.int64))
    idx = (model._i0[None, :] - shift[:, None]) % model.n_work  # (g, n_pix)
    f = model._f
    d0 = depth[:, idx]
    d1 = depth[:, (idx + 1) % model.n_work]
    return (1.0 - f) * d0 + f * d1


def _centre(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x`` (b, ..., n) minus its ``w``-weighted mean over the last axis (w: (b, n))."""
    wn = w / w.sum(-1, keepdim=True)
    shape = (len(w),) + (1,) * (x.ndim - 2) + (w.shape[-1],)
    mean = (x * wn.reshape(shape)).sum(-1, keepdim=True)
    return x - mean


def scan_single(model: ForwardModel, flux: torch.Tensor, weight: torch.Tensor,
                labels: torch.Tensor, vsini: torch.Tensor, grid: np.ndarray) -> torch.Tensor:
    """Best velocity (b,) [km/s] of one template per spectrum over ``grid``.

    Parameters
    ----------
    flux, weight : (b, n_pix) observed normalised flux and inverse variances (0 = masked)
    labels : (b, 3) Teff, logg, [Fe/H] of the template; vsini (b,) [km/s]
    """
    y = _centre(1.0 - flux, weight)
    d = _centre(_shifted_depths(model, labels, vsini, grid), weight)
    wd = d * weight[:, None, :]
    yk = (wd * y[:, None, :]).sum(-1)
    s = (wd * d).sum(-1)
    gain = torch.where(yk > 0, yk ** 2 / s.clamp_min(1e-30), torch.zeros_like(yk))
    return torch.from_numpy(grid)[gain.argmax(1)].to(model.dtype)


def scan_binary(model: ForwardModel, flux: torch.Tensor, weight: torch.Tensor,
                labels1: torch.Tensor, labels2: torch.Tensor, vsini: torch.Tensor,
                grid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best velocity pair of two templates per spectrum (two-dimensional scan over ``grid``²).

    Returns
    -------
    rv : (b, 2) [km/s], star 1 first
    light_fraction : (b,) ``a_2 / (a_1 + a_2)`` at the best pair, a start for a free light
        ratio (0.5 where no pair has two positive amplitudes)
    swap_deficit : (b,) how much less the pair swapped between the templates explains (χ²
        units; 0 when it explains as much or no valid pair exists, inf when the swapped pair
        is not physical: a negative amplitude or singular): small where the scan cannot tell
        which star is at which velocity
    """
    y = _centre(1.0 - flux, weight)
    d1 = _centre(_shifted_depths(model, labels1, vsini[:, 0], grid), weight)
    d2 = _centre(_shifted_depths(model, labels2, vsini[:, 1], grid), weight)
    w = weight[:, None, :]
    y1 = (d1 * w * y[:, None, :]).sum(-1)  # (b, g)
    y2 = (d2 * w * y[:, None, :]).sum(-1)
    s11 = (d1 * w * d1).sum(-1)
    s22 = (d2 * w * d2).sum(-1)
    s12 = torch.einsum("bgn,bhn->bgh", d1 * w, d2)  # (b, g1, g2)
    a11, a22 = s11[:, :, None], s22[:, None, :]
    det = a11 * a22 - s12 ** 2
    # near-identical templates at the same velocity make S singular: no pair to resolve there
    ok_det = det > 1e-6 * a11 * a22
    det = torch.where(ok_det, det, torch.ones_like(det))
    y1g, y2g = y1[:, :, None], y2[:, None, :]
    amp1 = (y1g * a22 - y2g * s12) / det
    amp2 = (y2g * a11 - y1g * s12) / det
    gain = amp1 * y1g + amp2 * y2g
    valid = ok_det & (amp1 > 0) & (amp2 > 0)
    gain = torch.where(valid, gain, torch.full_like(gain, -np.inf))
    best = gain.reshape(len(gain), -1).argmax(1)
    g = len(grid)
    i1, i2 = best // g, best % g
    v = torch.from_numpy(grid).to(model.dtype)
    rows = torch.arange(len(gain))
    a1, a2 = amp1[rows, i1, i2], amp2[rows, i1, i2]
    found = valid[rows, i1, i2]
    frac = torch.where(found, a2 / (a1 + a2), torch.full_like(a1, 0.5))
    swapped = gain[rows, i2, i1]
    deficit = torch.where(found & torch.isfinite(swapped), gain[rows, i1, i2] - swapped,
                          torch.where(found, torch.full_like(a1, np.inf), torch.zeros_like(a1)))
    # no valid pair (a featureless spectrum): both stars at the single-template optimum
    single = torch.where(y1 > 0, y1 ** 2 / s11.clamp_min(1e-30), torch.zeros_like(y1))
    v0 = v[single.argmax(1)]
    rv1 = torch.where(found, v[i1], v0)
    rv2 = torch.where(found, v[i2], v0)
    return torch.stack([rv1, rv2], 1), frac, deficit.clamp_min(0.0)
