"""Calibrated label uncertainties: the ensembles' spreads recalibrated on held-out spectra.

A two- to four-member ensemble's spread ``s`` is a noisy and far too small estimate of a label's
error: the members share their training set and the biases the networks learn from it (measured
on the shipped models: 7-25 % of the truths within ±1 spread, issue 15). The error model, per
label and component and optionally per S/N bin, is

    σ² = (a·s)² + b²,

with ``a, b ≥ 0`` fitted by minimising the Gaussian negative log-likelihood of the residuals of
held-out spectra (a proper scoring rule: it rewards sharp σ only where they are right). ``b``
carries the error common to all members (bias and the networks' shared limits), ``a`` how much
of the disagreement between members is real. Fitted on a validation split, written as
``calibration.json`` in the model directory, and applied by :class:`sb2dask.infer.predict.ModelSet`
to every ``*_err`` output. Coverage is then checked on a *different* test set
(:func:`coverage_curve`, ``sb2dask evaluate``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CALIBRATION_FILE", "CALIBRATED_LABELS", "ErrorModel", "Calibration",
           "fit_error_model", "fit_calibration", "coverage_curve", "calibrate", "members_digest"]

#: Written beside the manifests of a model directory.
CALIBRATION_FILE = "calibration.json"

#: The labels with a two-component prediction and a spread.
CALIBRATED_LABELS = ("teff", "logg", "feh", "vsini")

#: Central probabilities of the reliability curve (``coverage_curve``).
COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.683, 0.8, 0.9, 0.954, 0.99)


@dataclass(frozen=True)
class ErrorModel:
    """σ = sqrt((a·spread)² + b²), in the label's unit; ``n`` residuals it was fitted to."""

    a: float
    b: float
    n: int = 0

    def sigma(self, spread: np.ndarray) -> np.ndarray:
        # a one-member ensemble has no spread (NaN): σ is then b alone
        s = np.nan_to_num(np.asarray(spread, float), nan=0.0)
        return np.sqrt((self.a * s) ** 2 + self.b ** 2)


def fit_error_model(residual: np.ndarray, spread: np.ndarray, min_n: int = 20) -> ErrorModel:
    """Maximum-likelihood (a, b) of :class:`ErrorModel` for residuals (prediction - truth).

    Raises ``ValueError`` with fewer than ``min_n`` finite pairs (too few to calibrate).
    """
    from scipy.optimize import minimize

    r = np.asarray(residual, float).ravel()
    s = np.nan_to_num(np.asarray(spread, float).ravel(), nan=0.0)
    ok = np.isfinite(r) & np.isfinite(s)
    r, s = r[ok], s[ok]
    if r.size < min_n:
        raise ValueError(f"{r.size} finite residuals; at least {min_n} are needed to calibrate")
    r2, s2 = r ** 2, s ** 2
    scale = float(np.sqrt(np.mean(r2))) or 1.0

    def nll(theta):
        a, b = np.exp(theta)
        var = a * a * s2 + (b * scale) ** 2
        return 0.5 * float(np.mean(np.log(var) + r2 / var))

    # start from "σ = RMSE" (b) and "spread counts fully" (a); a and b are fitted in log space
    # so both stay positive; a can still go to ~0 when the spread carries no information
    best = min((minimize(nll, np.log([a0, b0]), method="Nelder-Mead",
                         options=dict(xatol=1e-4, fatol=1e-7, maxiter=2000))
                for a0, b0 in ((1.0, 0.5), (3.0, 0.1), (0.1, 1.0))), key=lambda m: m.fun)
    a, b = np.exp(best.x)
    return ErrorModel(a=float(a), b=float(b * scale), n=int(r.size))


