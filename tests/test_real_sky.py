"""The real-sky suite's independent rendering path and its report, on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sb2dask.constants import C_KMS
from sb2dask.evaluate import real_sky as rs
from sb2dask.labels import PARAMETERS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOENIX = SHARED / "phoenix"
GAIA = SHARED / "gaia_rvs"


def _line(wave, centre, depth=0.5, width=0.3):
    return 1.0 - depth * np.exp(-0.5 * ((wave - centre) / width) ** 2)


def test_shift_moves_a_line_by_the_doppler_factor_and_blanks_the_edge():
    wave = np.linspace(8460.0, 8700.0, 2401)
    flux = _line(wave, 8542.09)
    moved, _ = rs.shift_on_fixed_grid(wave, flux, 100.0)
    got = wave[np.nanargmin(moved)]
    want = 8542.09 * rs.doppler_factor_rel(100.0)
    assert abs(got - want) < 0.1 and abs(want - 8542.09 - 8542.09 * 100 / C_KMS) < 0.01
    assert np.isnan(moved[:5]).all() and np.isfinite(moved[-5:]).all()  # redshift: blue edge


def test_gaussian_lsf_gives_the_resolving_power():
    ln_w = np.log(8500.0) + 1e-5 * np.arange(4001)
    flux = np.ones_like(ln_w)
    flux[2000] = 0.0  # a delta-function line: the output is the kernel itself
    out = 1.0 - rs.gaussian_lsf(ln_w, flux, 11_500.0)
    assert out.sum() == pytest.approx(1.0, rel=1e-6)
    half = np.where(out >= out.max() / 2)[0]
    fwhm_ln = (half[-1] - half[0] + 1) * 1e-5
    assert fwhm_ln == pytest.approx(1 / 11_500.0, rel=0.08)


def test_upper_envelope_recovers_a_tilted_continuum_under_lines():
    wave = np.linspace(8460.0, 8700.0, 2401)
    cont = 1.0 + 0.1 * (wave - 8580.0) / 120.0
    lines = np.ones_like(wave)
    for c in (8498.0, 8542.1, 8662.1):
        lines *= _line(wave, c, depth=0.7, width=1.5)
    rng = np.random.default_rng(1)
    for c in rng.uniform(8465, 8695, 60):
        lines *= _line(wave, c, depth=0.2, width=0.15)
    env = rs.upper_envelope(wave, cont * lines)
    assert np.max(np.abs(env / cont - 1.0)) < 0.01


@pytest.mark.skipif(not PHOENIX.is_dir(), reason=f"PHOENIX files not found in {PHOENIX}")
def test_phoenix_rendering_puts_ca_ii_at_its_air_wavelength_on_a_unit_continuum():
    path = sorted(PHOENIX.glob("lte05800*.fits"))[0]
    wave, flux, header = rs.read_phoenix_vacuum(path)
    assert header["PHXTEFF"] == 5800.0 and wave[0] >= 8400.0
    f, e = rs.render_phoenix([(wave, flux, 1.0, 0.0)], np.random.default_rng(0), snr=1e6)
    air = rs._gaia_air()
    core = (air > 8535) & (air < 8550)
    assert abs(air[core][np.argmin(f[core])] - 8542.09) < 0.15  # Ca II 8542 in air
    top = np.percentile(f, 95)
    assert 0.98 < top < 1.02 and np.all(e == pytest.approx(1e-6))


def test_suite_gives_one_row_per_case_and_judges_its_targets(tmp_path):
    from model_fixtures import random_model_set

    models = random_model_set(tmp_path / "models")
    rng = np.random.default_rng(3)
    air = rs._gaia_air()
    wave = air.astype(float)
    star = _line(wave, 8542.09) * _line(wave, 8662.14)
    cases = [rs.RealSkyCase("fake Kepler-93 +0 km/s", "real", wave, star.astype(np.float32),
                            None, dict(star="Kepler-93", shift_kms=0.0,
                                       **rs.REAL_REFERENCES["Kepler-93"]))]
    cases += rs._noise_cases(rng, n=2)
    from sb2dask.infer.config import InferenceConfig

    res = rs.run_suite(cases, InferenceConfig(model_dir=models))
    assert list(res["case"]) == [c.case for c in cases] and len(res) == 4
    s = rs.summarise(res)
    assert set(s["counts"]) == {"real", "noise", "flat"}
    t = s["targets"]["real singles: p_binary < 0.2 at every shift"]
    assert t["value"] == pytest.approx(float(res.loc[0, "p_binary"]))
    assert t["passed"] == (t["value"] < 0.2)
    assert "Kepler-93 labels within 300 K / 0.3 / 0.3 dex" in s["targets"]
    md = rs.write_report(res, s, tmp_path / "report", models="random")
    assert "fake Kepler-93" in md.read_text()
    assert json.loads((tmp_path / "report" / "real_sky.json").read_text())["n_cases"] == 4
    assert (tmp_path / "report" / "real_sky.png").stat().st_size > 1000


def test_fit_evidence_is_summarised_and_judged(tmp_path):
    """With fit columns (real-sky --fit) the summary gains the ΔBIC table, sb2_class
    precision/recall and the evidence targets; a single star called SB2 fails them."""
    import pandas as pd

    kinds = ["real", "phoenix_single", "phoenix_sb2", "phoenix_sb2", "noise"]
    truth = [dict(star="Kepler-93", shift_kms=0.0, single=True), dict(teff=5000.0),
             dict(rv_separation=30.0), dict(rv_separation=60.0), {}]
    res = pd.DataFrame(dict(
        case=[f"c{i}" for i in range(5)], kind=kinds, truth=[json.dumps(t) for t in truth],
        p_binary=[0.9, 0.1, 0.9, 0.8, 0.05], delta_bic=[-20.0, 30.0, 80.0, 10.0, -25.0],
        delta_bic_free=np.nan, chi2_red=[1.0, 0.8, 0.6, 0.6, 0.4],
        sb2_class=["uncertain", "SB2", "SB2", "single", "single"],
        teff_1=5000.0, teff_2=5600.0, logg_1=4.4, logg_2=4.4, feh_1=0.0, feh_2=0.0,
        vsini_1=5.0, vsini_2=5.0, flag_boundary=0, quality_flags=0, usable=True))
    s = rs.summarise(res)
    ev = s["evidence"]
    assert ev["PHOENIX SB2s"]["delta_bic"]["median"] == 45.0
    assert ev["sb2_class"]["recall_phoenix_sb2"] == 0.5
    assert ev["sb2_class"]["precision_over_phoenix_and_real"] == 0.5
    assert ev["sb2_class"]["false_claims_on_singles"] == 1
    t = s["targets"]
    assert not t["sb2_class: no single star called SB2"]["passed"]
    from sb2dask.evidence import FitConfig

    name = f"single stars (real, PHOENIX): ΔBIC below the threshold {FitConfig().bic_threshold:g}"
    assert t[name]["value"] == 30.0 and not t[name]["passed"]
    assert t["single stars (real, PHOENIX): ΔBIC favours one star (< 0)"]["value"] == 0.5
    md = rs.write_report(res.assign(p_binary_err=np.nan, rv_bulk=np.nan, snr_estimate=100.0,
                                    ood_distance=0.0), s, tmp_path / "r").read_text()
    assert "## Fit evidence" in md and "| PHOENIX SB2s | 2 | 45.0 (10.0 to 80.0)" in md


@pytest.mark.skipif(not GAIA.is_dir(), reason=f"real Gaia spectra not found in {GAIA}")
def test_real_cases_cover_every_star_and_shift():
    cases = rs._real_cases(GAIA)
    stars = {c.truth["star"] for c in cases}
    assert stars == {"Kepler-93", "KOI-001", "HD176650"}
    assert len(cases) == 3 * len(rs.SHIFTS_KMS)
    rest = [c for c in cases if c.truth["shift_kms"] == 0.0]
    moved = [c for c in cases if c.truth["shift_kms"] == 300.0]
    # the rest-frame case is the reader's spectrum itself; +300 km/s blanks the blue edge
    assert all(np.isfinite(c.flux[100:-100]).all() for c in rest)
    assert all(np.isnan(c.flux[:50]).all() for c in moved)


def test_heldout_real_spectra_ship_with_the_package_and_read_at_every_shift():
    """The three held-out DataLink spectra (sb2dask/data/real_sky, gzipped) are read by the
    catalogue reader, moved to every shift and carry their source's classification."""
    from importlib import resources

    assert rs.HELDOUT_DIR == resources.files("sb2dask") / "data" / "real_sky"
    assert (rs.HELDOUT_DIR / "NOTICE.md").is_file()
    cases = rs._real_cases(rs.HELDOUT_DIR, heldout=True)
    ids = {c.truth["star"]: c.truth["source_id"] for c in cases}
    assert ids == {"Kepler-409": 2128215909315876352,
                   "GaiaDR3-3174658066485297152": 3174658066485297152,
                   "GaiaDR3-1535964555128078720": 1535964555128078720}
    assert len(cases) == 3 * len(rs.SHIFTS_KMS) and all(c.truth["heldout"] for c in cases)
    single = {c.truth["star"]: c.truth["single"] for c in cases}
    assert single == {"Kepler-409": True, "GaiaDR3-3174658066485297152": True,
                      "GaiaDR3-1535964555128078720": False}
    rest = [c for c in cases if c.truth["shift_kms"] == 0.0]
    # DR3 mean spectra: 2401 pixels, normalised; a few edge pixels are missing in Kepler-409
    assert all(c.flux.size == 2401 and 0.9 < np.nanmedian(c.flux) < 1.1 for c in rest)
    assert all(np.isfinite(c.flux_error[100:-100]).all() for c in rest)
    # build_cases adds them unless told not to; no other directory is needed
    assert len(rs.build_cases(None, None)) == len(cases) + len(rs._noise_cases(
        np.random.default_rng(0)))
    assert not any(c.kind == "real" for c in rs.build_cases(None, None, heldout_dir=None))


