"""The evidence fits (sb2dask.evidence): forward model against the simulator, Jacobian, scan,
single- and two-star fits, the class rule and the partition core."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sb2dask.evidence import FIT_COLUMNS, FitConfig, classify, fit_partition, fit_spectra
from sb2dask.evidence.fit import _jacobian, get_forward_model, noise_weights
from sb2dask.evidence.scan import scan_binary, velocity_grid
from sb2dask.library import load_library
from sb2dask.simulate.config import SimulationConfig
from sb2dask.simulate.realism import CA_II_AIR
from sb2dask.simulate.spectra import SpectrumRenderer
from sb2dask.simulate.systems import draw_systems


@pytest.fixture(scope="module")
def sim():
    """The embedded library, a paper-recipe renderer, and the evidence model on its pixels."""
    torch.set_num_threads(1)
    lib = load_library()
    # one [Fe/H] for both stars, as the constrained two-star model assumes (the simulator draws
    # each star's [Fe/H] on its own, which no physical binary does)
    cfg = SimulationConfig.paper(binary_fraction=0.5, snr_range=(150.0, 200.0),
                                 vsini_range=(0.0, 25.0), feh_range=(0.0, 0.0))
    renderer = SpectrumRenderer(lib, cfg)
    model = get_forward_model(FitConfig(precision="float64"), cfg.wave)
    labels, interp, noise = draw_systems(lib, cfg, np.arange(300))
    return dict(lib=lib, cfg=cfg, renderer=renderer, model=model, labels=labels, interp=interp,
                noise=noise)


def _take(d: dict, rows) -> dict:
    return {k: v[rows] for k, v in d.items()}


def _star_labels(labels, c):
    return torch.tensor(np.stack([labels["teff"][:, c], labels["logg"][:, c],
                                  labels["feh"][:, c]], 1).astype(np.float64))


def test_forward_model_reproduces_the_simulator(sim):
    lab = sim["labels"]
    rows = np.flatnonzero(lab["is_binary"])[:8]
    labels, interp = _take(lab, rows), _take(sim["interp"], rows)
    ref = sim["renderer"].render(labels, interp, None)
    m = sim["model"]
    l1, l2 = _star_labels(labels, 0), _star_labels(labels, 1)
    f2 = m.light_fraction(l1, l2).numpy()
    np.testing.assert_allclose(f2, labels["light_fraction"][:, 1], atol=1e-5)
    flux = m.binary(l1, l2, torch.tensor(labels["vsini"], dtype=torch.float64),
                    torch.tensor(labels["rv"], dtype=torch.float64)).numpy()
    assert np.abs(flux - ref).max() < 1e-4  # float32 renderer against float64 model
    assert (1.0 - ref).max() > 0.2  # real lines were compared


def test_jacobian_matches_finite_differences(sim):
    m = sim["model"]
    theta = torch.tensor([[5234.0, 4.3, -0.3, 12.1, 17.0]], dtype=torch.float64)

    def fn(th):
        return m.single(th[:, 0:3], th[:, 3], th[:, 4])

    _, jac = _jacobian(fn, theta)
    for j, h in ((0, 1.0), (1, 0.01), (3, 0.05), (4, 0.01)):  # inside one table cell
        step = torch.zeros_like(theta)
        step[0, j] = h
        fd = (fn(theta + step) - fn(theta - step)) / (2 * h)
        scale = fd.abs().max()
        assert scale > 0
        assert (jac[0, :, j] - fd[0]).abs().max() < 1e-5 * scale


def _pick(lab, n, binary=True):
    """Rows of well separated, comparably bright binaries (or single stars)."""
    if binary:
        ok = (lab["is_binary"] & (lab["rv_separation"] > 40.0)
              & (np.abs(lab["light_fraction"][:, 1] - 0.5) < 0.3))
    else:
        ok = ~lab["is_binary"]
    return np.flatnonzero(ok)[:n]


def test_scan_finds_both_velocities(sim):
    lab = sim["labels"]
    rows = _pick(lab, 3)
    labels, interp = _take(lab, rows), _take(sim["interp"], rows)
    flux = torch.tensor(sim["renderer"].render(labels, interp, None), dtype=torch.float64)
    m = sim["model"]
    w = torch.ones_like(flux)
    grid = velocity_grid(150.0, 4.0, m)
    rv, frac, _ = scan_binary(m, flux, w, _star_labels(labels, 0), _star_labels(labels, 1),
                           torch.tensor(labels["vsini"], dtype=torch.float64), grid)
    assert np.abs(rv.numpy() - labels["rv"]).max() <= 2.5
    assert np.abs(frac.numpy() - labels["light_fraction"][:, 1]).max() < 0.15


def test_fits_recover_rvs_and_tell_binaries_from_singles(sim):
    lab = sim["labels"]
    rows = np.concatenate([_pick(lab, 2), _pick(lab, 2, binary=False)])
    labels, interp = _take(lab, rows), _take(sim["interp"], rows)
    flux = sim["renderer"].render(labels, interp, sim["noise"][rows])
    cfg = FitConfig(free_fit=True)
    w = noise_weights(sim["cfg"].wave, flux, None, labels["snr"], cfg)
    rng = np.random.default_rng(3)
    start = {}
    for k, scale in (("teff", 150.0), ("logg", 0.2), ("feh", 0.2), ("vsini", 3.0)):
        v = labels[k].astype(np.float64)
        v[:, 1] = np.where(np.isnan(v[:, 1]), v[:, 0], v[:, 1])  # networks give two always
        for c in (0, 1):
            start[f"{k}_{c + 1}"] = v[:, c] + rng.normal(0.0, scale, len(rows))
    res = fit_spectra(sim["model"], flux, w, start, cfg)
    b = labels["is_binary"]
    assert np.abs(res["rv_1"][b] - labels["rv"][b, 0]).max() < 2.0
    assert np.abs(res["rv_2"][b] - labels["rv"][b, 1]).max() < 2.0
    assert np.all(res["rv_1_err"][b] > 0) and np.all(res["rv_1_err"][b] < 2.0)
    assert np.abs(res["light_fraction_2"][b] - labels["light_fraction"][b, 1]).max() < 0.1
    assert np.all((res["light_fraction_2_err"][b] > 0) & (res["light_fraction_2_err"][b] < 0.1))
    assert np.all(res["delta_bic"][b] > cfg.bic_threshold)
    assert np.all(res["delta_bic"][~b] < cfg.bic_threshold)
    # the free model is at least as good as the constrained one on the binaries
    assert np.all(res["chi2_free"][b] <= res["chi2_binary"][b] * 1.01)


def test_classify_rule():
    cfg = FitConfig()
    n_pix = np.full(6, 800)
    fit = dict(delta_bic=np.array([50.0, 50.0, -5.0, -5.0, 50.0, np.nan]),
               chi2_single=np.full(6, 800.0), chi2_binary=np.array([750.0] * 4 + [5000.0, 1]),
               rv_1=np.array([-30.0, -30.0, 0, 0, -30.0, 0]),
               rv_2=np.array([30.0, -28.0, 0, 0, 30.0, 0]),
               light_fraction_2=np.full(6, 0.4), n_fit_pixels=n_pix)
    p = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    chi2_red, cls = classify(p, fit, cfg)
    # agree + resolved; unresolved pair; both single; disagree; bad fit; not fitted
    assert list(cls) == ["SB2", "uncertain", "single", "uncertain", "uncertain", ""]
    assert chi2_red[4] > cfg.chi2_red_max and np.isnan(chi2_red[5])
    assert classify(np.full(1, np.nan), {k: v[:1] for k, v in fit.items()}, cfg)[1][0] == "SB2"


def test_light_fraction_error_is_the_linear_propagation_of_the_label_covariance(sim):
    """σ_f² = gᵀ C g with g the light fraction's gradient in (Teff₁, logg₁, Teff₂, logg₂,
    [Fe/H]): checked against central finite differences; the other parameters do not enter."""
    from sb2dask.evidence.fit import _light_fraction_with_error

    m = sim["model"]
    # off the grid's nodes: the interpolation is piecewise linear, so a finite difference across
    # a node averages two slopes where autograd takes one
    th = torch.tensor([[4213.0, 4.62, 5637.0, 4.37, -0.23, 5.0, 8.0, -20.0, 30.0],
                       [5041.0, 4.53, 5166.0, 4.46, 0.07, 20.0, 3.0, 10.0, -40.0]],
                      dtype=torch.float64)
    rng = np.random.default_rng(5)
    a = rng.normal(size=(2, 9, 9))
    d = np.sqrt(np.array([50.0, 0.05, 50.0, 0.05, 0.05, 1, 1, 1, 1]) * 1e-2)
    cov = torch.tensor(d[:, None] * (a @ a.transpose(0, 2, 1)) * d[None, :])  # PSD
    f, err = _light_fraction_with_error(m, th, cov)

    def frac(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return m.light_fraction(torch.cat([t[:, 0:2], t[:, 4:5]], 1).to(m.dtype),
                                torch.cat([t[:, 2:4], t[:, 4:5]], 1).to(m.dtype)).double()

    steps = np.array([1.0, 1e-3, 1.0, 1e-3, 1e-3])
    grad = np.zeros((2, 5))
    for j in range(5):
        up, dn = th.clone(), th.clone()
        up[:, j] += steps[j]
        dn[:, j] -= steps[j]
        grad[:, j] = ((frac(up) - frac(dn)) / (2 * steps[j])).numpy()
    want = np.sqrt(np.einsum("bi,bij,bj->b", grad, cov.numpy()[:, :5, :5], grad))
    np.testing.assert_allclose(f.numpy(), frac(th).numpy(), rtol=1e-6)
    np.testing.assert_allclose(err.numpy(), want, rtol=0.02)
    # the velocities and rotation do not enter
    cov2 = cov.clone()
    cov2[:, 5:, 5:] *= 100.0
    np.testing.assert_allclose(_light_fraction_with_error(m, th, cov2)[1].numpy(), err.numpy())


def test_a_companion_without_lines_is_no_sb2():
    """The fainter star's v sin i at the model's bound (≥ 95 km/s of 100): flagged
    BROAD_COMPANION and not called SB2, whichever component is the fainter."""
    from sb2dask.evidence import EvidenceFlag, evidence_flags

    cfg = FitConfig()
    fit = dict(delta_bic=np.full(4, 50.0), chi2_single=np.full(4, 800.0),
               chi2_binary=np.full(4, 750.0), rv_1=np.full(4, -30.0), rv_2=np.full(4, 30.0),
               light_fraction_2=np.array([0.2, 0.2, 0.8, 0.8]),
               fit_vsini_1=np.array([10.0, 10.0, 100.0, 10.0]),
               fit_vsini_2=np.array([100.0, 94.0, 10.0, 100.0]), n_fit_pixels=np.full(4, 800),
               fit_teff_1=np.full(4, 4000.0), fit_teff_2=np.full(4, 5500.0),
               fit_teff_1_err=np.full(4, 20.0), fit_teff_2_err=np.full(4, 20.0),
               rv_offset=np.zeros(4))
    p = np.full(4, 0.9)
    chi2_red, cls = classify(p, fit, cfg)
    assert list(cls) == ["uncertain", "SB2", "uncertain", "SB2"]
    flags = evidence_flags(p, dict(fit, chi2_red=chi2_red), cfg)
    broad = (flags & int(EvidenceFlag.BROAD_COMPANION)) > 0
    assert list(broad) == [True, False, True, False]
    # a looser bound lets the first through
    assert classify(p, fit, cfg.replace(broad_vsini=1.01))[1][0] == "SB2"


def test_noise_weights_mask_ca_ii_and_missing_pixels():
    wave = np.linspace(8470.0, 8700.0, 500)
    flux = np.ones((2, 500))
    flux[1, 10] = np.nan
    w = noise_weights(wave, flux, None, np.array([100.0, 50.0]), FitConfig(error_floor=0.0))
    assert w[1, 10] == 0.0
    core = np.abs(wave - CA_II_AIR[1]) < 0.5
    assert np.all(w[:, core] == 0.0)
    np.testing.assert_allclose(w[0, 0], 1e4)
    w2 = noise_weights(wave, flux, None, np.array([100.0, 50.0]), FitConfig(mask_ca_ii=False))
    assert np.all(w2[0, core] > 0)
    np.testing.assert_allclose(w2[0, 0], 1.0 / (1e-4 + 1e-4))
    # per-pixel errors: a NaN error (a pixel filled in preprocessing) is no data; a row without
    # any error falls back to its S/N
    err = np.full((2, 500), 0.02)
    err[0, 20] = np.nan
    err[1] = np.nan
    w3 = noise_weights(wave, flux, err, np.array([100.0, 50.0]), FitConfig(error_floor=0.0))
    assert w3[0, 20] == 0.0 and w3[0, 21] == pytest.approx(1.0 / 0.02 ** 2)
    assert w3[1, 0] == pytest.approx(50.0 ** 2) and w3[1, 10] == 0.0


def test_fit_partition_rows_threshold_and_frame(sim):
    lab = sim["labels"]
    rows = _pick(lab, 2)
    labels, interp = _take(lab, rows), _take(sim["interp"], rows)
    flux = sim["renderer"].render(labels, interp, sim["noise"][rows])
    flux = np.concatenate([flux, flux[:1]])
    df = pd.DataFrame({"p_binary": [0.9, 0.2, 0.9], "usable": [True, True, False]},
                      index=[10, 11, 12])
    for k in ("teff", "logg", "feh", "vsini"):
        for c in (1, 2):
            df[f"{k}_{c}"] = np.append(labels[k][:, c - 1], np.nan)
    spectra = dict(wave=sim["cfg"].wave, flux=flux, snr=np.full(3, 150.0),
                   rv_offset=np.array([100.0, 100.0, 100.0]))
    out = fit_partition(df, spectra, FitConfig(p_threshold=0.5))
    assert list(out.index) == [10, 11, 12] and list(out.columns) == list(FIT_COLUMNS)
    assert out["sb2_class"].tolist() == ["SB2", "", ""]
    assert np.isnan(out["rv_1"].iloc[1]) and out["n_fit_pixels"].iloc[2] == 0
    assert abs(out["rv_1"].iloc[0] - (labels["rv"][0, 0] + 100.0)) < 2.0
    with pytest.raises(ValueError, match="one spectrum per prediction row"):
        fit_partition(df.iloc[:2], spectra)


def test_infer_fit_hook_fills_the_evidence_columns(sim):
    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.predict import predict_partition
    from sb2dask.infer.readers.base import build_partition

    lab = sim["labels"]
    rows = _pick(lab, 2)
    labels, interp = _take(lab, rows), _take(sim["interp"], rows)
    flux = sim["renderer"].render(labels, interp, sim["noise"][rows]).astype(np.float32)
    df = build_partition(source_id=np.arange(2), epoch_id=np.zeros(2, np.int64),
                         wave=sim["cfg"].wave, flux=flux, flux_error=None, file="sim",
                         row=np.arange(2), read_flags=np.zeros(2, np.int32))
    plain = predict_partition(df, InferenceConfig())  # the default set: the students
    assert plain["delta_bic"].isna().all() and (plain["sb2_class"] == "").all()
    out = predict_partition(df, InferenceConfig(fit=True))
    assert out["delta_bic"].notna().all() and out["n_fit_pixels"].gt(800).all()
    assert set(out["sb2_class"]) <= {"SB2", "single", "uncertain"}
    # the networks' columns are untouched by the fit
    np.testing.assert_array_equal(out["p_binary"], plain["p_binary"])
    with pytest.raises(ValueError, match="fit_threshold"):
        InferenceConfig(fit=True, fit_threshold=1.5)


def test_cli_infer_fit_options(capsys, tmp_path):
    from sb2dask.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["infer", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--fit " in out and "--fit-threshold P" in out and "--fit-fast" in out
    with pytest.raises(SystemExit) as exc:
        main(["infer", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o"), "--fit",
              "--fit-threshold", "1.5"])
    assert exc.value.code == 2
    assert "a number in [0, 1]" in capsys.readouterr().err


def test_inference_config_chooses_the_fit_setting():
    from sb2dask.infer.config import InferenceConfig

    assert InferenceConfig(fit=True, fit_threshold=0.3).fit_config() == FitConfig(p_threshold=0.3)
    fast = InferenceConfig(fit=True, fit_fast=True).fit_config()
    assert fast == FitConfig.fast() and fast.race_iterations < fast.iterations
    assert FitConfig.fast(iterations=7).iterations == 7  # a change wins over the preset


def test_refine_candidates_refits_only_the_candidates_with_the_default_settings(sim):
    labels, flux, start = _two_binaries_and_a_single(sim, teff_offset=10.0)
    fast = FitConfig.fast(precision="float64")
    w = noise_weights(sim["cfg"].wave, flux, None, labels["snr"], fast)
    m = sim["model"]
    plain = fit_spectra(m, flux, w, start, fast)
    refined = fit_spectra(m, flux, w, start, fast.replace(refine_candidates=True))
    cand = plain["delta_bic"] >= fast.bic_threshold - fast.recheck_margin
    assert cand[:2].all() and not cand[2]  # the binaries are candidates, the single star not
    thorough = fit_spectra(m, flux[cand], w[cand], {k: v[cand] for k, v in start.items()},
                           FitConfig(precision="float64"))
    for k in ("chi2_binary", "chi2_single", "rv_1", "rv_2", "delta_bic"):
        np.testing.assert_allclose(refined[k][cand], thorough[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(refined[k][~cand], plain[k][~cand])


def test_evidence_flags_report_degenerate_fits():
    from sb2dask.evidence import EvidenceFlag, evidence_flags

    cfg = FitConfig()
    fit = dict(delta_bic=np.array([50.0, 50.0, 50.0, -5.0, np.nan]),
               rv_1=np.array([-30.0, -3.0, -30.0, 0.0, 0.0]),
               rv_2=np.array([30.0, 3.0, 150.0, 0.0, 0.0]),
               light_fraction_2=np.array([0.4, 0.4, 0.02, 0.5, 0.5]),
               fit_teff_1=np.array([5000.0, 5000.0, 5000.0, 5500.0, 0.0]),
               fit_teff_2=np.array([6000.0, 5050.0, 6000.0, 5600.0, 0.0]),
               fit_teff_1_err=np.full(5, 20.0), fit_teff_2_err=np.full(5, 20.0),
               chi2_red=np.array([1.0, 1.0, 1.0, 5.0, np.nan]), rv_offset=np.zeros(5))
    flags = evidence_flags(np.array([0.9, 0.9, 0.2, 0.9, 0.9]), fit, cfg)
    F = EvidenceFlag
    assert flags[0] == 0
    assert flags[1] == F.UNRESOLVED | F.RV_ORDER_AMBIGUOUS
    assert flags[2] == F.FAINT_COMPANION | F.DISAGREE | F.RV_AT_BOUND
    assert flags[3] == F.UNRESOLVED | F.POOR_FIT | F.DISAGREE
    assert flags[4] == 0  # not fitted


def test_source_lists_follow_whether_the_epochs_were_fitted(tmp_path):
    from sb2dask.infer.run import _has_component_rvs, write_parquet_atomic
    from sb2dask.infer.schema import arrow_schema, empty_frame

    ep = empty_frame("epoch", 3)
    files = []
    for name, meta, rv in (("plain", None, np.nan), ("values", None, 5.0),
                           ("fit", {"inference": {"fit": True}}, np.nan),
                           ("nofit", {"inference": {"fit": False}}, 5.0)):
        ep["rv_1"] = np.float32(rv)
        f = tmp_path / f"{name}.parquet"
        write_parquet_atomic(ep, f, arrow_schema("epoch", meta))
        files.append(f)
    # no run setting recorded: the values decide; recorded: the setting decides
    assert [_has_component_rvs([f]) for f in files] == [False, True, True, False]
    assert _has_component_rvs([files[0], files[1]])


def test_a_finished_run_without_fit_is_not_reused_for_fit(tmp_path):
    import json

    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.run import _run_settings, check_output

    out = tmp_path / "out.parquet"
    out.mkdir()
    inputs = [str(tmp_path / "a.csv")]
    old = _run_settings(inputs, InferenceConfig())
    del old["fit"], old["fit_threshold"], old["fit_config"]  # written before `--fit` existed
    (out / "_inputs.json").write_text(json.dumps(dict(old, finished=True)))
    check_output(out, inputs, InferenceConfig())  # the same run: continued
    with pytest.raises(ValueError, match="fit"):
        check_output(out, inputs, InferenceConfig(fit=True))
    # a fitted run records the fitter's whole configuration; one by an older fitter (no
    # record of it) is not reused, the same one is
    fitted = _run_settings(inputs, InferenceConfig(fit=True))
    assert fitted["fit_config"]["bic_threshold"] == FitConfig().bic_threshold
    (out / "_inputs.json").write_text(json.dumps(dict(fitted, finished=True)))
    check_output(out, inputs, InferenceConfig(fit=True))
    del fitted["fit_config"]
    (out / "_inputs.json").write_text(json.dumps(dict(fitted, finished=True)))
    with pytest.raises(ValueError, match="fit_config"):
        check_output(out, inputs, InferenceConfig(fit=True))


def test_analytic_jacobians_match_forward_mode_autodiff(sim):
    m = sim["model"]
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    th = t([[5234.0, 4.3, -0.3, 12.1, 17.0], [6120.0, 3.9, 0.2, 47.3, -80.0]])
    _, ad = _jacobian(lambda x: m.single(x[:, 0:3], x[:, 3], x[:, 4]), th)
    _, an = m.single_jac(th[:, 0:3], th[:, 3], th[:, 4])
    assert (an - ad).abs().max() < 1e-9 * ad.abs().max()
    # two stars, light ratio from the labels (its dependence on them included) and free
    thb = t([[5234.0, 4.3, -0.3, 6100.0, 4.1, 0.1, 12.1, 40.0, 17.0, -40.0],
             [4480.0, 4.6, 0.2, 5810.0, 4.4, 0.2, 3.0, 80.0, -30.0, 50.0]])
    order = [0, 1, 2, 6, 8, 3, 4, 5, 7, 9]  # binary_jac: star 1 (labels, v sin i, RV), star 2
    _, ad = _jacobian(lambda x: m.binary(x[:, 0:3], x[:, 3:6], x[:, 6:8], x[:, 8:10]), thb)
    _, an, _ = m.binary_jac(thb[:, 0:3], thb[:, 3:6], thb[:, 6:8], thb[:, 8:10])
    assert (an - ad[..., order]).abs().max() < 1e-9 * ad.abs().max()
    thf = torch.cat([thb, t([[0.3], [0.6]])], 1)
    _, ad = _jacobian(lambda x: m.binary(x[:, 0:3], x[:, 3:6], x[:, 6:8], x[:, 8:10],
                                         x[:, 10]), thf)
    _, an, _ = m.binary_jac(thf[:, 0:3], thf[:, 3:6], thf[:, 6:8], thf[:, 8:10], thf[:, 10])
    assert (an - ad[..., order + [10]]).abs().max() < 1e-9 * ad.abs().max()


def test_pixel_matrix_is_the_renderers_fft_and_resampling(sim):
    m = sim["model"]
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    ft = m.component_ft(t([[5234.0, 4.3, -0.3]] * 3), t([0.0, 12.0, 90.0]), t([0.0, 17.0, -60.0]))
    depth = torch.fft.irfft(ft * m.lsf, n=m.n_work, dim=-1)
    ref = (1 - m._f) * depth.index_select(1, m._i0) + m._f * depth.index_select(1, m._i0 + 1)
    assert ref.abs().max() > 0.3
    assert (m.to_pixels(ft) - ref).abs().max() < 1e-12


def _two_binaries_and_a_single(sim, teff_offset=0.0):
    """Labels, noisy flux and starts (the true labels, Teff moved by ``teff_offset``; a single
    star's missing component 2: its own component 1) of two binaries and one single star."""
    lab = sim["labels"]
    rows = np.concatenate([_pick(lab, 2), _pick(lab, 1, binary=False)])
    labels, interp = _take(lab, rows), _take(sim["interp"], rows)
    flux = sim["renderer"].render(labels, interp, sim["noise"][rows])
    start = {f"{k}_{c + 1}": np.where(np.isnan(labels[k][:, c]), labels[k][:, 0],
                                      labels[k][:, c]) + teff_offset * (k == "teff")
             for k in ("teff", "logg", "feh", "vsini") for c in (0, 1)}
    return labels, flux, start


def test_float32_fits_agree_with_float64(sim):
    labels, flux, start = _two_binaries_and_a_single(sim)
    res = {}
    for prec in ("float32", "float64"):
        cfg = FitConfig(precision=prec)
        w = noise_weights(sim["cfg"].wave, flux, None, labels["snr"], cfg)
        res[prec] = fit_spectra(get_forward_model(cfg, sim["cfg"].wave), flux, w, start, cfg)
    for k in ("chi2_single", "chi2_binary"):
        np.testing.assert_allclose(res["float32"][k], res["float64"][k], atol=0.5)
    np.testing.assert_allclose(res["float32"]["rv_single"], res["float64"]["rv_single"],
                               atol=0.05)


def test_best_of_keeps_each_spectrums_lowest_chi2_and_runs_starts_only_where_asked():
    # a toy problem with two basins: model 1 + h(θ)·x, h = θ² − θ³/2, data 1 + 2x (times a
    # fitted continuum scale). Two spectra, the same data; the second start runs for
    # spectrum 1 only. Whatever each start reaches, _best_of must keep, per spectrum, the
    # lower χ² of the starts it was allowed
    from sb2dask.evidence.fit import _best_of, _levenberg_marquardt, _Problem

    x = torch.linspace(0.5, 1.5, 50, dtype=torch.float64)
    y = (1.0 + 2.0 * x).expand(2, -1)
    calls = []
    h = lambda th: th ** 2 - 0.5 * th ** 3  # noqa: E731

    def value(th):
        calls.append(len(th))
        return 1.0 + h(th) * x

    def jac(th):
        return 1.0 + h(th) * x, ((2.0 * th - 1.5 * th ** 2) * x)[..., None]

    prob = _Problem(value, jac, y, torch.ones_like(y), torch.ones(50, 1, dtype=torch.float64))
    lo = torch.full((2, 1), -10.0, dtype=torch.float64)
    hi = torch.full((2, 1), 10.0, dtype=torch.float64)
    starts = [torch.tensor([[1.0], [1.0]], dtype=torch.float64),
              torch.tensor([[-1.0], [-1.0]], dtype=torch.float64)]
    alone = [_levenberg_marquardt(prob, s.clone(), lo, hi, 8, 1e-10)[1] for s in starts]
    assert alone[1][0] < alone[0][0] - 1.0  # the starts end in different basins
    calls.clear()
    th, chi2, _ = _best_of(prob, starts, lo, hi, 8, 1e-10, race=None,
                           use=[None, torch.tensor([False, True])])
    assert calls[0] == 3  # one batch: start 0 for both spectra, start 1 for spectrum 1
    np.testing.assert_allclose(chi2[0], alone[0][0], rtol=1e-9)  # no start 1 for spectrum 0
    np.testing.assert_allclose(chi2[1], alone[1][1], rtol=1e-9)  # spectrum 1: the better
    np.testing.assert_allclose(th[1], _levenberg_marquardt(prob, starts[1].clone(), lo, hi, 8,
                                                           1e-10)[0][1])


def test_cramer_rao_bound_matches_the_scatter_of_fitted_rvs(sim):
    from sb2dask.evidence import cramer_rao_bounds

    lab = sim["labels"]
    row = np.flatnonzero(~lab["is_binary"] & (lab["vsini"][:, 0] < 15.0))[:1]
    labels, interp = _take(lab, row), _take(sim["interp"], row)
    clean = sim["renderer"].render(labels, interp, None)[0]
    n, snr = 40, 80.0
    rng = np.random.default_rng(11)
    flux = clean + rng.normal(0.0, 1.0 / snr, (n, clean.size))
    cfg = FitConfig(error_floor=0.0, mask_ca_ii=False, precision="float64", swap_start=False)
    w = noise_weights(sim["cfg"].wave, flux, None, np.full(n, snr), cfg)
    start = {f"{k}_{c}": np.full(n, float(labels[k][0, 0])) for k in ("teff", "logg", "feh",
                                                                       "vsini") for c in (1, 2)}
    res = fit_spectra(sim["model"], flux, w, start, cfg)
    scatter = np.std(res["rv_single"] - labels["rv"][0, 0])
    crb = cramer_rao_bounds(sim["model"], labels, w[:1], binary=False)
    assert 0.6 < scatter / crb["rv_1"][0] < 1.5, (scatter, crb["rv_1"][0])
    # the fit's own Fisher errors are this bound at the fitted labels
    assert 0.7 < np.median(res["rv_single_err"]) / crb["rv_1"][0] < 1.4
    # the continuum is marginalised: fewer continuum terms (a scale only) give no larger bound
    fixed = cramer_rao_bounds(sim["model"], labels, w[:1], continuum_degree=0, binary=False)
    assert all(fixed[k][0] <= crb[k][0] * (1 + 1e-9) for k in crb)
    # as two identical stars at one velocity the RVs are nearly degenerate: a larger bound
    pair = dict(labels, **{k: np.where(np.isnan(labels[k]), labels[k][:, :1], labels[k])
                           for k in ("teff", "logg", "feh", "vsini", "rv")})
    both = cramer_rao_bounds(sim["model"], pair, w[:1])
    assert np.isfinite(both["rv_1"][0]) and both["rv_1"][0] > crb["rv_1"][0]
