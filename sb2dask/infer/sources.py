"""Per-source combination of epoch predictions: the pure core of the per-source table.

A Gaia DR4 source has tens of RVS transits, most of them at S/N 5-30. Taking the *maximum*
``p_binary`` over them (as the first version of this table did) makes every single star with
many noisy epochs look like an SB2: with an epoch false-positive rate ``q`` the maximum over
``n`` epochs exceeds 0.5 with probability ``1 - (1 - q)^n`` (``q = 5 %``, ``n = 20``: 64 %).
:func:`combine_sources` instead weighs the evidence of *all* usable epochs.

The rule (docs/inference.md, "Per-source evidence across epochs")
-----------------------------------------------------------------
1. **Per-epoch log evidence.** The detector is trained with its positives weighted by
   ``n_single / n_sb2`` (:func:`sb2dask.train.fit.training_loss`), so its output is a posterior
   for a training prior ``pi_det = 0.5`` whatever the binary fraction of its store. Bayes' rule
   turns it into the likelihood ratio ``lambda_i = exp(l_i)`` of the epoch's spectrum under the
   detector's positive class against its negative one::

       l_i = clip(logit(p_i) - logit(pi_det), -L, L)

   ``L`` (:attr:`EvidenceRule.max_log_odds`, default 4.6 = a factor 100) keeps one over-confident
   epoch from deciding a source alone (and ``p = 0`` or ``1`` in float32 from being infinite).
   For an ``is_binary`` detector that class is "the source is an SB2" at every epoch. A
   ``double_lined`` detector (``TrainConfig.detector_target``) answers "does this spectrum show
   two stars", which a binary's epochs near conjunction or with a faint companion truly do not.
   So under "SB2" an epoch shows two stars with probability ``f`` (the double-lined fraction of
   a binary's epochs, :attr:`EvidenceRule.double_lined_fraction`) and looks single otherwise;
   under "single" every epoch looks single. The epoch's likelihood ratio of "SB2" against
   "single" is ``f lambda_i + 1 - f``::

       m_i = log(f exp(l_i) + 1 - f)        (logaddexp(log f + l_i, log1p(-f)))

   ``f = 1`` (``is_binary`` detectors) gives ``m_i = l_i``. With ``f < 1`` the evidence of an
   epoch is bounded below by ``log(1 - f)``, so one-star epochs cannot cancel a clearly
   double-lined one. :meth:`EvidenceRule.for_models` takes ``f`` from the detector's target:
   1 for ``is_binary``, :data:`sb2dask.labels.DOUBLE_LINED_EPOCH_FRACTION` (0.55, measured on
   the double_lined detector's training store) for ``double_lined``.
2. **Epoch weights** ``w_i`` in [0, 1] for how far the epoch lies inside the detector's domain:
   1 at or above the S/N floor of its training set (``snr_full``, the models' ``snr_range[0]``),
   falling linearly to 0 at ``snr_zero = snr_full / 3`` (S/N 10 for the shipped models, where the
   measured detector is blind: recall 0 and every spectrum near p = 0). Epochs without an S/N
   estimate count fully; unusable epochs not at all. This is a power likelihood ("tempered"
   likelihood of general Bayesian updating): an epoch of weight ``w`` counts as ``w`` epochs.
3. **Correlation tempering.** The epochs of one source share its star, its library mismatch and
   its nuisances (line depths, activity, continuum), so their log evidence is correlated; summed
   as if independent, 20 epochs of p = 0.6 would make p = 0.9997. With an intra-source
   correlation ``rho`` of the ``m_i`` the sum of ``n`` of them carries the information of
   ``n_eff = n / (1 + (n - 1) rho)`` independent ones (Kish's design effect), so the weighted sum
   is scaled by that factor, with ``n_w = sum w_i`` in place of ``n``::

       log_bayes_factor = sum_i w_i m_i / (1 + (max(n_w, 1) - 1) rho)

   With ``f = 1`` the price is that an SB2 whose lines are blended at most epochs (small K or
   unlucky phases) has single-looking epochs that count against it (with an ``is_binary``
   detector, a mixture over ``f`` marginalised on a grid gained at most 0.01-0.02 in recall, so
   ``f = 1`` is kept there); ``n_sb2_epochs`` and ``p_binary_max`` stay in the table for such
   sources. With a ``double_lined`` detector that price is large by design, which the mixture of
   step 1 (``f = 0.55``) pays back in part. Measured (docs/inference.md, "With the
   realistic-recipe detectors", 20 epochs at S/N 20-50): the mixture calls 1-3 % of single stars
   and 19-57 % of binaries SB2s (``f = 1``: 0-1 % and 14-52 %; 26-32 % of those binaries are
   never double-lined; among those double-lined at least once 26-78 % against 20-72 %), with a
   log loss of 0.48-0.67 against 0.51-0.81; the ``is_binary`` detector of the same recipe
   (``f = 1``) calls 7-26 % and 51-80 %.

   One epoch (``n_w = 1``) keeps its own evidence; many epochs add up to at most
   ``mean(m) / rho``. The default ``rho = 0.5`` (:attr:`EvidenceRule.correlation`) is what
   ``benchmarks/bench_source_evidence.py`` measured with the shipped detector on simulated
   sources of 20 epochs: the intra-source correlation of ``l_i`` is 0.35-0.43 for single stars of
   the paper's recipe and 0.54-0.56 with the realistic recipe's nuisances shared by a source's
   epochs, and ``rho`` 0.5 minimises the log loss of the source probabilities at S/N 20 (0.3 at
   S/N 50 in the training domain, 0.7-1 with the nuisances). The decision at ``p > 0.5`` does not
   depend on ``rho``; thresholds above it do. Refit it for other models (and on real data from
   the correlation among likely singles): with the realistic-recipe ``double_lined`` detector and
   the mixture the correlations of ``m_i`` are 0.23-0.39 (singles) and 0.29-0.62 (binaries) and
   the log loss is flat in ``rho`` at S/N 20 and lowest at 0.3 at S/N 50.
4. **Posterior.** ``p_binary = sigmoid(logit(pi_src) + log_bayes_factor)`` with
   ``pi_src = pi_det`` by default (also when ``f < 1``: the prior is the source's, the mixture
   changes only the likelihood). With ``f = 1`` a source with one epoch gets that epoch's
   p_binary (up to the clip); with ``f < 1`` it gets
   ``sigmoid(logit(pi_src) + log(f lambda + 1 - f))``, the probability that the source is an
   SB2 given one epoch of which a binary shows two stars with probability ``f``: pulled from the
   epoch's p towards the prior (``f = 0.55``: p 0.99 gives 0.98, p 0.8 gives 0.73, p 0.01 gives
   0.31). For a population prior ``pi`` (the SB2 fraction of a sample) use
   ``sigmoid(logit(pi) + log_bayes_factor)``. NaN when no usable epoch carries weight.

The table also gives ``p_binary_max`` and ``p_binary_mean`` for reference, ``n_sb2_epochs`` (usable
epochs with p_binary > 0.5), ``evidence_weight`` (``n_w``), and the parameters as inverse-variance
weighted means (variance: the epochs' ``_err``², plus the model's validation RMSE² when those
are raw ensemble spreads, a floor so that a single-member ensemble still gets weights; none when
the errors are calibrated, ``calibration.json`` or a student). When the epoch table has per-epoch
component radial velocities (``rv_1``, ``rv_2``) the usable epochs' ``epoch_id``,
``obs_time_rv`` (when present), ``p_binary`` and velocities (with ``_err`` when present) are
passed through as lists, in time order, ready for an orbit fit (:data:`EPOCH_LIST_COLUMNS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import ConfigMixin
from ..labels import DOUBLE_LINED_EPOCH_FRACTION, PARAMETERS
from .schema import arrow_schema, empty_frame

__all__ = ["EvidenceRule", "epoch_log_odds", "epoch_log_evidence", "epoch_weights",
           "tempered_log_bayes_factor", "combine_sources", "source_arrow_schema",
           "epoch_list_columns", "EPOCH_LIST_COLUMNS", "EPOCH_COLUMNS_NEEDED",
           "SB2_EPOCH_THRESHOLD"]

#: ``n_sb2_epochs`` counts usable epochs with p_binary above this.
SB2_EPOCH_THRESHOLD = 0.5

#: Per-epoch columns passed through as lists (``epoch_<name>``, ``epoch_id`` as is) when the epoch
#: table has ``rv_1`` and ``rv_2``: name -> (Arrow value type, unit, description).
EPOCH_LIST_COLUMNS = {
    "epoch_id": ("int64", "", "epoch (transit) identifiers of the usable epochs, in time order"),
    "obs_time_rv": ("float64", "d", "observation times of those epochs (BJD(TCB) - 2455197.5)"),
    "p_binary": ("float32", "", "p_binary of those epochs"),
    "rv_1": ("float32", "km / s", "radial velocity of component 1 (cooler) at those epochs"),
    "rv_1_err": ("float32", "km / s", "uncertainty of rv_1 at those epochs"),
    "rv_2": ("float32", "km / s", "radial velocity of component 2 (hotter) at those epochs"),
    "rv_2_err": ("float32", "km / s", "uncertainty of rv_2 at those epochs"),
}

#: Epoch-table columns the combination reads (a subset of catalogs/epoch_parameters.yaml).
EPOCH_COLUMNS_NEEDED = (["source_id", "epoch_id", "p_binary", "usable", "snr_estimate",
                         "flag_boundary", "quality_flags"]
                        + [f"{p}_{c}{e}" for p in PARAMETERS for c in (1, 2) for e in ("", "_err")])


@dataclass(frozen=True, slots=True)
class EvidenceRule(ConfigMixin):
    """The settings of the per-source combination (module docstring, steps 1-4).

    Attributes
    ----------
    detector_prior : float
        Prior SB2 probability the detector's output is calibrated to (0.5: class-balanced loss).
    source_prior : float or None
        Prior of the reported per-source ``p_binary``; ``None``: ``detector_prior``.
    correlation : float
        Intra-source correlation ``rho`` of the per-epoch log evidence, in [0, 1]
        (0: independent epochs; 1: all epochs together count as one; default 0.5, measured).
    max_log_odds : float
        ``L``: each epoch's log likelihood ratio is clipped to [-L, L].
    snr_full : float or None
        Epochs at or above this S/N get weight 1; ``None``: not set yet (:meth:`for_models` takes
        the models' training floor; without one, every epoch gets weight 1).
    snr_zero_fraction : float
        Weights fall linearly to 0 at ``snr_zero_fraction * snr_full``.
    double_lined_fraction : float or None
        ``f`` in (0, 1]: the fraction of an SB2's epochs at which the detector is expected to see
        two stars (step 1's mixture; 1: every epoch, today's sum of ``l_i``). ``None``: not set
        yet (:meth:`for_models` takes 1 for ``is_binary`` detectors and
        :data:`~sb2dask.labels.DOUBLE_LINED_EPOCH_FRACTION` for ``double_lined`` ones; unset at
        :func:`combine_sources`, 1).
    """

    detector_prior: float = 0.5
    source_prior: float | None = None
    correlation: float = 0.5
    max_log_odds: float = 4.6
    snr_full: float | None = None
    snr_zero_fraction: float = 1.0 / 3.0
    double_lined_fraction: float | None = None

    def __post_init__(self):
        for name in ("detector_prior", "source_prior"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {v}")
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"correlation must lie in [0, 1], got {self.correlation}")
        if not self.max_log_odds > 0:
            raise ValueError(f"max_log_odds must be positive, got {self.max_log_odds}")
        if self.snr_full is not None and not self.snr_full > 0:
            raise ValueError(f"snr_full must be positive or None, got {self.snr_full}")
        if not 0.0 <= self.snr_zero_fraction < 1.0:
            raise ValueError(f"snr_zero_fraction must lie in [0, 1), got "
                             f"{self.snr_zero_fraction}")
        f = self.double_lined_fraction
        if f is not None and not 0.0 < f <= 1.0:
            raise ValueError(f"double_lined_fraction must lie in (0, 1] or be None, got {f}")

    def for_models(self, models) -> EvidenceRule:
        """This rule with the settings left ``None`` taken from ``models`` (a ``ModelSet``):
        ``snr_full`` from their training S/N floor (unset without one), ``double_lined_fraction``
        from their detector's target (1 for ``is_binary`` and for models without a detector,
        :data:`~sb2dask.labels.DOUBLE_LINED_EPOCH_FRACTION` for ``double_lined``)."""
        changes = {}
        if self.snr_full is None:
            lo = (models.training.get("snr_range") or [None])[0]
            if lo:
                changes["snr_full"] = float(lo)
        if self.double_lined_fraction is None:
            dl = getattr(models, "detector_target", None) == "double_lined"
            changes["double_lined_fraction"] = DOUBLE_LINED_EPOCH_FRACTION if dl else 1.0
        return self.replace(**changes) if changes else self


def _logit(p):
    return np.log(p) - np.log1p(-p)


def epoch_log_odds(p_binary: np.ndarray, rule: EvidenceRule) -> np.ndarray:
    """Step 1: per-epoch log likelihood ratios ``l_i`` of the detector's target (float64, same
    shape; NaN stays NaN)."""
    p = np.asarray(p_binary, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = _logit(p) - _logit(rule.detector_prior)
    return np.clip(lo, -rule.max_log_odds, rule.max_log_odds)


def epoch_log_evidence(p_binary: np.ndarray, rule: EvidenceRule) -> np.ndarray:
    """Step 1: per-epoch log evidence ``m_i = log(f exp(l_i) + 1 - f)`` for "the source is an
    SB2" against "single", ``f`` the rule's ``double_lined_fraction`` (``None``: 1), ``l_i``
    :func:`epoch_log_odds` (float64, same shape; NaN stays NaN). ``f = 1`` returns ``l_i``
    itself; ``f < 1`` bounds it below by ``log(1 - f)``."""
    lo = epoch_log_odds(p_binary, rule)
    f = rule.double_lined_fraction
    if f is None or f == 1.0:
        return lo
    # logaddexp: exp(l_i) would overflow for a large clip L, and log1p keeps 1 - f exact
    with np.errstate(invalid="ignore"):  # NaN (no p_binary) stays NaN
        return np.logaddexp(np.log(f) + lo, np.log1p(-f))


def epoch_weights(snr: np.ndarray, rule: EvidenceRule) -> np.ndarray:
    """Step 2: weights in [0, 1] from each epoch's S/N (NaN S/N: 1)."""
    snr = np.asarray(snr, np.float64)
    if rule.snr_full is None:
        return np.ones(snr.shape)
    zero = rule.snr_zero_fraction * rule.snr_full
    w = (snr - zero) / (rule.snr_full - zero)
    return np.where(np.isfinite(snr), np.clip(w, 0.0, 1.0), 1.0)


