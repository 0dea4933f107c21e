"""The evaluation (``sb2dask.evaluate``): its metrics against hand-computed values, the report
(Tables 4-5, calibration, detector, Figs. 3-6) end to end on tiny simulated stores with the
shipped models, and the library validation on two small in-memory libraries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from sb2dask import stats
from sb2dask.dataset.factory import SplitSpec, generate
from sb2dask.evaluate import metrics
from sb2dask.evaluate.library_validation import (
    CA_BANDS,
    compare_libraries,
    equivalent_width,
    observe,
    write_report,
)
from sb2dask.evaluate.metrics import (
    PAPER_TABLE4,
    PAPER_TABLE5,
    binned_errors,
    interval_coverage,
    precision_at,
    randomization_test,
    rmse_mae,
    roc_auc,
)
from sb2dask.evaluate.report import evaluate, snr_table
from sb2dask.infer.config import InferenceConfig
from sb2dask.infer.predict import PAPER_MODEL_DIR, get_model_set
from sb2dask.labels import PARAMETERS, UNITS
from sb2dask.library.base import GridAxes, MissingNodeError
from sb2dask.simulate.config import SimulationConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------------------
# Metrics


def test_rmse_mae_pools_both_components_and_skips_missing_pairs():
    pred = np.array([[1.0, 2.0], [3.0, np.nan]])
    true = np.array([[0.0, 4.0], [3.0, 1.0]])
    rmse, mae = rmse_mae(pred, true)  # differences 1, -2, 0 (the NaN pair is left out)
    assert rmse == pytest.approx(np.sqrt(5.0 / 3.0)) and mae == pytest.approx(1.0)


def test_binned_errors_counts_and_values_per_bin():
    err = np.array([[1.0, -1.0], [2.0, 2.0], [3.0, np.nan], [10.0, 10.0]])
    x = np.array([0.5, 1.5, 1.7, 5.0])  # the last spectrum lies beyond the edges
    b = binned_errors(err, x, np.array([0.0, 1.0, 2.0, 3.0]))
    assert b["edges"] == [0.0, 1.0, 2.0, 3.0]
    assert b["n"] == [2, 3, 0]
    np.testing.assert_allclose(b["rmse"][:2], [1.0, np.sqrt((4 + 4 + 9) / 3)])
    np.testing.assert_allclose(b["mae"][:2], [1.0, 7.0 / 3.0])
    assert np.isnan(b["rmse"][2]) and np.isnan(b["mae"][2])
    # (n,) errors (one value per spectrum) are binned the same way
    assert binned_errors(err[:, 0], x, np.array([0.0, 1.0, 2.0]))["n"] == [1, 2]


def test_randomization_test_finds_a_trend_and_not_its_absence():
    edges = np.linspace(0.0, 90.0, 7)
    centres = 0.5 * (edges[:-1] + edges[1:])
    x = np.repeat(centres, 5)  # five spectra per bin, each with an error equal to its bin centre
    err = x.copy()
    trend = randomization_test(err, x, edges, n_perm=200, seed=1)
    assert trend["slope"] == pytest.approx(1.0)  # binned RMSE == bin centre: slope 1 exactly
    assert trend["n_permutations"] == 200
    assert trend["p_value"] == pytest.approx(1.0 / 201.0)  # no permutation matches the trend
    assert trend["null_std"] > 0
    rng = np.random.default_rng(7)
    flat = randomization_test(rng.standard_normal(x.size), x, edges, n_perm=200, seed=1)
    assert flat["p_value"] > 0.05 and abs(flat["slope"]) < 0.05
    assert randomization_test(err, x, edges, n_perm=50, seed=3) == \
        randomization_test(err, x, edges, n_perm=50, seed=3)


def test_precision_is_reweighted_to_the_prior():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)  # 4 binaries, 8 singles
    p = np.array([0.9, 0.8, 0.7, 0.5, 0.9, 0.6, 0.1, 0.1, 0.1, 0.2, 0.3, 0.4])
    # above 0.5 (strictly): TP 3, FP 2; TP / (TP + FP (4/8) / r)
    assert precision_at(y, p, 0.5) == pytest.approx(3.0 / (3.0 + 2.0 * 0.5 / 0.5))
    assert precision_at(y, p, 0.5, prior_ratio=1.0) == pytest.approx(3.0 / (3.0 + 1.0))
    assert precision_at(y, p, 0.85) == pytest.approx(1.0 / (1.0 + 1.0))
    assert np.isnan(precision_at(y, p, 0.95))  # nothing selected


def test_precision_without_singles_is_undefined_not_an_error():
    # the re-weighting needs the singles' false-positive rate; without singles it is unknown
    assert np.isnan(precision_at(np.ones(3, bool), np.array([0.9, 0.2, 0.7]), 0.5))


def test_interval_coverage_counts_labels_inside_one_and_two_sigma():
    pred = np.zeros((3, 2))
    sigma = np.array([[1.0, 1.0], [1.0, 0.0], [2.0, np.nan]])
    true = np.array([[0.5, 1.5], [3.0, 9.0], [-2.0, 0.0]])
    # |d|/σ: 0.5, 1.5, 3 and 1 (on the 1σ edge, counted); σ = 0 and NaN are left out
    c = interval_coverage(pred, sigma, true)
    assert c == dict(within_1sigma=0.5, within_2sigma=0.75, n=4)
    single_member = interval_coverage(pred, np.full((3, 2), np.nan), true)
    assert single_member["n"] == 0 and np.isnan(single_member["within_1sigma"])


def test_roc_auc_hand_values_and_ties():
    assert metrics.roc_auc is stats.roc_auc  # one home for the AUC
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied: chance, not 0 or 1
    # pairs (binary, single): 0.4>0.1, 0.4=0.4 (half), 0.8>0.1, 0.8>0.4 -> 3.5 of 4
    assert roc_auc(y, [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)
    assert np.isnan(roc_auc(np.ones(3), [0.1, 0.2, 0.3]))


def test_snr_table_bins_the_detector_and_the_labels_by_snr():
    snr = np.array([4.0, 6.0, 8.0, 12.0, 15.0, 30.0, 40.0, 45.0, 200.0, 140.0])
    y = np.array([1, 1, 0, 1, 0, 1, 0, 1, 1, 0], bool)
    pb = np.array([0.9, 0.6, 0.7, 0.8, 0.1, 0.3, 0.2, 0.9, 0.95, 0.05])
    rows = snr_table(detector=(snr, y, pb))
    assert [(r["snr_lo"], r["snr_hi"]) for r in rows] == [
        (5.0, 10.0), (10.0, 20.0), (20.0, 50.0), (50.0, 130.0), (130.0, np.inf)]
    assert [r["n"] for r in rows] == [2, 2, 3, 0, 2]  # S/N 4 lies below the first bin
    b = rows[0]  # S/N 6 (SB2, 0.6) and 8 (single, 0.7): the single star ranks higher
    assert b["roc_auc"] == 0.0 and b["recall"] == 1.0 and b["false_positive_rate"] == 1.0
    assert rows[2]["roc_auc"] == pytest.approx(stats.roc_auc(y[5:8], pb[5:8]))
    assert rows[2]["recall"] == 0.5 and rows[2]["precision"] == pytest.approx(
        precision_at(y[5:8], pb[5:8], 0.5))
    assert np.isnan(rows[3]["roc_auc"]) and np.isnan(rows[3]["recall"])
    assert rows[1]["auc_target"] == 0.90 and rows[2]["auc_target"] == 0.97
    assert "auc_target" not in rows[0]
    # labels: RMSE over both components of the SB2s in each bin
    truth = {p: np.zeros((3, 2)) for p in PARAMETERS}
    pred = {p: np.array([[1.0, -1.0], [2.0, 2.0], [3.0, np.nan]]) for p in PARAMETERS}
    rows = snr_table(sb2=(np.array([7.0, 9.0, 60.0]), pred, truth))
    assert [r["n_sb2"] for r in rows] == [2, 0, 0, 1, 0]
    assert rows[0]["teff_rmse"] == pytest.approx(np.sqrt((1 + 1 + 4 + 4) / 4))
    assert rows[3]["vsini_rmse"] == pytest.approx(3.0) and np.isnan(rows[1]["logg_rmse"])
    assert "n" not in rows[0]  # no detector set given


# ---------------------------------------------------------------------------------------------
# The report on tiny stores

#: Mixed store: 32 spectra, the last quarter (8) is the test split; single-star store: 8.
N_MIX, N_SINGLE, MAX_TEST, N_PERM = 32, 8, 6, 40
GRID = "gaia_dr3_903"  # the shipped models' pixel grid


def _store(path, n, chunk, client, grid=GRID, **config):
    generate(path, SimulationConfig(output_grid=grid, **config), n, chunk, client=client,
             split=SplitSpec(0.5, 0.25, 0.25) if n == N_MIX else SplitSpec(0.0, 0.0, 1.0),
             progress=False)
    return path


def _rows(store, lo, hi, fields):
    g = zarr.open_group(str(store), mode="r")
    return g["flux"][lo:hi], {k: g["labels"][k][lo:hi] for k in fields}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluation (with the single-star and detector sections) of the shipped models on tiny
    stores, and the predictions recomputed for the rows it used."""
    root = tmp_path_factory.mktemp("evaluate")
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as client:
        mix = _store(root / "mix.zarr", N_MIX, 8, client, seed=21, binary_fraction=0.5)
        single = _store(root / "single.zarr", N_SINGLE, N_SINGLE, client, seed=22,
                        binary_fraction=0.0)
    res = evaluate(mix, PAPER_MODEL_DIR, root / "out", single_store=single,
                   detector_store=mix, max_test=MAX_TEST, n_perm=N_PERM)
    # the test split is the last quarter; max_test keeps its first MAX_TEST rows
    lo = int(N_MIX * 0.75)
    fields = list(PARAMETERS) + ["is_binary", "snr", "rv_separation"]
    flux, lab = _rows(mix, lo, lo + MAX_TEST, fields)
    sflux, slab = _rows(single, 0, MAX_TEST, fields)
    models = get_model_set(InferenceConfig("paper", device="cpu"))
    pred = models.predict(np.concatenate([flux, sflux]))
    return dict(res=res, out=root / "out", lab=lab, single_lab=slab,
                pred={k: v[:MAX_TEST] for k, v in pred.items()},
                single_pred={k: v[MAX_TEST:] for k, v in pred.items()})


