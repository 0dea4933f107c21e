"""Tests of the PHOENIX reader, the pseudo-continuum fit and the wavelength conventions.

Fixture files (both products) are written by :mod:`phoenix_fixtures`; the real log-λ files in
``../shared/data/phoenix`` are used when present. Nothing here touches the network.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from phoenix_fixtures import (
    CA_II_AIR,
    CA_II_VAC,
    FIXTURE_FEH,
    FIXTURE_LOGG,
    FIXTURE_TEFF,
    fixture_mass,
    fixture_radius,
    surface_continuum,
    truncate_file,
    write_hires_file,
    write_hires_grid,
    write_loglam_file,
    write_loglam_grid,
    write_wave_file,
)
from sb2dask.constants import C_KMS
from sb2dask.library.base import MissingNodeError, SpectralLibrary
from sb2dask.library.continuum import pseudo_continuum
from sb2dask.library.phoenix import (
    PRODUCT_HIRES,
    PRODUCT_LOGLAM,
    WAVE_FILENAME,
    PhoenixFileError,
    PhoenixLibrary,
    fetch_phoenix,
    parse_phoenix_filename,
    phoenix_filename,
)
from sb2dask.library.wavelength import air_to_vac, log_lambda_grid, vac_to_air

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "phoenix"
NODES = [(t, g, z) for t in FIXTURE_TEFF for g in FIXTURE_LOGG for z in FIXTURE_FEH]


def line_centre(wave: np.ndarray, flux: np.ndarray, guess: float, half_width: float = 1.0) -> float:
    """Wavelength of the flux minimum within ``guess ± half_width``, refined by a parabola
    through the lowest pixel and its two neighbours (works on irregular grids)."""
    sel = np.flatnonzero(np.abs(wave - guess) < half_width)
    i = sel[np.argmin(flux[sel])]
    x = wave[i - 1:i + 2] - wave[i]
    a, b, _ = np.polyfit(x, flux[i - 1:i + 2], 2)
    return float(wave[i] - b / (2 * a))


def far_from_lines(wave: np.ndarray, distance: float = 15.0) -> np.ndarray:
    return np.all(np.abs(wave[:, None] - np.asarray(CA_II_AIR)[None, :]) > distance, axis=1)


@pytest.fixture(scope="module", params=[PRODUCT_LOGLAM, PRODUCT_HIRES])
def fixture_dir(request, tmp_path_factory) -> Path:
    """A 2×2×2 grid of fixture files of one product."""
    d = tmp_path_factory.mktemp(request.param)
    (write_loglam_grid if request.param == PRODUCT_LOGLAM else write_hires_grid)(d)
    return d


@pytest.fixture(scope="module")
def lib(fixture_dir) -> PhoenixLibrary:
    return PhoenixLibrary(fixture_dir)


# ----------------------------------------------------------------------------------- wavelength
def test_vac_to_air_calcium_triplet():
    np.testing.assert_allclose(vac_to_air(np.array(CA_II_VAC)), CA_II_AIR, atol=0.01)
    assert abs(float(vac_to_air(8544.44)) - 8542.09) < 0.005
    assert abs(float(air_to_vac(8542.09)) - 8544.44) < 0.005


def test_air_vac_round_trip():
    wave = np.linspace(3000.0, 25000.0, 100_001)
    assert np.max(np.abs(vac_to_air(air_to_vac(wave)) - wave)) < 1e-6
    assert np.max(np.abs(air_to_vac(vac_to_air(wave)) - wave)) < 1e-6
    assert np.all(vac_to_air(wave) < wave)


def test_log_lambda_grid_uniform_velocity_step():
    grid = log_lambda_grid(8440.0, 8740.0, 2.0)
    assert grid[0] == 8440.0 and grid[-1] >= 8740.0 and grid[-2] < 8740.0
    np.testing.assert_allclose(np.diff(np.log(grid)) * C_KMS, 2.0, rtol=1e-9)
    with pytest.raises(ValueError, match="dv_kms"):
        log_lambda_grid(8440.0, 8740.0, 0.0)


# ------------------------------------------------------------------------------------ continuum
def _synthetic(n_spectra: int = 1, snr: float | None = None, seed: int = 0):
    wave = np.linspace(8440.0, 8740.0, 3000)
    cont = 2.0e6 * (1 + 5e-4 * (wave - 8600) - 1e-6 * (wave - 8600) ** 2)
    prof = np.ones_like(wave)
    for c in CA_II_AIR:   # deep cores and broad wings, as in a cool dwarf
        prof *= 1 - 0.6 * np.exp(-0.5 * ((wave - c) / 1.0) ** 2) - 0.2 / (1 + ((wave - c) / 3) ** 2)
    flux = np.tile(cont * prof, (n_spectra, 1))
    if snr is not None:
        flux *= 1 + np.random.default_rng(seed).normal(0, 1 / snr, flux.shape)
    return wave, flux, cont


def test_pseudo_continuum_noiseless_envelope():
    wave, flux, cont = _synthetic()
    fit = pseudo_continuum(wave, flux[0], noise_floor=0.0)
    assert fit.shape == wave.shape
    # Within 0.5 % everywhere; the Lorentzian wings still depress the flux by ~0.2 % mid-window.
    np.testing.assert_allclose(fit / cont, 1.0, atol=5e-3)


def test_pseudo_continuum_2d_with_nans_matches_rows():
    wave, flux, cont = _synthetic(n_spectra=4, snr=100)
    flux[1, 500:900] = np.nan
    flux[3] = np.nan
    fit = pseudo_continuum(wave, flux)
    assert fit.shape == flux.shape
    assert np.all(np.isnan(fit[3]))
    assert np.all(np.isfinite(fit[:3]))
    np.testing.assert_allclose(fit[0], pseudo_continuum(wave, flux[0]), rtol=1e-10)
    # With noise (S/N 100) the noise floor keeps the fit within 1 % of the true continuum.
    np.testing.assert_allclose(fit[:3] / cont, 1.0, atol=0.01)


def test_pseudo_continuum_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="n_pix"):
        pseudo_continuum(np.arange(10.0), np.ones(11))


# ------------------------------------------------------------------------ fixture libraries
def test_library_satisfies_protocol(lib, fixture_dir):
    assert isinstance(lib, SpectralLibrary)
    assert lib.axes.teff == FIXTURE_TEFF and lib.axes.logg == FIXTURE_LOGG
    assert lib.axes.feh == FIXTURE_FEH
    assert lib.available.shape == (2, 2, 2) and lib.available.all()
    assert lib.wave[0] >= 8440.0 and lib.wave[-1] <= 8740.0
    assert lib.wave[0] < 8440.1 and lib.wave[-1] > 8739.9
    assert np.all(np.diff(lib.wave) > 0)
    expected = {PRODUCT_LOGLAM: 10_000.0, PRODUCT_HIRES: 500_000.0}[lib.product]
    assert lib.resolution == expected
    assert lib.product == fixture_dir.name.rstrip("0123456789")
    prov = lib.provenance
    assert prov["n_files"] == 8 and prov["product"] == lib.product
    assert len(prov["files_sha256"]) == 64


def test_renderer_adds_only_the_missing_broadening(lib):
    """Widths add in quadrature: the R = 10 000 log-λ product is broader than RVS already and
    gets no Gaussian; HiRes gets nearly the instrument's (it used to get R = 11 500 on top of
    any library, doubling the log-λ files' line widths)."""
    from sb2dask.simulate.broadening import added_resolution, gaussian_lsf_ft
    from sb2dask.simulate.config import SimulationConfig
    from sb2dask.simulate.spectra import SpectrumRenderer

    cfg = SimulationConfig.paper()
    r = SpectrumRenderer(lib, cfg)
    # the band is the instrument's either way (not every frequency for the R = 10 000 files)
    freq = np.fft.rfftfreq(r.n_work, d=r.dv)
    assert r.n_freq == np.flatnonzero(gaussian_lsf_ft(freq, cfg.resolution) > 1e-12)[-1] + 1
    if lib.product == PRODUCT_LOGLAM:
        assert np.all(r.lsf == 1.0)
    else:
        r_add = 1.0 / np.sqrt(1 / cfg.resolution ** 2 - 1 / 500_000.0 ** 2)
        want = gaussian_lsf_ft(r.freq, r_add)
        np.testing.assert_allclose(r.lsf, want, rtol=1e-12)
        assert r.lsf[-1] < gaussian_lsf_ft(r.freq[-1:], 1e6)[0]
    assert added_resolution(11_500.0, np.inf) == 11_500.0  # the embedded grid: unchanged
    assert added_resolution(11_500.0, 10_000.0) == np.inf
    np.testing.assert_allclose(added_resolution(np.array([9_000.0, 11_500.0]), 10_000.0),
                               [1.0 / np.sqrt(1 / 9e3 ** 2 - 1 / 1e4 ** 2), np.inf])


