"""The embedded LTE grid, its builder, the line-list conversion and the main-sequence relation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from sb2dask.library import MissingNodeError, SpectralLibrary, load_library
from sb2dask.library.build import STATUS, GridSpec, assemble_grid, build_nodes, node_key
from sb2dask.library.embedded import EmbeddedLibrary
from sb2dask.library.linelist import load_window_linelist, paschen_lines, read_turbospectrum
from sb2dask.library.mainsequence import mass_from_teff, radius_from_logg, read_mass_teff_relation
from sb2dask.library.synthesis import (
    NodeRefused,
    SynthesisSettings,
    blackbody_flux,
    check_atmosphere_hull,
    check_node_physics,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CA_II_AIR = (8498.02, 8542.09, 8662.14)

#: Tests that synthesise grid nodes need the grid build's own stack, installed only by the
#: ``grid`` extra (it pins older pandas/astropy); ``bash .ci/grid`` runs them.
GRID_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("pysme", "atmosnet"))
needs_grid = pytest.mark.skipif(
    not GRID_EXTRA, reason="needs the grid extra (pysme, atmosnet): "
    "pip install -c constraints.txt -e '.[test,grid]', or run bash .ci/grid")


@pytest.fixture(scope="module")
def grid():
    return load_library("embedded")


def test_embedded_grid_covers_the_specified_nodes(grid):
    assert isinstance(grid, SpectralLibrary)
    ax = grid.axes
    assert ax.teff == tuple(float(t) for t in range(3500, 6501, 100))
    assert ax.logg == (3.0, 3.5, 4.0, 4.5, 5.0, 5.5)
    assert ax.feh == (-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)
    # sampling <= 0.05 Å at R = inf over at least 8440-8740 Å
    assert grid.wave[0] <= 8440.0 and grid.wave[-1] >= 8740.0
    assert np.diff(grid.wave).max() <= 0.05 + 1e-9
    assert grid.resolution == float("inf")
    avail = grid.available
    assert avail.sum() > 0.95 * (31 * 5 * 9)
    # logg 5.5 only where the atmosphere network was trained (Teff <= 4250 K)
    i55 = ax.logg.index(5.5)
    teff = np.asarray(ax.teff)
    assert not avail[teff > 4250, i55].any()
    assert avail[teff <= 4200, i55].mean() > 0.9
    r = grid.ranges()
    assert r.logg_max(4000.0) == 5.5 and r.logg_max(5000.0) == 5.0


def test_embedded_grid_nodes_are_physical(grid):
    for teff in (3500.0, 4500.0, 5800.0, 6500.0):
        f = grid.flux(teff, 4.5, 0.0)
        assert f.dtype == np.float32 and f.shape == grid.wave.shape
        assert 0.0 <= f.min() and f.max() <= 1.02
        # the Ca II triplet lines are the deepest features, at their air wavelengths
        for line in CA_II_AIR:
            sel = np.abs(grid.wave - line) < 1.0
            assert abs(grid.wave[sel][np.argmin(f[sel])] - line) < 0.1
    # lines strengthen with metallicity
    ew = [np.sum(1 - grid.flux(5800.0, 4.5, z)) for z in (-2.0, -1.0, 0.0, 0.5)]
    assert np.all(np.diff(ew) > 0)
    # continuum rises with Teff, near the blackbody
    c = [grid.continuum(t, 4.5, 0.0) for t in (4000.0, 5000.0, 6000.0)]
    assert np.all(np.diff(c) > 0)
    for t, ci in zip((4000.0, 5000.0, 6000.0), c):
        assert 0.6 < ci / blackbody_flux(t, 8600.0) < 1.6


def test_masses_and_radii_are_main_sequence(grid):
    assert grid.mass(5800.0, 4.5, 0.0) == pytest.approx(1.05, abs=0.08)
    assert grid.mass(3500.0, 5.0, 0.0) < grid.mass(6500.0, 4.0, 0.0)
    m = grid.mass(5800.0, 4.5, 0.0)
    assert grid.radius(5800.0, 4.5, 0.0) == pytest.approx(radius_from_logg(4.5, m), rel=1e-5)
    assert grid.radius(5800.0, 3.0, 0.0) > grid.radius(5800.0, 4.5, 0.0)


def test_missing_nodes_raise_with_the_reason(grid):
    with pytest.raises(MissingNodeError, match="not computed"):
        grid.flux(6000.0, 5.5, 0.0)
    with pytest.raises(MissingNodeError, match="not a grid node"):
        grid.flux(6050.0, 4.5, 0.0)


def test_embedded_grid_provenance_and_size(grid):
    p = grid.provenance
    assert p["sha256"] and p["linelist"]["sha256"] and p["versions"]["pysme-astro"]
    assert "atmosnet" in p["atmosphere_fix"] and "molecular" in p["physics_limits"]
    assert p["command"].startswith("sb2dask library build")
    assert grid.path.stat().st_size < 30e6
    assert "available" in grid.describe()


def test_corrupt_grid_file_is_named(tmp_path):
    bad = tmp_path / "bad.zarr.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises((ValueError, OSError), match="bad.zarr.zip"):
        EmbeddedLibrary(bad)


TS_SAMPLE = """\
'  26.000            '    1         3
'Fe I    LTE'
  8440.500  3.000 -1.500 -7.500    5.0  1.00E+08 'x' 'x'   0.0    1.0 'Fe I'
  8542.000  2.500 -2.000  250.320    3.0  0.00E+00 'x' 'x'   0.0    1.0 'Fe I'
  9000.000  2.500 -2.000   2.5    3.0  1.00E+08 'x' 'x'   0.0    1.0 'Fe I'