def _rmse_mae(d):
    d = np.asarray(d, float).ravel()
    d = d[np.isfinite(d)]
    return np.sqrt(np.mean(d ** 2)), np.mean(np.abs(d))


def test_report_tables_recompute_from_the_predictions(evaluated):
    res, lab, pred = evaluated["res"], evaluated["lab"], evaluated["pred"]
    b = lab["is_binary"]
    assert 0 < b.sum() < MAX_TEST and res["n_test"] == int(b.sum())
    for p in PARAMETERS:
        d = pred[p][b] - lab[p][b]
        t4, t5 = res["table4"][p], res["table5"][p]
        np.testing.assert_allclose([t4["rmse"], t4["mae"]], _rmse_mae(d), rtol=1e-6)
        np.testing.assert_allclose([t5["rmse"], t5["mae"]], _rmse_mae(d[:, 1] - d[:, 0]),
                                   rtol=1e-6)
        assert (t4["paper_rmse"], t4["paper_mae"]) == PAPER_TABLE4[p]
        assert (t5["paper_rmse"], t5["paper_mae"]) == PAPER_TABLE5[p]
        sigma = pred[f"{p}_err"][b]
        cal = res["calibration"][p]
        assert cal["n"] == 2 * b.sum()  # two members: every spread is finite and positive
        assert cal["within_1sigma"] == pytest.approx(np.mean(np.abs(d) <= sigma))
        assert cal["within_2sigma"] == pytest.approx(np.mean(np.abs(d) <= 2 * sigma))
        # every binary's two components fall in some S/N and RV-separation bin
        assert sum(res["binned"]["snr"][p]["n"]) == 2 * b.sum()
        assert sum(res["binned"]["rv_separation"][p]["n"]) == 2 * b.sum()
        assert len(res["binned"]["feh"][p]["n"]) == 5
        r = res["rv_separation_randomization_test"][p]
        assert r["n_permutations"] == N_PERM and 1 / (N_PERM + 1) <= r["p_value"] <= 1
    snr_bins = res["binned"]["snr"]["teff"]
    k = np.digitize(lab["snr"][b], snr_bins["edges"]) - 1
    assert snr_bins["n"] == [2 * int(np.sum(k == i)) for i in range(len(snr_bins["n"]))]
    assert res["predict_spectra_per_s"] > 0