def test_summary_reports_heldout_singles_binaries_and_reference_labels(tmp_path):
    """Held-out single stars get their own target; a known binary is neither a single star nor
    an 'other' star whose SB2 claim would fail; every real single star with reference labels
    is compared at rest, Kepler-409 (held out) as a target."""
    import pandas as pd

    refs = rs.REAL_REFERENCES
    truth = [dict(star="Kepler-93", shift_kms=0.0, heldout=False, **refs["Kepler-93"]),
             dict(star="Kepler-409", shift_kms=0.0, heldout=True, **refs["Kepler-409"]),
             dict(star="Kepler-409", shift_kms=30.0, heldout=True, **refs["Kepler-409"]),
             dict(star="GaiaDR3-1535964555128078720", shift_kms=0.0, heldout=True,
                  **refs["GaiaDR3-1535964555128078720"]), {}]
    res = pd.DataFrame(dict(
        case=[f"c{i}" for i in range(5)], kind=["real"] * 4 + ["noise"],
        truth=[json.dumps(t) for t in truth], p_binary=[0.1, 0.15, 0.3, 0.99, 0.05],
        delta_bic=[-20.0, -15.0, -12.0, 40.0, -30.0], delta_bic_free=np.nan, chi2_red=1.0,
        sb2_class=["single", "single", "single", "SB2", "single"], teff_1=4000.0,
        teff_2=[5500.0, 5300.0, 5300.0, 5000.0, 5000.0], logg_1=4.4, logg_2=4.4, feh_1=0.0,
        feh_2=[-0.1, 0.0, 0.0, 0.0, 0.0], vsini_1=5.0, vsini_2=5.0, flag_boundary=0,
        quality_flags=0, usable=True))
    s = rs.summarise(res)
    t = s["targets"]
    assert t["real singles: p_binary < 0.2 at every shift"]["value"] == 0.3
    held = t["held-out real singles: p_binary < 0.2 at every shift"]
    assert held["value"] == 0.3 and not held["passed"] and "2 spectra" in held["what"]
    k409 = t["Kepler-409 (held out) labels within 300 K / 0.3 / 0.3 dex"]
    assert k409["value"] == {"teff": pytest.approx(-118.71), "logg": pytest.approx(-0.1),
                             "feh": pytest.approx(-0.12)} and k409["passed"]
    assert t["Kepler-93 labels within 300 K / 0.3 / 0.3 dex"]["passed"]
    assert s["reference_labels"]["Kepler-409"]["heldout"]
    assert s["real_binaries_p_binary_min"] == 0.99
    # the binary's SB2 claim is no false claim; the held-out singles have their own row
    assert t["sb2_class: no other real star, noise or flat spectrum called SB2"]["passed"]
    ev = s["evidence"]
    assert ev["real binaries (held out)"]["classes"] == {"SB2": 1}
    assert ev["real single stars (held out)"]["delta_bic"]["n"] == 2
    assert t["sb2_class: no single star called SB2"]["passed"]
    md = rs.write_report(res.assign(p_binary_err=np.nan, rv_bulk=np.nan, snr_estimate=100.0,
                                    ood_distance=0.0), s, tmp_path).read_text()
    assert "Kepler-409 (single, held out)" in md and "| Kepler-409 (held out) | 0.15 |" in md


