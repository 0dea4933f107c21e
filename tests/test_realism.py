"""Domain-randomisation effects: each pure function against what it promises."""

from __future__ import annotations

import numpy as np
import pytest

from sb2dask.simulate.realism import (
    CA_II_AIR,
    NUISANCE_FIELDS,
    Realism,
    continuum_factor,
    correlated_unit_noise,
    draw_realism,
    gap_mask,
    noise_sigma,
    scale_line_depths,
)

WAVE = np.linspace(8457.7, 8697.6, 903)


def test_paper_recipe_draws_nothing():
    r = Realism.paper()
    d = draw_realism(np.random.default_rng(0), r, WAVE.size)
    assert set(d) == set(NUISANCE_FIELDS)
    assert d["gamma"] == 0.0 and d["resolution"] == 11_500.0 and d["gap_start"] == -1
    assert d["weak_line_scale"] == d["ca_ii_scale"] == 1.0 and d["noise_exponent"] == 0.5
    assert r.is_paper and not Realism().is_paper
    assert Realism.from_dict(r.to_dict()) == r


def test_draws_stay_inside_their_ranges_and_depend_only_on_the_generator():
    r = Realism()
    draws = [draw_realism(np.random.default_rng(i), r, WAVE.size) for i in range(400)]
    g = np.array([d["gamma"] for d in draws])
    assert g.min() >= -300 and g.max() <= 300 and g.std() > 100
    assert all(10_500 <= d["resolution"] <= 13_000 for d in draws)
    active = np.mean([d["ca_ii_scale"] < 0.85 for d in draws])
    assert 0.04 < active < 0.18  # active_fraction 0.1
    gaps = [d for d in draws if d["gap_start"] >= 0]
    assert 0.01 < len(gaps) / 400 < 0.1 and all(d["gap_start"] + d["gap_width"] <= WAVE.size
                                                 for d in gaps)
    assert draw_realism(np.random.default_rng(7), r, 903) == draw_realism(
        np.random.default_rng(7), r, 903)


def test_continuum_factor_is_smooth_and_has_the_requested_terms():
    f = continuum_factor(WAVE, [0.01, 0.0], [0.0, 0.02], [0.0, 0.0])
    assert np.allclose(f[0], 1.01)
    assert f[1, 0] == pytest.approx(0.98) and f[1, -1] == pytest.approx(1.02)


def test_line_depth_scaling_treats_ca_ii_cores_apart_from_weak_lines():
    flux = np.full((1, WAVE.size), 0.8)
    out = scale_line_depths(flux, WAVE, weak_scale=0.9, ca_ii_scale=0.5)
    core = np.argmin(np.abs(WAVE - CA_II_AIR[1]))
    far = np.argmin(np.abs(WAVE - 8600.0))
    assert out[0, far] == pytest.approx(1 - 0.2 * 0.9)
    assert out[0, core] == pytest.approx(1 - 0.2 * 0.5, abs=0.01)
    moved = scale_line_depths(flux, WAVE, 0.9, 0.5, rv=np.array([100.0]))
    shifted_core = np.argmin(np.abs(WAVE - CA_II_AIR[1] * (1 + 100 / 299792.458)))
    assert moved[0, shifted_core] == pytest.approx(1 - 0.2 * 0.5, abs=0.01)
    assert moved[0, core] > 0.95 * out[0, far]  # the rest-frame window is no longer scaled


@pytest.mark.parametrize("length", [0.0, 0.5, 1.2])
def test_correlated_noise_keeps_unit_variance_and_correlates_neighbours(length):
    white = np.random.default_rng(1).standard_normal((1, 50_000))
    x = correlated_unit_noise(white, length)[0]
    assert x.std() == pytest.approx(1.0, rel=0.03)
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert (abs(lag1) < 0.03) if length == 0 else (lag1 > 0.15)


def test_noise_sigma_and_gaps():
    flux = np.array([[1.0, 0.25]])
    assert np.allclose(noise_sigma(flux, 50.0, 0.5), [[0.02, 0.01]])
    assert np.allclose(noise_sigma(flux, 50.0, 0.0), [[0.02, 0.02]])
    m = gap_mask(10, [2, -1], [3, 5])
    assert m[0].tolist() == [False, False, True, True, True] + [False] * 5 and not m[1].any()


def _render(cfg, n=6, noise=False):
    from sb2dask.simulate.simulator import simulator_for
    from sb2dask.simulate.systems import draw_systems

    lib, sampler, renderer = simulator_for(cfg)
    labels, interp, white = draw_systems(lib, cfg, np.arange(n), sampler=sampler)
    return renderer.render(labels, interp, white if noise else None), labels


def _neutral(**changes) -> Realism:
    from dataclasses import replace

    return replace(Realism.paper(), **changes)


def test_the_randomised_path_with_neutral_nuisances_reproduces_the_paper_recipe():
    from sb2dask.simulate.config import SimulationConfig

    paper, lab_p = _render(SimulationConfig.paper(seed=5, binary_fraction=0.5), noise=True)
    # a degenerate (fixed) systemic velocity range of 0 takes the randomised code path
    same, lab_s = _render(SimulationConfig(seed=5, binary_fraction=0.5, realism=_neutral(
        continuum_tilt=1e-300)), noise=True)
    assert not _neutral(continuum_tilt=1e-300).is_paper
    np.testing.assert_allclose(same, paper, atol=2e-6)
    assert np.array_equal(lab_p["teff"], lab_s["teff"], equal_nan=True)


