"""Gaia DR4 epoch spectra in the simulator: the 961-pixel grid, CCD spectra combined as DPAC
combines them (correlated noise, quoted errors), the S/N calibration, the DR4 recipe's draws and
normalisation paths, and what inference makes of a 961-pixel barycentric spectrum."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from sb2dask.gaia import (
    DR4_EPOCH_N_PIX,
    DR4_EPOCH_WAVE,
    DR4_EPOCH_WAVE_VAC_NM,
    median_normalise,
)
from sb2dask.simulate import transits
from sb2dask.simulate.config import SimulationConfig, output_wave

RATIO, N_OUT = 0.98, DR4_EPOCH_N_PIX  # DR4: 0.0245 nm CCD pixels on the 0.025 nm grid


def _render(cfg, n, start=0):
    """(noisy, noise-free, labels) of spectra ``start..start+n-1``: the same draws rendered
    with and without their noise."""
    from sb2dask.simulate.simulator import simulator_for
    from sb2dask.simulate.systems import draw_systems

    lib, sampler, renderer = simulator_for(cfg)
    labels, interp, white = draw_systems(lib, cfg, np.arange(start, start + n), sampler=sampler)
    return (renderer.render(labels, interp, white), renderer.render(labels, interp, None),
            labels)


# ---------------------------------------------------------------------------------------------
# The grid


def test_dr4_grid_is_961_pixels_of_0_025_nm_in_vacuum_converted_to_air():
    assert DR4_EPOCH_WAVE_VAC_NM.shape == (961,) and DR4_EPOCH_WAVE_VAC_NM[0] == 846.0
    assert DR4_EPOCH_WAVE_VAC_NM[-1] == 870.0 and DR4_EPOCH_WAVE_VAC_NM[40] == 847.0
    np.testing.assert_allclose(np.diff(DR4_EPOCH_WAVE_VAC_NM), 0.025, atol=1e-9)
    # the simulator's layout is the same pixels, simulated at their air wavelengths
    np.testing.assert_allclose(output_wave("gaia_dr4_961", "vacuum"), DR4_EPOCH_WAVE_VAC_NM * 10,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(output_wave("gaia_dr4_961"), DR4_EPOCH_WAVE, rtol=0, atol=1e-9)
    assert 8457.6 < DR4_EPOCH_WAVE[0] < 8457.7  # 8460 Å in vacuum is 2.32 Å redder than in air
    cfg = SimulationConfig.dr4()
    assert cfg.output_grid == "gaia_dr4_961" and len(cfg.wave) == 961
    assert cfg.ccd_ratio == pytest.approx(RATIO)
    with pytest.raises(ValueError, match="read-only"):
        DR4_EPOCH_WAVE[0] = 0.0  # one shared object, never changed in place


# ---------------------------------------------------------------------------------------------
# CCD spectra combined onto the grid


def _combined_noise(n_ccd, ratio=RATIO, n=1500, snr=40.0, seed=0):
    rng = np.random.default_rng(seed)
    phase = rng.random((n, 3))
    n_ccd = np.full(n, n_ccd)
    ns = transits.n_samples(ratio, N_OUT)
    c = transits.continuum_sample_sigma(phase, n_ccd, ratio, N_OUT, snr)
    sigma = np.broadcast_to(c[:, None, None], (n, 3, ns))
    flux, err = transits.combine_transit(np.ones((n, 3, ns)), sigma,
                                         rng.standard_normal((n, 3, ns)), phase, n_ccd, ratio,
                                         N_OUT)
    return flux - 1.0, err, phase, n_ccd


@pytest.mark.parametrize("n_ccd", [1, 3])
def test_interpolated_noise_is_correlated_and_the_quoted_errors_say_so_only_on_average(n_ccd):
    noise, err, phase, nc = _combined_noise(n_ccd)
    quoted = float(np.mean(err))
    true = float(noise.std())
    # S/N calibration: the true per-pixel scatter is the requested 1/40
    assert true == pytest.approx(1 / 40.0, rel=0.01)
    # per pixel the quoted error exceeds the true scatter by sqrt(N / A) (≈ 1.22 for random
    # phases: interpolation averages neighbouring samples, the squared errors are not reduced)
    expected = float(np.mean(transits.quoted_to_true_sigma(phase, nc, RATIO, N_OUT)))
    assert 1.18 < expected < 1.26
    assert quoted / true == pytest.approx(expected, rel=0.01)
    # neighbouring pixels share samples: positive correlation (E[t(1-t)] / E[(1-t)² + t²] = 1/4)
    lag1 = np.mean(noise[:, 1:] * noise[:, :-1]) / true ** 2
    assert lag1 == pytest.approx(0.25, abs=0.04)
    # what the quoted errors do not say: the scatter of 8-pixel means is 1.19x what the per-pixel
    # scatter and independence predict; the quoted errors predict it within a few per cent
    means = noise[:, :960].reshape(len(noise), -1, 8).mean(axis=-1)
    assert means.std() / (true / np.sqrt(8)) == pytest.approx(1.19, abs=0.04)
    assert means.std() / (quoted / np.sqrt(8)) == pytest.approx(0.97, abs=0.03)
    # the second differences, as measured on real spectra (0.3-0.65 of the errors on DR3's
    # finer grid): well below the quoted errors
    assert np.diff(noise, 2, axis=1).std() / np.sqrt(6) / quoted == pytest.approx(0.68, abs=0.04)


def test_samples_on_the_grid_give_white_noise_and_exact_errors():
    # a CCD sampled exactly at the grid pixels (phase 0, same step) is not interpolated
    rng = np.random.default_rng(3)
    n, ns = 400, transits.n_samples(1.0, N_OUT)
    zero = np.zeros((n, 3))
    sigma = np.full((n, 3, ns), 0.02)
    flux, e = transits.combine_transit(np.ones((n, 3, ns)), sigma, rng.standard_normal(
        (n, 3, ns)), zero, np.full(n, 3), 1.0, N_OUT)
    np.testing.assert_allclose(e, 0.02 / np.sqrt(3))
    assert (flux - 1).std() == pytest.approx(0.02 / np.sqrt(3), rel=0.02)
    lag1 = np.mean((flux[:, 1:] - 1) * (flux[:, :-1] - 1)) / (flux - 1).var()
    assert abs(lag1) < 0.02


def test_combination_reproduces_a_smooth_signal_and_uses_only_the_combined_ccds():
    rng = np.random.default_rng(5)
    n = 4
    phase = rng.random((n, 3))
    pos = transits.sample_positions(phase, RATIO, N_OUT)
    assert pos[..., 0].max() <= 0.0 and pos[..., -1].min() >= N_OUT - 1
    line = 1.0 + 1e-4 * pos  # linear in pixel: linear interpolation is exact
    nc = np.array([1, 2, 3, 1])
    phase[0, 1:] = np.nan  # unused CCDs may carry anything
    line[0, 1:] = 1e6
    flux, err = transits.combine_transit(line, np.zeros_like(line), None, phase, nc, RATIO,
                                         N_OUT)
    np.testing.assert_allclose(flux, np.broadcast_to(1.0 + 1e-4 * np.arange(N_OUT), flux.shape),
                               atol=1e-12)
    assert (err == 0).all()


def test_snr_per_transit_reproduces_the_dr4_expectations_and_draws_stay_in_range():
    np.testing.assert_allclose(transits.snr_per_transit([6.0, 8.0, 10.0, 12.0]),
                               [133.0, 52.0, 18.0, 4.6])
    assert transits.snr_per_transit(5.0) > 133.0 > transits.snr_per_transit(7.0) > 52.0
    rng = np.random.default_rng(2)
    draws = np.array([transits.draw_grvs_snr(rng, (5.5, 12.5), 0.25, 0.1, 3, (5.0, 150.0))
                      for _ in range(3000)])
    g, snr = draws.T
    assert g.min() >= 5.5 and g.max() <= 12.5 and snr.min() >= 5.0 and snr.max() <= 150.0
    # faint stars are more numerous: the median transit sits near G_RVS 10.7, S/N ~ 11
    assert 10.3 < np.median(g) < 11.1 and 8.0 < np.median(snr) < 14.0
    with pytest.raises(ValueError, match="S/N"):
        transits.draw_grvs_snr(rng, (13.0, 14.0), 0.0, 0.0, 3, (50.0, 60.0), max_tries=5)


# ---------------------------------------------------------------------------------------------
# The DR4 recipe


def _fixed_snr_dr4(snr, **realism):
    """The DR4 recipe at one S/N, no gaps or median normalisation (which rescales the noise)."""
    base = SimulationConfig.dr4().realism
    return SimulationConfig.dr4(seed=101, binary_fraction=0.0, snr_range=(snr, snr),
                                realism=replace(base, grvs_range=(), median_norm_fraction=0.0,
                                                gap_fraction=0.0, **realism))


@pytest.mark.parametrize("snr", [5.0, 50.0])
def test_measured_continuum_snr_matches_the_requested_one(snr):
    noisy, clean, lab = _render(_fixed_snr_dr4(snr), 24)
    assert (lab["combined_ccds"] >= 1).all() and np.allclose(lab["snr"], snr)
    # σ ∝ flux^α per sample: divide it out to measure the continuum S/N on every pixel
    alpha = lab["noise_exponent"][:, None].astype(float)
    scaled = (noisy - clean) / np.clip(clean, 1e-3, None) ** alpha
    measured = 1.0 / scaled.std(axis=1)
    assert np.mean(measured) == pytest.approx(snr, rel=0.03)
    assert np.all(np.abs(measured / snr - 1) < 0.12)


def test_dr4_recipe_draws_and_normalisation_paths():
    cfg = SimulationConfig.dr4(seed=103, binary_fraction=0.5)
    assert cfg.realism.noise_correlation == (0.0, 0.0) and cfg.n_noise == 3 * 983
    noisy, _, lab = _render(cfg, 120)
    assert noisy.shape == (120, 961)
    assert (lab["snr"] >= 5).all() and (lab["snr"] <= 150).all()
    assert set(np.unique(lab["combined_ccds"])) <= {1, 2, 3}
    assert np.mean(lab["combined_ccds"] == 3) > 0.7
    used = np.arange(3)[None, :] < lab["combined_ccds"][:, None]
    assert np.isfinite(lab["ccd_phase"][used]).all() and np.isnan(lab["ccd_phase"][~used]).all()
    assert np.abs(lab["gamma"]).max() > 100  # barycentric: systemic velocities of the recipe
    med = lab["median_normalised"]
    assert med[lab["grvs_mag"] > 12.0].all() and 0.2 < med.mean() < 0.6
    np.testing.assert_allclose(np.nanmedian(noisy[med], axis=1), 1.0, atol=1e-6)
    # pseudo-continuum spectra keep their continuum near 1, so their median sits below it
    assert np.median(np.nanmedian(noisy[~med], axis=1)) < 0.995
    # the gaps of the realistic recipe, after the normalisation
    from sb2dask.simulate.realism import gap_mask

    assert np.array_equal(np.isnan(noisy), gap_mask(961, lab["gap_start"], lab["gap_width"]))


def test_dr4_spectra_depend_only_on_their_index():
    cfg = SimulationConfig.dr4(seed=104, binary_fraction=0.5)
    a, _, la = _render(cfg, 12)
    b, _, lb = _render(cfg, 5, start=4)
    assert a[4:9].tobytes() == b.tobytes()
    assert np.array_equal(la["ccd_phase"][4:9], lb["ccd_phase"], equal_nan=True)


def test_dr4_recipe_round_trips_and_the_other_recipes_draw_no_ccds():
    cfg = SimulationConfig.dr4(seed=1)
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    assert SimulationConfig.from_yaml(cfg.to_yaml()) == cfg
    for other in (SimulationConfig.paper(seed=1), SimulationConfig.realistic(seed=1)):
        _, _, lab = _render(other, 3)
        assert (lab["combined_ccds"] == 0).all() and np.isnan(lab["grvs_mag"]).all()
        assert not lab["median_normalised"].any() and other.n_noise == len(other.wave)
    with pytest.raises(ValueError, match="ccd_weights"):
        replace(cfg.realism, ccd_weights=(0.5, 0.5))


def test_median_normalise_divides_flux_and_error_by_the_median():
    f = np.array([[2.0, 4.0, np.nan, 6.0], [np.nan] * 4, [-1.0, -2.0, -3.0, 1.0]])
    out, err = median_normalise(f, np.ones_like(f))
    np.testing.assert_allclose(out[0], [0.5, 1.0, np.nan, 1.5])
    np.testing.assert_allclose(err[0], 0.25)
    assert np.isnan(out[1]).all()  # nothing to normalise by
    np.testing.assert_allclose(out[2], f[2])  # negative median (DR4 method 4): left as it is


# ---------------------------------------------------------------------------------------------
# What inference makes of DR4 spectra


def test_inference_resamples_961_pixel_barycentric_spectra_and_removes_rv_bulk_when_asked():
    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.predict import get_model_set, predict_partition

    cfg = SimulationConfig.dr4(seed=105, binary_fraction=0.0, snr_range=(60.0, 60.0),
                               realism=replace(SimulationConfig.dr4().realism, grvs_range=(),
                                               gap_fraction=0.0))
    noisy, _, lab = _render(cfg, 6)
    n = len(noisy)
    df = pd.DataFrame({"source_id": np.arange(n, dtype=np.int64), "epoch_id": -1,
                       "wave": [DR4_EPOCH_WAVE] * n, "flux": list(noisy), "flux_error": [None] * n,
                       "file": "dr4-sim", "row": np.arange(n),
                       "read_flags": np.zeros(n, np.int32)})
    models = get_model_set(InferenceConfig("paper", device="cpu"))
    assert len(models.wave) == 903  # the shipped models read another grid: resampled
    on = predict_partition(df, InferenceConfig("paper", device="cpu", rest_frame="on"))
    assert len(on) == n and on["usable"].all()
    # v sin i up to 100 km/s: the correlation peak is broad
    np.testing.assert_allclose(on["rv_bulk"], lab["gamma"], atol=6.0)
    assert np.median(np.abs(on["rv_bulk"] - lab["gamma"])) < 2.0
    # the paper-recipe models were trained at rest, so `auto` leaves spectra of unknown frame
    # where they are: DR4 spectra need `--rest-frame on` with them (or models trained in the
    # rv_bulk frame, as the default set is)
    auto = predict_partition(df, InferenceConfig("paper", device="cpu"))
    assert models.frame == "rest" and auto["rv_bulk"].isna().all()
    # the default set (the students) was trained in the rv_bulk frame: `auto` removes it
    assert get_model_set(InferenceConfig(device="cpu")).frame == "rv_bulk"
    default = predict_partition(df, InferenceConfig(device="cpu"))
    np.testing.assert_allclose(default["rv_bulk"], on["rv_bulk"], atol=1e-3)


def test_simulate_recipe_dr4_on_the_command_line(tmp_path):
    from sb2dask.cli import _simulation_config, build_parser

    def config(*extra):
        return _simulation_config(build_parser().parse_args(
            ["simulate", "--n", "10", "--out", str(tmp_path / "s.zarr"), *extra]))

    assert config("--recipe", "dr4") == SimulationConfig.dr4()
    assert config("--recipe", "dr4", "--snr", "10", "20").snr_range == (10.0, 20.0)
    # a configuration file keeps its labels and orbits; the recipe sets what makes it DR4
    path = tmp_path / "mine.yaml"
    SimulationConfig(k_sum_range=(20.0, 40.0)).to_yaml(path)
    cfg = config("--config", str(path), "--recipe", "dr4")
    assert cfg.k_sum_range == (20.0, 40.0) and cfg.output_grid == "gaia_dr4_961"
    assert cfg.realism == SimulationConfig.dr4().realism and cfg.snr_range == (5.0, 150.0)