def test_twins_put_the_training_library_in_place_of_each_phoenix_file(tmp_path):
    """The controls: the embedded grid at each file's node, on the file's continuum level, through
    the same rendering and pair weights; a node the grid lacks is left out and named; the
    summary sets each PHOENIX single beside its twin."""
    import pandas as pd

    from phoenix_fixtures import write_loglam_file

    d = tmp_path / "phoenix"
    d.mkdir()
    for teff, logg in ((5000.0, 4.5), (6000.0, 4.5), (6000.0, 5.5)):  # 6000/5.5: not computed
        write_loglam_file(d, teff, logg, 0.0)
    stars = rs.read_phoenix_stars(d)
    cases, missing = rs.twin_cases(stars, np.random.default_rng(0))
    assert missing == [stars[2][0]]
    kinds = [c.kind for c in cases]
    assert kinds == ["twin_single", "twin_single", "twin_sb2", "twin_sb2"]
    assert cases[0].case == "twin 5000/4.5/+0.0" and cases[2].case == "twin SB2 5000+6000 dv 30"
    # the twin is the grid's spectrum: Ca II 8542 at its air wavelength on a unit continuum,
    # as deep as the grid's own line at the files' resolution (the fixture's line differs)
    from sb2dask.library import load_library

    lib = load_library("embedded")
    name, wave, flux, h = stars[0]
    tw, tf = rs.embedded_twin(lib, h, wave, flux)
    band = (wave > rs.CONTINUUM_BAND[0]) & (wave < rs.CONTINUUM_BAND[1])
    assert np.median(tf[(tw > 8560) & (tw < 8590)]) == pytest.approx(np.median(flux[band]),
                                                                       rel=0.02)
    f, _ = rs.render_phoenix([(tw, tf, 1.0, 0.0)], np.random.default_rng(0), snr=1e6)
    air = rs._gaia_air()
    core = (air > 8535) & (air < 8550)
    assert abs(air[core][np.argmin(f[core])] - 8542.09) < 0.15
    assert 0.98 < np.percentile(f, 95) < 1.02
    fixture, _ = rs.render_phoenix([(wave, flux, 1.0, 0.0)], np.random.default_rng(0), snr=1e6)
    assert np.max(np.abs(f - fixture)) > 0.05  # another library, another spectrum
    # pairs: the same light fractions as the PHOENIX pairs of the same files (same weights)
    phx = rs.phoenix_pair_cases(stars[:2], np.random.default_rng(0))
    for a, b in zip(phx, cases[2:]):
        assert a.truth["rv_separation"] == b.truth["rv_separation"]
        assert b.truth["light_fraction_2"] == pytest.approx(a.truth["light_fraction_2"], abs=0.02)
    # at Gaia's resolving power too (the files cannot be sharpened, the grid can): sharper lines
    sharp, _ = rs.twin_cases(stars, np.random.default_rng(0), kind="twin_rvs")
    assert [c.kind for c in sharp][:2] == ["twin_rvs_single"] * 2
    assert sharp[0].case == "twin R11500 5000/4.5/+0.0"
    assert sharp[0].truth["resolution"] == rs.GAIA_RESOLUTION > cases[0].truth["resolution"]
    tw2, tf2 = rs.embedded_twin(lib, h, wave, flux, rs.GAIA_RESOLUTION)
    f_sharp, _ = rs.render_phoenix([(tw2, tf2, 1.0, 0.0)], np.random.default_rng(0), snr=1e6)
    assert f_sharp[core].min() < f[core].min() - 0.005  # a deeper, narrower Ca II core
    # build_cases appends them last: every other case is drawn as without them
    without = rs.build_cases(None, d, heldout_dir=None, twins=False)
    with_ = rs.build_cases(None, d, heldout_dir=None)
    assert len(with_) == len(without) + 8
    for a, b in zip(without, with_):
        assert a.case == b.case and np.array_equal(a.flux, b.flux)
    # summary: controls beside the PHOENIX cases, no target of their own
    res = pd.DataFrame(dict(
        case=[c.case for c in with_], kind=[c.kind for c in with_],
        truth=[json.dumps(c.truth) for c in with_],
        p_binary=[0.6 if c.kind == "phoenix_single" else 0.1 if c.kind.endswith("_single")
                  else 0.3 if c.kind.endswith("sb2") and c.case.endswith("dv 30") else 0.9
                  for c in with_],
        teff_2=5500.0, flag_boundary=0, quality_flags=0, usable=True))
    s = rs.summarise(res)
    assert s["twins"]["phoenix"]["singles_max"] == 0.6 and s["twins"]["twin"]["singles_max"] == 0.1
    assert s["twins"]["twin"]["pairs_found_per_dv"] == {"30 km/s": "0 of 1", "60 km/s": "1 of 1"}
    assert s["twins"]["singles"]["5000/4.5/+0.0"] == {"phoenix": 0.6, "twin": 0.1,
                                                      "twin_rvs": 0.1}
    assert s["twins"]["singles"]["6000/5.5/+0.0"] == {"phoenix": 0.6}
    assert s["twins"]["no_twin"] == ["6000/5.5/+0.0"]
    assert not any("twin" in t for t in s["targets"])
    assert s["twins"]["twin"]["auc_singles_vs_pairs"] == pytest.approx(1.0)
    # the same pairs found: none only with one library
    assert s["twins"]["twin"]["found_only_phoenix"] == s["twins"]["twin"]["found_only_twin"] == []
    res.loc[res["case"] == "twin SB2 5000+6000 dv 60", "p_binary"] = 0.2
    s = rs.summarise(res)
    assert s["twins"]["twin"]["found_only_phoenix"] == ["5000+6000 dv 60"]
    assert s["twins"]["twin_rvs"]["found_only_phoenix"] == []
    md = rs.write_report(res.assign(p_binary_err=np.nan, rv_bulk=np.nan, snr_estimate=100.0,
                                    ood_distance=0.0, **{f"{p}_{c}": 1.0 for p in PARAMETERS
                                                         for c in (1, 2)}),
                         s, tmp_path / "r").read_text()
    assert "| pairs found with PHOENIX only / as twins only | - | 5000+6000 dv 60 / none |" in md
    assert "No twin (a node the training library lacks): 6000/5.5/+0.0." in md
