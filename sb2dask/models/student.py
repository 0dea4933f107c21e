"""The distilled one-pass student: one small network for every label of an SB2 epoch spectrum.

One forward pass of :class:`StudentNet` gives what the model set's nine networks give together
(the detector's p_binary; both components' Teff, log g, [Fe/H] and v sin i) plus the light
fraction of the fainter star, and a width (standard deviation) for every regression output,
at ~2 % of their arithmetic (:data:`MAX_MFLOP`, measured by :func:`count_flops`)::

    stem      Conv(1→16, k7, s2, p3) - BN - ReLU                           903 → 452 pixels
    stage 1   ResBlock(16→32, k5, stride 2)                                452 → 226
    stage 2   ResBlock(32→48, k3, stride 2)                                226 → 113
    stage 3   ResBlock(48→64, k3, stride 2)                                113 → 57
    squeeze   Conv1×1(64→24) - BN - ReLU, flatten (24 × 57: keeps where the lines are)
    trunk FC  Linear(1368→256) - ReLU
    heads     Linear(256→1)  logit of p_binary
              Linear(256→9)  means: teff, logg, feh, vsini of both components (cooler first,
                             scaled to [0, 1] by the ranges of Table 1) and the light fraction
              Linear(256→9)  log widths of the same nine, in the same scaled units

A ResBlock is Conv(k, stride) - BN - ReLU - Conv(k) - BN plus a 1×1 strided projection of its
input, then ReLU (He et al. 2016, as :class:`~sb2dask.models.detector.BinaryDetector`). The
squeeze-and-flatten end, rather than global average pooling, keeps the wavelength of each
feature: the labels are read from which lines are where, and pooling would have to re-learn
that from the channels.

``bridged`` windows (pixel ranges ``[i0, i1)``, in the architecture's keyword arguments, so the
manifest carries them) are replaced, before the stem, by the straight line between the pixels
that bound them: the network cannot see what lies inside. :func:`ca_ii_core_windows` gives the
Ca II triplet's cores, where the LTE library is known not to describe real stars
(chromospheric infill; docs/library.md), for a student made blind to them
(``sb2dask finetune --bridge-ca-ii``).

The components are ordered as everywhere in the package (:mod:`sb2dask.labels`): component 1 is
the cooler star. :func:`decode` sorts each output pair by Teff (as
:func:`~sb2dask.models.predict.sort_pairs` does for the ensembles), unscales, and applies the
width calibration found on the validation split (:func:`width_scales`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..labels import PARAMETERS, TABLE1_RANGES
from .layers import Ops, run_with_float32_stem
from .predict import sort_pairs

__all__ = ["StudentNet", "OUTPUTS", "MAX_MFLOP", "count_flops", "decode", "scaled_targets",
           "width_scales", "balanced_logit_offset", "SNR_EDGES", "ENSEMBLE_CALIBRATION_FILE",
           "snr_bins", "decoded_z", "scale_decoded_widths", "ca_ii_core_windows"]

#: The regression outputs in head order: each label for components 1 and 2 (cooler first),
#: then the light fraction of the fainter star (of the 8600 Å continuum; unscaled, in [0, 0.5]).
OUTPUTS = tuple(f"{k}_{c}" for k in PARAMETERS for c in (1, 2)) + ("light_fraction_faint",)

#: The issue's bound on the student's arithmetic per spectrum (multiply and add counted as two).
MAX_MFLOP = 15.0

#: S/N bin edges of the width calibration (the realistic recipe draws S/N 30-350; the first and
#: last bins are open).
SNR_EDGES = (60.0, 120.0)

#: The width calibration of a student ensemble as a whole (a directory of several students,
#: :class:`~sb2dask.infer.predict.ModelSet`), written by
#: :func:`sb2dask.train.distill.calibrate_student_ensemble`: the members' mixture width
#: over-covers (each member's width is calibrated alone, and the mixture adds the spread of
#: their means), so the directory carries its own factors.
ENSEMBLE_CALIBRATION_FILE = "students.json"


class _ResBlock(nn.Module):
    def __init__(self, ops: Ops, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.conv1 = ops.conv(cin, cout, k, stride=stride, padding=k // 2)
        self.bn1 = ops.bn(cout)
        self.conv2 = ops.conv(cout, cout, k, padding=k // 2)
        self.bn2 = ops.bn(cout)
        self.shortcut = nn.Sequential(ops.conv(cin, cout, 1, stride=stride), ops.bn(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class StudentNet(nn.Module):
    """Spectrum ``(N, n_pix)`` → ``(logit (N,), means (N, 9), log widths (N, 9))``.

    Means and log widths are in scaled units (:func:`scaled_targets`), in the order of
    :data:`OUTPUTS`; ``torch.sigmoid(logit)`` is p_binary.
    """

    def __init__(self, layout: str = "1d", n_pix: int = 903, channels=(16, 32, 48, 64),
                 squeeze: int = 24, hidden: int = 256, bridged=()):
        super().__init__()
        ops = Ops(layout)
        self.ops = ops
        self.set_bridged(bridged, n_pix)
        c0, c1, c2, c3 = channels
        self.features = nn.Sequential(
            ops.conv(1, c0, 7, stride=2, padding=3), ops.bn(c0), nn.ReLU(),
            _ResBlock(ops, c0, c1, 5, 2), _ResBlock(ops, c1, c2, 3, 2),
            _ResBlock(ops, c2, c3, 3, 2),
            ops.conv(c3, squeeze, 1), ops.bn(squeeze), nn.ReLU(), nn.Flatten())
        length = n_pix
        for _ in range(4):  # the four stride-2 stages
            length = (length + 1) // 2
        self.trunk = nn.Sequential(nn.Linear(squeeze * length, hidden), nn.ReLU())
        n_out = len(OUTPUTS)
        self.p_binary = nn.Linear(hidden, 1)
        self.mean = nn.Linear(hidden, n_out)
        self.log_width = nn.Linear(hidden, n_out)

    def set_bridged(self, windows, n_pix: int | None = None) -> None:
        """Bridge the pixel ``windows`` (``[i0, i1)`` pairs, ``0 < i0 < i1 < n_pix``, neither
        overlapping nor touching; empty: none) from now on: each pixel inside becomes the
        linear interpolation between pixels ``i0 - 1`` and ``i1``. Fixed, not learned; the
        weights are unchanged."""
        n_pix = n_pix if n_pix is not None else self._n_pix
        self._n_pix = int(n_pix)
        self.bridged = [[int(a), int(b)] for a, b in windows]
        idx, left, right, t = [], [], [], []
        for a, b in self.bridged:
            if not 0 < a < b < n_pix:
                raise ValueError(f"bridged window [{a}, {b}) must lie inside (0, {n_pix - 1})")
            for i in range(a, b):
                idx.append(i)
                left.append(a - 1)
                right.append(b)
                t.append((i - a + 1) / (b - a + 1))
        spans = sorted(self.bridged)
        if any(b0 >= a1 for (_, b0), (a1, _) in zip(spans, spans[1:])):
            # touching windows would take an anchor from inside the next one
            raise ValueError(f"bridged windows {self.bridged} overlap or touch")
        # on the device of the weights, when there are any yet
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        for name, v, dtype in (("_bridge_idx", idx, torch.long), ("_bridge_left", left, torch.long),
                               ("_bridge_right", right, torch.long),
                               ("_bridge_t", t, torch.float32)):
            self.register_buffer(name, torch.tensor(v, dtype=dtype, device=device),
                                 persistent=False)

    def bridge(self, spectra: torch.Tensor) -> torch.Tensor:
        """``spectra`` ``(N, n_pix)`` with the :attr:`bridged` windows replaced (a new tensor;
        the input itself when there are none)."""
        if not self.bridged:
            return spectra
        t = self._bridge_t.to(spectra.dtype)
        out = spectra.clone()
        out[:, self._bridge_idx] = ((1 - t) * spectra[:, self._bridge_left]
                                    + t * spectra[:, self._bridge_right])
        return out

    def forward(self, spectra: torch.Tensor):
        return self.heads(self.embed(spectra))

    def embed(self, spectra: torch.Tensor) -> torch.Tensor:
        """Trunk features ``(N, hidden)`` of spectra ``(N, n_pix)``: what the heads read and the
        out-of-distribution distance is measured on."""
        x = self.bridge(spectra)
        return self.trunk(run_with_float32_stem(self.features, self.ops.prepare(x)))

    def heads(self, h: torch.Tensor):
        """The three heads on trunk features ``h`` ``(N, hidden)`` (what the out-of-distribution
        distance is measured on)."""
        # widths from 0.1 % to e^2 of the label range: bounded, so a NLL step cannot blow up
        return (self.p_binary(h).squeeze(1), self.mean(h),
                torch.clamp(self.log_width(h), -7.0, 2.0))


def ca_ii_core_windows(wave: np.ndarray, half_width: float) -> list[list[int]]:
    """Pixel windows ``[i0, i1)`` of ``wave`` (air Å, the students' rest-frame grid) within
    ``half_width`` Å of each Ca II triplet line, for :meth:`StudentNet.set_bridged`."""
    from ..simulate.realism import ca_ii_distance

    if not half_width > 0:
        raise ValueError(f"half_width must be > 0 Å, got {half_width}")
    inside = np.r_[False, ca_ii_distance(wave) <= half_width, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(inside))  # starts and ends of the runs, alternating
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]


def count_flops(model: nn.Module, n_pix: int = 903, batch: int = 8) -> float:
    """Floating-point operations per spectrum of one forward pass (torch's
    :class:`~torch.utils.flop_counter.FlopCounterMode`: a multiply-add is 2; convolutions and
    matrix products only, which is ~all of it)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.ones(batch, n_pix))
    return counter.get_total_flops() / batch