@pytest.mark.parametrize("node", NODES)
def test_calcium_lines_at_air_wavelengths(lib, node):
    flux = lib.flux(*node)
    assert flux.shape == lib.wave.shape
    for air in CA_II_AIR:
        assert abs(line_centre(lib.wave, flux, air) - air) < 0.02


def test_normalised_flux_is_one_away_from_lines(lib):
    far = far_from_lines(lib.wave)
    for node in NODES:
        np.testing.assert_allclose(lib.flux(*node)[far], 1.0, atol=0.01)


def test_nodes_differ(lib):
    assert not np.allclose(lib.flux(5000, 4.5, 0.0), lib.flux(6000, 4.5, 0.0), atol=1e-3)


def test_continuum_in_physical_units(lib):
    for teff, logg, feh in NODES:
        injected = surface_continuum(teff, air_to_vac(8600.0)) * 1e-8   # erg/s/cm²/Å
        got = lib.continuum(teff, logg, feh, 8600.0)
        assert np.ndim(got) == 0
        assert got == pytest.approx(injected, rel=0.02)
    arr = lib.continuum(5000, 4.5, 0.0, np.array([8500.0, 8600.0, 8700.0]))
    assert arr.shape == (3,) and np.all(np.diff(arr) < 0)     # 5000 K: falling in the near-IR
    with pytest.raises(ValueError, match="continuum wavelengths"):
        lib.continuum(5000, 4.5, 0.0, 9000.0)


