"""The per-source combination of epochs (sb2dask.infer.sources): evidence of all epochs, not the
maximum; S/N weights; the pass-through of per-epoch component RVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sb2dask.infer.schema import empty_frame, load_schema
from sb2dask.infer.sources import (
    EvidenceRule,
    combine_sources,
    epoch_log_evidence,
    epoch_log_odds,
    epoch_weights,
    source_arrow_schema,
)
from sb2dask.labels import DOUBLE_LINED_EPOCH_FRACTION


def _epochs(p_by_source: dict[int, list[float]], snr: float = np.nan) -> pd.DataFrame:
    """An epoch table with the given p_binary per source (usable, S/N ``snr``)."""
    from sb2dask.evidence import FIT_COLUMNS

    rows = [(s, p) for s, ps in p_by_source.items() for p in ps]
    # an epoch table of a run without `infer --fit`: the evidence columns (rv_1, rv_2, ...) left
    # out, so the per-epoch RV lists appear only where a test adds them
    ep = empty_frame("epoch", len(rows)).drop(columns=list(FIT_COLUMNS))
    ep["source_id"] = np.array([s for s, _ in rows], np.int64)
    ep["epoch_id"] = np.arange(len(rows), dtype=np.int64) + 100
    ep["p_binary"] = np.array([p for _, p in rows], np.float32)
    ep["usable"] = True
    ep["snr_estimate"] = np.float32(snr)
    return ep


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_many_weak_epochs_are_not_a_confident_binary():
    """20 epochs of p = 0.6 from a detector with prior 0.5: independent evidence (0.9997)
    overstates it; the default rule (rho 0.5) gives sigmoid(20 logit(0.6) / 10.5) = 0.68."""
    ep = _epochs({1: [0.6] * 20})
    src = combine_sources(ep).iloc[0]
    expected = _sigmoid(20 * np.log(0.6 / 0.4) / (1 + 19 * 0.5))
    assert src["p_binary"] == pytest.approx(expected, rel=1e-5)
    assert 0.6 < src["p_binary"] < 0.8  # more than one epoch says, far from certain
    independent = combine_sources(ep, EvidenceRule(correlation=0.0)).iloc[0]["p_binary"]
    assert independent > 0.999  # what the correlation tempering prevents
    assert src["n_sb2_epochs"] == 20 and src["p_binary_max"] == pytest.approx(0.6)


def test_a_few_strong_epochs_make_a_binary_and_a_false_alarm_does_not():
    # a binary seen clearly at 6 of 20 epochs, undecided (p = 0.5) at the others; one seen at
    # 3 epochs only
    strong = [0.995] * 6 + [0.5] * 14
    # a single star with one noisy false alarm among 19 confident singles
    alarm = [0.9] + [0.05] * 19
    src = combine_sources(_epochs({1: strong, 2: alarm, 3: [0.99] * 3})).set_index("source_id")
    assert src.loc[1, "p_binary"] > 0.9 and src.loc[3, "p_binary"] > 0.99
    assert src.loc[2, "p_binary"] < 0.05 and src.loc[2, "p_binary_max"] == pytest.approx(0.9)
    assert src.loc[1, "n_sb2_epochs"] == 6 and src.loc[2, "n_sb2_epochs"] == 1
    # the rule's known cost: single-looking epochs of a binary (blended lines) count against it,
    # so 4 clear epochs among 16 at p = 0.3 are not a confident binary (docs/inference.md)
    blended = combine_sources(_epochs({1: [0.995] * 4 + [0.3] * 16})).iloc[0]
    assert 0.5 < blended["p_binary"] < 0.9


def test_one_epoch_keeps_its_own_probability_and_the_prior_is_removed():
    src = combine_sources(_epochs({1: [0.8], 2: [0.2]})).set_index("source_id")
    assert src.loc[1, "p_binary"] == pytest.approx(0.8, rel=1e-6)
    assert src.loc[2, "log_bayes_factor"] == pytest.approx(np.log(0.25), rel=1e-5)
    # a detector calibrated to a prior of 0.2: p = 0.2 is no evidence at all
    rule = EvidenceRule(detector_prior=0.2, source_prior=0.5)
    src = combine_sources(_epochs({1: [0.2]}), rule).iloc[0]
    assert src["log_bayes_factor"] == pytest.approx(0.0, abs=1e-6)
    assert src["p_binary"] == pytest.approx(0.5)


def test_one_overconfident_epoch_is_clipped():
    lo = epoch_log_odds(np.array([1.0, 0.0, 0.5, np.nan], np.float32), EvidenceRule())
    assert lo[0] == 4.6 and lo[1] == -4.6 and lo[2] == 0.0 and np.isnan(lo[3])
    # p = 1 in float32 at one epoch does not outweigh ten clear singles
    src = combine_sources(_epochs({1: [1.0] + [0.02] * 10})).iloc[0]
    assert np.isfinite(src["log_bayes_factor"]) and src["p_binary"] < 0.5


def test_low_snr_epochs_weigh_less_and_blind_ones_not_at_all():
    rule = EvidenceRule(snr_full=30.0)
    w = epoch_weights(np.array([50.0, 30.0, 20.0, 10.0, 5.0, np.nan]), rule)
    np.testing.assert_allclose(w, [1.0, 1.0, 0.5, 0.0, 0.0, 1.0])
    # a source at S/N 8: the detector is blind there (p ~ 0 for everything): no evidence, NaN
    src = combine_sources(_epochs({1: [0.001] * 20}, snr=8.0), rule).iloc[0]
    assert np.isnan(src["p_binary"]) and src["evidence_weight"] == 0.0
    assert src["n_usable"] == 20 and src["p_binary_max"] == pytest.approx(0.001)
    # S/N 20: each epoch counts half
    src = combine_sources(_epochs({1: [0.9] * 4}, snr=20.0), rule).iloc[0]
    assert src["evidence_weight"] == pytest.approx(2.0)
    assert src["log_bayes_factor"] == pytest.approx(4 * 0.5 * np.log(9.0) / 1.5, rel=1e-5)


def test_unusable_epochs_count_but_carry_no_evidence():
    ep = _epochs({1: [0.9, 0.99], 2: [0.7]})
    ep.loc[1, "usable"] = False
    ep.loc[1, "quality_flags"] = 2
    ep.loc[2, "usable"] = False
    src = combine_sources(ep).set_index("source_id")
    assert src.loc[1, "n_epochs"] == 2 and src.loc[1, "n_usable"] == 1
    assert src.loc[1, "p_binary"] == pytest.approx(0.9) and src.loc[1, "quality_flags"] == 2
    assert src.loc[2, "n_usable"] == 0 and np.isnan(src.loc[2, "p_binary"])
    assert np.isnan(src.loc[2, "p_binary_max"])


def test_columns_follow_the_source_schema():
    src = combine_sources(_epochs({3: [0.5, 0.6], 1: [0.1]}))
    names = [c["name"] for c in load_schema("source")["columns"]]
    assert list(src.columns) == names
    assert src["source_id"].tolist() == [1, 3]
    assert (src.dtypes == empty_frame("source").dtypes).all()


def test_per_epoch_component_rvs_are_passed_through_in_time_order():
    import pyarrow as pa

    ep = _epochs({1: [0.9, 0.8, 0.7], 2: [0.1]})
    assert "epoch_rv_1" not in combine_sources(ep)  # absent until the epoch table has them
    ep["rv_1"] = np.array([10.0, -20.0, 5.0, 1.0], np.float32)
    ep["rv_2"] = np.array([-30.0, 25.0, np.nan, 2.0], np.float32)
    ep["obs_time_rv"] = [300.0, 100.0, 200.0, 50.0]
    ep.loc[3, "usable"] = False
    src = combine_sources(ep).set_index("source_id")
    assert src.loc[1, "epoch_id"].tolist() == [101, 102, 100]
    np.testing.assert_allclose(src.loc[1, "epoch_obs_time_rv"], [100.0, 200.0, 300.0])
    np.testing.assert_allclose(src.loc[1, "epoch_rv_1"], [-20.0, 5.0, 10.0])
    np.testing.assert_allclose(src.loc[1, "epoch_rv_2"], [25.0, np.nan, -30.0])
    assert src.loc[2, "epoch_rv_1"].size == 0  # no usable epoch: an empty list, not a lost row
    assert "epoch_rv_1_err" not in src
    schema = source_arrow_schema(lists=["epoch_id", "obs_time_rv", "p_binary", "rv_1", "rv_2"])
    table = pa.Table.from_pandas(src.reset_index(), schema=schema, preserve_index=False)
    assert table.schema.field("epoch_rv_1").type == pa.list_(pa.float32())
    assert table.schema.field("epoch_rv_1").metadata[b"unit"] == b"km / s"


def test_rule_settings_are_checked():
    with pytest.raises(ValueError, match="correlation"):
        EvidenceRule(correlation=1.5)
    with pytest.raises(ValueError, match="detector_prior"):
        EvidenceRule(detector_prior=1.0)
    rule = EvidenceRule(correlation=0.2, snr_full=25.0, double_lined_fraction=0.6)
    assert EvidenceRule.from_dict(rule.to_dict()) == rule
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="double_lined_fraction must lie in") as err:
            EvidenceRule(double_lined_fraction=bad)
        assert "\n" not in str(err.value)


def _mixed_sources() -> pd.DataFrame:
    """Sources of many kinds (confident, weak, clipped, one epoch) at S/N around the floor."""
    ep = _epochs({1: [0.6] * 20, 2: [0.995] * 6 + [0.5] * 14, 3: [0.9] + [0.05] * 19,
                  4: [1.0] + [0.02] * 10, 5: [0.8], 6: [0.99] * 4 + [0.01] * 16})
    ep["snr_estimate"] = np.linspace(5.0, 60.0, len(ep)).astype(np.float32)
    return ep


def test_f_1_is_the_sum_of_the_detectors_log_likelihood_ratios():
    """f = 1 (and f unset) is the rule as it was before the mixture, bit for bit."""
    p = np.array([1e-9, 0.01, 0.3, 0.5, 0.8, 0.999999, np.nan])
    for f in (None, 1.0):
        rule = EvidenceRule(double_lined_fraction=f, snr_full=30.0)
        lo = epoch_log_evidence(p, rule)
        assert np.array_equal(lo, epoch_log_odds(p, rule), equal_nan=True)
    ep = _mixed_sources()
    old = combine_sources(ep, EvidenceRule(snr_full=30.0))
    new = combine_sources(ep, EvidenceRule(snr_full=30.0, double_lined_fraction=1.0))
    pd.testing.assert_frame_equal(new, old, check_exact=True)
    # the values the rule gave before the mixture existed (computed with the code of commit
    # b44f2a3 on these sources)
    np.testing.assert_allclose(
        new["log_bayes_factor"].to_numpy(),
        [0.5316696166992188, 1.7160905599594116, -5.137083530426025, -5.719700336456299,
         1.3862944841384888, -5.251564979553223], rtol=1e-6)
    np.testing.assert_allclose(
        new["p_binary"].to_numpy(),
        [0.6298724412918091, 0.8476245999336243, 0.0058404868468642235, 0.0032699655275791883,
         0.800000011920929, 0.005212003830820322], rtol=1e-6)
    # the old formula, sum w l / (1 + (n_w - 1) rho), written out for source 6 at weight 1
    src = combine_sources(_epochs({6: [0.99] * 4 + [0.01] * 16}),
                          EvidenceRule(double_lined_fraction=1.0)).iloc[0]
    assert src["log_bayes_factor"] == pytest.approx(-12 * np.log(99.0) / 10.5, rel=1e-6)


def test_a_binary_seen_double_lined_at_a_few_epochs_is_not_outvoted_by_its_one_star_epochs():
    """4 clearly double-lined epochs (p 0.99) among 16 one-star ones (p 0.01), from a
    double_lined detector: the sum of l (f = 1) calls it single, the mixture (f = 0.5) a binary:
    each epoch's evidence is log(f 99 + 1 - f) or log(f / 99 + 1 - f)."""
    ep = _epochs({1: [0.99] * 4 + [0.01] * 16})
    f1 = combine_sources(ep, EvidenceRule(double_lined_fraction=1.0)).iloc[0]
    mix = combine_sources(ep, EvidenceRule(double_lined_fraction=0.5)).iloc[0]
    assert f1["p_binary"] < 0.5 < mix["p_binary"]
    expected = (4 * np.log(0.5 * 99 + 0.5) + 16 * np.log(0.5 / 99 + 0.5)) / (1 + 19 * 0.5)
    assert mix["log_bayes_factor"] == pytest.approx(expected, rel=1e-6)
    assert mix["p_binary"] == pytest.approx(_sigmoid(expected), rel=1e-6)
    # one epoch no longer keeps its own p: its odds become f lambda + 1 - f (p 0.8: 2.5 : 1)
    one = combine_sources(_epochs({1: [0.8]}), EvidenceRule(double_lined_fraction=0.5)).iloc[0]
    assert one["p_binary"] == pytest.approx(2.5 / 3.5, rel=1e-6)


