"""Refitting the students' p_binary head (sb2dask.train.head) and the margin around the
double_lined thresholds (sb2dask.labels.near_double_lined_threshold)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sb2dask.infer.predict import ModelSet
from sb2dask.labels import (
    companion_in_noise,
    double_lined,
    min_separation,
    near_double_lined_threshold,
)
from sb2dask.models.student import balanced_logit_offset
from sb2dask.train.head import fit_logistic_head, refit_student_heads
from test_student import _ensemble_dir


def test_the_margin_is_a_band_around_both_thresholds():
    s0 = min_separation(11500.0)
    is_binary = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    faint = np.array([0.30, 0.03, 0.09, 0.11, 0.30, 0.30, np.nan])
    sep = np.array([50.0, 50.0, 50.0, 50.0, 0.6 * s0, 1.9 * s0, np.nan])
    lf = np.stack([faint, 1 - faint], axis=1)
    band = near_double_lined_threshold(is_binary, lf, sep, 2.0, resolving_power=11500.0)
    # light fractions in [0.025, 0.1), separations in [s0/2, 2 s0); single stars never
    assert band.tolist() == [False, True, True, False, True, True, False]
    # the band straddles the threshold: inside it are positives and negatives of double_lined
    dl = double_lined(is_binary, lf, sep, resolving_power=11500.0)
    assert dl[band].any() and not dl[band].all()
    assert not near_double_lined_threshold(is_binary, lf, sep, 1.5, 11500.0)[[2, 5]].any()
    with pytest.raises(ValueError, match="> 1"):
        near_double_lined_threshold(is_binary, lf, sep, 1.0)


def test_companion_in_noise_is_light_fraction_times_snr():
    is_binary = np.array([1, 1, 1, 1, 0], bool)
    faint = np.array([0.10, 0.10, 0.30, 0.04, np.nan])
    lf = np.stack([faint, 1 - faint], axis=1)
    snr = np.array([20.0, 200.0, 20.0, 400.0, 10.0])
    # signals 2, 20, 6, 16; a single star is never a binary in noise
    assert companion_in_noise(is_binary, lf, snr, 8.0).tolist() == [True, False, True, False,
                                                                    False]
    assert companion_in_noise(is_binary, lf[:, ::-1], snr, 8.0).tolist() == [
        True, False, True, False, False]  # the fainter star, whichever column
    with pytest.raises(ValueError, match="positive"):
        companion_in_noise(is_binary, lf, snr, 0.0)


def test_fit_logistic_head_ignores_rows_of_zero_weight():
    """A row of weight 0 changes nothing (the fit equals the one without it, even when its
    label is wrong), and the fit separates what is separable along the true direction."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = x @ np.array([2.0, -1.0, 0.0, 0.0, 0.5]) + 0.3 * rng.normal(size=600) > 1.2
    w = np.ones(600)
    w[:100] = 0.0
    flipped = y.copy()
    flipped[:100] = ~flipped[:100]
    a = fit_logistic_head(x, flipped, w, np.zeros(5), 0.0)
    b = fit_logistic_head(x[100:], y[100:], w[100:], np.zeros(5), 0.0)
    # class-balanced: the prior-0.5 offset of the fitted logits on the rows it saw is zero (the
    # bias is not penalised; without the n_neg / n_pos weights it would be ~log(n_pos / n_neg))
    assert y[100:].mean() < 0.35
    assert abs(balanced_logit_offset(x[100:] @ b[0] + b[1], y[100:])) < 1e-3
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert a[1] == pytest.approx(b[1], rel=1e-5, abs=1e-6)
    truth = np.array([2.0, -1.0, 0.0, 0.0, 0.5])
    assert a[0] @ truth / np.linalg.norm(a[0]) / np.linalg.norm(truth) > 0.97
    with pytest.raises(ValueError, match="positives and negatives"):
        fit_logistic_head(x, np.zeros(600, bool), w, np.zeros(5), 0.0)


