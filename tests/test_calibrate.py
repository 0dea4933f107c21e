"""Calibrated label uncertainties (``sb2dask.train.calibrate``): the error model's fit on
residuals of known width, the calibration file, its use by the model set and inference, and the
``calibrate`` command end to end on a tiny simulated store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from distributed import Client, LocalCluster

from model_fixtures import random_model_set
from sb2dask.cli import main
from sb2dask.dataset.factory import SplitSpec, generate
from sb2dask.infer.predict import ModelSet
from sb2dask.infer.run import uncertainty_floors
from sb2dask.models.io import ModelFileError
from sb2dask.simulate.config import SimulationConfig
from sb2dask.train.calibrate import (
    CALIBRATED_LABELS,
    CALIBRATION_FILE,
    Calibration,
    ErrorModel,
    coverage_curve,
    fit_calibration,
    fit_error_model,
    members_digest,
)


def test_fit_recovers_the_error_model_residuals_were_drawn_from():
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.0, 3.0, 40000)
    resid = rng.normal(0.0, np.sqrt((2.0 * spread) ** 2 + 0.5 ** 2))
    m = fit_error_model(resid, spread)
    assert m.a == pytest.approx(2.0, rel=0.03) and m.b == pytest.approx(0.5, rel=0.1)
    assert m.n == spread.size


def test_fit_with_an_uninformative_spread_gives_the_rms_and_a_small_a():
    rng = np.random.default_rng(2)
    spread = rng.uniform(0.0, 1.0, 20000)
    resid = rng.normal(0.0, 300.0, spread.size)  # the error has nothing to do with the spread
    m = fit_error_model(resid, spread)
    assert m.b == pytest.approx(300.0, rel=0.03) and m.a * 1.0 < 0.2 * m.b


def test_fit_refuses_too_few_residuals():
    with pytest.raises(ValueError, match="at least 20"):
        fit_error_model(np.ones(5), np.ones(5))


def test_coverage_curve_of_gaussian_residuals_follows_the_diagonal():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(1.0, 5.0, 50000)
    curve = coverage_curve(rng.normal(0.0, sigma), sigma)
    for c in curve:
        assert c["fraction"] == pytest.approx(c["level"], abs=0.01)
    # twice too small errors: far too few inside
    assert coverage_curve(rng.normal(0.0, sigma), sigma / 2, (0.683,))[0]["fraction"] < 0.45


def test_calibration_applies_the_model_of_each_component_and_snr_bin():
    cal = Calibration(models={"teff": [[ErrorModel(0.0, 10.0), ErrorModel(0.0, 20.0),
                                        ErrorModel(0.0, 30.0)],
                                       [ErrorModel(1.0, 0.0)] * 3]},
                      snr_edges=[50.0, 100.0])
    spread = np.array([[1.0, 4.0], [1.0, np.nan], [1.0, 3.0], [1.0, 5.0]])
    sig = cal.apply("teff", spread, np.array([10.0, 75.0, 500.0, np.nan]))
    # component 1: b of the S/N bin (NaN S/N: the middle bin); component 2: a*spread, NaN -> 0
    np.testing.assert_allclose(sig[:, 0], [10.0, 20.0, 30.0, 20.0])
    np.testing.assert_allclose(sig[:, 1], [4.0, 0.0, 3.0, 5.0])
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.apply("teff", spread, np.array([10.0, 75.0, 500.0, 1.0])),
                                  cal.apply("teff", spread, np.array([10.0, 75.0, 500.0, 1.0])))


def test_fit_calibration_per_snr_bin_gives_each_bin_its_width():
    rng = np.random.default_rng(4)
    n = 6000
    snr = np.where(np.arange(n) < n // 2, 40.0, 200.0)
    truth = {k: rng.normal(0.0, 1.0, (n, 2)) for k in CALIBRATED_LABELS}
    width = np.where(snr < 100, 4.0, 1.0)[:, None]
    pred = {k: truth[k] + rng.normal(0.0, 1.0, (n, 2)) * width for k in CALIBRATED_LABELS}
    pred.update({f"{k}_err": np.full((n, 2), 0.1) for k in CALIBRATED_LABELS})
    cal = fit_calibration(pred, truth, snr, snr_edges=[100.0])
    sig = cal.apply("logg", pred["logg_err"], snr)
    assert np.median(sig[snr < 100]) == pytest.approx(4.0, rel=0.05)
    assert np.median(sig[snr > 100]) == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="S/N"):
        fit_calibration(pred, truth, None, snr_edges=[100.0])


def test_value_bins_give_wider_errors_where_the_predictions_are_worse():
    rng = np.random.default_rng(6)
    n = 8000
    truth = {k: rng.uniform(0.0, 100.0, (n, 2)) for k in CALIBRATED_LABELS}
    pred = {k: truth[k] + rng.normal(0.0, 1.0, (n, 2)) * np.where(truth[k] < 50, 2.0, 8.0)
            for k in CALIBRATED_LABELS}
    pred.update({f"{k}_err": np.zeros((n, 2)) for k in CALIBRATED_LABELS})
    cal = fit_calibration(pred, truth, value_bins=2)
    assert [e[0] for e in cal.value_edges["vsini"]] == pytest.approx([50.0, 50.0], abs=3.0)
    sig = cal.apply("vsini", pred["vsini_err"], None, pred["vsini"])
    low = pred["vsini"] < 50.0
    assert np.median(sig[low]) < 4.0 < 6.5 < np.median(sig[~low])
    # each component has its own edges: a cooler star's value range is not the hotter one's
    shifted = {k: v + np.array([0.0, 1000.0]) for k, v in pred.items() if "_" not in k}
    shifted.update({f"{k}_err": pred[f"{k}_err"] for k in CALIBRATED_LABELS})
    two = fit_calibration(shifted, {k: v + np.array([0.0, 1000.0]) for k, v in truth.items()},
                          value_bins=2)
    assert two.value_edges["teff"][1][0] == pytest.approx(1050.0, abs=3.0)
    with pytest.raises(ValueError, match="predicted value"):
        cal.apply("vsini", pred["vsini_err"])
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.apply("vsini", pred["vsini_err"], None, pred["vsini"]),
                                  sig)


def test_a_broken_calibration_file_is_a_one_line_error(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text('{"models": 3}')
    with pytest.raises(ValueError, match="not a calibration file"):
        Calibration.load(tmp_path)
    assert Calibration.load(tmp_path / "nothing") is None


def test_model_set_reports_calibrated_errors_and_keeps_the_spread(tmp_path):
    models = random_model_set(tmp_path / "m", members=2)
    flux = (1.0 + 0.01 * np.random.default_rng(5).normal(size=(6, 903))).astype(np.float32)
    raw = ModelSet(models, device="cpu").predict(flux)
    np.testing.assert_array_equal(raw["teff_err"], raw["teff_spread"])
    cal = Calibration(models={k: [[ErrorModel(2.0, 7.0)]] * 2 for k in CALIBRATED_LABELS})
    cal.save(models)
    ms = ModelSet(models, device="cpu")
    got = ms.predict(flux)
    for k in CALIBRATED_LABELS:
        np.testing.assert_allclose(got[f"{k}_spread"], raw[f"{k}_spread"], rtol=1e-5)
        np.testing.assert_allclose(got[f"{k}_err"],
                                   np.sqrt((2.0 * raw[f"{k}_spread"]) ** 2 + 49.0), rtol=1e-5)
    np.testing.assert_array_equal(ms.predict(flux, calibrated=False)["vsini_err"],
                                  got["vsini_spread"])
    # the source table adds the validation RMSE to raw spreads only, not to calibrated errors
    assert set(uncertainty_floors(ModelSet(models, device="cpu")).values()) == {0.0}
    (models / CALIBRATION_FILE).unlink()
    assert set(uncertainty_floors(ModelSet(models, device="cpu")).values()) == {1.0}


def test_a_calibration_applies_only_to_the_members_it_was_fitted_with(tmp_path):
    models = random_model_set(tmp_path / "m", members=2)
    full = ModelSet(models, device="cpu")
    cal = Calibration(models={k: [[ErrorModel(2.0, 7.0)]] * 2 for k in CALIBRATED_LABELS},
                      provenance=dict(members_digest=members_digest(full.manifests),
                                      models=full.provenance))
    cal.save(models)
    assert ModelSet(models, device="cpu").calibration is not None
    assert ModelSet(models, device="cpu").calibration_record["sha256"]
    # one member: no spread, the one the calibration was fitted on -> not applied, with a warning
    with pytest.warns(UserWarning, match="not applied"):
        one = ModelSet(models, device="cpu", members=1)
    assert one.calibration is None and one.calibration_record is None
    # retrained weights under an old calibration: an error, not silently wrong uncertainties
    random_model_set(models, members=2, seed=9)
    with pytest.raises(ModelFileError, match="other weights"):
        ModelSet(models, device="cpu")


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibrate") / "cal.zarr"
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as client:
        generate(path, SimulationConfig(output_grid="gaia_dr3_903", seed=31), 48, 24,
                 client=client, split=SplitSpec(0.0, 0.0, 1.0), progress=False)
    return path


def test_calibrate_command_writes_a_calibration_the_model_set_uses(tiny_store, tmp_path, capsys):
    models = random_model_set(tmp_path / "m", members=2)
    assert main(["calibrate", "--models", str(models), "--store", str(tiny_store),
                 "--split", "test", "--max-n", "40", "--value-bins", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 40
    on_rows = report["coverage_on_calibration_rows"]
    for k in CALIBRATED_LABELS:  # the fit's own rows: about 68 % within 1σ
        assert 0.45 <= on_rows[k]["calibrated"][0] <= 0.9
    data = json.loads((models / CALIBRATION_FILE).read_text())
    prov = data["provenance"]
    assert prov["split"] == "test" and prov["n"] == 40 and prov["store_sha256"]
    assert set(prov["models"]) >= {"teff", "logg", "feh", "vsini"}
    assert ModelSet(models, device="cpu").calibration is not None
    assert data["provenance"]["members_digest"] == members_digest(
        ModelSet(models, device="cpu").manifests)
    # the cached predictions refit another binning without predicting again (and are refused
    # once the weights change)
    cache = tmp_path / "pred.npz"
    args = ["calibrate", "--models", str(models), "--store", str(tiny_store), "--split", "test",
            "--max-n", "40", "--value-bins", "1", "--predictions", str(cache)]
    assert main(args) == 0 and cache.exists()
    capsys.readouterr()
    stamp = cache.stat().st_mtime_ns
    assert main(args) == 0 and cache.stat().st_mtime_ns == stamp
    assert main(args + ["--rest-frame", "on"]) == 0 and cache.stat().st_mtime_ns != stamp


def test_calibrate_command_refuses_a_store_without_enough_sb2s(tiny_store, tmp_path, capsys):
    models = random_model_set(tmp_path / "m")
    assert main(["calibrate", "--models", str(models), "--store", str(tiny_store),
                 "--split", "test", "--max-n", "10"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 20" in err[0]
    assert main(["calibrate", "--models", str(models), "--store", str(tiny_store),
                 "--split", "test", "--value-bins", "4"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--value-bins" in err[0] and " of 4: " in err[0]
    assert main(["calibrate", "--models", str(models), "--store", str(tiny_store),
                 "--split", "test", "--snr-edges", "100", "50"]) != 0
    assert "strictly increasing" in capsys.readouterr().err
    assert main(["calibrate", "--models", "fast", "--store", str(tiny_store)]) != 0
    assert "holds a student" in capsys.readouterr().err
    assert not (models / CALIBRATION_FILE).exists()