def _scaling(output: str) -> tuple[float, float]:
    if output == "light_fraction_faint":
        return 0.0, 1.0
    return TABLE1_RANGES[output.rsplit("_", 1)[0]]


def scaled_targets(labels: dict) -> np.ndarray:
    """Truths in the student's scaled units, ``(n, 9)`` float32 in :data:`OUTPUTS` order, from
    store labels (``teff``... ``(n, 2)`` cooler first; ``light_fraction`` ``(n, 2)``). NaN
    where a label is undefined (single stars)."""
    cols = []
    for name in OUTPUTS:
        if name == "light_fraction_faint":
            v = np.min(labels["light_fraction"], axis=1)
        else:
            key, comp = name.rsplit("_", 1)
            v = labels[key][:, int(comp) - 1]
        lo, hi = _scaling(name)
        cols.append((np.asarray(v, np.float64) - lo) / (hi - lo))
    return np.stack(cols, axis=1).astype(np.float32)


def width_scales(z: np.ndarray, snr: np.ndarray, edges=SNR_EDGES) -> np.ndarray:
    """Per-output, per-S/N-bin factors that make the widths cover the truths.

    ``z`` ``(n, 9)`` are the standardised errors (truth - mean) / width on the validation
    split; the factor of a bin is the 68.27th percentile of ``|z|`` there, so 68 % of the
    rescaled errors fall within ±1 width (the 2σ coverage then follows the error distribution's
    shape). Returns ``(len(edges) + 1, 9)``; 1 where a bin has fewer than 50 finite values.
    Rows of unknown (NaN) S/N count in the middle bin, as :func:`decode` applies it.
    """
    bins = snr_bins(snr, edges, len(edges) + 1)
    out = np.ones((len(edges) + 1, z.shape[1]))
    for b in range(len(edges) + 1):
        for j in range(z.shape[1]):
            v = np.abs(z[bins == b, j])
            v = v[np.isfinite(v)]
            if len(v) >= 50:
                out[b, j] = float(np.quantile(v, 0.6827))
    return out