@dataclass
class Calibration:
    """Error models per label, per component (cooler first) and per bin.

    ``models[label][component][bin]``. The bins are those of the S/N (``snr_edges``, ascending;
    the first and last bins extend to 0 and infinity) crossed with those of the label's predicted
    value (``value_edges[label][component]``, if any; the cooler and the hotter star's values are
    distributed differently): bin ``j = snr_bin * (len(edges) + 1) + value_bin``.
    ``provenance`` says where the calibration came from.
    """

    models: dict[str, list[list[ErrorModel]]]
    snr_edges: list[float] = field(default_factory=list)
    value_edges: dict[str, list[list[float]]] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def bins(self, label: str, snr: np.ndarray | None, value: np.ndarray | None,
             shape: tuple) -> np.ndarray:
        """Bin index (n, 2) of each prediction."""
        j = np.zeros(shape, dtype=np.int64)
        if self.snr_edges and snr is not None:
            # S/N unknown (NaN): the middle bin, not the most optimistic one
            s = np.asarray(snr, float)
            k = np.searchsorted(np.asarray(self.snr_edges, float), s, side="right")
            k[~np.isfinite(s)] = len(self.snr_edges) // 2
            j += k[:, None]
        per_component = self.value_edges.get(label) or []
        if per_component:
            if value is None:
                raise ValueError(f"the calibration of {label} is binned in its predicted value; "
                                 "pass the predictions")
            value = np.nan_to_num(np.asarray(value, float))
            for c, edges in enumerate(per_component):
                j[:, c] = j[:, c] * (len(edges) + 1) + np.searchsorted(
                    np.asarray(edges, float), value[:, c], side="right")
        return j

    def apply(self, label: str, spread: np.ndarray, snr: np.ndarray | None = None,
              value: np.ndarray | None = None) -> np.ndarray:
        """Calibrated σ (n, 2) of ``label`` from the ensemble spread (n, 2), the S/N (n,) and
        the predicted values (n, 2) (the last two where the calibration is binned in them)."""
        spread = np.asarray(spread, float)
        j = self.bins(label, snr, value, spread.shape)
        out = np.empty(spread.shape, float)
        for c, per_bin in enumerate(self.models[label]):
            for k, model in enumerate(per_bin):
                sel = j[:, c] == k
                out[sel, c] = model.sigma(spread[sel, c])
        return out

    def to_dict(self) -> dict:
        return dict(error_model="sigma^2 = (a*spread)^2 + b^2", snr_edges=list(self.snr_edges),
                    value_edges={k: [list(e) for e in v] for k, v in self.value_edges.items()},
                    models={k: [[asdict(m) for m in per_bin] for per_bin in comps]
                            for k, comps in self.models.items()},
                    provenance=self.provenance)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        models = {k: [[ErrorModel(**m) for m in per_bin] for per_bin in comps]
                  for k, comps in d["models"].items()}
        return cls(models=models, snr_edges=list(d.get("snr_edges", [])),
                   value_edges={k: [list(e) for e in v]
                                for k, v in d.get("value_edges", {}).items()},
                   provenance=d.get("provenance", {}))

    @classmethod
    def load(cls, directory: str | Path) -> Calibration | None:
        """The calibration of a model directory, or ``None`` when it has none."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.exists():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a calibration file ({exc})") from None

    def save(self, directory: str | Path) -> Path:
        from ..fileio import atomic_write_json

        path = Path(directory) / CALIBRATION_FILE
        atomic_write_json(path, self.to_dict())
        return path


def fit_calibration(pred: dict, truth: dict, snr: np.ndarray | None = None,
                    snr_edges=(), value_bins: int = 1,
                    labels=CALIBRATED_LABELS) -> Calibration:
    """Fit :class:`ErrorModel` per label, component and bin.

    ``pred`` holds ``label`` and ``label_err`` (the ensemble spread), each (n, 2), as
    :meth:`ModelSet.predict` returns them *before* calibration; ``truth`` the true labels (n, 2).
    ``value_bins`` > 1 also bins each label in its predicted value, at quantiles of the
    calibration rows, per component (so every bin holds as many): errors depend on where in the
    label range a prediction lies (e.g. small v sin i are overestimated), which one width cannot
    say.
    """
    edges = [float(e) for e in snr_edges]
    if edges and snr is None:
        raise ValueError("S/N bins need the S/N of every spectrum")
    cal = Calibration(models={}, snr_edges=edges)
    for label in labels:
        value = np.asarray(pred[label], float)
        if value_bins > 1:
            q = np.nanquantile(value, np.arange(1, value_bins) / value_bins, axis=0)  # (k-1, 2)
            cal.value_edges[label] = [[float(x) for x in np.unique(q[:, c])]
                                      for c in range(value.shape[1])]
        resid = value - np.asarray(truth[label], float)
        spread = np.asarray(pred[f"{label}_err"], float)
        j = cal.bins(label, snr, value, value.shape)
        cal.models[label] = []
        for c in range(resid.shape[1]):
            n_val = len(cal.value_edges[label][c]) + 1 if label in cal.value_edges else 1
            n_bins = (len(edges) + 1) * n_val
            cal.models[label].append([_fit_bin(
                resid[j[:, c] == k, c], spread[j[:, c] == k, c],
                f"{label}, component {c + 1}, bin {k + 1} of {n_bins}") for k in range(n_bins)])
    return cal


def _fit_bin(residual: np.ndarray, spread: np.ndarray, where: str) -> ErrorModel:
    try:
        return fit_error_model(residual, spread)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}; use fewer bins (--value-bins, --snr-edges) or more "
                         "rows") from None


def coverage_curve(residual: np.ndarray, sigma: np.ndarray,
                   levels=COVERAGE_LEVELS) -> list[dict]:
    """Reliability curve: for each central probability ``p``, the fraction of residuals within
    the Gaussian interval holding ``p`` (±z·σ, z = Φ⁻¹((1+p)/2)). Calibrated: fraction ≈ p."""
    from scipy.stats import norm

    r = np.abs(np.asarray(residual, float)).ravel()
    s = np.asarray(sigma, float).ravel()
    ok = np.isfinite(r) & np.isfinite(s) & (s > 0)
    z = r[ok] / s[ok]
    return [dict(level=float(p), z=float(norm.ppf(0.5 + p / 2)),
                 fraction=float(np.mean(z <= norm.ppf(0.5 + p / 2))) if z.size else float("nan"))
            for p in levels]


def members_digest(manifests: dict) -> str:
    """One hash of the networks a calibration was fitted with: every member's name and weights
    hash (``ModelSet.manifests``). A calibration applies to exactly these members: another
    member count changes the spread it was fitted on."""
    import hashlib

    recs = sorted(f"{m['name']}:{m['weights_sha256']}" for ms in manifests.values() for m in ms)
    return hashlib.sha256("\n".join(recs).encode()).hexdigest()


def _save_predictions(path, pred: dict, truth: dict, meta: dict) -> None:
    from ..fileio import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, meta=json.dumps(meta, default=str),
                 **{f"pred__{k}": v for k, v in pred.items()},
                 **{f"truth__{k}": v for k, v in truth.items()})


def _load_predictions(path, key: dict, weights: str):
    """``(pred, truth, meta)`` from a cache written for ``key`` and the members whose
    :func:`members_digest` is ``weights``, or None (absent or stale: predicted again)."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        if any(meta.get(k) != v for k, v in key.items()):
            return None
        if meta.get("weights") != weights:
            return None
        pred = {k[6:]: z[k] for k in z.files if k.startswith("pred__")}
        truth = {k[7:]: z[k] for k in z.files if k.startswith("truth__")}
    return pred, truth, meta


