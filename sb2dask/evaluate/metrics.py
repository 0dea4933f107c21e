"""Pure metrics of the paper's evaluation (Binnenfeld et al. 2025, Sect. 4) and of the detector
(Jing et al. 2024/25)."""

from __future__ import annotations

import numpy as np

from ..stats import roc_auc

__all__ = ["PAPER_TABLE4", "PAPER_TABLE5", "SNR_BINS", "DR4_AUC_TARGETS", "rmse_mae",
           "binned_errors", "randomization_test", "roc_auc", "precision_at", "detector_metrics",
           "interval_coverage"]

#: Table 4 of the paper: (RMSE, MAE) per parameter.
PAPER_TABLE4 = {"teff": (393.9, 283.3), "logg": (0.48, 0.32), "feh": (0.79, 0.48),
                "vsini": (22.4, 15.4)}
#: Table 5: (RMSE, MAE) of the difference between the components.
PAPER_TABLE5 = {"teff": (678.1, 536.2), "logg": (0.79, 0.54), "feh": (1.73, 1.29),
                "vsini": (35.5, 27.3)}

#: Edges of the per-S/N evaluation (issue 11: DR4 transits sit at S/N 5-130, the paper's
#: training floor is 30).
SNR_BINS = (5.0, 10.0, 20.0, 50.0, 130.0, float("inf"))

#: Issue 11's detector targets for the paper's SB2 population: (S/N low, high) -> ROC AUC.
DR4_AUC_TARGETS = {(10.0, 20.0): 0.90, (20.0, 50.0): 0.97}


def rmse_mae(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """sqrt(MSE) and MAE over all finite pairs (both components pooled)."""
    d = (np.asarray(pred, float) - np.asarray(true, float)).ravel()
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d ** 2))), float(np.mean(np.abs(d)))


def binned_errors(err: np.ndarray, x: np.ndarray, edges: np.ndarray) -> dict:
    """RMSE, MAE and counts of per-spectrum errors ``err`` (n, k) in bins of ``x`` (n,)."""
    err = np.asarray(err, float).reshape(len(x), -1)
    idx = np.digitize(x, edges) - 1
    out = dict(edges=[float(e) for e in edges], rmse=[], mae=[], n=[])
    for b in range(len(edges) - 1):
        e = err[idx == b].ravel()
        e = e[np.isfinite(e)]
        out["n"].append(int(e.size))
        out["rmse"].append(float(np.sqrt(np.mean(e ** 2))) if e.size else float("nan"))
        out["mae"].append(float(np.mean(np.abs(e))) if e.size else float("nan"))
    return out


def randomization_test(err: np.ndarray, x: np.ndarray, edges: np.ndarray, n_perm: int = 1000,
                       seed: int = 0) -> dict:
    """Is the trend of the binned RMSE with ``x`` significant? The statistic is the slope of a
    least-squares line through the per-bin RMSE against bin centre; its null distribution comes
    from ``n_perm`` random permutations of ``x`` over the spectra (the paper's randomization
    test, Sect. 4.3). Returns the slope, the two-sided p-value and the null's standard deviation.
    """
    err = np.asarray(err, float).reshape(len(x), -1)
    centres = 0.5 * (np.asarray(edges[:-1]) + np.asarray(edges[1:]))

    def slope(xx):
        r = np.array(binned_errors(err, xx, edges)["rmse"])
        ok = np.isfinite(r)
        return np.polyfit(centres[ok], r[ok], 1)[0] if ok.sum() >= 2 else np.nan

    observed = slope(x)
    rng = np.random.default_rng(seed)
    null = np.array([slope(rng.permutation(x)) for _ in range(n_perm)])
    null = null[np.isfinite(null)]
    p = float((np.sum(np.abs(null) >= abs(observed)) + 1) / (len(null) + 1))
    return dict(slope=float(observed), p_value=p, null_std=float(null.std()),
                n_permutations=int(len(null)))


def precision_at(is_binary: np.ndarray, p_binary: np.ndarray, threshold: float,
                 prior_ratio: float = 0.5) -> float:
    """Precision at ``p_binary > threshold`` re-weighted to a binary:single ``prior_ratio``
    (Jing et al.: TP / (TP + FP · (N_b/N_s) / r), with r = 0.5 for 1:2). NaN when nothing is
    selected or when there are no single stars (their false-positive rate is then unknown)."""
    y = np.asarray(is_binary, bool)
    sel = np.asarray(p_binary) > threshold
    tp, fp = float((sel & y).sum()), float((sel & ~y).sum())
    nb, ns = float(y.sum()), float((~y).sum())
    if ns == 0:
        return float("nan")
    denom = tp + fp * (nb / ns) / prior_ratio
    return tp / denom if denom > 0 else float("nan")


def detector_metrics(is_binary: np.ndarray, p_binary: np.ndarray, threshold: float = 0.5,
                     prior_ratio: float = 0.5) -> dict:
    """The detector at one operating ``threshold``: counts, ROC AUC, recall of SB2s
    (p_binary > threshold), precision re-weighted to the binary:single ``prior_ratio``
    (:func:`precision_at`) and the false-positive rate of single stars; NaN where a class is
    absent."""
    y = np.asarray(is_binary, bool).ravel()
    pb = np.asarray(p_binary, float).ravel()
    sel = pb > threshold
    return dict(n=int(y.size), n_binary=int(y.sum()), roc_auc=roc_auc(y, pb),
                recall=float(np.mean(sel[y])) if y.any() else float("nan"),
                precision=precision_at(y, pb, threshold, prior_ratio),
                false_positive_rate=float(np.mean(sel[~y])) if (~y).any() else float("nan"),
                threshold=float(threshold))


def interval_coverage(pred: np.ndarray, sigma: np.ndarray, true: np.ndarray) -> dict:
    """Fractions of true labels within ±1σ and ±2σ of the prediction (expected 0.683, 0.954 for
    calibrated Gaussian uncertainties)."""
    d = np.abs(np.asarray(pred, float) - np.asarray(true, float)).ravel()
    s = np.asarray(sigma, float).ravel()
    ok = np.isfinite(d) & np.isfinite(s) & (s > 0)
    if not ok.any():
        return dict(within_1sigma=float("nan"), within_2sigma=float("nan"), n=0)
    return dict(within_1sigma=float(np.mean(d[ok] <= s[ok])),
                within_2sigma=float(np.mean(d[ok] <= 2 * s[ok])), n=int(ok.sum()))