def test_systemic_velocity_moves_every_component_and_the_lines():
    from sb2dask.constants import C_KMS
    from sb2dask.simulate.config import SimulationConfig

    rest, lab0 = _render(SimulationConfig.paper(seed=8, binary_fraction=0.0), n=3)
    moved, lab1 = _render(SimulationConfig(seed=8, binary_fraction=0.0, realism=_neutral(
        systemic_velocity=(120.0, 120.0))), n=3)
    assert np.allclose(lab1["gamma"], 120.0) and np.allclose(lab1["rv"][:, 0], 120.0)
    wave = SimulationConfig().wave
    core = (wave > 8530) & (wave < 8560)
    w_rest = wave[core][np.argmin(rest[:, core], axis=1)]
    w_moved = wave[core][np.argmin(moved[:, core], axis=1)]
    assert np.allclose(w_moved - w_rest, 8542.1 * 120.0 / C_KMS, atol=0.3)


def test_realistic_recipe_records_its_nuisances_and_leaves_gaps_missing():
    from sb2dask.simulate.config import SimulationConfig

    cfg = SimulationConfig.realistic(seed=3, binary_fraction=0.5)
    flux, lab = _render(cfg, n=60, noise=True)
    assert np.nanstd(lab["gamma"]) > 50 and (lab["resolution"] >= 10_500).all()
    missing = gap_mask(flux.shape[1], lab["gap_start"], lab["gap_width"])
    assert np.array_equal(np.isnan(flux), missing)
    old = SimulationConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "realism"})
    assert old.realism.is_paper  # stores written before realism existed used the paper recipe
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    assert SimulationConfig.from_yaml(cfg.to_yaml()) == cfg


def test_line_depth_field_is_off_by_default_and_leaves_the_other_draws_alone():
    off = draw_realism(np.random.default_rng(11), Realism(), WAVE.size)
    assert off["line_depth_scatter"] == 0.0 and off["line_field_seed"] == -1
    on = draw_realism(np.random.default_rng(11), Realism(line_depth_scatter=(0.05, 0.2)),
                      WAVE.size)
    assert 0.05 <= on["line_depth_scatter"] <= 0.2 and on["line_field_seed"] >= 0
    # drawn last: every other nuisance of the spectrum is the one it had without the field
    assert {k: v for k, v in on.items() if not k.startswith("line_")} == {
        k: v for k, v in off.items() if not k.startswith("line_")}
    with pytest.raises(ValueError, match="line_depth_scatter"):
        Realism(line_depth_scatter=(0.2, 0.1))


def test_line_depth_field_has_its_scatter_and_length_and_depends_on_the_seed_alone():
    from sb2dask.simulate.realism import line_depth_field

    f = line_depth_field(20_000, 1.0, [0.0, 0.1, 0.1, 0.1], [5, 5, 5, 6], length=6.0)
    assert (f[0] == 1.0).all()  # scatter 0: exactly no change
    assert np.array_equal(f[1], f[2]) and not np.allclose(f[1], f[3])
    d = f[1] - 1.0
    assert 0.09 < d.std() < 0.11 and abs(d.mean()) < 0.01
    lag = lambda k: np.corrcoef(d[:-k], d[k:])[0, 1]  # noqa: E731
    # a Gaussian kernel of σ = 6 pixels: correlation exp(-k²/4σ²) = 0.97 at 1, 0.37 at 12
    assert lag(1) > 0.95 and 0.25 < lag(12) < 0.5 and abs(lag(60)) < 0.1
    assert line_depth_field(100, 1.0, [3.0], [1], length=2.0).min() >= 0.05  # never emission


def test_line_depth_field_changes_the_lines_and_not_the_continuum():
    from sb2dask.simulate.config import SimulationConfig

    base = SimulationConfig(seed=4, binary_fraction=0.5, realism=_neutral(continuum_tilt=1e-300))
    plain, lab0 = _render(base, n=8)
    scattered, lab1 = _render(base.replace(realism=_neutral(
        continuum_tilt=1e-300, line_depth_scatter=(0.2, 0.2))), n=8)
    assert np.array_equal(lab0["teff"], lab1["teff"], equal_nan=True)
    depth0, depth1 = 1.0 - plain, 1.0 - scattered
    lines = depth0 > 0.1
    ratio = depth1[lines] / depth0[lines]
    assert 0.05 < ratio.std() < 0.25  # each line deeper or shallower, not all alike
    continuum = depth0 < 0.002
    assert np.abs(depth1[continuum]).max() < 0.01


def test_the_field_never_makes_negative_flux_and_its_length_alone_changes_no_recipe():
    from dataclasses import replace

    from sb2dask.simulate.config import SimulationConfig

    assert replace(Realism.paper(), line_depth_length=3.0).is_paper  # the field is off
    assert not replace(Realism.paper(), line_depth_scatter=(0.1, 0.1)).is_paper
    # deep lines (cool, metal-rich stars) with a strong field: the factors reach 2 and more
    cfg = SimulationConfig(seed=6, binary_fraction=0.0, teff_range=(3600.0, 4000.0),
                           vsini_range=(0.0, 1.0),
                           feh_range=(0.0, 0.5), realism=_neutral(
                               continuum_tilt=1e-300, resolution=(1e6, 1e6),
                               line_depth_scatter=(0.5, 0.5)))
    flux, _ = _render(cfg, n=6)
    assert np.nanmin(flux) > 0.0
