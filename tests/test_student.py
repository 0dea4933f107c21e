"""The distilled one-pass student (sb2dask.models.student, sb2dask.train.distill) and
``--models fast``: its arithmetic bound, outputs, calibration, manifest and the inference path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sb2dask.infer.config import InferenceConfig
from sb2dask.infer.predict import MODEL_PRESETS, ModelSet, predict_partition, resolve_model_dir
from sb2dask.infer.schema import load_schema
from sb2dask.labels import PARAMETERS
from sb2dask.models.io import ModelManifest, load_model, save_model
from sb2dask.models.student import (
    MAX_MFLOP,
    OUTPUTS,
    StudentNet,
    ca_ii_core_windows,
    count_flops,
    decode,
    scaled_targets,
    width_scales,
)
from sb2dask.simulate.config import output_wave
from sb2dask.train.distill import DEFAULT_BLEND, distill_loss

FAST = MODEL_PRESETS["fast"]


def _student_dir(tmp_path, scales=None, seed=0, offset=0.0):
    """A student with seeded random weights and a calibration, saved as training saves it."""
    torch.manual_seed(seed)
    wave = tuple(float(w) for w in output_wave("gaia_dr3_903"))
    model = StudentNet(n_pix=len(wave)).eval()
    cal = dict(snr_edges=[60.0, 120.0], outputs=list(OUTPUTS),
               scales=(np.ones((3, 9)) if scales is None else scales).tolist(),
               p_binary_logit_offset=offset)
    training = dict(frame="rest", calibration=cal, snr_range=[30.0, 350.0],
                    label_limits={"teff": [3500.0, 6500.0], "logg": [3.0, 6.0],
                                  "feh": [-4.0, 1.0], "vsini": [0.0, 100.0]})
    save_model(tmp_path, model, ModelManifest(
        name="student-0", target="student", architecture="StudentNet", wave=wave,
        architecture_kwargs=dict(n_pix=len(wave)), training=training))
    return tmp_path


def test_students_of_one_directory_form_an_equal_mixture(tmp_path):
    """student-0, student-1 (seeds of one recipe) run as one model set: p_binary the members'
    mean with their standard deviation as p_binary_err, each label the mean with the mixture's
    width; ``members`` keeps the first ones; students that disagree on the grid are refused."""
    import shutil

    from sb2dask.models.io import ModelFileError

    a = _student_dir(tmp_path / "a", seed=0, scales=np.full((3, 9), 1.5))
    b = _student_dir(tmp_path / "b", seed=1)
    both = tmp_path / "both"
    shutil.copytree(a, both)
    shutil.copy(b / "student-0.safetensors", both / "student-1.safetensors")
    man = json.loads((b / "student-0.json").read_text())
    (both / "student-1.json").write_text(json.dumps(dict(man, name="student-1")))
    rng = np.random.default_rng(0)
    flux = (1.0 - 0.3 * rng.random((4, 903)) ** 8).astype(np.float32)  # spectrum-like lines
    snr = np.array([50.0, 100.0, 200.0, np.nan])
    pa, pb = (ModelSet(d, "cpu").predict(flux, snr=snr) for d in (a, b))
    ens = ModelSet(both, "cpu")
    assert len(ens.students) == 2 and ens.student is not None
    assert [m["name"] for m in ens.provenance["student"]] == ["student-0", "student-1"]
    pe = ens.predict(flux, snr=snr)
    np.testing.assert_allclose(pe["p_binary"], (pa["p_binary"] + pb["p_binary"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(pe["p_binary_err"], np.abs(pa["p_binary"] - pb["p_binary"])
                               / np.sqrt(2), rtol=1e-5, atol=1e-9)
    for k in ("teff", "logg", "light_fraction_faint"):
        np.testing.assert_allclose(pe[k], (pa[k] + pb[k]) / 2, rtol=1e-6)
        var = (pa[f"{k}_err"] ** 2 + pb[f"{k}_err"] ** 2) / 2 + ((pa[k] - pb[k]) / 2) ** 2
        np.testing.assert_allclose(pe[f"{k}_err"], np.sqrt(var), rtol=1e-6)
    assert np.isnan(pa["p_binary_err"]).all()
    # --members 1: the first student alone, as its own directory gives it
    one = ModelSet(both, "cpu", members=1).predict(flux, snr=snr)
    np.testing.assert_array_equal(one["teff"], pa["teff"])
    # a student of another grid cannot join
    man = json.loads((both / "student-1.json").read_text())
    man["wave"] = man["wave"][1:] + [man["wave"][-1] + 0.1]
    (both / "student-1.json").write_text(json.dumps(man))
    with pytest.raises(ModelFileError, match="one student ensemble must share"):
        ModelSet(both, "cpu")


def _ensemble_dir(tmp_path, n=3):
    """``n`` students of seeded random weights in one directory (student-0 ... student-n-1)."""
    import shutil

    both = tmp_path / "ens"
    both.mkdir()
    for i in range(n):
        one = _student_dir(tmp_path / f"s{i}", seed=i)
        man = json.loads((one / "student-0.json").read_text())
        shutil.copy(one / "student-0.safetensors", both / f"student-{i}.safetensors")
        (both / f"student-{i}.json").write_text(json.dumps(dict(man, name=f"student-{i}")))
    return both


def test_decoded_z_and_scaled_widths_follow_the_outputs():
    from sb2dask.models.student import decoded_z, scale_decoded_widths

    pred = {k: np.array([[4000.0, 5000.0], [4500.0, 6000.0]]) for k in PARAMETERS}
    pred.update({f"{k}_err": np.array([[100.0, 200.0], [50.0, 400.0]]) for k in PARAMETERS})
    pred.update(p_binary=np.array([0.3, 0.9]), light_fraction_faint=np.array([0.2, 0.4]),
                light_fraction_faint_err=np.array([0.1, 0.05]))
    truth = {k: v + np.array([[100.0, -400.0], [0.0, 400.0]]) for k, v in pred.items()
             if k in PARAMETERS}
    truth["light_fraction_faint"] = np.array([0.3, 0.3])
    z = decoded_z(pred, truth)
    assert z.shape == (2, 9)
    np.testing.assert_allclose(z[:, OUTPUTS.index("teff_1")], [1.0, 0.0])
    np.testing.assert_allclose(z[:, OUTPUTS.index("vsini_2")], [-2.0, 1.0])
    np.testing.assert_allclose(z[:, -1], [1.0, -2.0])
    scales = np.ones((3, 9))
    scales[1, OUTPUTS.index("logg_2")] = 3.0
    scales[2, -1] = 0.5
    out = scale_decoded_widths(pred, scales, np.array([80.0, 200.0]), (60.0, 120.0))
    np.testing.assert_allclose(out["logg_err"], [[100.0, 600.0], [50.0, 400.0]])
    np.testing.assert_allclose(out["light_fraction_faint_err"], [0.1, 0.025])
    np.testing.assert_array_equal(out["teff_err"], pred["teff_err"])
    assert out["p_binary"] is pred["p_binary"] and out["logg_err"] is not pred["logg_err"]


def test_a_student_ensemble_applies_its_own_width_calibration(tmp_path):
    """A directory of students with ``students.json`` scales the mixture's widths per output and
    S/N bin, only for exactly the students it was fitted with: fewer (``members``) run
    uncalibrated with a warning (one student: its own manifest, silently), other weights or a
    broken file are refused naming the file."""
    import warnings

    from sb2dask.models.io import ModelFileError
    from sb2dask.models.student import ENSEMBLE_CALIBRATION_FILE

    d = _ensemble_dir(tmp_path)
    rng = np.random.default_rng(0)
    flux = (1.0 - 0.3 * rng.random((3, 903)) ** 8).astype(np.float32)
    snr = np.array([40.0, 80.0, np.nan])  # bins 0, 1 and (unknown) the middle one
    raw = ModelSet(d, "cpu").predict(flux, snr=snr)
    assert ModelSet(d, "cpu").calibration_record is None
    scales = np.ones((3, 9))
    scales[1] = 0.5
    scales[0, OUTPUTS.index("feh_2")] = 2.0
    members = [dict(name=f"student-{i}", weights_sha256=json.loads(
        (d / f"student-{i}.json").read_text())["weights_sha256"]) for i in range(3)]
    rec = dict(members=members, snr_edges=[60.0, 120.0], scales=scales.tolist(),
               split="validation", n=123, stores={"labels": {"sha256": "abc"}})
    (d / ENSEMBLE_CALIBRATION_FILE).write_text(json.dumps(rec))
    ens = ModelSet(d, "cpu")
    cal = ens.predict(flux, snr=snr)
    np.testing.assert_allclose(cal["feh_err"][0], raw["feh_err"][0] * [1.0, 2.0])
    np.testing.assert_allclose(cal["teff_err"][1:], raw["teff_err"][1:] * 0.5)
    np.testing.assert_allclose(cal["light_fraction_faint_err"], raw["light_fraction_faint_err"]
                               * [1.0, 0.5, 0.5])
    for k in ("teff", "p_binary", "p_binary_err", "light_fraction_faint"):
        np.testing.assert_array_equal(cal[k], raw[k])
    record = ens.calibration_record
    assert record["kind"] == "student_ensemble" and record["n"] == 123
    assert record["store_sha256"] == {"labels": "abc"} and len(record["sha256"]) == 64
    # one student: its own calibration, no warning; two of the three: uncalibrated, warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = ModelSet(d, "cpu", members=1)
    assert alone.ensemble_calibration is None
    with pytest.warns(UserWarning, match="fitted for 3 students, 2 are loaded") as rec_w:
        two = ModelSet(d, "cpu", members=2)
    assert two.ensemble_calibration is None
    assert rec_w[0].filename == __file__  # the warning points at the caller
    # a student missing from the directory is not --members: refused
    import shutil

    gone = tmp_path / "gone"
    shutil.copytree(d, gone)
    for f in gone.glob("student-1.*"):
        f.unlink()
    with pytest.raises(ModelFileError, match="fitted with other students"):
        ModelSet(gone, "cpu")
    # other weights: refused
    bad = dict(rec, members=[dict(m, weights_sha256="0" * 64) for m in members])
    (d / ENSEMBLE_CALIBRATION_FILE).write_text(json.dumps(bad))
    with pytest.raises(ModelFileError, match="fitted with other students"):
        ModelSet(d, "cpu")
    (d / ENSEMBLE_CALIBRATION_FILE).write_text(json.dumps(dict(rec, scales=[[1.0] * 9])))
    with pytest.raises(ModelFileError, match=r"students.json: scales of shape \(1, 9\)"):
        ModelSet(d, "cpu")
    (d / ENSEMBLE_CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="students.json: not a student-ensemble"):
        ModelSet(d, "cpu")


def test_calibrate_student_ensemble_fits_the_mixture_on_validation_rows(tmp_path):
    """The ensemble calibration is fitted on the store's validation rows through the mixture as
    ModelSet forms it: the 1σ coverage becomes 68 % in a populated S/N bin (the others, under 50
    rows, keep factor 1), the file names the students and the rows, and a refit gives the same
    factors (it fits the uncalibrated mixture, not the calibrated one)."""
    from distributed import Client, LocalCluster

    from sb2dask.dataset.factory import SplitSpec, generate
    from sb2dask.simulate.config import SimulationConfig
    from sb2dask.train.distill import calibrate_student_ensemble

    store = tmp_path / "s.zarr"
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as c:
        generate(store, SimulationConfig.paper(seed=5, binary_fraction=1.0, snr_range=(70, 110)),
                 240, 120, client=c, split=SplitSpec(0.25, 0.7, 0.05), progress=False)
    d = _ensemble_dir(tmp_path, n=2)
    with pytest.raises(ValueError, match="needs several"):
        calibrate_student_ensemble(_student_dir(tmp_path / "one"), {"labels": store}, {})
    path = calibrate_student_ensemble(d, {"labels": store}, {})
    rec = json.loads(path.read_text())
    assert [m["name"] for m in rec["members"]] == ["student-0", "student-1"]
    assert rec["split"] == "validation" and rec["n"] > 150
    assert rec["stores"]["labels"]["sha256"] and rec["outputs"] == list(OUTPUTS)
    scales = np.array(rec["scales"])
    assert np.all(scales[[0, 2]] == 1.0) and np.all(scales[1] != 1.0)
    assert all(abs(v - 0.6827) < 0.02 for v in rec["coverage_1sigma_after"].values())
    ens = ModelSet(d, "cpu")
    assert ens.ensemble_calibration is not None
    flux = np.ones((2, 903), np.float32)
    raw = ModelSet(d, "cpu", members=2)
    raw.ensemble_calibration = None
    a = raw.predict(flux, snr=np.array([80.0, 80.0]))
    b = ens.predict(flux, snr=np.array([80.0, 80.0]))
    np.testing.assert_allclose(b["vsini_err"], a["vsini_err"] * scales[1, 6:8], rtol=1e-6)
    # the factor of the cooler star's Teff, recomputed from the store's own labels (cooler
    # first) and the uncalibrated mixture's predictions: decoded_z pairs the right components
    from sb2dask.dataset.store import load_split, split_indices

    d_val = load_split(store, split_indices(store, "validation"), ["teff", "is_binary", "snr"],
                       frame="rest", wave=ens.wave)
    binary = d_val.labels["is_binary"].astype(bool)
    pv = raw.predict(d_val.flux[binary], snr=d_val.labels["snr"][binary])
    true_cool = np.sort(d_val.labels["teff"][binary], axis=1)[:, 0]
    z = (true_cool - pv["teff"][:, 0]) / pv["teff_err"][:, 0]
    assert scales[1, 0] == pytest.approx(np.quantile(np.abs(z), 0.6827), rel=1e-4)
    again = json.loads(calibrate_student_ensemble(d, {"labels": store}, {}).read_text())
    np.testing.assert_allclose(again["scales"], rec["scales"], rtol=1e-6)
    # a stale file (other weights) is replaced by a refit, not in its way
    stale = dict(rec, members=[dict(m, weights_sha256="0" * 64) for m in rec["members"]])
    path.write_text(json.dumps(stale))
    refit = json.loads(calibrate_student_ensemble(d, {"labels": store}, {}).read_text())
    assert refit["members"] == rec["members"]
    np.testing.assert_allclose(refit["scales"], rec["scales"], rtol=1e-6)


def test_student_stays_under_the_flop_bound():
    flops = count_flops(StudentNet())
    # the bound, and a floor that catches a counter that counts nothing
    assert 5e6 < flops <= MAX_MFLOP * 1e6
    # the shipped student is the same architecture, and its manifest says what was measured
    man = json.loads((FAST / "student-0.json").read_text())
    assert man["training"]["mflop_per_spectrum"] == pytest.approx(flops / 1e6, rel=1e-6)


def test_student_outputs_and_component_order():
    model = StudentNet().eval()
    with torch.inference_mode():
        logit, mean, logw = model(torch.ones(3, 903))
    assert logit.shape == (3,) and mean.shape == (3, 9) and logw.shape == (3, 9)
    # a prediction with the hotter star first is swapped, labels and widths together
    m = np.array([[0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.3, 0.6, 0.2]])
    w = np.log(np.array([[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09]]))
    out = decode(np.zeros(1), m, w)
    assert out["teff"][0, 0] < out["teff"][0, 1]
    np.testing.assert_allclose(out["teff"][0], [3500 + 0.1 * 3000, 3500 + 0.9 * 3000])
    np.testing.assert_allclose(out["logg"][0], [3.0 + 0.8 * 3, 3.0 + 0.2 * 3])
    np.testing.assert_allclose(out["vsini_err"][0], [8.0, 7.0])
    assert out["p_binary"][0] == pytest.approx(0.5)
    assert out["light_fraction_faint"][0] == pytest.approx(0.2)


def test_bridged_windows_hide_the_ca_ii_cores_and_travel_in_the_manifest(tmp_path):
    """A student with bridged windows sees a straight line across each: whatever lies inside
    changes nothing, a change just outside does; the windows are the Ca II cores of its grid,
    are not weights (the state dict is the unbridged one's) and come back from the manifest;
    bad windows are refused."""
    wave = output_wave("gaia_dr3_903")
    windows = ca_ii_core_windows(wave, 1.0)
    assert len(windows) == 3
    for (a, b), line in zip(windows, (8498.02, 8542.09, 8662.14)):
        assert abs(wave[a] - line) <= 1.0 and abs(wave[b - 1] - line) <= 1.0
        assert abs(wave[a - 1] - line) > 1.0 and abs(wave[b] - line) > 1.0
    torch.manual_seed(0)
    plain = StudentNet().eval()
    model = StudentNet(bridged=windows).eval()
    model.load_state_dict(plain.state_dict())  # same keys: the bridge holds no weights
    rng = np.random.default_rng(0)
    x = torch.from_numpy((1.0 - 0.3 * rng.random((4, 903)) ** 8).astype(np.float32))
    inside, outside = x.clone(), x.clone()
    for a, b in windows:
        inside[:, a:b] = 0.2  # a deep core, or an emission line: invisible
        outside[:, b + 2] -= 0.3
    a, b = windows[0]
    x0 = x.clone()
    bridged = model.bridge(x)
    np.testing.assert_allclose(bridged[:, a:b].numpy(), np.linspace(
        x[:, a - 1].numpy(), x[:, b].numpy(), b - a + 2, axis=1)[:, 1:-1], rtol=1e-6)
    assert torch.equal(bridged[:, :a], x[:, :a]) and torch.equal(x, x0)  # input untouched
    with torch.inference_mode():
        ref = model.embed(x)
        assert torch.equal(model.embed(inside), ref)
        assert not torch.equal(model.embed(outside), ref)
        assert not torch.equal(plain.embed(inside), plain.embed(x))
    save_model(tmp_path, model, ModelManifest(
        name="student-0", target="student", architecture="StudentNet",
        wave=tuple(float(w) for w in wave),
        architecture_kwargs=dict(n_pix=903, bridged=model.bridged)))
    loaded, man = load_model(tmp_path / "student-0.json")
    assert loaded.bridged == windows == man.architecture_kwargs["bridged"]
    with torch.inference_mode():
        assert torch.equal(loaded.embed(inside), ref)
    with pytest.raises(ValueError, match="inside"):
        StudentNet(bridged=[[0, 5]])
    with pytest.raises(ValueError, match="overlap"):
        StudentNet(bridged=[[10, 20], [15, 25]])
    with pytest.raises(ValueError, match="touch"):  # pixel 20 would anchor the first window
        StudentNet(bridged=[[20, 30], [10, 20]])
    with pytest.raises(ValueError, match="half_width"):
        ca_ii_core_windows(wave, 0.0)


def test_calibration_scales_the_widths_by_snr_bin():
    m = np.full((3, 9), 0.5)
    w = np.log(np.full((3, 9), 0.01))
    scales = np.array([np.full(9, 1.0), np.full(9, 2.0), np.full(9, 3.0)])
    out = decode(np.zeros(3), m, w, snr=np.array([40.0, 80.0, 200.0]), scales=scales)
    np.testing.assert_allclose(out["teff_err"][:, 0], [30.0, 60.0, 90.0])
    # unknown S/N: the middle bin
    out = decode(np.zeros(1), m[:1], w[:1], snr=np.array([np.nan]), scales=scales)
    np.testing.assert_allclose(out["feh_err"][0], [0.1, 0.1])
    # width_scales finds the factor that makes 68 % of |z| fall within 1
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4000, 9)) * 2.5
    f = width_scales(z, np.full(4000, 80.0))
    assert np.allclose(f[1], 2.5, rtol=0.06) and np.all(f[[0, 2]] == 1.0)


def test_scaled_targets_and_singles():
    lab = {k: np.array([[4000.0, 5000.0], [4500.0, np.nan]]) for k in PARAMETERS}
    lab["light_fraction"] = np.array([[0.7, 0.3], [1.0, np.nan]])
    y = scaled_targets(lab)
    assert y.shape == (2, 9)
    assert y[0, OUTPUTS.index("light_fraction_faint")] == pytest.approx(0.3)
    assert np.isnan(y[1, OUTPUTS.index("teff_2")])


def test_balanced_logit_offset_gives_the_detectors_prior():
    """A student whose logits are the posterior for its rows' prior (25 % positives) is moved to
    the posterior for prior 0.5, what the class-weighted detectors give and the per-source
    evidence assumes: offset log 3 here; a balanced one is left alone."""
    from sb2dask.models.student import balanced_logit_offset

    rng = np.random.default_rng(3)
    truth = rng.random(4000) < 0.25
    logit = np.full(4000, np.log(truth.mean() / (1 - truth.mean())))
    b = balanced_logit_offset(logit, truth)
    assert b == pytest.approx(-np.log(truth.mean() / (1 - truth.mean())), rel=1e-6)
    p = decode(logit, np.zeros((4000, 9)), np.zeros((4000, 9)), logit_offset=b)["p_binary"]
    np.testing.assert_allclose(p, 0.5, atol=1e-9)
    assert balanced_logit_offset(np.zeros(10), np.arange(10) < 5) == pytest.approx(0.0, abs=1e-9)
    # far from 0, and with one positive row: the root, not a diverged Newton step
    assert balanced_logit_offset(np.full(40, 15.0), np.arange(40) < 10) == pytest.approx(-15.0)
    assert balanced_logit_offset(np.full(40, -30.0), np.arange(40) < 10) == pytest.approx(30.0)
    one = balanced_logit_offset(rng.normal(-4.5, 1.0, 400), np.arange(400) < 1)
    assert np.isfinite(one) and abs(one) < 20
    with pytest.raises(ValueError, match="positives and negatives"):
        balanced_logit_offset(np.zeros(3), np.ones(3, bool))


def test_distill_loss_blends_teacher_probabilities():
    logit, mean, logw = torch.zeros(2), torch.full((2, 9), 0.5), torch.zeros(2, 9)
    batch = dict(detector_row=torch.tensor([True, True]), p_truth=torch.tensor([True, False]),
                 p_teacher=torch.tensor([0.6, float("nan")]), y=torch.full((2, 9), 0.5),
                 y_teacher=torch.full((2, 9), float("nan")))
    _, terms = distill_loss(logit, mean, logw, batch, DEFAULT_BLEND)
    # at logit 0 the BCE is log 2 whatever the target; move the logit to see the targets
    _, up = distill_loss(torch.tensor([2.0, -2.0]), mean, logw, batch, DEFAULT_BLEND)
    target = torch.tensor([0.5 * 1 + 0.5 * 0.6, 0.0])  # blended / hard where no teacher
    want = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, -2.0]),
                                                                target)
    assert terms["bce"] == pytest.approx(np.log(2), rel=1e-6)
    assert up["bce"] == pytest.approx(float(want), rel=1e-6)
    assert terms["soft"] == 0.0  # no teacher means: no soft term


def test_model_set_runs_a_student_in_the_ensemble_schema(tmp_path):
    from test_infer import _simulated_partition

    d = _student_dir(tmp_path / "m", scales=np.full((3, 9), 2.0))
    df = _simulated_partition(6)
    out = predict_partition(df, InferenceConfig(d, "cpu"))
    schema = [c["name"] for c in load_schema("epoch")["columns"]]
    assert list(out.columns) == schema and len(out) == len(df)
    assert out["usable"].all() and out["p_binary_err"].isna().all()
    assert (out["teff_1"] <= out["teff_2"]).all()
    for c in ("p_binary", "teff_1_err", "vsini_2_err", "light_fraction_faint",
              "light_fraction_faint_err"):
        assert np.isfinite(out[c]).all(), c
    assert out["ood_distance"].isna().all()  # this student has no feature statistics
    # the calibration in the manifest is applied: the same weights without it give half widths
    plain = ModelSet(_student_dir(tmp_path / "p"), "cpu")
    pre = ModelSet(d, "cpu")
    x = np.ones((2, 903), np.float32)
    np.testing.assert_allclose(pre.predict(x)["logg_err"], 2 * plain.predict(x)["logg_err"],
                               rtol=1e-5)
    # and its p_binary logit offset
    offset_set = ModelSet(_student_dir(tmp_path / "o", offset=1.5), "cpu")
    assert offset_set.provenance["student"][0]["p_binary_logit_offset"] == 1.5
    moved = offset_set.predict(x)["p_binary"]
    base = plain.predict(x)["p_binary"]
    np.testing.assert_allclose(np.log(moved / (1 - moved)) - np.log(base / (1 - base)), 1.5,
                               rtol=1e-4)


def test_shipped_student_manifest_records_distillation_and_calibration():
    model, man = load_model(FAST / "student-0.json")
    assert resolve_model_dir("fast") == FAST and (FAST / "student-0.safetensors").stat(
        ).st_size < 5 * 2 ** 20
    dist = man.training["distillation"]
    assert set(DEFAULT_BLEND) <= set(dist["blend"])
    names = {m["name"] for m in dist["teacher_models"]}
    assert {"p_binary-0", "teff-0", "logg-0", "feh-0", "vsini-0"} <= names
    assert all(len(m["weights_sha256"]) == 64 for m in dist["teacher_models"])
    assert dist["teacher_rows"] and man.training["frame"] == "rv_bulk"
    # distilled from teachers whose detector learned what a spectrum shows (docs/models.md)
    assert man.training["detector_target"] == "double_lined"
    assert ModelSet(FAST, "cpu").detector_target == "double_lined"
    cal = man.training["calibration"]
    scales = np.asarray(cal["scales"])
    assert scales.shape == (len(cal["snr_edges"]) + 1, len(OUTPUTS))
    assert np.all(scales > 0) and not np.allclose(scales, 1.0)


def test_shipped_students_are_seeds_of_one_recipe_with_their_own_calibration():
    """The default set: three seeds of one recipe (fast's, with more detector stores), with a
    mixture calibration fitted on validation rows for exactly these three (else ModelSet
    refuses)."""
    ens = ModelSet("students", "cpu")
    assert resolve_model_dir(None) == resolve_model_dir("students") == ens.directory
    mans = [st["manifest"] for st in ens.students]
    assert [m.name for m in mans] == ["student-0", "student-1", "student-2"]
    assert len({m.seed for m in mans}) == 3
    fast = load_model(FAST / "student-0.json")[1]
    assert {m.training["detector_target"] for m in mans} == {"double_lined"}
    # the same recipe: fast's stores and teachers, plus more detector stores
    for m in mans:
        assert set(fast.training_set) < set(m.training_set)
        assert m.training["distillation"]["blend"] == fast.training["distillation"]["blend"]
        assert {k: v["sha256"] for k, v in m.training_set.items() if k in fast.training_set} \
            == {k: v["sha256"] for k, v in fast.training_set.items()}
    cal = ens.ensemble_calibration
    assert cal is not None and cal["split"] == "validation"
    assert np.all((cal["scales"] > 0.5) & (cal["scales"] < 1.0))  # the mixture over-covered
    assert ens.calibration_record["kind"] == "student_ensemble"
    rng = np.random.default_rng(2)
    flux = (1.0 - 0.3 * rng.random((2, 903)) ** 8).astype(np.float32)
    out = ens.predict(flux, snr=np.array([50.0, 150.0]))
    assert np.all(out["p_binary_err"] > 0) and np.isfinite(out["teff_err"]).all()


def test_infer_models_fast_end_to_end(capsys, tmp_path):
    from sb2dask.cli import main
    from sb2dask.dataset.mock_catalogue import mock_catalogue

    cat = mock_catalogue(tmp_path / "cat", n_sources=3, epochs=(1, 2), n_files=1, seed=5)
    out = tmp_path / "fast.parquet"
    rc = main(["infer", *map(str, cat["files"]), "--out", str(out), "--models", "fast",
               "--cluster", "local", "--workers", "1", "--threads-per-worker", "1",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    import pandas as pd

    df = pd.read_parquet(out)
    assert len(df) == cat["epoch_spectra"]  # every input spectrum has its row
    assert df["usable"].all() and np.isfinite(df["light_fraction_faint"]).all()
    assert np.isfinite(df["teff_1_err"]).all() and np.isfinite(df["rv_bulk"]).any()
    inputs = json.loads((out / "_inputs.json").read_text())
    assert inputs["model_dir"] == str(FAST.resolve())


def test_teacher_cache_reads_overlapping_chunks_once(tmp_path):
    from sb2dask.train.distill import load_teacher_labels

    # two runs with different chunk sizes: rows 10-13 in one file, 12-17 in another
    for start, rows in ((10, np.arange(10, 14)), (12, np.arange(12, 18))):
        np.savez(tmp_path / f"teacher-s-train-{start:06d}.npz", index=rows,
                 p_binary=rows / 100.0)
    got = load_teacher_labels("/x/s.zarr", "train", tmp_path)
    np.testing.assert_array_equal(got["index"], np.arange(10, 18))
    np.testing.assert_allclose(got["p_binary"], np.arange(10, 18) / 100.0)
    sub = load_teacher_labels("/x/s.zarr", "train", tmp_path, index=np.arange(11, 14))
    np.testing.assert_array_equal(sub["index"], [11, 12, 13])
    assert len(load_teacher_labels("/x/s.zarr", "test", tmp_path)["index"]) == 0


def test_student_fits_p_binary_to_its_teachers_detector_target(tmp_path):
    """Teachers whose detector learned ``double_lined`` make a student fitted and scored against
    the same truth, recorded in its manifest (so ``ModelSet`` and the outputs say what p_binary
    means); resuming that run with teachers of another target is refused."""
    from distributed import Client, LocalCluster

    from model_fixtures import random_model_set, retarget_detector
    from sb2dask.dataset.factory import SplitSpec, generate
    from sb2dask.labels import double_lined
    from sb2dask.simulate.config import SimulationConfig
    from sb2dask.train.distill import (
        distill,
        finalize_student,
        label_with_teachers,
        load_distill_data,
    )

    store = tmp_path / "s.zarr"
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as c:
        generate(store, SimulationConfig.paper(seed=4, binary_fraction=0.7,
                                               snr_range=(100, 350)),
                 160, 80, client=c, split=SplitSpec(0.5, 0.25, 0.25), progress=False)
    teachers = random_model_set(tmp_path / "t", members=2)  # the cache's digest covers both
    assert ModelSet(retarget_detector(teachers), "cpu").detector_target == "double_lined"
    cache = tmp_path / "cache"
    label_with_teachers(teachers, store, "train", 16, cache, chunk=16, progress=False)
    # the detector alone on the next rows: its probability, no teacher means
    teach = label_with_teachers(teachers, store, "train", 16, cache, chunk=16, progress=False,
                                first=16, detector_only=True)
    assert np.isfinite(teach["p_binary"]).all() and np.isnan(teach["teff"]).all()
    stores = {"detector": store}
    state = distill(stores, cache, teachers, tmp_path / "st", max_train={}, max_validation={},
                    epochs=1, batch_size=32, progress=False)
    st = json.loads(state.read_text())
    assert st["detector_target"] == "double_lined" and st["n_teacher"] == 32
    wave = ModelSet(teachers, "cpu").wave
    val = load_distill_data(stores, "validation", {}, None, "rest", wave, "double_lined")
    from sb2dask.dataset.store import load_split, split_indices

    lab = load_split(store, split_indices(store, "validation"),
                     ["is_binary", "light_fraction", "rv_separation"]).labels
    want = double_lined(lab["is_binary"], lab["light_fraction"], lab["rv_separation"])
    np.testing.assert_array_equal(val.p_truth, want)
    assert (val.p_truth != val.is_binary).any()  # a binary that does not show two stars
    # more detector stores (``detector_*``) train p_binary too; ``labels*`` stores do not
    more = load_distill_data({"detector": store, "detector_b": store, "labels": store},
                             "validation", {}, None, "rest", wave, "double_lined")
    n = len(val.flux)
    assert more.detector_row.tolist() == [True] * (2 * n) + [False] * n
    with pytest.raises(ValueError, match="store role 'teachers'"):
        load_distill_data({"teachers": store}, "validation", {}, None, "rest", wave)
    path = finalize_student(state, stores, teachers, cache, tmp_path / "m", max_calibration={})
    assert json.loads(path.read_text())["training"]["detector_target"] == "double_lined"
    student = ModelSet(tmp_path / "m", "cpu")
    assert student.detector_target == "double_lined"
    assert student.provenance["student"][0]["detector_target"] == "double_lined"
    # without teachers: the truths alone, in the store's frame and grid, p_binary to the target
    # asked for (which is then required)
    alone = distill(stores, None, None, tmp_path / "alone", max_train={}, max_validation={},
                    epochs=1, batch_size=32, progress=False, detector_target="double_lined")
    path = finalize_student(alone, stores, None, None, tmp_path / "m2", max_calibration={})
    man = json.loads(path.read_text())
    assert man["training"]["distillation"]["teachers"] is None
    assert man["training"]["distillation"]["teacher_models"] == []
    assert ModelSet(tmp_path / "m2", "cpu").detector_target == "double_lined"
    with pytest.raises(ValueError, match="detector_target"):
        distill(stores, None, None, tmp_path / "alone2", max_train={}, max_validation={},
                epochs=1, progress=False)
    # the same run resumed with is_binary teachers would fit another truth
    retarget_detector(teachers, "is_binary")
    with pytest.raises(ValueError, match="resume with the same teachers"):
        distill(stores, cache, teachers, tmp_path / "st", max_train={}, max_validation={},
                epochs=2, progress=False)
    # and the cache those teachers did not write is not blended in, nor added to
    with pytest.raises(ValueError, match="other teachers"):
        distill(stores, cache, teachers, tmp_path / "st2", max_train={}, max_validation={},
                epochs=1, progress=False)
    with pytest.raises(ValueError, match="other teachers"):
        label_with_teachers(teachers, store, "train", 16, cache, chunk=16, progress=False)