def test_balance_within_strata():
    """With strata the classes are balanced inside each: a stratum of rare positives does not
    lift the others' weight on positives. The fitted bias is then the optimum of the stratified
    balanced loss (its stratified offset is zero), and a stratum without
    one class is refused, naming it."""
    rng = np.random.default_rng(1)
    n = 2000
    strata = np.repeat([0, 1], n // 2)
    x = rng.normal(size=(n, 3))
    # stratum 0: half positives; stratum 1: 5 % positives
    y = np.where(strata == 0, rng.random(n) < 0.5, rng.random(n) < 0.05)
    x[y, 0] += 1.5
    x[:, 1] += 3.0 * strata  # the head can tell the strata apart
    w = np.ones(n)
    wt, bt = fit_logistic_head(x, y, w, np.zeros(3), 0.0, strata=strata)
    wp, bp = fit_logistic_head(x, y, w, np.zeros(3), 0.0)
    z = x @ wt + bt
    assert abs(balanced_logit_offset(z, y, strata=strata)) < 1e-3
    # pooled, the positives weigh n_neg / n_pos ≈ 2.6 everywhere, so the balanced stratum's
    # negatives score higher than when each stratum is balanced on its own (ratio 1 there)
    neg0 = (strata == 0) & ~y
    p_strat = 1 / (1 + np.exp(-z[neg0]))
    p_pool = 1 / (1 + np.exp(-(x[neg0] @ wp + bp)))
    assert p_strat.mean() < p_pool.mean() - 0.05
    with pytest.raises(ValueError, match="stratum 1"):
        fit_logistic_head(x, y & (strata == 0), w, np.zeros(3), 0.0, strata=strata)
    with pytest.raises(ValueError, match="stratum 1"):
        balanced_logit_offset(z, y & (strata == 0), strata=strata)
    with pytest.raises(ValueError, match="shape"):
        fit_logistic_head(x, y, w, np.zeros(3), 0.0, strata=strata[:10])


def _double_lined_dir(tmp_path):
    """Two random students that say they detect double_lined, with an ensemble calibration."""
    d = _ensemble_dir(tmp_path, n=2)
    for i in range(2):
        path = d / f"student-{i}.json"
        man = json.loads(path.read_text())
        man["training"]["detector_target"] = "double_lined"
        path.write_text(json.dumps(man))
    names = [json.loads((d / f"student-{i}.json").read_text()) for i in range(2)]
    (d / "students.json").write_text(json.dumps(dict(
        kind="student_ensemble_calibration", snr_edges=[60.0, 120.0],
        scales=np.full((3, 9), 0.9).tolist(),
        members=[dict(name=m["name"], weights_sha256=m["weights_sha256"]) for m in names])))
    return d


def _two_stores(tmp_path, seeds, snr_ranges, n, split):
    """``high.zarr`` and ``low.zarr`` in ``tmp_path``: paper-recipe stores of ``n`` rows (70 %
    binaries) at the two seeds and S/N ranges, split (train, validation)."""
    from distributed import Client, LocalCluster

    from sb2dask.dataset.factory import SplitSpec, generate
    from sb2dask.simulate.config import SimulationConfig

    stores = [tmp_path / "high.zarr", tmp_path / "low.zarr"]
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as c:
        for store, seed, snr in zip(stores, seeds, snr_ranges):
            generate(store, SimulationConfig.paper(seed=seed, binary_fraction=0.7,
                                                   snr_range=snr),
                     n, n // 2, client=c, split=SplitSpec(*split, 0.0), progress=False)
    return stores


def test_refit_student_heads_changes_p_binary_only(tmp_path):
    """On a generated half-binary store: every label output and width stays bit for bit, the
    probabilities change, the manifests record the refit and the ensemble calibration follows the
    new weights (ModelSet loads it instead of refusing)."""
    from distributed import Client, LocalCluster

    from sb2dask.dataset.factory import SplitSpec, generate
    from sb2dask.simulate.config import SimulationConfig

    store = tmp_path / "det.zarr"
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as c:
        generate(store, SimulationConfig.paper(seed=7, binary_fraction=0.5, snr_range=(70, 110)),
                 300, 150, client=c, split=SplitSpec(0.6, 0.4, 0.0), progress=False)
    d = _double_lined_dir(tmp_path)
    out = tmp_path / "refit"
    # a calibration fitted for other weights is refused before any work, naming the file
    good = (d / "students.json").read_text()
    stale = json.loads(good)
    stale["members"][0]["weights_sha256"] = "0" * 64
    (d / "students.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="students.json was fitted for other students"):
        refit_student_heads(d, store, out)
    assert not out.exists()
    (d / "students.json").write_text(good)
    # a margin that leaves no positive to fit names the store
    with pytest.raises(ValueError, match="det.zarr .*positives and negatives"):
        refit_student_heads(d, store, out, margin=1e6)
    assert not out.exists()
    summary = refit_student_heads(d, store, out, margin=2.0)
    assert set(summary["after"]) == set(summary["before"]) and summary["after"]["auc_kept"] > 0.5
    old, new = ModelSet(d, "cpu"), ModelSet(out, "cpu")
    assert new.ensemble_calibration is not None
    rng = np.random.default_rng(3)
    flux = (1.0 - 0.3 * rng.random((4, 903)) ** 8).astype(np.float32)
    snr = np.array([50.0, 80.0, 150.0, 90.0])
    a, b = old.predict(flux, snr=snr), new.predict(flux, snr=snr)
    for k in a:
        if k.startswith("p_binary"):
            assert not np.allclose(a[k], b[k]), k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for i, st in enumerate(new.students):
        rec = st["manifest"].training["detector_head"]
        assert rec["margin"] == 2.0 and rec["store"]["sha256"]
        assert rec["previous_weights_sha256"] == old.students[i]["manifest"].weights_sha256
        assert 0 < rec["n_train_used"] < rec["n_train"] == 180
        assert st["logit_offset"] == rec["logit_offset"]
        cal = st["manifest"].training["calibration"]
        assert cal["n_p_binary"] == rec["n_validation_used"] and "refit" in cal[
            "p_binary_offset_method"]
    cal = json.loads((out / "students.json").read_text())
    assert cal["carried_over"]["previous_members"][0]["weights_sha256"] \
        == old.students[0]["manifest"].weights_sha256
    with pytest.raises(FileExistsError):
        refit_student_heads(d, store, out)
    (d / "students.json").unlink()
    for i in range(2):  # students of the paper's target: no double_lined threshold to keep off
        path = d / f"student-{i}.json"
        path.write_text(json.dumps(dict(json.loads(path.read_text()), training={
            k: v for k, v in json.loads(path.read_text())["training"].items()
            if k != "detector_target"})))
    with pytest.raises(ValueError, match="double_lined"):
        refit_student_heads(d, store, tmp_path / "other")


def test_refit_accepts_a_preset_name(tmp_path):
    """'students' is resolved to the shipped directory (copied, not looked up in the working
    directory), and the shipped students' refit on a small store loads with its calibration."""
    from distributed import Client, LocalCluster

    from sb2dask.dataset.factory import SplitSpec, generate
    from sb2dask.simulate.config import SimulationConfig

    store = tmp_path / "det.zarr"
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as c:
        generate(store, SimulationConfig.paper(seed=8, binary_fraction=0.5), 200, 100, client=c,
                 split=SplitSpec(0.6, 0.4, 0.0), progress=False)
    out = tmp_path / "refit"
    refit_student_heads("students", store, out, margin=2.0)
    new = ModelSet(out, "cpu")
    assert len(new.students) == 3 and new.ensemble_calibration is not None


def test_refit_pools_stores_and_leaves_companions_in_noise_out(tmp_path):
    """Two stores' rows are pooled (both fingerprints recorded), and with min_companion_signal the
    double-lined pairs whose fainter star's light fraction × S/N is below it are left out on
    top of the margin: exactly the rows the labels say."""
    from sb2dask.dataset.store import load_split, split_indices

    stores = _two_stores(tmp_path, (11, 12), ((100, 300), (25, 60)), 200, (0.6, 0.4))
    d = _double_lined_dir(tmp_path)
    fields = ["is_binary", "light_fraction", "rv_separation", "snr"]
    lab = [load_split(s, split_indices(s, "train"), fields).labels for s in stores]
    lab = {k: np.concatenate([x[k] for x in lab]) for k in fields}
    dl = double_lined(lab["is_binary"], lab["light_fraction"], lab["rv_separation"])
    band = near_double_lined_threshold(lab["is_binary"], lab["light_fraction"],
                                       lab["rv_separation"], 2.0)
    noise = dl & companion_in_noise(lab["is_binary"], lab["light_fraction"], lab["snr"], 12.0)
    assert (noise & ~band).any()  # the rule leaves out rows the margin keeps
    refit_student_heads(d, stores, tmp_path / "pooled", margin=2.0, min_companion_signal=12.0)
    rec = ModelSet(tmp_path / "pooled", "cpu").students[0]["manifest"].training["detector_head"]
    assert [s["path"] for s in rec["store"]] == [str(p.resolve()) for p in stores]
    assert rec["store"][0]["sha256"] != rec["store"][1]["sha256"]
    assert rec["n_train"] == 240 and rec["min_companion_signal"] == 12.0
    assert rec["n_train_used"] == int((~(band | noise)).sum())
    vl = [load_split(s, split_indices(s, "validation"), fields).labels for s in stores]
    vl = {k: np.concatenate([x[k] for x in vl]) for k in fields}
    vdl = double_lined(vl["is_binary"], vl["light_fraction"], vl["rv_separation"])
    vout = near_double_lined_threshold(vl["is_binary"], vl["light_fraction"],
                                       vl["rv_separation"], 2.0) | (vdl & companion_in_noise(
                                           vl["is_binary"], vl["light_fraction"], vl["snr"], 12.0))
    assert rec["n_validation"] == 160 and rec["n_validation_used"] == int((~vout).sum())
    assert rec["balance"] == "pooled"
    refit_student_heads(d, stores, tmp_path / "per_store", margin=2.0,
                        min_companion_signal=12.0, balance="per_store")
    per_store = ModelSet(tmp_path / "per_store", "cpu").students[0]
    assert per_store["manifest"].training["detector_head"]["balance"] == "per_store"
    assert per_store["manifest"].weights_sha256 != ModelSet(
        tmp_path / "pooled", "cpu").students[0]["manifest"].weights_sha256
    with pytest.raises(ValueError, match="balance"):
        refit_student_heads(d, stores, tmp_path / "x", balance="per_snr")
    # one store: a path, a list of one, and per-store balance are the same fit, bit for bit
    hashes = []
    for name, arg, balance in [("a", stores[0], "pooled"), ("b", [stores[0]], "pooled"),
                               ("c", [stores[0]], "per_store")]:
        refit_student_heads(d, arg, tmp_path / name, margin=2.0, balance=balance)
        hashes.append([st["manifest"].weights_sha256
                       for st in ModelSet(tmp_path / name, "cpu").students])
    assert hashes[0] == hashes[1] == hashes[2]


def test_shipped_students_carry_their_refitted_heads():
    """The default students' heads were refitted (margin DEFAULT_MARGIN) from the weights their
    ensemble calibration was first fitted for, and that calibration followed them."""
    from sb2dask.train.head import DEFAULT_MARGIN

    ens = ModelSet("students", "cpu")
    cal = json.loads((ens.directory / "students.json").read_text())
    for st, prev in zip(ens.students, cal["carried_over"]["previous_members"], strict=True):
        rec = st["manifest"].training["detector_head"]
        assert rec["margin"] == DEFAULT_MARGIN and rec["store"]["sha256"]
        assert rec["previous_weights_sha256"] == prev["weights_sha256"]
        assert st["logit_offset"] == rec["logit_offset"] != rec["previous_logit_offset"]
        after = rec["validation_mixture"]["after"]
        assert after["singles_above_0_2"] < rec["validation_mixture"]["before"]["singles_above_0_2"]
    assert ens.ensemble_calibration is not None
