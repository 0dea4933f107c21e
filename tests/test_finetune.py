"""Fine-tuning a directory of students whole (sb2dask.train.finetune)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sb2dask.infer.predict import ModelSet
from sb2dask.train.finetune import finetune_one, finetune_students
from test_head import _double_lined_dir, _two_stores


def _state(model, buffers=True):
    """Parameters (and the batch-norm buffers, which a pass in training mode updates)."""
    items = model.state_dict().items() if buffers else model.named_parameters()
    return {k: v.detach().clone() for k, v in items}


def test_finetune_one_is_seeded_and_leaves_the_model_alone(tmp_path):
    """The same rows and seed give the same weights bit for bit, another seed other weights;
    the student passed in is not touched; with every p_binary weight 0 and no label terms no
    weight moves (Adam's step on zero gradients is zero; only the batch-norm statistics follow
    the new rows); and the p_binary term separates what it is shown."""
    d = _double_lined_dir(tmp_path)
    model = ModelSet(d, "cpu").students[0]["model"]
    before = _state(model)
    rng = np.random.default_rng(0)
    flux = (1.0 - 0.3 * rng.random((96, 903)) ** 8).astype(np.float32)
    truth = np.arange(96) % 2 == 0
    flux[truth, 400:420] *= 0.5  # a line only the positives have
    weight = np.ones(96)
    y = np.full((96, 9), np.nan, np.float32)
    y[truth] = 0.5
    kw = dict(epochs=2, lr=1e-3, batch_size=32, truth_weight=1.0)
    a = finetune_one(model, flux, truth, weight, y, seed=1, **kw)
    b = finetune_one(model, flux, truth, weight, y, seed=1, **kw)
    c = finetune_one(model, flux, truth, weight, y, seed=2, **kw)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    idle = finetune_one(model, flux, truth, np.zeros(96), y, distill_weight=0.0, seed=1,
                        epochs=1, lr=1e-3, batch_size=32)
    assert all(torch.equal(before[k], v) for k, v in _state(idle, buffers=False).items())
    assert any(not torch.equal(before[k], v) for k, v in _state(idle).items())

    def gap(m):
        with torch.inference_mode():
            logit = m(torch.from_numpy(flux))[0].numpy()
        return logit[truth].mean() - logit[~truth].mean()

    sharp = finetune_one(model, flux, truth, weight, y, epochs=8, lr=3e-3, batch_size=32,
                         distill_weight=0.0, seed=0)
    assert gap(sharp) > gap(model) + 0.2

    def drift(m):  # how far the label means moved from the untouched student's
        with torch.inference_mode():
            x = torch.from_numpy(flux)
            return float(((m(x)[1] - model(x)[1]) ** 2).mean())

    held = finetune_one(model, flux, truth, weight, y, epochs=8, lr=3e-3, batch_size=32,
                        distill_weight=10.0, seed=0)
    assert drift(held) < 0.5 * drift(sharp)


def test_finetune_students_recalibrates_and_records(tmp_path, monkeypatch):
    """Two generated stores: the copy loads with its own ensemble calibration; every student's
    weights, offset, widths and OOD statistics are refitted and recorded with the stores'
    fingerprints and the previous weights; labels and p_binary change; the originals and the
    LOW_SNR floor stay; a second run into the same directory and a rule leaving one class
    empty are refused, the latter naming the stores."""
    stores = _two_stores(tmp_path, (21, 22), ((60, 200), (15, 50)), 300, (0.5, 0.5))
    d = _double_lined_dir(tmp_path)
    old = ModelSet(d, "cpu")
    out = tmp_path / "tuned"
    with pytest.raises(ValueError, match="high.zarr, .*low.zarr .*positives and negatives"):
        finetune_students(d, stores, out, margin=1e6)
    assert not out.exists()
    summary = finetune_students(d, stores, out, epochs=1, truth_weight=1.0)
    assert set(summary["before"]) == set(summary["after"]) == {"high", "low",
                                                               "singles_above_0_2"}
    assert set(summary["after"]["low"]["label_rmse"]) == {"teff", "logg", "feh", "vsini",
                                                          "light_fraction_faint"}
    assert not list(tmp_path.glob(".tuned.tmp-*"))  # the temporary directory was renamed
    new = ModelSet(out, "cpu")
    assert new.ensemble_calibration is not None
    cal = json.loads((out / "students.json").read_text())
    assert [m["weights_sha256"] for m in cal["members"]] == [
        st["manifest"].weights_sha256 for st in new.students]
    assert set(cal["stores"]) == {"detector", "detector_1"}
    for st, st_old in zip(new.students, old.students):
        man = st["manifest"]
        rec = man.training["fine_tune"]
        assert rec["previous_weights_sha256"] == st_old["manifest"].weights_sha256 \
            != man.weights_sha256
        assert [s["path"] for s in rec["stores"]] == [str(p.resolve()) for p in stores]
        assert rec["n_train"] == 300 and 0 < rec["n_train_p_binary"] < 300
        assert rec["truth_weight"] == 1.0 and rec["min_companion_signal"] == 12.0
        assert st["logit_offset"] == rec["logit_offset"] == man.training["calibration"][
            "p_binary_logit_offset"]
        scales = np.asarray(man.training["calibration"]["scales"])
        assert scales.shape == (3, 9) and not np.array_equal(
            scales, np.asarray(st_old["manifest"].training["calibration"]["scales"]))
        assert rec["metrics_before"] == st_old["manifest"].metrics
        assert man.metrics["rmse_teff"] != st_old["manifest"].metrics.get("rmse_teff")
        assert 0.0 <= man.metrics["auc"] <= 1.0 and "detector_head" not in man.training
        assert man.training["feature_statistics"]["n"] == 300
        assert man.training.get("snr_range") == st_old["manifest"].training.get("snr_range")
    rng = np.random.default_rng(3)
    flux = (1.0 - 0.3 * rng.random((4, 903)) ** 8).astype(np.float32)
    snr = np.array([20.0, 80.0, 150.0, 90.0])
    a, b = old.predict(flux, snr=snr), new.predict(flux, snr=snr)
    assert not np.allclose(a["p_binary"], b["p_binary"])
    assert not np.allclose(a["teff"], b["teff"])
    assert ModelSet(d, "cpu").students[0]["manifest"].weights_sha256 \
        == old.students[0]["manifest"].weights_sha256
    with pytest.raises(FileExistsError):
        finetune_students(d, stores, out)
    # too few validation binaries for the ensemble calibration: refused before any training,
    # nothing left behind
    with pytest.raises(ValueError, match="fewer than the 150"):
        finetune_students(d, stores, tmp_path / "few", max_validation=20)
    assert not (tmp_path / "few").exists() and not list(tmp_path.glob(".few.tmp-*"))
    # a failure after the copy (here the ensemble calibration) removes the temporary directory
    import sb2dask.train.distill as distill

    def broken(*args, **kwargs):
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(distill, "calibrate_student_ensemble", broken)
    with pytest.raises(RuntimeError, match="calibration failed"):
        finetune_students(d, stores, tmp_path / "broken", epochs=1, max_train=40)
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken.tmp-*"))


def test_finetune_bridge_ca_ii_makes_students_blind_to_the_cores(tmp_path):
    """``bridge_ca_ii``: every fine-tuned student bridges the Ca II cores of its grid, records
    them in its architecture and fine-tune record, and the model set's predictions no longer
    depend on the flux inside them (the original's do)."""
    from sb2dask.models.student import ca_ii_core_windows

    stores = _two_stores(tmp_path, (31, 32), ((60, 200), (15, 50)), 300, (0.5, 0.5))
    d = _double_lined_dir(tmp_path)
    out = tmp_path / "blind"
    finetune_students(d, stores, out, epochs=1, max_train=120, bridge_ca_ii=1.0)
    new, old = ModelSet(out, "cpu"), ModelSet(d, "cpu")
    windows = ca_ii_core_windows(new.wave, 1.0)
    for st in new.students:
        man = st["manifest"]
        assert st["model"].bridged == windows == man.architecture_kwargs["bridged"]
        assert man.training["fine_tune"]["bridge_ca_ii"] == 1.0
        assert man.training["fine_tune"]["bridged"] == windows
    rng = np.random.default_rng(4)
    flux = (1.0 - 0.3 * rng.random((3, 903)) ** 8).astype(np.float32)
    filled = flux.copy()
    for a, b in windows:
        filled[:, a:b] = 1.0  # cores filled in to the continuum
    snr = np.full(3, 100.0)
    for k in ("p_binary", "teff", "ood_distance"):
        np.testing.assert_array_equal(new.predict(filled, snr=snr)[k],
                                      new.predict(flux, snr=snr)[k])
    assert not np.allclose(old.predict(filled, snr=snr)["teff"],
                           old.predict(flux, snr=snr)["teff"])


def test_cli_finetune_passes_its_options(tmp_path, monkeypatch, capsys):
    """`sb2dask finetune` hands every option to finetune_students (0 meaning none for the two
    leave-out rules) and prints the summary."""
    import sb2dask.train.finetune as ft
    from sb2dask.cli import main

    seen = {}

    def fake(models, stores, out, **kw):
        seen.update(models=models, stores=stores, out=out, **kw)
        return dict(seconds=1.0, before={}, after={"singles_above_0_2": 0.1})

    monkeypatch.setattr(ft, "finetune_students", fake)
    assert main(["finetune", "--stores", "a.zarr", "b.zarr", "--out", str(tmp_path / "o"),
                 "--margin", "0", "--min-companion-signal", "8", "--truth-weight", "0.5",
                 "--epochs", "3", "--max-train", "100"]) == 0
    assert seen["models"] == "students" and seen["stores"] == ["a.zarr", "b.zarr"]
    assert seen["margin"] is None and seen["min_companion_signal"] == 8.0
    assert seen["truth_weight"] == 0.5 and seen["epochs"] == 3 and seen["max_train"] == 100
    assert seen["distill_weight"] == 1.0 and seen["max_validation"] is None
    assert seen["bridge_ca_ii"] is None
    assert '"singles_above_0_2": 0.1' in capsys.readouterr().out
    assert main(["finetune", "--stores", "a.zarr", "--out", str(tmp_path / "p"),
                 "--min-companion-signal", "0", "--bridge-ca-ii", "1.0"]) == 0
    assert seen["min_companion_signal"] is None and seen["margin"] == 2.0
    assert seen["bridge_ca_ii"] == 1.0