def test_one_star_epochs_lower_a_source_only_down_to_log_1_minus_f_each():
    """A source of only one-star epochs ends below the prior, but each epoch lowers its log odds
    by at most -log(1 - f), however confident the detector and however many epochs."""
    f = 0.5
    rule = EvidenceRule(double_lined_fraction=f, max_log_odds=50.0)
    m = epoch_log_evidence(np.array([1e-30, 1e-6, 0.5, 1.0 - 1e-12, np.nan]), rule)
    assert np.all(m[:4] >= np.log(1 - f)) and m[0] == pytest.approx(np.log(1 - f), abs=1e-12)
    assert m[2] == pytest.approx(0.0, abs=1e-12) and np.isfinite(m[3]) and np.isnan(m[4])
    for n, rho in ((20, 0.5), (40, 0.0)):
        r = EvidenceRule(double_lined_fraction=f, correlation=rho)
        src = combine_sources(_epochs({1: [1e-6] * n}), r).iloc[0]
        bound = n * np.log(1 - f) / (1 + (n - 1) * rho)  # the log Bayes factor's floor
        assert bound < src["log_bayes_factor"] < 0.0 and src["p_binary"] < 0.5
        assert src["p_binary"] >= np.float32(_sigmoid(bound))
        # just above the floor: the clip at L = 4.6 leaves each epoch log(1 - f + f / 99.5)
        assert src["log_bayes_factor"] == pytest.approx(bound, rel=0.02)
        # the sum of l has no such floor
        f1 = combine_sources(_epochs({1: [1e-6] * n}), r.replace(double_lined_fraction=1.0))
        assert f1.iloc[0]["log_bayes_factor"] < 2 * bound


def test_the_models_detector_target_sets_the_double_lined_fraction(tmp_path):
    """``for_models``: f = 1 for an is_binary detector, DOUBLE_LINED_EPOCH_FRACTION for a
    double_lined one, a user's f kept; the S/N floor from the manifests either way."""
    from model_fixtures import random_model_set, retarget_detector
    from sb2dask.infer.predict import ModelSet

    models = random_model_set(tmp_path / "m")
    rule = EvidenceRule().for_models(ModelSet(models, "cpu"))
    assert rule.double_lined_fraction == 1.0 and rule.snr_full == 30.0
    ms = ModelSet(retarget_detector(models), "cpu")
    assert ms.detector_target == "double_lined"
    rule = EvidenceRule().for_models(ms)
    assert rule.double_lined_fraction == DOUBLE_LINED_EPOCH_FRACTION and rule.snr_full == 30.0
    assert 0.0 < DOUBLE_LINED_EPOCH_FRACTION < 1.0
    mine = EvidenceRule(double_lined_fraction=0.8, snr_full=20.0).for_models(ms)
    assert mine.double_lined_fraction == 0.8 and mine.snr_full == 20.0