def _within(residual: np.ndarray, sigma: np.ndarray) -> list[float]:
    """Fractions within ±1σ and ±2σ, rounded (for the command's summary)."""
    from ..evaluate.metrics import interval_coverage

    c = interval_coverage(residual, sigma, np.zeros_like(residual))
    return [round(c["within_1sigma"], 3), round(c["within_2sigma"], 3)]


def calibrate(model_dir: str | Path, store: str | Path, split: str = "validation",
              max_n: int | None = None, snr_edges=(), value_bins: int = 1,
              rest_frame: str = "auto", write: bool = True,
              predictions: str | Path | None = None) -> dict:
    """Predict the SB2s of ``split`` of ``store`` with the uncalibrated ensembles of
    ``model_dir``, fit the :class:`Calibration` and (``write``) save it there.

    The store must be of the recipe the models will meet (its ``validation`` split when it is the
    models' own training store: those rows never trained them) and must not be the store the
    calibration is later tested on. Returns the calibration's dictionary with a summary of the
    fit (coverage at ±1σ/±2σ on the calibration rows themselves, before and after).

    ``predictions`` (``.npz``) caches the uncalibrated predictions: written after predicting,
    reused when it holds those of the same store, split, rows, frame and model weights, so other
    binnings are fitted in seconds.
    """
    from ..dataset.store import store_fingerprint
    from ..evaluate.report import _predict_split
    from ..infer.config import InferenceConfig
    from ..infer.predict import get_model_set, resolve_model_dir
    from ..provenance import package_versions, utc_now

    t0 = time.perf_counter()
    model_dir = resolve_model_dir(model_dir)
    if any(Path(model_dir).glob("student-*.json")):
        raise ValueError(f"{model_dir} holds a student, whose widths are calibrated when it is "
                         "trained (its manifest); calibrate applies to ensembles")
    edges = [float(e) for e in snr_edges]
    if edges != sorted(set(edges)):
        raise ValueError(f"--snr-edges must be strictly increasing, got {edges}")
    fp = store_fingerprint(store)
    key = dict(store_sha256=fp["sha256"], split=split, max_n=max_n, rest_frame=rest_frame)
    weights = members_digest(get_model_set(InferenceConfig(model_dir=model_dir,
                                                           rest_frame=rest_frame)).manifests)
    cached = _load_predictions(predictions, key, weights) if predictions else None
    if cached is None:
        fields = list(CALIBRATED_LABELS) + ["snr", "is_binary"]
        data, pred, models, _ = _predict_split(store, model_dir, split, max_n, fields,
                                               rest_frame, calibrated=False)
        b = np.asarray(data.labels["is_binary"], bool)
        pred = {k: v[b] for k, v in pred.items() if k.split("_")[0] in CALIBRATED_LABELS}
        truth = {k: np.asarray(v)[b] for k, v in data.labels.items()}
        meta = dict(key, frame=data.frame, models=models.provenance, weights=weights)
        if predictions:
            _save_predictions(predictions, pred, truth, meta)
    else:
        pred, truth, meta = cached
    if len(truth["snr"]) < 20:
        raise ValueError(f"{store}: split {split!r} holds {len(truth['snr'])} SB2s; at least 20 "
                         "are needed to calibrate")
    cal = fit_calibration(pred, truth, truth["snr"], edges, value_bins)
    cal.provenance = dict(store=fp["path"], store_sha256=fp["sha256"], store_seed=fp["seed"],
                          split=split, n=len(truth["snr"]), rest_frame=rest_frame,
                          frame=meta["frame"], models=meta["models"], members_digest=weights,
                          versions=package_versions("torch"), created=utc_now())
    summary = {}
    # coverage by S/N tertile of the calibration rows: whether one S/N bin is enough
    snr = truth["snr"]
    tertiles = np.quantile(snr, [0, 1 / 3, 2 / 3, 1]) if snr.size else np.zeros(4)
    for label in CALIBRATED_LABELS:
        resid = pred[label] - truth[label]
        sig = cal.apply(label, pred[f"{label}_err"], snr, pred[label])
        row = dict(spread=_within(resid, pred[f"{label}_err"]), calibrated=_within(resid, sig),
                   calibrated_by_snr={})
        for lo, hi in zip(tertiles[:-1], tertiles[1:]):
            sel = (snr >= lo) & (snr <= hi)
            row["calibrated_by_snr"][f"{lo:.0f}-{hi:.0f}"] = _within(resid[sel], sig[sel])
        summary[label] = row
    if write:
        cal.save(model_dir)
        from ..infer.predict import forget_model_sets

        forget_model_sets()  # this process's cached model sets would not see the new file
    out = cal.to_dict()
    out["fit_summary"] = summary
    out["seconds"] = time.perf_counter() - t0
    return out
