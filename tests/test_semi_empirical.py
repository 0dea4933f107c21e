"""Semi-empirical training stores (``sb2dask semi-empirical``): layout the trainer takes,
determinism across workers, noise accounting, rejected inputs, provenance, bad inputs, mixes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from sb2dask.cluster import get_client
from sb2dask.dataset.semi_empirical import build
from sb2dask.gaia import RVS_WAVE
from sb2dask.simulate.config import SimulationConfig
from sb2dask.simulate.realism import CA_II_AIR
from sb2dask.simulate.semi_empirical import (
    STATUS_TOO_NOISY,
    SemiEmpiricalSettings,
    combine_rows,
    semi_empirical_realism,
)
from sb2dask.simulate.systems import LABEL_FIELDS

MS_TABLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / \
    "PecautMamajek_table.csv"
pytestmark = pytest.mark.skipif(not MS_TABLE.exists(),
                                reason=f"needs the Pecaut & Mamajek table at {MS_TABLE}")

CFG = SimulationConfig(binary_fraction=0.5, snr_range=(30.0, 150.0), seed=11,
                       realism=semi_empirical_realism())
SETTINGS = SemiEmpiricalSettings(input_noise="white")


def _star_flux(teff: float, vsini: float, wave=RVS_WAVE) -> np.ndarray:
    """A normalised single-star spectrum: Ca II and weak lines whose depths follow Teff."""
    flux = np.ones_like(wave)
    width = 0.6 + vsini / 30.0
    for c in CA_II_AIR:
        flux -= 0.6 * (6500.0 / teff) * np.exp(-0.5 * ((wave - c) / width) ** 2)
    rng = np.random.default_rng(int(teff))
    for c in rng.uniform(wave[0], wave[-1], 40):
        flux -= 0.15 * (5800.0 / teff) ** 2 * np.exp(-0.5 * ((wave - c) / (0.3 * width)) ** 2)
    return flux


def _write_inputs(tmp: Path, n_star: int = 24, noisy: int = 0, feh_err: float = 0.05,
                  name: str = "stars"):
    """Parquet catalogue (DR3 grid by length) and label table of ``n_star`` stars; the last
    ``noisy`` of them at S/N 15."""
    rng = np.random.default_rng(3)
    rows, labels = [], []
    for i in range(n_star):
        teff = 5000.0 + 60.0 * i
        snr = 15.0 if i >= n_star - noisy else 400.0
        f = _star_flux(teff, 5.0) + rng.normal(0, 1 / snr, RVS_WAVE.size)
        rows.append(dict(source_id=100 + i, flux=f.astype(np.float32).tolist(),
                         flux_error=np.full(RVS_WAVE.size, 1 / snr, np.float32).tolist()))
        labels.append(dict(source_id=100 + i, teff=teff, e_teff=50.0, logg=4.5, e_logg=0.1,
                           fe_h=0.0, e_fe_h=feh_err, vsini=5.0))
    spectra, table = tmp / f"{name}.parquet", tmp / f"{name}_labels.csv"
    pd.DataFrame(rows).to_parquet(spectra)
    pd.DataFrame(labels).to_csv(table, index=False)
    return spectra, table


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    return _write_inputs(tmp, noisy=3)


@pytest.fixture(scope="module")
def store(tmp_path_factory, inputs):
    out = tmp_path_factory.mktemp("se") / "two.zarr"
    with get_client("local", workers=2, quiet=True) as c:
        summary = build(out, [inputs[0]], inputs[1], CFG, SETTINGS, n=120, chunk=40, client=c,
                        progress=False, main_sequence_table=MS_TABLE)
    return out, summary


def _arrays(path):
    root = zarr.open_group(str(path), mode="r")
    out = {"flux": root["flux"][...], "split": root["split"][...]}
    for g in ("labels", "semi_empirical/rows"):
        for name in root[g].array_keys():
            out[f"{g}/{name}"] = root[g][name][...]
    return out


def test_store_has_the_simulator_layout_and_trains(store, tmp_path):
    from sb2dask.dataset.store import store_frame
    from sb2dask.train.config import TrainConfig
    from sb2dask.train.fit import fit, load_data

    out, summary = store
    root = zarr.open_group(str(out), mode="r")
    assert set(root["labels"].array_keys()) == set(LABEL_FIELDS)
    assert root["flux"].shape == (120, len(CFG.wave)) and root["wave"].shape == CFG.wave.shape
    assert (root["chunk_sha256"][...] != 0).any(axis=1).all()  # every chunk recorded
    assert store_frame(out) == "rv_bulk"  # systemic velocities: measured like the factory
    lab = root["labels"]
    binary = lab["is_binary"][...]
    assert 0.3 < binary.mean() < 0.7
    assert np.isfinite(lab["rv_bulk"][...]).mean() > 0.8
    # the trainer's readers and the detector's fit take it unchanged
    train, _ = load_data(TrainConfig(target="teff"), out)
    assert train.labels["is_binary"].all() and train.flux.shape[1] == len(CFG.wave)
    res = fit(TrainConfig(target="p_binary", epochs=1, batch_size=16, max_train=48,
                          max_validation=16, early_stopping=None), out, tmp_path, progress=False)
    man = json.loads(Path(res["manifest"]).read_text())
    assert man["training_set"]["library_sha256"] == summary_sha(out)
    assert man["training"]["mix"][0]["library"] == "semi-empirical"


def summary_sha(out):
    return zarr.open_group(str(out), mode="r").attrs["sb2dask"]["semi_empirical"][
        "inputs_sha256"]


def test_rows_do_not_depend_on_worker_count_or_chunks(store, inputs, tmp_path):
    out, _ = store
    one = tmp_path / "one.zarr"
    with get_client("local", workers=1, quiet=True) as c:
        build(one, [inputs[0]], inputs[1], CFG, SETTINGS, n=120, chunk=40, client=c,
              progress=False, main_sequence_table=MS_TABLE)
    a, b = _arrays(out), _arrays(one)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_too_noisy_inputs_are_rejected_counted_and_never_used(store):
    out, summary = store
    assert summary["inputs"]["too noisy for the requested S/N"] == 3
    assert summary["inputs"]["too_noisy_source_ids"] == [121, 122, 123]
    root = zarr.open_group(str(out), mode="r")
    status = root["semi_empirical/inputs/status"][...]
    assert (status == STATUS_TOO_NOISY).sum() == 3
    used = root["semi_empirical/rows/source_id"][...]
    assert not np.isin(used, [121, 122, 123]).any()
    # every row's S/N was requested inside the range, and its stars reach it
    snr = root["labels/snr"][...]
    assert (snr >= 30).all() and (snr <= 150).all()


def test_provenance_names_the_input_spectra_of_every_row(store):
    out, _ = store
    root = zarr.open_group(str(out), mode="r")
    ids = root["semi_empirical/rows/source_id"][...]
    idx = root["semi_empirical/rows/input_index"][...]
    binary = root["labels/is_binary"][...]
    assert (ids[~binary, 1] == -1).all() and (ids[:, 0] >= 100).all()
    assert (ids[binary, 0] != ids[binary, 1]).all() and (ids[binary, 1] >= 100).all()
    # the indices point at the stored inputs, whose labels are the rows' labels
    teff_in = root["semi_empirical/inputs/teff"][...]
    sid_in = root["semi_empirical/inputs/source_id"][...]
    teff = root["labels/teff"][...]
    assert np.array_equal(sid_in[idx[:, 0]], ids[:, 0])
    assert np.allclose(teff_in[idx[binary, 1]], teff[binary, 1])
    assert (teff[binary, 0] <= teff[binary, 1]).all()  # cooler first, as the simulator
    # stars of one split only: no star feeds two splits
    split_in = root["semi_empirical/inputs/split"][...]
    split = root["split"][...]
    for s in range(3):
        used = np.unique(idx[split == s][idx[split == s] >= 0])
        assert (split_in[used] == s).all()


def _rows(n, snr, frac, exponent=0.0, corr=0.0):
    return dict(snr=np.full(n, snr, np.float32),
                light_fraction=np.tile(np.asarray(frac, np.float32), (n, 1)),
                rv=np.tile(np.array([-20.0, 25.0], np.float32), (n, 1)),
                noise_exponent=np.full(n, exponent, np.float32),
                noise_correlation=np.full(n, corr, np.float32),
                gap_start=np.full(n, -1, np.int32), gap_width=np.zeros(n, np.int32))


@pytest.mark.parametrize("frac", [(1.0, np.nan), (0.35, 0.65)])
def test_noise_reaches_the_requested_snr(frac):
    """Combined inputs of known white noise (S/N 300) plus the added noise: the total noise,
    measured against the noise-free combination, is the target σ = flux^α / S/N."""
    n, target_snr = 200, 80.0
    rng = np.random.default_rng(5)
    clean = np.stack([_star_flux(5500.0, 3.0), _star_flux(6100.0, 8.0)])
    clean = np.broadcast_to(clean, (n, 2, RVS_WAVE.size))
    sigma = np.full(clean.shape, 1 / 300.0)
    noisy = clean + rng.normal(0, 1.0, clean.shape) * sigma
    labels = _rows(n, target_snr, [f if np.isfinite(f) else 0.0 for f in frac], 0.3, 0.8)
    wave = CFG.wave
    unit = rng.standard_normal((n, len(wave))).astype(np.float32)
    out, excess = combine_rows(RVS_WAVE, wave, noisy, sigma, labels, unit, correlated=False)
    ref, _ = combine_rows(RVS_WAVE, wave, clean, sigma, labels, None, correlated=False)
    resid = (out - ref)[:, 20:-20]  # away from the edges a shift leaves uncovered
    target = np.clip(ref[:, 20:-20], 0, None) ** 0.3 / target_snr
    ratio = np.nanstd(resid / target)
    assert abs(ratio - 1.0) < 0.02, ratio
    assert (excess == 0).all()
    # inputs noisier than the target: nothing is added, the excess is reported
    loud = clean + rng.normal(0, 1.0, clean.shape) / 40.0
    _, excess = combine_rows(RVS_WAVE, wave, loud, np.full(clean.shape, 1 / 40.0),
                             _rows(n, target_snr, [1.0, 0.0]), unit, correlated=False)
    assert (excess > 0.9).all()


def test_bad_inputs_give_one_line_errors_naming_file_and_row(inputs, tmp_path):
    spectra, labels = inputs
    table = pd.read_csv(labels)
    kw = dict(n=30, chunk=30, progress=False, main_sequence_table=MS_TABLE)

    no_feh = tmp_path / "no_feh.csv"
    table.drop(columns=["fe_h"]).to_csv(no_feh, index=False)
    with pytest.raises(ValueError, match=r"no_feh.csv: no 'feh' column"):
        build(tmp_path / "a.zarr", [spectra], no_feh, CFG, SETTINGS, **kw)

    unmatched = tmp_path / "unmatched.csv"
    table[table["source_id"] != 104].to_csv(unmatched, index=False)
    with pytest.raises(ValueError, match=r"stars.parquet row 4 \(source_id 104\): source_id "
                                         r"has no row in .*unmatched.csv"):
        build(tmp_path / "b.zarr", [spectra], unmatched, CFG, SETTINGS, **kw)

    missing = tmp_path / "missing.csv"
    t = table.copy()
    t.loc[2, "teff"] = np.nan
    t.to_csv(missing, index=False)
    with pytest.raises(ValueError, match=r"missing.csv row 2 \(source_id 102\): teff is "
                                         "missing"):
        build(tmp_path / "c.zarr", [spectra], missing, CFG, SETTINGS, **kw)

    other_grid = tmp_path / "dr4.parquet"  # 961 pixels: the DR4 epoch grid
    pd.DataFrame([dict(source_id=100, flux=np.ones(961, np.float32).tolist(),
                       flux_error=np.full(961, 0.01, np.float32).tolist())]).to_parquet(
        other_grid)
    with pytest.raises(ValueError, match=r"dr4.parquet row 0 \(source_id 100\): its grid .* "
                                         "differs from that of"):
        build(tmp_path / "d.zarr", [spectra, other_grid], labels, CFG, SETTINGS, **kw)

    few, few_labels = _write_inputs(tmp_path, n_star=2, name="few")
    with pytest.raises(ValueError, match="--shared-stars"):
        build(tmp_path / "e.zarr", [few], few_labels, CFG, SETTINGS, **kw)


def test_pairs_share_feh_within_errors(tmp_path):
    """[Fe/H] 0.0 ± 0.05 for all but one star at +0.5: that one is never paired."""
    spectra, labels = _write_inputs(tmp_path, n_star=8)
    t = pd.read_csv(labels)
    t.loc[t["source_id"] == 103, "fe_h"] = 0.5
    t.to_csv(labels, index=False)
    out = tmp_path / "feh.zarr"
    with get_client("local", workers=1, quiet=True) as c:
        build(out, [spectra], labels, CFG.replace(binary_fraction=1.0),
              SETTINGS.replace(shared_stars=True), n=60, chunk=60, client=c, progress=False,
              main_sequence_table=MS_TABLE)
    ids = zarr.open_group(str(out), mode="r")["semi_empirical/rows/source_id"][...]
    assert not (ids == 103).any() and (ids >= 100).all()


def test_mixed_training_records_the_mix(store, inputs, tmp_path):
    from sb2dask.cli import build_parser
    from sb2dask.train.config import TrainConfig
    from sb2dask.train.fit import fit

    out, _ = store
    second = tmp_path / "second.zarr"
    with get_client("local", workers=1, quiet=True) as c:
        build(second, [inputs[0]], inputs[1], CFG.replace(seed=12),
              SETTINGS.replace(shared_stars=True), n=120, chunk=120,
              client=c, progress=False, main_sequence_table=MS_TABLE)
    cfg = TrainConfig(target="p_binary", epochs=1, batch_size=16, max_train=40,
                      max_validation=12, early_stopping=None, mix=(1.0, 3.0))
    res = fit(cfg, [out, second], tmp_path / "models", progress=False)
    man = json.loads(Path(res["manifest"]).read_text())
    mix = man["training"]["mix"]
    assert [m["n_train"] for m in mix] == [10, 30] and [m["fraction"] for m in mix] == [0.25,
                                                                                         0.75]
    assert [m["n_validation"] for m in mix] == [3, 9]
    assert len(man["training_set"]["stores"]) == 2 and man["training_set"]["sha256"]
    assert man["training"]["config"]["mix"] == [1.0, 3.0]
    only_first = fit(cfg.replace(mix=(1.0, 0.0)), [out, second], tmp_path / "first",
                     progress=False)
    mix = json.loads(Path(only_first["manifest"]).read_text())["training"]["mix"]
    assert [m["n_train"] for m in mix] == [40, 0] and [m["n_validation"] for m in mix] == [12, 0]
    with pytest.raises(ValueError, match="mix has 2 fractions for 1 training stores"):
        fit(cfg, [out], tmp_path / "m2", progress=False)
    args = build_parser().parse_args(["train", "--store", "a", "--store", "b", "--mix", "1",
                                      "3", "--detector-store", "c"])
    assert args.store == ["a", "b"] and args.mix == [1.0, 3.0] and args.detector_store == ["c"]


def test_cli_reports_bad_inputs_in_one_line_before_a_cluster(inputs, tmp_path, capsys):
    from sb2dask.cli import main

    spectra, labels = inputs
    table = pd.read_csv(labels)
    unmatched = tmp_path / "unmatched.csv"
    table[table["source_id"] != 101].to_csv(unmatched, index=False)
    # --cluster points at nothing: reaching the cluster would be a different error
    rc = main(["semi-empirical", str(spectra), "--labels", str(unmatched), "--out",
               str(tmp_path / "x.zarr"), "--main-sequence-table", str(MS_TABLE),
               "--cluster", "tcp://127.0.0.1:9", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "stars.parquet row 1 (source_id 101): source_id has no row in" in err[0]
    rc = main(["train", "--store", "a.zarr", "--store", "b.zarr", "--mix", "1", "--out",
               str(tmp_path / "m"), "--cluster", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "--mix gives 1 fractions for 2 stores" in err[0]


def test_semi_empirical_stores_refuse_the_line_depth_field(tmp_path):
    from sb2dask.dataset.semi_empirical import prepare
    from sb2dask.simulate.config import SimulationConfig
    from sb2dask.simulate.realism import Realism

    cfg = SimulationConfig.realistic(realism=Realism(line_depth_scatter=(0.0, 0.2)))
    with pytest.raises(ValueError, match="line_depth_scatter"):
        prepare(tmp_path / "se.zarr", [], tmp_path / "labels.csv", cfg)