def snr_bins(snr, edges, n_bins: int, n: int | None = None) -> np.ndarray:
    """The calibration bin of each spectrum's S/N (``edges`` as :data:`SNR_EDGES`; NaN, or
    ``snr`` None for ``n`` spectra: the middle bin), clipped to ``n_bins``."""
    snr = np.full(n, np.nan) if snr is None else np.asarray(snr, np.float64)
    mid = np.full(len(snr), n_bins // 2)
    b = np.where(np.isfinite(snr), np.searchsorted(np.asarray(edges), snr), mid)
    return np.clip(b, 0, n_bins - 1)


def decoded_z(pred: dict, truth: dict) -> np.ndarray:
    """Standardised errors ``(truth - mean) / width``, ``(n, 9)`` in :data:`OUTPUTS` order, of
    predictions in the decoded layout (:func:`decode`'s keys and ``_err`` widths, component 1
    the cooler) against truths in the same layout (each sorted by its own Teff)."""
    cols = []
    for name in OUTPUTS:
        if name == "light_fraction_faint":
            cols.append((truth[name] - pred[name]) / pred[f"{name}_err"])
        else:
            key, comp = name.rsplit("_", 1)
            c = int(comp) - 1
            cols.append((truth[key][:, c] - pred[key][:, c]) / pred[f"{key}_err"][:, c])
    return np.stack(cols, axis=1)


def scale_decoded_widths(pred: dict, scales: np.ndarray, snr, edges) -> dict:
    """``pred`` (decoded layout) with every ``_err`` width multiplied by its output's factor in
    its S/N bin (``scales`` ``(n_bins, 9)`` of :func:`width_scales`, :data:`OUTPUTS` order);
    the other keys unchanged. Returns a new dict."""
    scales = np.asarray(scales, np.float64)
    n = len(pred["p_binary"])
    f = scales[snr_bins(snr, edges, len(scales), n)]  # (n, 9)
    out = dict(pred)
    for key in PARAMETERS:
        j = OUTPUTS.index(f"{key}_1")
        out[f"{key}_err"] = pred[f"{key}_err"] * f[:, j:j + 2]
    j = OUTPUTS.index("light_fraction_faint")
    out["light_fraction_faint_err"] = pred["light_fraction_faint_err"] * f[:, j]
    return out


def class_balance(truth: np.ndarray, keep: np.ndarray | None = None,
                  strata: np.ndarray | None = None, who: str = "the fit") -> np.ndarray:
    """Per-row factors (n,) that balance the classes as the detectors' loss does: n_neg / n_pos
    on the positives, 1 on the negatives, counted among the rows ``keep`` (bool (n,); default
    all) of each stratum (``strata`` (n,) labels; default one). Every stratum needs both classes
    among its kept rows (``who`` names the caller in the error)."""
    y = np.asarray(truth, bool)
    keep = np.ones(len(y), bool) if keep is None else np.asarray(keep, bool)
    groups = np.zeros(len(y), int) if strata is None else np.asarray(strata)
    if groups.shape != y.shape:
        raise ValueError(f"strata has shape {groups.shape}, the rows {y.shape}")
    ratio = np.ones(len(y))
    for g in np.unique(groups):
        m = keep & (groups == g)
        n_pos, n_neg = int((y & m).sum()), int((~y & m).sum())
        if n_pos == 0 or n_neg == 0:
            where = "" if strata is None else f" in stratum {g}"
            raise ValueError(f"{who} needs positives and negatives{where} "
                             f"({n_pos} and {n_neg})")
        ratio[(groups == g) & y] = n_neg / n_pos
    return ratio


def balanced_logit_offset(logit: np.ndarray, truth: np.ndarray,
                          strata: np.ndarray | None = None) -> float:
    """The constant ``b`` that makes ``sigmoid(logit + b)`` the posterior for a prior of 0.5:
    the minimum of the class-balanced cross-entropy (positives weighted by n_neg / n_pos, as the
    detectors' own loss weights them, :func:`sb2dask.train.fit.training_loss`) over ``b``.

    The student's p_binary is fitted on rows whose share of positives is its store's (27 % for
    ``double_lined`` on a half-binary store) against a blend with teachers whose output has
    prior 0.5, so its raw logit carries a prior in between; the per-source evidence
    (:mod:`sb2dask.infer.sources`) and every threshold assume the 0.5 of the detectors.
    ``logit`` (n,), ``truth`` bool (n,) with both classes present. ``strata`` (n,): balance
    the classes within each stratum (each needs both) instead of over all rows, as
    :func:`sb2dask.train.head.fit_logistic_head` does with the same argument; only the
    strata present in ``strata`` count (one with no rows here is not checked)."""
    from scipy.optimize import brentq
    from scipy.special import expit

    z = np.asarray(logit, np.float64)
    y = np.asarray(truth, bool)
    w = class_balance(y, strata=strata, who="balanced_logit_offset")

    def grad(b):  # of the convex loss: increasing in b, one root
        return float(np.sum(w * (expit(z + b) - y)))

    span = float(np.max(np.abs(z))) + 50.0  # the root lies inside: grad(−span) < 0 < grad(span)
    return float(brentq(grad, -span, span, xtol=1e-10))


def decode(logit: np.ndarray, mean: np.ndarray, log_width: np.ndarray,
           snr: np.ndarray | None = None, scales: np.ndarray | None = None,
           edges=SNR_EDGES, logit_offset: float = 0.0) -> dict[str, np.ndarray]:
    """Network outputs → labels in physical units, in the ensembles' layout.

    Parameters
    ----------
    logit : (n,) ; mean, log_width : (n, 9), scaled, :data:`OUTPUTS` order
    snr : (n,) S/N of each spectrum, selects the calibration bin (NaN: the middle bin)
    scales : (n_bins, 9) width factors of :func:`width_scales` (None: uncalibrated)
    logit_offset : added to ``logit`` before the sigmoid (:func:`balanced_logit_offset`)

    Returns
    -------
    dict
        ``p_binary`` (n,); ``teff``, ``logg``, ``feh``, ``vsini`` and their ``_err`` (n, 2),
        ordered by the predicted Teff, cooler first; ``light_fraction_faint`` and its ``_err``
        (n,). Units: K, dex, dex, km/s.
    """
    mean = np.asarray(mean, np.float64)
    width = np.exp(np.asarray(log_width, np.float64))
    if scales is not None:
        scales = np.asarray(scales, np.float64)
        width = width * scales[snr_bins(snr, edges, len(scales), len(mean))]
    out = {"p_binary": 1.0 / (1.0 + np.exp(-(np.asarray(logit, np.float64) + logit_offset)))}
    phys, err = {}, {}
    for j, name in enumerate(OUTPUTS):
        lo, hi = _scaling(name)
        phys[name] = lo + mean[:, j] * (hi - lo)
        err[name] = width[:, j] * (hi - lo)
    teff = np.stack([phys["teff_1"], phys["teff_2"]], axis=1)
    others = []
    for k in PARAMETERS:
        others += [np.stack([phys[f"{k}_1"], phys[f"{k}_2"]], axis=1),
                   np.stack([err[f"{k}_1"], err[f"{k}_2"]], axis=1)]
    # the heads were trained cooler first; a pair the network gets the wrong way round is
    # swapped, labels and widths together, so component 1 is always the cooler one
    _, *sorted_ = sort_pairs(teff, *others)
    for i, k in enumerate(PARAMETERS):
        out[k], out[f"{k}_err"] = sorted_[2 * i], sorted_[2 * i + 1]
    out["light_fraction_faint"] = np.clip(phys["light_fraction_faint"], 0.0, 0.5)
    out["light_fraction_faint_err"] = err["light_fraction_faint"]
    return out
