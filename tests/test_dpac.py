"""``sb2dask compare-dpac`` (sb2dask.evaluate.dpac): a DPAC-format table built from a mock
catalogue's truth, read in every DataLink format, joined with an epoch table whose differences
from the truth are known, component order resolved, statistics and report."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from sb2dask.cli import main
from sb2dask.evaluate.dpac import (
    DPACFileError,
    compare_dpac,
    identify_table_format,
    load_column_map,
    match_transits,
    mock_dpac_table,
    read_dpac,
    read_ours,
    write_mock_dpac,
)
from sb2dask.infer.run import write_parquet_atomic
from sb2dask.infer.schema import arrow_schema, empty_frame
from sb2dask.labels import PARAMETERS

TEFF_OFFSET, VSINI_OFFSET, RV_OFFSET = 120.0, -3.0, 1.5


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    """A mock catalogue's truth, its DPAC table (ECSV) and an epoch table of ours that differs
    from the truth by known offsets (one transit unusable)."""
    from sb2dask.dataset.mock_catalogue import mock_catalogue

    d = tmp_path_factory.mktemp("dpac")
    cat = mock_catalogue(d / "cat", n_sources=40, epochs=(2, 4), n_files=1, seed=3)
    truth = pd.read_parquet(cat["truth"])
    dpac = write_mock_dpac(cat["truth"], d / "dpac.ecsv", seed=1)
    rng = np.random.default_rng(0)
    ep = empty_frame("epoch", len(truth))
    ep["source_id"] = truth["source_id"].to_numpy()
    ep["epoch_id"] = truth["epoch_id"].to_numpy()
    ep["usable"] = True
    ep["p_binary"] = np.where(truth["is_binary"], 0.9, 0.1).astype(np.float32)
    for p in PARAMETERS:
        for c in (1, 2):
            ep[f"{p}_{c}"] = truth[f"{p}_{c}"].to_numpy() + {"teff": TEFF_OFFSET,
                                                               "vsini": VSINI_OFFSET}.get(p, 0.0)
    ep["rv_bulk"] = np.nan
    ep.loc[0, "usable"] = False
    ours = d / "ours.parquet"
    ours.mkdir()
    write_parquet_atomic(ep, ours / "part-000000.parquet", arrow_schema("epoch"))
    # the same with per-component RVs (as the evidence issue will add them)
    ep_rv = ep.copy()
    for c in (1, 2):
        ep_rv[f"rv_{c}"] = truth[f"rv_{c}"].to_numpy() + RV_OFFSET + 0.3 * rng.standard_normal(
            len(ep))
    ours_rv = d / "ours_rv.parquet"
    ours_rv.mkdir()
    ep_rv.to_parquet(ours_rv / "part-000000.parquet", index=False)
    return dict(dir=d, truth=truth, dpac=dpac, ours=ours, ours_rv=ours_rv, cat=cat)


def test_mock_table_follows_the_truth(mock):
    truth, table = mock["truth"], Table.read(mock["dpac"], format="ascii.ecsv")
    sb2 = truth[truth["is_binary"] & (truth["rv_separation"] >= 20.0)]
    assert len(table) == len(sb2) > 10
    assert set(table["transit_id"]) == set(sb2["epoch_id"])
    assert table["radial_velocity_primary"].unit == "km / s"
    assert 0 < np.mean(table["is_reordered"]) < 1  # both orders occur


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".vot", ".fits"])
def test_every_datalink_format_reads_the_same(mock, tmp_path, suffix):
    path = write_mock_dpac(mock["cat"]["truth"], tmp_path / f"dpac{suffix}", seed=1)
    expected = {".csv": "csv", ".ecsv": "ecsv", ".vot": "votable", ".fits": "fits"}[suffix]
    assert identify_table_format(path) == expected
    got, info = read_dpac(path)
    ref, _ = read_dpac(mock["dpac"])
    assert info["missing"] == ["obs_time_rv"] and info["duplicates"] == 0
    cols = ["source_id", "transit_id", "rv_primary", "rv_valid_secondary", "teff_secondary",
            "vbroad_primary", "is_reordered", "rad_vel_bary_corr"]
    pd.testing.assert_frame_equal(got[cols], ref[cols], check_exact=False, rtol=1e-6)


def test_gzip_and_units_are_handled(mock, tmp_path):
    table = mock_dpac_table(mock["truth"], seed=1)
    table["radial_velocity_primary"] = table["radial_velocity_primary"].to("m/s")
    plain = tmp_path / "dpac.ecsv"
    table.write(plain, format="ascii.ecsv")
    gz = tmp_path / "dpac.ecsv.gz"
    with open(plain, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert identify_table_format(gz) == "ecsv"
    got, _ = read_dpac(gz)
    np.testing.assert_allclose(got["rv_primary"], read_dpac(mock["dpac"])[0]["rv_primary"],
                               rtol=1e-9)  # m/s in the file, km/s here


def test_columns_can_be_renamed_by_a_map(mock, tmp_path):
    table = mock_dpac_table(mock["truth"], seed=1)
    table.rename_column("source_id", "SID")
    table.rename_column("vbroad_primary", "VBROAD_P")
    path = tmp_path / "renamed.csv"
    table.write(path, format="ascii.csv")
    with pytest.raises(DPACFileError, match=r"renamed.csv: no column for \['source_id'\]"):
        read_dpac(path)
    mapping = tmp_path / "map.yaml"
    mapping.write_text("source_id: SID\nvbroad_primary: vbroad_p\n")  # any case
    got, info = read_dpac(path, load_column_map(mapping))
    assert info["columns"][str(path)]["vbroad_primary"] == "VBROAD_P"
    assert np.isfinite(got["vbroad_primary"]).all()
    mapping.write_text("radial_velocity: x\n")
    with pytest.raises(ValueError, match="unknown canonical names"):
        load_column_map(mapping)


def test_malformed_flags_and_ids_are_named(mock, tmp_path):
    table = mock_dpac_table(mock["truth"], seed=1)
    flags = table["radial_velocity_valid_secondary"].astype(str)
    flags[2] = "maybe"
    table["radial_velocity_valid_secondary"] = flags
    path = tmp_path / "bad.csv"
    table.write(path, format="ascii.csv")
    with pytest.raises(DPACFileError, match=r"bad.csv: column 'radial_velocity_valid_secondary'"
                                            r", row 2: expected a flag"):
        read_dpac(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DPACFileError, match="empty.csv: the file is empty"):
        read_dpac(empty)


def test_components_are_put_in_our_order(mock):
    truth = mock["truth"].set_index(["source_id", "epoch_id"])
    dpac, _ = read_dpac(mock["dpac"])
    matched, counts = match_transits(read_ours(mock["ours"]), dpac)
    assert counts["matched"] == len(dpac) and counts["dpac_only"] == 0
    assert counts["ours_only"] == len(truth) - len(dpac)
    by_teff = matched["order_method"] == "teff"
    assert by_teff.mean() > 0.5
    m = matched[by_teff]
    assert (m["dpac_teff_1"] < m["dpac_teff_2"]).all()
    t = truth.loc[list(zip(m["source_id"], m["epoch_id"]))]
    # the component that became 1 is the true cooler star: its vbroad follows vsini_1
    err = np.abs(m["dpac_vbroad_1"].to_numpy() - t["vsini_1"].to_numpy())
    assert np.median(err) < 3.0
    # with our per-component RVs the ties in template Teff are resolved by the velocities
    matched_rv, _ = match_transits(read_ours(mock["ours_rv"]), dpac)
    assert set(matched_rv["order_method"]) <= {"teff", "rv"}
    rv_path = matched_rv[matched_rv["order_method"] == "rv"]
    assert len(rv_path) == (~by_teff).sum() > 0
    t = truth.loc[list(zip(rv_path["source_id"], rv_path["epoch_id"]))]
    assert np.all(np.abs(rv_path["dpac_rv_1"].to_numpy() - t["rv_1"].to_numpy()) < 12.0)


def test_report_recovers_the_known_offsets(mock, tmp_path):
    report = compare_dpac(mock["ours_rv"], [mock["dpac"]], tmp_path / "rep")
    a = report["agreement"]
    # template Teff on a 250 K grid: the rounding adds at most 125 K to our known offset
    assert abs(a["teff_1"]["median_offset"] - TEFF_OFFSET) < 80
    assert abs(a["vbroad_2"]["median_offset"] - VSINI_OFFSET) < 1.5
    assert abs(a["rv_1"]["median_offset"] - RV_OFFSET) < 1.0
    assert 0.5 < a["rv_1"]["robust_scatter"] < 4.0
    assert a["rv_1"]["outlier_fraction"] < 0.1 and a["teff_2"]["outlier_fraction"] < 0.1
    # invalid secondary RVs are left out; the unusable transit is not compared
    assert a["rv_2"]["n"] < a["rv_1"]["n"] <= report["counts"]["matched_usable"]
    assert "rv_bulk" not in a  # rest frame off: no bulk velocity to compare
    assert report["detection"]["fraction_sb2"] == 1.0  # every DPAC transit is one of our SB2s
    on_disk = json.loads((tmp_path / "rep" / "compare_dpac.json").read_text())
    assert on_disk["counts"] == report["counts"]
    md = (tmp_path / "rep" / "compare_dpac.md").read_text()
    assert "| RV [km/s] | 1 (cooler) |" in md and "primary is the cooler" in md
    assert len(pd.read_parquet(tmp_path / "rep" / "matched.parquet")) == report["counts"][
        "matched"]
    # DPAC velocities not yet barycentric: --add-bary-corr moves them by rad_vel_bary_corr
    moved = compare_dpac(mock["ours_rv"], [mock["dpac"]], tmp_path / "rep2", add_bary_corr=True)
    assert moved["agreement"]["rv_1"]["robust_scatter"] > 5 * a["rv_1"]["robust_scatter"]


def test_without_component_rvs_the_report_says_so(mock, tmp_path):
    report = compare_dpac(mock["ours"], mock["dpac"], tmp_path / "rep")
    assert "rv_1" not in report["agreement"] and "teff_1" in report["agreement"]
    md = (tmp_path / "rep" / "compare_dpac.md").read_text()
    assert "no per-component radial velocities" in md


def test_cli_compare_dpac(mock, tmp_path, capsys):
    rc = main(["compare-dpac", str(mock["ours_rv"]), "--dpac", str(mock["dpac"]), "--out",
               str(tmp_path / "rep")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "# sb2dask against DPAC" in out and "matched" in out
    assert (tmp_path / "rep" / "compare_dpac.json").is_file()
    rc = main(["compare-dpac", str(mock["ours_rv"]), "--dpac", str(tmp_path / "nope.csv"),
               "--out", str(tmp_path / "rep")])
    _, err = capsys.readouterr()
    assert rc == 1 and err.strip() == f"sb2dask compare-dpac: error: {tmp_path / 'nope.csv'}: " \
                                      "no such file"
    rc = main(["compare-dpac", str(tmp_path), "--dpac", str(mock["dpac"])])
    _, err = capsys.readouterr()
    assert rc == 1 and "no part-*.parquet files" in err