def tempered_log_bayes_factor(sum_wm: np.ndarray, n_w: np.ndarray,
                              rule: EvidenceRule) -> np.ndarray:
    """Step 3: ``sum_i w_i m_i`` of each source divided by ``1 + (max(n_w, 1) - 1) rho``."""
    n_w = np.asarray(n_w, np.float64)
    return np.asarray(sum_wm, np.float64) / (1.0 + (np.maximum(n_w, 1.0) - 1.0)
                                             * rule.correlation)


def epoch_list_columns(columns) -> list[str]:
    """The per-epoch columns :func:`combine_sources` passes through as lists, given the epoch
    table's ``columns``: none unless both ``rv_1`` and ``rv_2`` are there."""
    columns = set(columns)
    if not {"rv_1", "rv_2"} <= columns:
        return []
    return [c for c in EPOCH_LIST_COLUMNS if c in columns]


def _list_name(c: str) -> str:
    return c if c == "epoch_id" else f"epoch_{c}"


def _bitwise_or_by(codes: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.int64)
    np.bitwise_or.at(out, codes, values.astype(np.int64))
    return out


def combine_sources(epochs: pd.DataFrame, rule: EvidenceRule | None = None,
                    floors: dict | None = None) -> pd.DataFrame:
    """The per-source rows of the epoch rows ``epochs`` (every epoch of a source must be in it).

    Parameters
    ----------
    epochs : pandas.DataFrame
        Rows of the epoch table (``catalogs/epoch_parameters.yaml``; at least
        :data:`EPOCH_COLUMNS_NEEDED`, plus ``rv_1``/``rv_2``... for the lists).
    rule : EvidenceRule, optional
        Default ``EvidenceRule()`` (all epochs weight 1 unless ``snr_full`` is set).
    floors : dict, optional
        Uncertainty floor per parameter (the models' validation RMSE) added in quadrature to the
        ensemble spread for the weighted means; default 0.

    Returns
    -------
    pandas.DataFrame
        One row per source in the schema of ``catalogs/source_parameters.yaml``, sorted by
        ``source_id``, plus the list columns of :func:`epoch_list_columns`.
    """
    rule = EvidenceRule() if rule is None else rule
    floors = floors or {}
    lists = epoch_list_columns(epochs.columns)
    sid = epochs["source_id"].to_numpy(np.int64)
    ids, codes = np.unique(sid, return_inverse=True)
    n = len(ids)
    res = empty_frame("source", n)
    res["source_id"] = ids

    def total(x):
        return np.bincount(codes, weights=np.asarray(x, np.float64), minlength=n)

    p = epochs["p_binary"].to_numpy(np.float64)
    usable = epochs["usable"].to_numpy(bool)
    has_p = usable & np.isfinite(p)
    n_usable = total(usable)
    w = np.where(has_p, epoch_weights(epochs["snr_estimate"].to_numpy(np.float64), rule), 0.0)
    m = np.where(has_p, epoch_log_evidence(p, rule), 0.0)
    n_w, sum_wm = total(w), total(w * m)
    log_bf = tempered_log_bayes_factor(sum_wm, n_w, rule)
    prior = rule.detector_prior if rule.source_prior is None else rule.source_prior
    evidence = n_w > 0
    with np.errstate(over="ignore"):
        p_src = 1.0 / (1.0 + np.exp(-(_logit(prior) + log_bf)))
    n_p = total(has_p)
    p_max = np.full(n, -np.inf)
    np.maximum.at(p_max, codes[has_p], p[has_p])
    res["n_epochs"] = np.bincount(codes, minlength=n).astype(np.int32)
    res["n_usable"] = n_usable.astype(np.int32)
    res["p_binary"] = np.where(evidence, p_src, np.nan).astype(np.float32)
    res["p_binary_max"] = np.where(n_p > 0, p_max, np.nan).astype(np.float32)
    res["p_binary_mean"] = np.where(n_p > 0, total(np.where(has_p, p, 0.0)) / np.maximum(n_p, 1),
                                    np.nan).astype(np.float32)
    res["log_bayes_factor"] = np.where(evidence, log_bf, np.nan).astype(np.float32)
    res["evidence_weight"] = n_w.astype(np.float32)
    res["n_sb2_epochs"] = total(has_p & (p > SB2_EPOCH_THRESHOLD)).astype(np.int32)
    for par in PARAMETERS:
        for c in (1, 2):
            x = epochs[f"{par}_{c}"].to_numpy(np.float64)
            e = epochs[f"{par}_{c}_err"].to_numpy(np.float64)
            var = np.nan_to_num(e, nan=0.0) ** 2 + floors.get(par, 0.0) ** 2
            ok = usable & np.isfinite(x) & (var > 0)
            wx = np.where(ok, 1.0 / np.where(var > 0, var, 1.0), 0.0)
            sw = total(wx)
            with np.errstate(divide="ignore", invalid="ignore"):
                res[f"{par}_{c}"] = np.where(sw > 0, total(wx * np.nan_to_num(x)) / sw,
                                             np.nan).astype(np.float32)
                res[f"{par}_{c}_err"] = np.where(sw > 0, 1.0 / np.sqrt(sw), np.nan).astype(
                    np.float32)
    fb = np.where(usable, epochs["flag_boundary"].to_numpy(np.int64), 0)
    res["flag_boundary"] = _bitwise_or_by(codes, fb, n).astype(np.int32)
    res["quality_flags"] = _bitwise_or_by(codes, epochs["quality_flags"].to_numpy(np.int64),
                                          n).astype(np.int32)
    if lists:
        res = _add_epoch_lists(res, epochs, usable, lists)
    return res