def test_mass_and_radius_units(lib):
    for teff, logg, feh in NODES:
        assert lib.mass(teff, logg, feh) == pytest.approx(fixture_mass(teff), rel=1e-6)
        assert lib.radius(teff, logg, feh) == pytest.approx(fixture_radius(teff, logg), rel=1e-6)
    assert 0.8 < lib.mass(5000, 4.5, 0.0) < 0.9     # 5000/5772 M_sun, i.e. grams were converted


def test_flux_is_cached_and_read_only(lib):
    a = lib.flux(6000, 4.0, 0.5)
    assert lib.flux(6000.0, 4.0, 0.5) is a
    with pytest.raises(ValueError):
        a[0] = 0.0


def test_pickle_drops_cache_and_still_reads(lib):
    lib.flux(5000, 4.0, 0.0)
    clone = pickle.loads(pickle.dumps(lib))
    assert len(pickle.dumps(lib)) < 10_000
    np.testing.assert_array_equal(clone.flux(5000, 4.0, 0.0), lib.flux(5000, 4.0, 0.0))


# ------------------------------------------------------------------------------ errors, masks
def test_missing_node_names_file(tmp_path):
    write_loglam_grid(tmp_path)
    (tmp_path / phoenix_filename(6000, 4.5, 0.5)).unlink()
    lib = PhoenixLibrary(tmp_path)
    assert lib.available.sum() == 7 and not lib.available[1, 1, 1]
    with pytest.raises(MissingNodeError) as err:
        lib.flux(6000, 4.5, 0.5)
    msg = str(err.value)
    assert "lte06000-4.50+0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits" in msg
    assert str(tmp_path) in msg
    with pytest.raises(MissingNodeError, match="lte05100-4.50-0.0"):
        lib.flux(5100, 4.5, 0.0)