def test_report_single_star_and_detector_sections(evaluated):
    res, lab, spred = evaluated["res"], evaluated["single_lab"], evaluated["single_pred"]
    s = res["single_star_test"]
    assert s["n"] == MAX_TEST and not lab["is_binary"].any()
    for p in PARAMETERS:
        assert np.isnan(lab[p][:, 1]).all()  # single stars: no second component
        np.testing.assert_allclose([s[p]["rmse_component1"], s[p]["mae_component1"]],
                                   _rmse_mae(spred[p][:, 0] - lab[p][:, 0]), rtol=1e-6)
        np.testing.assert_allclose(s[p]["rmse_component2"],
                                   _rmse_mae(spred[p][:, 1] - lab[p][:, 0])[0], rtol=1e-6)
        np.testing.assert_allclose(s[p]["correlation_between_components"],
                                   np.corrcoef(spred[p][:, 0], spred[p][:, 1])[0, 1], rtol=1e-6)
        np.testing.assert_allclose(s[p]["ratio_to_sb2_rmse"], 0.5 * (
            s[p]["rmse_component1"] + s[p]["rmse_component2"]) / res["table4"][p]["rmse"])
    assert s["median_p_binary"] == pytest.approx(np.median(spred["p_binary"]))

    y, pb = evaluated["lab"]["is_binary"], evaluated["pred"]["p_binary"]
    d = res["detector"]
    assert (d["n"], d["n_binary"]) == (MAX_TEST, int(y.sum()))
    assert d["roc_auc"] == pytest.approx(stats.roc_auc(y, pb))
    for t, key in ((0.5, "precision_at_0_5"), (0.8, "precision_at_0_8")):
        tp, fp = np.sum((pb > t) & y), np.sum((pb > t) & ~y)
        want = tp / (tp + fp * (y.sum() / (~y).sum()) / 0.5) if tp + fp else np.nan
        np.testing.assert_allclose(d[key], want, rtol=1e-12)
    assert d["recall_at_0_5"] == pytest.approx(np.mean(pb[y] > 0.5))
    assert d["singles_below_0_2"] == pytest.approx(np.mean(pb[~y] < 0.2))


