"""Physics of the SB2 simulator: shifts, blends, light ratios, orbits, broadening, noise, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from sb2dask.constants import C_KMS
from sb2dask.simulate.broadening import gaussian_lsf_ft, rotation_kernel_ft, rotational_broadening
from sb2dask.simulate.config import SimulationConfig
from sb2dask.simulate.orbits import K_CONSTANT
from sb2dask.simulate.simulator import simulator_for
from sb2dask.simulate.spectra import SpectrumRenderer
from sb2dask.simulate.systems import draw_systems


@pytest.fixture(scope="module")
def cfg():
    return SimulationConfig.paper(seed=123)


@pytest.fixture(scope="module")
def lib(cfg):
    return simulator_for(cfg)[0]


@pytest.fixture(scope="module")
def sampler(cfg):
    return simulator_for(cfg)[1]


@pytest.fixture(scope="module")
def renderer(cfg):
    return simulator_for(cfg)[2]


@pytest.fixture(scope="module")
def systems(lib, cfg, sampler):
    return draw_systems(lib, cfg, np.arange(400), sampler=sampler)


def _ccf_shift(wave, ref, obs, dv=0.25):
    """RV [km/s] of ``obs`` relative to ``ref`` by cross-correlation on a fine ln λ grid."""
    x = np.arange(C_KMS * np.log(wave[0]) + 300, C_KMS * np.log(wave[-1]) - 300, dv)
    w = np.exp(x / C_KMS)
    a = 1 - np.interp(w, wave, ref)
    b = 1 - np.interp(w, wave, obs)
    m = 400  # lags up to ±100 km/s
    lags = np.arange(-m, m + 1)
    cc = np.array([np.dot(a[m:-m], b[m + k:len(b) - m + k]) for k in lags])
    k = int(np.argmax(cc))
    y0, y1, y2 = cc[k - 1], cc[k], cc[k + 1]
    return (lags[k] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * dv


def test_known_rv_is_recovered_by_cross_correlation(lib, cfg, sampler, renderer):
    labels, interp, _ = draw_systems(lib, cfg.replace(binary_fraction=0.0), np.arange(3),
                                     sampler=sampler)
    labels["vsini"][:] = np.where(np.isnan(labels["vsini"]), np.nan, 5.0)
    rest = renderer.render(labels, interp, None)
    pixel_kms = C_KMS * np.diff(cfg.wave).mean() / cfg.wave.mean()
    for rv in (-61.3, 12.7, 44.4):
        shifted = dict(labels, rv=np.where(np.isnan(labels["rv"]), np.nan, rv).astype("f4"))
        obs = renderer.render(shifted, interp, None)
        for i in range(3):
            got = _ccf_shift(cfg.wave, rest[i], obs[i])
            assert abs(got - rv) < 0.1 * pixel_kms, (i, rv, got)


def test_blend_is_the_light_weighted_sum_of_components(systems, renderer):
    labels, interp, _ = systems
    idx = np.flatnonzero(labels["is_binary"])[:20]
    sub = {k: v[idx] for k, v in labels.items()}
    sint = {k: v[idx] for k, v in interp.items()}
    comps = []
    for c in range(2):
        frac = np.zeros_like(sub["light_fraction"])
        frac[:, c] = 1.0
        comps.append(renderer.render(dict(sub, light_fraction=frac), sint, None))
    blend = renderer.render(sub, sint, None)
    f = sub["light_fraction"].astype(np.float64)
    expected = f[:, :1] * comps[0] + f[:, 1:] * comps[1]
    np.testing.assert_allclose(blend, expected, atol=2e-6)
    # and the components really differ, so the test is not trivial
    assert np.abs(comps[0] - comps[1]).max() > 0.05


def test_light_ratio_follows_radii_and_continuum_fluxes(systems, sampler, lib):
    labels, interp, _ = systems
    b = labels["is_binary"]
    lum = np.empty((b.sum(), 2))
    for c in range(2):
        lo, hi = interp["lo"][b, c], interp["hi"][b, c]
        w = interp["w"][b, c]
        cont = ((1 - w) * sampler.props[lo[:, 0], lo[:, 1], lo[:, 2], 2]
                + w * sampler.props[hi[:, 0], hi[:, 1], hi[:, 2], 2])
        lum[:, c] = labels["radius"][b, c].astype(np.float64) ** 2 * cont
    np.testing.assert_allclose(labels["flux_ratio"][b], lum[:, 0] / lum[:, 1], rtol=1e-4)
    np.testing.assert_allclose(labels["light_fraction"][b].sum(axis=1), 1.0, rtol=1e-6)
    # a hotter star of the same radius is brighter at 8600 Å
    assert lib.continuum(6000, 4.5, 0.0) > lib.continuum(5000, 4.5, 0.0)


def test_orbits_obey_kepler_and_the_configured_k_range(systems, cfg):
    lab, _, _ = systems
    b = lab["is_binary"]
    k_sum = lab["k_sum"][b]
    assert k_sum.min() >= cfg.k_sum_range[0] and k_sum.max() <= cfg.k_sum_range[1]
    np.testing.assert_allclose(lab["k"][b].sum(axis=1), k_sum, rtol=1e-5)
    # K1/K2 = M2/M1: the lighter star moves faster
    m, k = lab["mass"][b].astype(float), lab["k"][b].astype(float)
    np.testing.assert_allclose(k[:, 0] * m[:, 0], k[:, 1] * m[:, 1], rtol=1e-4)
    m_tot = m.sum(axis=1)
    sin_i = np.sin(np.radians(lab["inclination"][b].astype(float)))
    np.testing.assert_allclose(k_sum, K_CONSTANT * np.cbrt(m_tot / lab["period"][b]) * sin_i,
                               rtol=1e-4)
    from astropy import constants, units

    exact = (2 * np.pi * constants.GM_sun / units.day) ** (1 / 3)
    assert K_CONSTANT == pytest.approx(exact.to_value(units.km / units.s), rel=1e-4)
    assert np.all(lab["rv_separation"][b] <= k_sum + 1e-4)
    # RVs of the two components are on opposite sides of gamma
    assert np.all(lab["rv"][b, 0] * lab["rv"][b, 1] <= 1e-6)


def test_phase_refers_to_the_recorded_component_1(systems, cfg):
    """RV1 = γ + K1·cos(2π·phase) and RV2 = γ − K2·cos(2π·phase) for the *stored* (cooler-first)
    components, whichever star was drawn first (regression: the phase referred to the star drawn
    first, so for about half the systems it described the unrecorded order)."""
    lab, _, _ = systems
    b = lab["is_binary"]
    c = np.cos(2.0 * np.pi * lab["phase"][b].astype(np.float64))
    k, rv = lab["k"][b].astype(np.float64), lab["rv"][b].astype(np.float64)
    assert b.sum() > 300 and np.all((lab["phase"][b] >= 0) & (lab["phase"][b] < 1))
    np.testing.assert_allclose(rv[:, 0], cfg.gamma + k[:, 0] * c, rtol=0, atol=1e-3)
    np.testing.assert_allclose(rv[:, 1], cfg.gamma - k[:, 1] * c, rtol=0, atol=1e-3)


def test_labels_are_ordered_inside_coverage_and_interpolated_on_one_axis(systems, lib, sampler):
    lab, interp, _ = systems
    b = lab["is_binary"]
    assert np.all(lab["teff"][b, 0] <= lab["teff"][b, 1])
    r = lib.ranges()
    assert lab["teff"][b].min() >= r.teff[0] and lab["teff"][b].max() <= r.teff[1]
    assert np.all(lab["logg"][b] <= r.logg_max(lab["teff"][b]) + 1e-6)
    nodes = [np.asarray(lib.axes.teff), np.asarray(lib.axes.logg), np.asarray(lib.axes.feh)]
    for name_idx, name in enumerate(("teff", "logg", "feh")):
        on_node = np.isin(np.round(lab[name][b], 4), np.round(nodes[name_idx], 4))
        # off-node only along the interpolated axis
        assert np.all(on_node | (lab["interp_axis"][b] == name_idx))
    # all three axes do get interpolated
    assert set(np.unique(lab["interp_axis"][b])) == {0, 1, 2}
    for c in range(2):
        assert np.all(lib.available[tuple(interp["lo"][b, c].T)])
        assert np.all(lib.available[tuple(interp["hi"][b, c].T)])


def test_spectra_depend_only_on_seed_and_index(lib, cfg, sampler, renderer):
    idx = np.array([17, 3, 250])
    lab_a, int_a, noise_a = draw_systems(lib, cfg, idx, sampler=sampler)
    lab_b, int_b, noise_b = draw_systems(lib, cfg, np.arange(251), sampler=sampler)
    for k in lab_a:
        np.testing.assert_array_equal(lab_a[k], lab_b[k][idx])
    np.testing.assert_array_equal(noise_a, noise_b[idx])
    fa = renderer.render(lab_a, int_a, noise_a)
    fb = renderer.render({k: v[idx] for k, v in lab_b.items()},
                         {k: v[idx] for k, v in int_b.items()}, noise_b[idx])
    assert fa.tobytes() == fb.tobytes()
    lab_c, _, _ = draw_systems(lib, cfg.replace(seed=124), idx, sampler=sampler)
    assert not np.array_equal(lab_a["teff"], lab_c["teff"])


def test_noise_has_the_configured_snr(lib, cfg, sampler, renderer):
    labels, interp, noise = draw_systems(lib, cfg.replace(snr_range=(50.0, 50.0)), np.arange(50),
                                         sampler=sampler)
    clean = renderer.render(labels, interp, None)
    noisy = renderer.render(labels, interp, noise)
    z = (noisy - clean) * 50.0 / np.sqrt(clean)
    assert abs(z.std() - 1.0) < 0.02 and abs(z.mean()) < 0.02


def test_rotation_kernel_transform_is_normalised_and_tends_to_identity():
    f = np.linspace(0, 0.5, 200)
    assert rotation_kernel_ft(0.0, 50.0) == pytest.approx(1.0)
    np.testing.assert_allclose(rotation_kernel_ft(f, 0.0), 1.0)
    np.testing.assert_allclose(rotation_kernel_ft(f, 1e-4), 1.0, atol=1e-6)
    assert np.abs(rotation_kernel_ft(f, 80.0)).max() <= 1.0 + 1e-12
    assert gaussian_lsf_ft(0.0, 11500) == pytest.approx(1.0)


def _fine_reference(lib):
    from scipy.interpolate import CubicSpline

    flux = lib.flux(5000.0, 4.5, 0.0)
    return CubicSpline(lib.wave, flux)


@pytest.mark.parametrize("vsini", [10.0, 25.0, 60.0, 100.0])
def test_fast_rotation_matches_pyastronomy_rotbroad(lib, vsini):
    """Our Fourier-space kernel against PyAstronomy's direct convolution on 8490-8560 Å (Ca II
    8498 and 8542 and weaker lines). rotBroad costs O(pixels²) on its fine grid, so a 70 Å
    window instead of the whole band: ~1.5 s instead of ~11 s per v sin i. Over the whole band
    the largest difference is 9e-4 (at 10 km/s); ε off by 0.1 or v sin i off by 3 % give
    2.5e-3 or more here."""
    from PyAstronomy import pyasl

    lo, hi = 8490.0, 8560.0
    spline = _fine_reference(lib)
    w_fine = np.arange(lo, hi, 0.01)  # rotBroad needs an equidistant, fine λ grid
    ref = pyasl.rotBroad(w_fine, spline(w_fine), 0.6, vsini)
    dv = 0.5
    x = np.arange(C_KMS * np.log(lo), C_KMS * np.log(hi), dv)
    w_log = np.exp(x / C_KMS)
    ours = rotational_broadening(spline(w_log), dv, vsini, 0.6)
    interior = (w_fine > lo + 7.0) & (w_fine < hi - 7.0)  # clear of both methods' edges
    diff = np.abs(np.interp(w_fine, w_log, ours) - ref)[interior]
    assert diff.max() < 1e-3


def test_slow_rotation_is_sane(lib):
    """0-10 km/s: identity at 0, equivalent width conserved, lines never deepened, and the change
    grows monotonically with v sin i (no ringing or blow-up of the transform near 0)."""
    spline = _fine_reference(lib)
    dv = 0.5
    x = np.arange(C_KMS * np.log(8440.0), C_KMS * np.log(8740.0), dv)
    flux = spline(np.exp(x / C_KMS))
    inner = slice(400, -400)
    changes = []
    for vsini in (0.0, 0.5, 1.0, 2.0, 5.0, 10.0):
        out = rotational_broadening(flux, dv, vsini, 0.6)
        assert np.sum(1 - out[inner]) == pytest.approx(np.sum(1 - flux[inner]), rel=1e-3)
        assert out[inner].min() >= flux[inner].min() - 1e-9
        changes.append(np.abs(out - flux)[inner].max())
    assert changes[0] < 1e-12
    assert np.all(np.diff(changes) > 0)


def test_instrument_resolution_sets_the_line_width(lib, cfg):
    """A narrow line observed at R = 11 500 has FWHM ≈ λ/R."""
    r = SpectrumRenderer(lib, cfg.replace(output_grid="gaia_dr3"))
    depth = np.zeros(r.n_work)
    centre = r.n_work // 2
    depth[centre] = 1.0
    ft = np.fft.rfft(depth)[: r.n_freq] * r.lsf
    profile = np.fft.irfft(ft, n=r.n_work)
    half = profile > profile.max() / 2
    fwhm_kms = half.sum() * r.dv
    assert fwhm_kms == pytest.approx(C_KMS / 11500, rel=0.05)


def test_config_round_trips_and_validates(tmp_path):
    cfg = SimulationConfig(snr_range=(10, 50), binary_fraction=0.5, output_grid="gaia_dr3")
    path = tmp_path / "sim.yaml"
    cfg.to_yaml(path)
    assert SimulationConfig.from_yaml(path) == cfg
    from sb2dask.simulate.config import output_wave

    vac = output_wave("gaia_dr3", "vacuum")
    assert len(vac) == 2401 and vac[0] == 8460.0 and vac[-1] == 8700.0
    assert cfg.wave[0] == pytest.approx(8460.0 - 2.32, abs=0.01)  # simulated at the air λ
    assert len(SimulationConfig().wave) == 903
    with pytest.raises(ValueError, match="teff_range"):
        SimulationConfig(teff_range=(6000, 5000))
    with pytest.raises(ValueError, match="unknown SimulationConfig settings"):
        SimulationConfig.from_dict({"tef_range": [1, 2]})
    with pytest.raises(ValueError, match="output grid"):
        SimulationConfig(output_grid="sdss")


def test_default_output_grid_is_the_shipped_models_grid():
    """Regression: the default (the paper's rvs903) was not what the shipped models read, so a
    default `sb2dask simulate` store gave `usable: 0` in `sb2dask infer`."""
    import json

    from sb2dask.infer.predict import MODEL_PRESETS

    manifests = [p for d in MODEL_PRESETS.values()  # not calibration.json
                 for p in sorted(d.glob("*-*.json"))]
    assert len(manifests) >= 6
    for path in manifests:
        wave = np.asarray(json.loads(path.read_text())["wave"])
        np.testing.assert_array_equal(SimulationConfig().wave, wave, err_msg=str(path))


def test_single_stars_have_one_component(lib, cfg, sampler, renderer):
    lab, interp, noise = draw_systems(lib, cfg.replace(binary_fraction=0.0), np.arange(10),
                                      sampler=sampler)
    assert not lab["is_binary"].any()
    assert np.isnan(lab["teff"][:, 1]).all() and np.isfinite(lab["teff"][:, 0]).all()
    np.testing.assert_allclose(lab["light_fraction"][:, 0], 1.0)
    flux = renderer.render(lab, interp, noise)
    assert np.isfinite(flux).all() and flux.shape == (10, 903)


def test_figure_1_curves_pass_through_the_recorded_epoch(cfg, tmp_path):
    """Regression: Fig. 1 gave +K·cos(2π·phase) to the more massive star, mirroring the curves
    of most systems against their recorded RVs."""
    from sb2dask.evaluate.simulation_figures import _draw_rv_curves, figure_1, rv_curves

    for index in (None, 3, 11, 40):
        d = rv_curves(cfg, index)
        lab = d["labels"]
        # each plotted series is a sinusoid of the recorded period; fitted without any phase
        # convention and evaluated at t = 0 it must give the recorded RV of that component
        w = 2.0 * np.pi / float(lab["period"])
        design = np.stack([np.ones_like(d["t"]), np.cos(w * d["t"]), np.sin(w * d["t"])], 1)
        for c in range(2):
            coef = np.linalg.lstsq(design, d["rv"][:, c], rcond=None)[0]
            assert coef[0] + coef[1] == pytest.approx(float(lab["rv"][c]), abs=1e-3)
        fig = _draw_rv_curves(d)
        for c in range(2):
            line = fig.axes[0].lines[c]
            np.testing.assert_array_equal(line.get_ydata(), d["rv"][:, c])
            assert f"component {c + 1} ({lab['teff'][c]:.0f} K" in line.get_label()
    path = figure_1(cfg, tmp_path / "fig1.png", index=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Last: it leaves a different configuration in simulator_for's one-entry cache.
def test_simulator_is_reused_across_seeds_and_rebuilt_for_a_new_renderer_setting(cfg, renderer):
    assert simulator_for(cfg.replace(seed=5, snr_range=(10.0, 20.0)))[2] is renderer
    # regression: the cache ignored limb darkening and reused a renderer built with ε = 0.6
    _, _, other = simulator_for(cfg.replace(limb_darkening=0.3))
    assert other is not renderer and other.config.limb_darkening == 0.3
