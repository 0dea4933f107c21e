"""Inference: preprocessing, predict_partition on real and simulated spectra, output schema and
metadata, per-source aggregation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from model_fixtures import random_model_set
from sb2dask.devices import resolve_device
from sb2dask.infer.config import InferenceConfig
from sb2dask.infer.flags import BoundaryFlag, QualityFlag
from sb2dask.infer.predict import get_model_set, predict_partition
from sb2dask.infer.readers import read_catalogue
from sb2dask.infer.readers.base import RVS_WAVE
from sb2dask.infer.schema import arrow_schema, empty_frame, load_schema
from sb2dask.labels import PARAMETERS
from sb2dask.observe.preprocess import CONTINUUM_REGIONS, preprocess
from sb2dask.observe.rv_bulk import LINE_DETECTION_PEAK
from sb2dask.simulate.config import output_wave

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gaia_rvs"
MODEL_WAVE = output_wave("gaia_dr3_903")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return random_model_set(tmp_path_factory.mktemp("models"), members=2)


def _line_spectrum(wave, centre=8542.09, depth=0.5, width=0.6):
    return 1.0 - depth * np.exp(-0.5 * ((wave - centre) / width) ** 2)


def test_resampling_keeps_lines_in_place():
    f = _line_spectrum(RVS_WAVE)
    pre = preprocess([RVS_WAVE], [f.astype(np.float32)], None, MODEL_WAVE)
    out = pre.flux[0]
    # the line centre survives resampling to within a fraction of a model pixel (0.27 Å)
    sel = np.abs(MODEL_WAVE - 8542.09) < 3
    x, y = MODEL_WAVE[sel], out[sel]
    k = np.argmin(y)
    centre = x[k] + 0.5 * (y[k - 1] - y[k + 1]) / (y[k - 1] - 2 * y[k] + y[k + 1]) * (x[1] - x[0])
    assert abs(centre - 8542.09) < 0.05
    np.testing.assert_allclose(out, _line_spectrum(MODEL_WAVE), atol=0.01)
    assert pre.quality_flags[0] == 0 and pre.usable[0]


def test_missing_pixels_take_the_continuum_q3():
    f = np.full(RVS_WAVE.size, 1.0)
    rng = np.random.default_rng(0)
    f = f + 0.01 * rng.standard_normal(f.size)
    gap = (RVS_WAVE > 8600) & (RVS_WAVE < 8605)
    f[gap] = np.nan
    cont = np.zeros(RVS_WAVE.size, bool)
    for lo, hi in CONTINUUM_REGIONS:
        cont |= (RVS_WAVE >= lo) & (RVS_WAVE <= hi)
    q3 = np.nanpercentile(f[cont], 75)
    pre = preprocess([RVS_WAVE], [f], None, MODEL_WAVE)
    in_gap = (MODEL_WAVE > 8600.5) & (MODEL_WAVE < 8604.5)
    np.testing.assert_allclose(pre.flux[0, in_gap], q3, rtol=1e-6)
    assert pre.quality_flags[0] & QualityFlag.NAN_FILLED and pre.usable[0]
    assert 0 < pre.nan_fraction[0] < 0.05


def test_unusable_and_suspicious_spectra_are_flagged():
    w, n = RVS_WAVE, RVS_WAVE.size
    rows = [np.full(n, np.nan),                          # all null
            np.where(np.arange(n) % 2 == 0, np.nan, 1.0),  # half missing
            np.full(n, 1.5),                             # not normalised
            np.ones(n)]                                  # fine
    short = np.linspace(8500.0, 8600.0, 100)
    pre = preprocess([w, w, w, w, short, w], rows + [np.ones(100), np.ones(10)], None,
                     MODEL_WAVE)
    f = pre.quality_flags
    assert f[0] & QualityFlag.ALL_NULL and not pre.usable[0]
    assert f[1] & QualityFlag.TOO_MANY_NAN and not pre.usable[1]
    assert f[2] & QualityFlag.NOT_NORMALISED and pre.usable[2]
    assert f[3] == 0
    assert f[4] & QualityFlag.WAVE_COVERAGE and not pre.usable[4]
    assert f[5] & QualityFlag.WAVE_MISMATCH and not pre.usable[5]
    assert pre.flux.shape == (6, MODEL_WAVE.size) and np.isfinite(pre.flux).all()


@settings(max_examples=40, deadline=None)
@given(n_rows=st.integers(1, 6), n_nan=st.integers(0, 2401), scale=st.floats(-2, 3),
       seed=st.integers(0, 2 ** 31))
# always tried: either side of the 20 % missing-pixel limit (480 and 481 of the 2401 pixels the
# model grid uses), and nothing left at all
@example(n_rows=3, n_nan=480, scale=1.0, seed=1)
@example(n_rows=3, n_nan=481, scale=1.0, seed=2)
@example(n_rows=2, n_nan=2401, scale=1.0, seed=3)
def test_preprocess_always_returns_one_finite_row_per_input(n_rows, n_nan, scale, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        f = scale * (1 + 0.05 * rng.standard_normal(RVS_WAVE.size))
        f[rng.choice(RVS_WAVE.size, size=n_nan, replace=False)] = rng.choice(
            [np.nan, np.inf, -np.inf])
        rows.append(f.astype(np.float32))
    pre = preprocess([RVS_WAVE] * n_rows, rows, [None] * n_rows, MODEL_WAVE)
    assert pre.flux.shape == (n_rows, MODEL_WAVE.size)
    assert np.isfinite(pre.flux).all()
    # what each row should get, from the input pixels the model grid uses (its span plus one
    # neighbour each side): missing fraction, all-null / some-null / too-many flags, usability
    lo = max(0, int(np.searchsorted(RVS_WAVE, MODEL_WAVE[0])) - 1)
    hi = min(RVS_WAVE.size, int(np.searchsorted(RVS_WAVE, MODEL_WAVE[-1], side="right")) + 1)
    for i, f in enumerate(rows):
        bad = ~np.isfinite(f[lo:hi])
        assert pre.nan_fraction[i] == pytest.approx(bad.mean(), abs=1e-6)
        flags = QualityFlag(int(pre.quality_flags[i]))
        assert bool(flags & QualityFlag.ALL_NULL) == bad.all()
        assert bool(flags & QualityFlag.NAN_FILLED) == (bad.any() and not bad.all())
        assert bool(flags & QualityFlag.TOO_MANY_NAN) == (bad.mean() > 0.2 and not bad.all())
        assert pre.usable[i] == (bad.mean() <= 0.2)
        if not pre.usable[i]:
            assert (pre.flux[i] == 1.0).all()


def test_real_gaia_spectra_give_one_sensible_row_each(models):
    if not REAL.is_dir():
        pytest.skip(f"{REAL} absent (../shared/data is not beside this checkout)")
    files = sorted(REAL.glob("*.csv"))
    parts = [p for f in files for p in read_catalogue(f)]
    df = pd.concat(parts, ignore_index=True)
    out = predict_partition(df, InferenceConfig(models, device="cpu"))
    assert len(out) == len(files) == 3
    assert out["usable"].all()
    assert set(out["source_id"]) == set(df["source_id"])
    assert (out["snr_estimate"] > 5).all()  # flux_error is present in DataLink files
    assert out["teff_1"].le(out["teff_2"]).all()
    assert np.isfinite(out[["p_binary", "teff_1", "logg_2", "ood_distance"]].to_numpy()).all()
    # lines detected in every real star, far above what noise reaches
    assert (out["ccf_peak"] > 2 * LINE_DETECTION_PEAK).all()
    assert not (out["flag_boundary"] & int(BoundaryFlag.NO_LINES)).any()


def test_noise_and_flat_spectra_are_flagged_as_having_no_lines(models):
    """Issue 14: pure noise at S/N 100 was neither flagged nor told apart from a star."""
    rng = np.random.default_rng(3)
    n = 6
    flux = np.vstack([np.ones((1, RVS_WAVE.size)),  # flat
                      1 + rng.normal(0, 0.01, (n - 2, RVS_WAVE.size)),  # S/N 100 noise
                      _line_spectrum(RVS_WAVE)[None] + rng.normal(0, 0.01, RVS_WAVE.size)])
    df = pd.DataFrame({"source_id": np.arange(n, dtype=np.int64), "epoch_id": np.full(n, -1),
                       "wave": [RVS_WAVE] * n, "flux": list(flux.astype(np.float32)),
                       "flux_error": [None] * n, "file": ["x"] * n, "row": np.arange(n),
                       "read_flags": np.zeros(n, np.int32)})
    for mode in ("on", "off"):
        out = predict_partition(df, InferenceConfig(models, "cpu", rest_frame=mode))
        no_lines = (out["flag_boundary"] & int(BoundaryFlag.NO_LINES)) != 0
        assert out["usable"].all()
        assert no_lines.tolist() == [True] * (n - 1) + [False]
        assert (out["ccf_peak"].iloc[:-1] < LINE_DETECTION_PEAK).all()
        assert out["ccf_peak"].iloc[-1] > 0.5
        # noise has no velocity to remove: the networks see it where it is
        assert out["rv_bulk"].iloc[:-1].isna().all()


def test_output_frame_follows_the_catalogue_schema(models):
    df = pd.DataFrame({"source_id": np.array([5, 6], np.int64), "epoch_id": [-1, 3],
                       "wave": [RVS_WAVE, RVS_WAVE],
                       "flux": [_line_spectrum(RVS_WAVE).astype(np.float32)] * 2,
                       "flux_error": [None, None], "file": ["a", "b"], "row": [0, 1],
                       "read_flags": np.zeros(2, np.int32)})
    out = predict_partition(df, InferenceConfig(models, device="cpu"))
    meta = empty_frame("epoch")
    assert list(out.columns) == list(meta.columns)
    assert (out.dtypes == meta.dtypes).all()
    # ensemble of two: the spreads are real numbers; p_binary a probability
    assert (out["teff_1_err"] >= 0).all() and out["p_binary"].between(0, 1).all()
    schema = arrow_schema("epoch", {"models": {"x": 1}})
    assert schema.field("teff_1").metadata[b"unit"] == b"K"
    assert json.loads(schema.metadata[b"sb2dask.models"]) == {"x": 1}
    names = [c["name"] for c in load_schema("source")["columns"]]
    assert names[:4] == ["source_id", "n_epochs", "n_usable", "p_binary"]


def test_models_are_loaded_once_per_process(models):
    cpu = InferenceConfig(models, "cpu")
    assert get_model_set(cpu) is get_model_set(InferenceConfig(models, "cpu"))
    if resolve_device("auto").type == "cpu":  # "auto" is this CPU: the same set
        assert get_model_set(InferenceConfig(models, "auto")) is get_model_set(cpu)


def test_source_table_combines_epochs(models, tmp_path):
    from distributed import Client, LocalCluster

    from sb2dask.infer.run import aggregate_sources, write_parquet_atomic

    ep = empty_frame("epoch", 4)
    ep["source_id"] = [1, 1, 2, 2]
    ep["epoch_id"] = [10, 11, 12, 13]
    ep["usable"] = [True, True, True, False]
    ep["p_binary"] = np.array([0.2, 0.9, 0.4, 0.99], np.float32)
    for p in PARAMETERS:
        for c in (1, 2):
            ep[f"{p}_{c}"] = np.array([4000, 5000, 6000, 1], np.float32)
            ep[f"{p}_{c}_err"] = np.array([100, 100, 50, 1], np.float32)
    ep["quality_flags"] = np.array([0, 2, 4, 1], np.int32)
    ep["file"] = "x"
    d = tmp_path / "ep.parquet"
    d.mkdir()
    write_parquet_atomic(ep, d / "part-000000.parquet", arrow_schema("epoch"))
    ms = get_model_set(InferenceConfig(models, "cpu"))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        aggregate_sources(d, tmp_path / "src.parquet", ms, client)
    src = pd.read_parquet(tmp_path / "src.parquet").set_index("source_id")
    assert src.loc[1, "n_epochs"] == 2 and src.loc[2, "n_usable"] == 1
    assert src.loc[1, "p_binary_max"] == pytest.approx(0.9)  # max over usable epochs
    # both epochs' evidence (no S/N estimate: weight 1 each), tempered by 1 + (2 - 1) * 0.5
    log_bf = (np.log(0.2 / 0.8) + np.log(0.9 / 0.1)) / 1.5
    assert src.loc[1, "log_bayes_factor"] == pytest.approx(log_bf, rel=1e-5)
    assert src.loc[1, "p_binary"] == pytest.approx(1 / (1 + np.exp(-log_bf)), rel=1e-5)
    assert src.loc[1, "n_sb2_epochs"] == 1
    # one usable epoch is its own evidence; the unusable 0.99 is ignored
    assert src.loc[2, "p_binary"] == pytest.approx(0.4) and src.loc[2, "p_binary_max"] == \
        pytest.approx(0.4)
    assert "epoch_rv_1" not in src  # no per-epoch RVs in the epoch table: no lists
    floor = 1.0  # the random model set's validation RMSE
    w = 1.0 / (100.0 ** 2 + floor ** 2)
    assert src.loc[1, "teff_1"] == pytest.approx(4500.0)
    assert src.loc[1, "teff_1_err"] == pytest.approx(1 / np.sqrt(2 * w), rel=1e-4)
    assert src.loc[2, "teff_1"] == pytest.approx(6000.0)
    assert src.loc[1, "quality_flags"] == 2 and src.loc[2, "quality_flags"] == 5


def test_source_table_gathers_epochs_from_many_parts(models, tmp_path):
    """Epochs of one source in different parts meet in one row (the shuffle on source_id), with
    the per-epoch RVs passed through as lists when the epoch table has them."""
    import pyarrow.parquet as pq
    from distributed import Client, LocalCluster

    from sb2dask.infer.run import aggregate_sources, write_parquet_atomic

    d = tmp_path / "ep.parquet"
    d.mkdir()
    n_parts, n_src = 20, 30
    schema = arrow_schema("epoch")  # rv_1, rv_2 are in it (sb2dask infer --fit)
    for part in range(n_parts):  # source k has an epoch in each of parts k % 20, (k + 1) % 20
        src = [k for k in range(n_src) if part in (k % n_parts, (k + 1) % n_parts)]
        ep = empty_frame("epoch", len(src))
        ep["source_id"] = np.array(src, np.int64)
        ep["epoch_id"] = np.array(src, np.int64) * 100 + part
        ep["usable"] = True
        ep["p_binary"] = np.float32(0.7)
        ep["rv_1"], ep["rv_2"] = np.float32(part), np.float32(-part)
        write_parquet_atomic(ep, d / f"part-{part:06d}.parquet", schema)
    ms = get_model_set(InferenceConfig(models, "cpu"))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        summary = aggregate_sources(d, tmp_path / "src.parquet", ms, client)
    assert summary["sources"] == n_src and summary["rule"]["snr_full"] == 30.0
    assert len(list((tmp_path / "src.parquet").glob("part-*.parquet"))) == 2  # 20 parts / 8
    src = pd.read_parquet(tmp_path / "src.parquet").set_index("source_id").sort_index()
    assert src.index.tolist() == list(range(n_src)) and (src["n_epochs"] == 2).all()
    # in epoch_id order (no obs_time_rv here): source 19 was seen in parts 19 and 0
    assert src.loc[19, "epoch_id"].tolist() == [1900, 1919]
    assert src.loc[19, "epoch_rv_1"].tolist() == [0.0, 19.0]
    assert src.loc[19, "epoch_rv_2"].tolist() == [0.0, -19.0]
    assert src.loc[19, "epoch_p_binary"].tolist() == pytest.approx([0.7, 0.7])
    meta = pq.read_schema(next((tmp_path / "src.parquet").glob("part-*.parquet")))
    assert meta.field("epoch_rv_1").metadata[b"unit"] == b"km / s"
    rule = json.loads(meta.metadata[b"sb2dask.evidence_rule"])
    # the rule as the models set it: their S/N floor; f = 1 for their is_binary detector
    assert rule["correlation"] == 0.5 and rule["snr_full"] == 30.0
    assert rule["double_lined_fraction"] == 1.0 == summary["rule"]["double_lined_fraction"]


def _simulated_partition(n=40):
    from sb2dask.dataset.factory import simulate_chunk
    from sb2dask.simulate.config import SimulationConfig

    flux, _ = simulate_chunk(SimulationConfig(output_grid="gaia_dr3", seed=3), 0, n)
    return pd.DataFrame({"source_id": np.arange(n, dtype=np.int64), "epoch_id": -1,
                         "wave": [RVS_WAVE] * n, "flux": list(flux), "flux_error": [None] * n,
                         "file": "sim", "row": np.arange(n), "read_flags": np.zeros(n, np.int32)})


def test_batch_size_does_not_change_predictions(models):
    df = _simulated_partition()
    a = predict_partition(df, InferenceConfig(models, "cpu", batch_size=7))
    b = predict_partition(df, InferenceConfig(models, "cpu", batch_size=256))
    cols = ["p_binary", "teff_1", "teff_2", "logg_1", "feh_2", "vsini_1", "ood_distance"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-4, atol=1e-3)


def test_bf16_predictions_stay_close_to_fp32(models):
    df = _simulated_partition()
    a = predict_partition(df, InferenceConfig(models, "cpu", precision="fp32"))
    b = predict_partition(df, InferenceConfig(models, "cpu", precision="bf16"))
    assert len(b) == len(df) and b["usable"].all()
    for col in a.columns:
        assert b[col].dtype == a[col].dtype, col  # autocast never leaks bfloat16 into outputs
    # the random test models span teff 3500-6500 K: bf16 moves them by tens of K at most
    assert np.nanmax(np.abs(a["teff_1"] - b["teff_1"])) < 100
    assert np.nanmax(np.abs(a["p_binary"] - b["p_binary"])) < 0.05
    with pytest.raises(ValueError, match="precision"):
        InferenceConfig(models, "cpu", precision="fp16")


def test_process_tuning_sets_threads_once_and_malloc(monkeypatch):
    import torch

    import sb2dask.runtime as rt

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(rt, "_state", {})
        monkeypatch.setenv("SB2DASK_TORCH_THREADS", "1")
        got = rt.tune_process()
        assert got["torch_threads"] == 1
        assert got["malloc_tuned"] == sys.platform.startswith("linux")
        monkeypatch.setenv("SB2DASK_TORCH_THREADS", "2")
        assert rt.tune_process()["torch_threads"] == 1  # once per process
    finally:
        torch.set_num_threads(before)


def test_workers_get_one_torch_thread_per_task_thread():
    from distributed import Client, LocalCluster

    from sb2dask.runtime import tune_process

    # the nanny starts workers with OMP_NUM_THREADS=1: two task threads must raise it to two
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=":0") as lc, Client(lc) as client:
        got = client.submit(tune_process, pure=False).result()
    assert got["torch_threads"] == 2


class _FakeClient:
    """scheduler_info/run of a cluster whose workers report given limits and resident memory."""

    def __init__(self, workers: dict):
        self.workers = workers

    def scheduler_info(self):
        return {"workers": {a: {"memory_limit": lim, "nthreads": nt}
                            for a, (lim, nt, _) in self.workers.items()}}

    def run(self, fn, *args):
        return {a: rss for a, (_, _, rss) in self.workers.items()}


def test_partitions_are_sized_from_the_smallest_worker_budget():
    from sb2dask.infer.run import BYTES_PER_ROW, READ_OVERHEAD, auto_partition_rows

    gib = 2 ** 30
    client = _FakeClient({"a": (8 * gib, 1, 1 * gib), "b": (4 * gib, 2, 1 * gib)})
    rows = auto_partition_rows(client)
    expect = int((0.6 * 4 * gib - gib - READ_OVERHEAD) // (BYTES_PER_ROW * 2))
    assert rows == expect and 100 < rows < 20000
    # no limits: a fixed, modest default; huge limits: capped
    assert auto_partition_rows(_FakeClient({"a": (0, 1, gib)})) == 2000
    assert auto_partition_rows(_FakeClient({"a": (512 * gib, 1, gib)})) == 20000


def test_too_small_a_memory_limit_is_an_error_before_any_work():
    from sb2dask.infer.run import MemoryBudgetError, auto_partition_rows

    mib = 2 ** 20
    with pytest.raises(MemoryBudgetError, match="too small.*at least"):
        auto_partition_rows(_FakeClient({"w": (1000 * mib, 1, 700 * mib)}))


def test_warm_rss_measures_a_worker_with_models_loaded(models):
    from sb2dask.infer.run import _warm_rss

    # torch and five networks
    assert _warm_rss(InferenceConfig(models, precision="fp32")) > 100 * 2 ** 20


def test_rerun_keeps_the_recorded_partitioning(models, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    import sb2dask.infer.run as run
    from sb2dask.dataset.mock_catalogue import mock_catalogue

    mock = mock_catalogue(tmp_path / "mock", n_sources=12, epochs=(1, 2), n_files=1, seed=4)
    out = tmp_path / "out.parquet"
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        monkeypatch.setattr(run, "auto_partition_rows", lambda *a, **k: 700)
        first = run.run_inference(mock["files"], out, client, InferenceConfig(models),
                                  progress=False)
        # the measured budget may differ next time (other RSS): the rerun keeps the first one
        monkeypatch.setattr(run, "auto_partition_rows", lambda *a, **k: 900)
        again = run.run_inference(mock["files"], out, client, InferenceConfig(models),
                                  progress=False)
        with pytest.raises(ValueError, match="finished results of a run with other precision"):
            run.run_inference(mock["files"], out, client,
                              InferenceConfig(models, precision="bf16"), progress=False)
    assert json.loads((out / "_inputs.json").read_text())["partition_rows"] == 700
    assert first["computed"] == first["partitions"] and again["computed"] == 0
    assert again["skipped"] == first["partitions"]


def test_inference_config_round_trips_and_validates(tmp_path):
    cfg = InferenceConfig(tmp_path, "cpu", precision="bf16", members=1, partition_rows=500)
    assert cfg.model_dir == str(tmp_path)  # a Path in, a str kept: YAML-able and hashable
    assert InferenceConfig.from_yaml(cfg.to_yaml(tmp_path / "infer.yaml")) == cfg
    assert InferenceConfig.from_yaml(tmp_path / "infer.yaml") == cfg
    assert hash(cfg) == hash(cfg.replace())
    for bad in (dict(precision="fp16"), dict(members=0), dict(batch_size=-1),
                dict(partition_rows=2.5), dict(max_nan_fraction=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            InferenceConfig(**bad)
    with pytest.raises(ValueError, match="unknown InferenceConfig settings.*'layers'"):
        InferenceConfig.from_dict({"layers": 3})


def test_members_caps_the_ensemble(models):
    df = _simulated_partition(12)
    both = predict_partition(df, InferenceConfig(models, device="cpu"))
    one = predict_partition(df, InferenceConfig(models, "cpu", members=1))
    assert np.isfinite(both["teff_1_err"]).all() and one["teff_1_err"].isna().all()
    assert len(get_model_set(InferenceConfig(models, "cpu", members=1)).members["teff"]) == 1
    assert not np.allclose(both["teff_1"], one["teff_1"])  # the mean of two differs from one


def test_errors_are_carried_to_the_model_grid_and_filled_pixels_have_none():
    """preprocess carries σ through its linear interpolation and leaves NaN where a pixel was
    filled (missing input, off the grid after a shift): the evidence fits weight by it."""
    wave = np.linspace(8440.0, 8720.0, 2801)  # 0.1 Å, finer than the model grid
    rng = np.random.default_rng(5)
    flux = 1.0 + rng.normal(0, 0.01, (3, wave.size))
    err = np.full((3, wave.size), 0.01)
    flux[1, 1200:1210] = np.nan  # missing input pixels, filled by the continuum's Q3
    assert preprocess([wave], [flux[0]], [err[0]], MODEL_WAVE).flux_error is None  # not asked
    pre = preprocess([wave] * 3, list(flux), list(err), MODEL_WAVE, carry_errors=True)
    assert pre.flux_error.shape == pre.flux.shape
    np.testing.assert_allclose(pre.flux_error[0], 0.01, rtol=1e-6)  # σ interpolated linearly
    gap = (MODEL_WAVE > wave[1199]) & (MODEL_WAVE < wave[1210])
    assert gap.any() and np.isnan(pre.flux_error[1, gap]).all()
    assert np.isfinite(pre.flux[1, gap]).all()  # the flux is filled, the error says so
    assert np.isfinite(pre.flux_error[1, ~gap]).sum() > 0.9 * (~gap).sum()
    # a spectrum moved into its rest frame: what falls off the observed grid has no error
    shifted = preprocess([wave] * 3, list(flux), list(err), MODEL_WAVE,
                         rv_kms=np.array([0.0, 0.0, 2000.0]), carry_errors=True)
    assert np.isnan(shifted.flux_error[2]).any() and np.isfinite(shifted.flux_error[2]).any()
    # no input errors: none on the model grid
    assert np.isnan(preprocess([wave], [flux[0]], None, MODEL_WAVE,
                               carry_errors=True).flux_error).all()


def test_the_detector_target_is_read_from_the_manifests_and_must_be_shared(tmp_path):
    from model_fixtures import random_model_set, retarget_detector
    from sb2dask.infer.predict import ModelSet
    from sb2dask.models.io import ModelFileError

    models = random_model_set(tmp_path / "m", members=2)
    ms = ModelSet(models)
    assert ms.detector_target == "is_binary"  # manifests from before the setting existed
    assert all(e["detector_target"] == "is_binary" for e in ms.provenance["p_binary"])
    assert "detector_target" not in ms.provenance["teff"][0]

    retarget_detector(models, members=[1])
    with pytest.raises(ModelFileError, match="different targets"):
        ModelSet(models)
    assert ModelSet(models, members=1).detector_target == "is_binary"
    retarget_detector(models, members=[0])
    assert ModelSet(models).detector_target == "double_lined"


def test_new_weights_or_targets_under_the_same_path_are_another_run(tmp_path):
    """A finished run is continued only with the same model manifests: weights retrained into
    the same directory, or a detector of another target (p_binary with another meaning), need
    --overwrite (a per-source table would otherwise mix the two)."""
    import json as _json

    from model_fixtures import random_model_set, retarget_detector
    from sb2dask.infer.run import _run_settings, check_output

    models = random_model_set(tmp_path / "m")
    out = tmp_path / "out.parquet"
    out.mkdir()
    inputs = [str(tmp_path / "a.csv")]
    config = InferenceConfig(model_dir=models)
    (out / "_inputs.json").write_text(_json.dumps(dict(_run_settings(inputs, config),
                                                       finished=True)))
    check_output(out, inputs, config)  # the same models: continued
    retarget_detector(models)
    with pytest.raises(ValueError, match="other models"):
        check_output(out, inputs, config)