def _add_epoch_lists(res: pd.DataFrame, epochs: pd.DataFrame, usable: np.ndarray,
                     lists: list[str]) -> pd.DataFrame:
    """``res`` with the usable epochs' ``lists`` columns as per-source lists in time order."""
    sub = epochs.loc[usable, ["source_id"] + lists]
    order = ["source_id", "obs_time_rv" if "obs_time_rv" in lists else "epoch_id", "epoch_id"]
    sub = sub.sort_values(order, kind="stable")
    # split the sorted rows at source boundaries with numpy: pandas 2's groupby.agg refuses a
    # function that returns an array ("Must produce aggregated value"), pandas 3's accepts it
    ids = sub["source_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0, int)
    where = dict(zip(ids[starts].tolist(), range(len(starts)), strict=True))
    row_of = [where.get(int(sid)) for sid in res["source_id"].to_numpy()]
    for c in lists:
        dtype = np.dtype(EPOCH_LIST_COLUMNS[c][0])
        parts = np.split(sub[c].to_numpy(dtype), starts[1:])
        res[_list_name(c)] = [parts[i] if i is not None else np.empty(0, dtype)
                              for i in row_of]
    return res


def source_arrow_schema(metadata: dict | None = None, lists: list[str] = ()):
    """The per-source table's Arrow schema (:func:`~.schema.arrow_schema` of ``"source"``) plus
    list fields for the passed-through epoch columns ``lists``."""
    import pyarrow as pa

    schema = arrow_schema("source", metadata)
    for c in lists:
        dtype, unit, desc = EPOCH_LIST_COLUMNS[c]
        schema = schema.append(pa.field(_list_name(c), pa.list_(pa.from_numpy_dtype(
            np.dtype(dtype))), metadata={"unit": unit, "description": desc}))
    return schema