def test_report_per_snr_section_recomputes_from_the_predictions(evaluated):
    res, lab, pred = evaluated["res"], evaluated["lab"], evaluated["pred"]
    rows = res["by_snr"]
    y, pb, snr = lab["is_binary"], pred["p_binary"], lab["snr"]
    assert sum(r["n"] for r in rows) == MAX_TEST  # the paper's S/N 30-350 fall in the bins
    b = y & (snr >= 20) & (snr < 50)
    for r in rows:
        sel = (snr >= r["snr_lo"]) & (snr < r["snr_hi"])
        assert r["n"] == sel.sum() and r["n_sb2"] == (sel & y).sum()
        if (sel & y).any() and (sel & ~y).any():
            assert r["roc_auc"] == pytest.approx(stats.roc_auc(y[sel], pb[sel]))
    if b.any():
        want = _rmse_mae(pred["teff"][b] - lab["teff"][b])[0]
        assert rows[2]["teff_rmse"] == pytest.approx(want, rel=1e-6)
    md = (evaluated["out"] / "evaluation.md").read_text()
    assert "## Per S/N bin (rest frame: auto" in md and "| 10-20 | " in md and "| > 130 |" in md
    assert "Issue 11's targets: S/N 10-20: ROC AUC" in md


def test_report_resamples_a_dr4_store_and_removes_rv_bulk_on_request(tmp_path):
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as client:
        store = tmp_path / "dr4.zarr"
        generate(store, SimulationConfig.dr4(seed=23, binary_fraction=0.5), 8, 8, client=client,
                 split=SplitSpec(0.0, 0.0, 1.0), progress=False)
    res = evaluate(store, PAPER_MODEL_DIR, tmp_path / "out", detector_store=store, n_perm=5,
                   rest_frame="on")
    assert res["frame"] == "rv_bulk" and res["rest_frame"] == "on"
    assert res["detector"]["n"] == 8 and sum(r["n"] for r in res["by_snr"]) == 8
    assert sum(r["n_sb2"] for r in res["by_snr"]) == res["n_test"]
    # Fig. 5 bins by the DR4 edges below the paper's floor of 30, every SB2 in one of them
    fig5 = res["binned"]["snr"]["teff"]
    assert fig5["edges"][:5] == [5.0, 10.0, 20.0, 50.0, 130.0]
    assert sum(fig5["n"]) == 2 * res["n_test"]


