"""Small statistics used both while training and in the evaluation reports."""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc"]


def roc_auc(is_binary: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic with tied scores given their
    average rank (so a constant score gives 0.5). NaN when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(is_binary).astype(bool).ravel()
    r = rankdata(np.asarray(score, float).ravel())
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