def test_ranges_describe_missing_high_logg(tmp_path):
    write_loglam_grid(tmp_path)
    for feh in FIXTURE_FEH:
        (tmp_path / phoenix_filename(6000, 4.5, feh)).unlink()
    r = PhoenixLibrary(tmp_path).ranges()
    assert r.teff == (5000.0, 6000.0) and r.logg == (4.0, 4.5) and r.feh == (0.0, 0.5)
    assert r.logg_max_by_teff == ((5000.0, 4.5), (6000.0, 4.0))
    np.testing.assert_array_equal(r.logg_max([4000.0, 5000.0, 6000.0]), [4.5, 4.5, 4.0])


@pytest.mark.parametrize("writer", [write_loglam_file, write_hires_file])
def test_truncated_file_error_names_file(tmp_path, writer):
    path = writer(tmp_path, 5000, 4.5, 0.0)
    if writer is write_hires_file:
        write_wave_file(tmp_path)
    truncate_file(path)
    lib = PhoenixLibrary(tmp_path)
    with pytest.raises(PhoenixFileError, match=path.name):
        lib.flux(5000, 4.5, 0.0)


def test_unreadable_header_names_file(tmp_path):
    path = write_loglam_file(tmp_path, 5000, 4.5, 0.0)
    path.write_bytes(b"not a FITS file" * 10)
    with pytest.raises(PhoenixFileError, match=path.name):
        _ = PhoenixLibrary(tmp_path).wave


@pytest.mark.parametrize("writer", [write_loglam_file, write_hires_file])
def test_header_mismatch_names_file(tmp_path, writer):
    writer(tmp_path, 5000, 4.5, 0.0)
    bad = writer(tmp_path, 5200, 4.5, 0.0, header_teff=5300)
    if writer is write_hires_file:
        write_wave_file(tmp_path)
    lib = PhoenixLibrary(tmp_path)
    lib.flux(5000, 4.5, 0.0)
    with pytest.raises(PhoenixFileError, match=rf"{bad.name}.*PHXTEFF"):
        lib.flux(5200, 4.5, 0.0)


def test_hires_without_wave_file(tmp_path):
    path = write_hires_grid(tmp_path, teffs=(5000.0,), loggs=(4.5,), fehs=(0.0,),
                            wave_file=False)[0]
    lib = PhoenixLibrary(tmp_path)
    with pytest.raises(PhoenixFileError) as err:
        lib.flux(5000, 4.5, 0.0)
    assert WAVE_FILENAME in str(err.value) and path.name in str(err.value)


def test_empty_directory(tmp_path):
    (tmp_path / "README.txt").write_text("no spectra here")
    with pytest.raises(ValueError, match="no PHOENIX spectra"):
        PhoenixLibrary(tmp_path)


def test_alpha_files_ignored_and_products_not_mixed(tmp_path):
    write_loglam_file(tmp_path, 5000, 4.5, 0.0)
    write_loglam_file(tmp_path, 5000, 4.5, 0.0, alpha=0.4)
    write_hires_grid(tmp_path, teffs=(5200.0,), loggs=(4.5,), fehs=(0.0,))
    lib = PhoenixLibrary(tmp_path)
    assert lib.axes.teff == (5000.0, 5200.0)
    assert lib.provenance["ignored_alpha_files"] == 1
    assert lib.product == PRODUCT_LOGLAM
    with pytest.raises(PhoenixFileError, match="lte05200-4.50-0.0.*HiRes product"):
        lib.flux(5200, 4.5, 0.0)


def test_same_product_other_grid_is_resampled(tmp_path):
    write_loglam_file(tmp_path, 5000, 4.5, 0.0)
    other = write_loglam_file(tmp_path, 5200, 4.5, 0.0)
    with fits.open(other, mode="update") as h:      # shift the grid by half a pixel
        h[0].header["CRPIX1"] = 0.5
    lib = PhoenixLibrary(tmp_path)
    flux = lib.flux(5200, 4.5, 0.0)
    assert flux.shape == lib.wave.shape
    # The file's pixels sit half a step (1.5 km/s, 0.043 Å at 8542 Å) redder, and so do its lines.
    shift = line_centre(lib.wave, flux, CA_II_AIR[1]) - CA_II_AIR[1]
    assert shift == pytest.approx(0.5e-5 * CA_II_AIR[1], abs=0.01)