def test_report_files(evaluated):
    res, out = evaluated["res"], evaluated["out"]
    on_disk = json.loads((out / "evaluation.json").read_text())
    assert on_disk["n_test"] == res["n_test"] and on_disk["table4"] == res["table4"]
    assert on_disk["store"].endswith("mix.zarr") and on_disk["model_dir"] == str(PAPER_MODEL_DIR)
    assert set(on_disk["models"]) == {"p_binary", "teff", *PARAMETERS}
    assert [m["name"] for m in on_disk["models"]["teff"]] == ["teff-0", "teff-1"]
    md = (out / "evaluation.md").read_text().splitlines()
    assert md[0] == f"# sb2dask evaluation ({res['n_test']} SB2 test spectra)"
    for p in PARAMETERS:
        rows = [line for line in md if line.startswith(f"| {p} [{UNITS[p]}] |")]
        assert len(rows) == 2  # Table 4 and Table 5
        for row, table in zip(rows, ("table4", "table5")):
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[1:3] == [f"{res[table][p]['rmse']:.3g}", f"{res[table][p]['mae']:.3g}"]
        assert sum(line.startswith(f"| {p} |") for line in md) == 3  # test, calibration, single
    assert any(line.startswith(f"## SB2 detector ({MAX_TEST} test spectra") for line in md)
    for name in ("fig3_predicted_vs_true", "fig4_errors_vs_feh", "fig5_errors_vs_snr",
                 "fig6_errors_vs_rv_separation"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_report_refuses_a_store_on_another_pixel_grid(tmp_path):
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as client:
        store = _store(tmp_path / "s.zarr", 4, 4, client, grid="rvs903", seed=3)
    with pytest.raises(ValueError, match="pixel grid differs"):
        evaluate(store, PAPER_MODEL_DIR, tmp_path / "out", n_perm=5)


# ---------------------------------------------------------------------------------------------
# Library validation on two small in-memory libraries

CA_AIR = (8498.02, 8542.09, 8662.14)


class _LineLibrary:
    """A flat continuum with three Gaussian Ca II lines of depth ``depth`` and σ = 1 Å, at
    infinite resolution; the absolute continuum goes as Teff⁴."""

    name = "lines"
    resolution = np.inf

    def __init__(self, depth: float, teff=(5000.0, 6400.0), missing=()):
        self.depth = depth
        self.axes = GridAxes(teff=tuple(teff), logg=(4.5,), feh=(0.0,))
        self.available = np.ones(self.axes.shape, bool)
        self.missing = set(missing)
        self.wave = np.arange(8400.0, 8800.0, 0.02)

    def flux(self, teff, logg, feh):
        if teff in self.missing:
            raise MissingNodeError(f"teff={teff}")
        self.axes.index(teff, logg, feh)
        return 1.0 - sum(self.depth * np.exp(-0.5 * (self.wave - c) ** 2) for c in CA_AIR)

    def continuum(self, teff, logg, feh, wave=8600.0):
        return (teff / 5000.0) ** 4


def test_observe_keeps_equivalent_widths():
    w, f = observe(_LineLibrary(0.3), 5000.0, 4.5, 0.0)
    assert 8470.0 <= w[0] < w[-1] <= 8710.0 and np.all(np.diff(w) > 0)
    # a Gaussian line of depth d and σ = 1 Å: EW = d σ sqrt(2π), kept by the R = 11 500 LSF
    for band in CA_BANDS:
        assert equivalent_width(w, f, band) == pytest.approx(0.3 * np.sqrt(2 * np.pi),
                                                             rel=0.01)
    far = (w > 8590) & (w < 8610)  # between the lines: the continuum is back at 1
    np.testing.assert_allclose(f[far], 1.0, atol=2e-3)


def test_compare_libraries_and_report(tmp_path):
    deep, shallow = _LineLibrary(0.3, missing={6000.0}), _LineLibrary(0.2)
    same = compare_libraries(shallow, shallow)
    assert [r["rms"] for r in same] == [0.0, 0.0]
    assert all(r["correlation"] == pytest.approx(1.0) for r in same)
    rows = compare_libraries(deep, _LineLibrary(0.2, teff=(5000.0, 6000.0, 6400.0)))
    assert [r["teff"] for r in rows] == [5000.0, 6400.0]  # a node the test lacks is skipped
    for r in rows:
        np.testing.assert_allclose(np.array(r["ew_test"]) / np.array(r["ew_reference"]), 1.5,
                                   rtol=0.01)
        assert r["rms"] > 0.01 and r["correlation"] > 0.99
    summary = write_report(rows, tmp_path, "deep", "shallow", test=deep, reference=shallow)
    ratio = (6400.0 / 5000.0) ** 4
    assert summary["continuum_ratio_6400_5000"] == pytest.approx(dict(test=ratio,
                                                                      reference=ratio))
    on_disk = json.loads((tmp_path / "validation.json").read_text())
    assert len(on_disk["nodes"]) == 2 and on_disk["median_rms"] == pytest.approx(
        np.median([r["rms"] for r in rows]))
    md = (tmp_path / "validation.md").read_text().splitlines()
    assert sum(line.startswith(("| 5000 |", "| 6400 |")) for line in md) == 2
    assert f"{ratio:.3f}" in md[-1]
    assert (tmp_path / "validation.png").read_bytes()[:8] == PNG_MAGIC