'  60.143            '    2         1
'Nd II    LTE'
  8500.000  1.000 -1.000   1.5    3.0  1.00E+08 'x' 'x'   0.0    1.0 'Nd II'
"""


def test_turbospectrum_conversion_rules(tmp_path):
    path = tmp_path / "ts.list"
    path.write_text(TS_SAMPLE)
    ll = read_turbospectrum(path, 8440.0, 8740.0)
    assert list(ll["species"]) == ["Fe 1", "Nd 2", "Fe 1"]  # sorted, 9000 Å dropped
    fe, nd, fe2 = ll.iloc[0], ll.iloc[1], ll.iloc[2]
    assert fe.gamvw == -7.5 and fe.gamrad == pytest.approx(8.0)  # log Γ6 kept, log10(raddmp)
    assert fe2.gamvw == 250.32 and fe2.gamrad == 0.0  # ABO kept; raddmp 0 -> classical
    assert nd.gamvw == 0.0  # Unsöld factor -> SME's Unsöld
    assert nd.gflog == pytest.approx(-1.0 + np.log10(0.122))  # isotope fraction
    path.write_text("garbage\n")
    with pytest.raises(ValueError, match="ts.list:1"):
        read_turbospectrum(path, 8440.0, 8740.0)


def test_committed_linelist_and_paschen():
    ll = load_window_linelist()
    assert len(ll) == 4415 and ll["wlcent"].is_monotonic_increasing
    ca = ll[ll.species == "Ca 2"]
    for line in CA_II_AIR:
        assert np.abs(ca.wlcent - line).min() < 0.01
    p = paschen_lines(8440.0, 8740.0)
    assert list(p.gamqst) == [3.0] * len(p) and set(p.gamvw) == {13.0, 14.0, 15.0, 16.0, 17.0}


def test_main_sequence_relation():
    table = SHARED / "PecautMamajek_table.csv"
    if not table.exists():
        pytest.skip(f"{table} absent (../shared/data is not beside this checkout)")
    rel = read_mass_teff_relation(table)
    assert mass_from_teff(5770.0, rel) == pytest.approx(1.02, abs=0.01)
    assert np.all(np.diff(mass_from_teff([3500.0, 4500.0, 5500.0, 6500.0], rel)) > 0)
    assert radius_from_logg(4.438, 1.0) == pytest.approx(1.0, rel=0.01)
    with pytest.raises(ValueError, match="outside"):
        mass_from_teff(50000.0, rel)


def test_node_physics_check_refuses_emulator_failures():
    f = np.full(100, 0.9)
    check_node_physics(5800.0, f, blackbody_flux(5800.0, 8600.0))
    with pytest.raises(NodeRefused, match="unphysical"):
        check_node_physics(6500.0, f, 3e12)  # seen at 6500/3.0/-4.0
    with pytest.raises(NodeRefused, match="unphysical"):
        check_node_physics(6500.0, np.r_[f, 3.8], blackbody_flux(6500.0, 8600.0))


def test_atmosphere_hull_refuses_extrapolation():
    # training labels shaped like atmosnet's: logg <= 5.5 up to 4250 K, <= 5.0 from 4500 K
    tl = np.array([[t, g, 0.0, 0.0] for t in (4000.0, 4250.0, 4500.0, 5000.0)
                   for g in np.arange(0.0, (5.5 if t <= 4250 else 5.0) + 0.01, 0.5)])
    check_atmosphere_hull(tl, 4200.0, 5.5)
    with pytest.raises(NodeRefused, match="extrapolation"):
        check_atmosphere_hull(tl, 4300.0, 5.5)


@pytest.mark.integration
@pytest.mark.grid
@needs_grid
def test_builder_computes_keeps_and_assembles_real_nodes(tmp_path):
    """One real LTE synthesis (narrow window), a refused node, restart, assembly, reload."""
    table = SHARED / "PecautMamajek_table.csv"
    if not table.exists():
        pytest.skip(f"{table} absent")
    from distributed import Client, LocalCluster

    settings = SynthesisSettings(wmin=8530.0, wmax=8555.0, continuum_wave=8550.0)
    spec = GridSpec(teff=(4500.0,), logg=(4.5, 5.5), feh=(0.0,), settings=settings)
    work = tmp_path / "work"
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=":0") as lc, Client(lc) as client:
        counts = build_nodes(work, spec, client, progress=False)
        assert counts == {"skipped": 0, "ok": 1, "refused": 0, "failed": 0}
        again = build_nodes(work, spec, client, progress=False)
        assert again["skipped"] == 1 and again["ok"] == 0
    assert (work / "nodes" / f"{node_key(4500.0, 4.5, 0.0)}.npz").exists()
    out = tmp_path / "g.zarr.zip"
    prov = assemble_grid(work, out, spec, table, command="test")
    assert prov["counts"]["ok"] == 1 and prov["counts"]["refused"] == 1
    g = EmbeddedLibrary(out)
    assert g.available.tolist() == [[[True], [False]]]
    f = g.flux(4500.0, 4.5, 0.0)
    assert abs(g.wave[np.argmin(f)] - 8542.09) < 0.05 and f.min() < 0.4
    assert 0.6 < g.continuum(4500.0, 4.5, 0.0, 8550.0) / blackbody_flux(4500.0, 8550.0) < 1.6
    assert json.loads(json.dumps(g.provenance))["not_computed"]
    assert STATUS["refused"] == 1