# ----------------------------------------------------------------------------- file names, URLs
def test_filenames_round_trip():
    assert (phoenix_filename(5000, 4.5, 0.0)
            == "lte05000-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits")
    assert phoenix_filename(5000, 4.5, 0.5).startswith("lte05000-4.50+0.5.")
    assert phoenix_filename(12000, 0.0, -1.0).startswith("lte12000-0.00-1.0.")
    assert phoenix_filename(5000, 4.5, 0.0, alpha=0.4).startswith("lte05000-4.50-0.0.Alpha=+0.40.")
    for node in [(5000.0, 4.5, 0.0), (2300.0, 0.0, -4.0), (11800.0, 6.0, 1.0)]:
        assert parse_phoenix_filename(phoenix_filename(*node)) == node + (0.0,)
    assert parse_phoenix_filename(WAVE_FILENAME) is None


def test_fetch_phoenix_dry_run_urls(tmp_path):
    urls = fetch_phoenix(tmp_path, teff=(5000, 5150), logg=(4.4, 4.5), feh=(-0.2, 0.3),
                         dry_run=True)
    # Rounded outward: Teff 5000, 5100, 5200; logg 4.0, 4.5; [Fe/H] -0.5, 0.0, +0.5; + WAVE.
    assert len(urls) == 3 * 2 * 3 + 1
    assert urls[0] == ("https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/"
                       "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits")
    base = ("https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/"
            "PHOENIX-ACES-AGSS-COND-2011/")
    assert (base + "Z-0.0/lte05000-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits") in urls
    assert (base + "Z+0.5/lte05200-4.00+0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits") in urls
    assert (base + "Z-0.5/lte05100-4.50-0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits") in urls
    assert len(set(urls)) == len(urls)
    assert list(tmp_path.iterdir()) == []             # a dry run writes nothing


def test_fetch_phoenix_grid_definition():
    # 6900, 7000, 7200: the Teff step changes from 100 to 200 K at 7000 K.
    urls = fetch_phoenix("unused", teff=(6950, 7100), logg=(4.5, 4.5), feh=(0.0, 0.0),
                         dry_run=True)
    names = sorted(u.rsplit("/", 1)[1][:17] for u in urls[1:])
    assert names == ["lte06900-4.50-0.0", "lte07000-4.50-0.0", "lte07200-4.50-0.0"]
    # The full grid: 47 (2300-6900) + 26 (7000-12000) Teff, 13 logg, 9 [Fe/H].
    assert len(fetch_phoenix("unused", teff=(0, 1e5), logg=(-1, 9), feh=(-9, 9),
                             dry_run=True)) == (47 + 26) * 13 * 9 + 1
    with pytest.raises(ValueError, match="outside the PHOENIX grid"):
        fetch_phoenix("unused", teff=(13000, 14000), dry_run=True)


# ------------------------------------------------------------------------------- real files
@pytest.fixture(scope="module")
def real() -> PhoenixLibrary:
    if not REAL_DIR.is_dir() or not any(REAL_DIR.glob("lte*.fits")):
        pytest.skip(f"real PHOENIX files not found in {REAL_DIR}")
    return PhoenixLibrary(REAL_DIR)


def test_real_files_axes(real):
    assert real.axes.teff == tuple(float(t) for t in range(5000, 6401, 200))
    assert real.axes.logg == (4.5,) and real.axes.feh == (0.0,)
    assert real.available.all()
    assert real.product == PRODUCT_LOGLAM and real.resolution == 10_000.0


def test_real_files_calcium_line_in_air(real):
    for teff in real.axes.teff:
        flux = real.flux(teff, 4.5, 0.0)
        i = np.argmin(np.where(np.abs(real.wave - 8542.09) < 2.0, flux, np.inf))
        assert abs(real.wave[i] - 8542.09) < 0.1


def test_real_files_continuum_ratio_and_normalisation(real):
    ratio = real.continuum(6400, 4.5, 0.0, 8600.0) / real.continuum(5000, 4.5, 0.0, 8600.0)
    assert 1.5 < ratio < 3.0
    sel = (real.wave > 8600) & (real.wave < 8640)
    for teff in real.axes.teff:
        assert abs(np.median(real.flux(teff, 4.5, 0.0)[sel]) - 1.0) < 0.03
