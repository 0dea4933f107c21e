"""Writers of small PHOENIX-ACES-AGSS-COND-2011 files for testing :mod:`sb2dask.library.phoenix`.

The files mimic both real products, restricted to vacuum 8300-8900 Å so they stay small:

* log-λ product: ``CTYPE1 = 'AWAV-LOG'``, ``CRVAL1 = ln(8300)``, ``CDELT1 = 1e-5``, no ``CRPIX1``,
  vacuum wavelengths despite the ``AWAV`` (as measured in the real files);
* HiRes product: flux-only files plus ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits`` on an irregular
  vacuum grid (R = 500 000 up to 8600 Å, then a constant 0.015 Å step).

Flux is a surface blackbody πB_λ(Teff) in erg s⁻¹ cm⁻² cm⁻¹ times the Ca II triplet, placed at
its vacuum wavelengths, with Gaussian cores and Lorentzian wings whose depths vary with Teff,
[Fe/H] and logg so that every node differs. Headers carry PHXTEFF/PHXLOGG/PHXM_H/PHXALPHA and
PHXMASS [g] / PHXREFF [cm] consistent with the file name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from sb2dask.library.phoenix import WAVE_FILENAME, phoenix_filename

__all__ = ["CA_II_VAC", "CA_II_AIR", "FIXTURE_TEFF", "FIXTURE_LOGG", "FIXTURE_FEH",
           "fixture_mass", "fixture_radius", "surface_continuum", "loglam_wave_vac",
           "hires_wave_vac", "write_loglam_file", "write_loglam_grid", "write_wave_file",
           "write_hires_file", "write_hires_grid", "truncate_file"]

#: Ca II triplet, vacuum and air [Å].
CA_II_VAC = (8500.36, 8544.44, 8664.52)
CA_II_AIR = (8498.02, 8542.09, 8662.14)
FIXTURE_TEFF = (5000.0, 6000.0)
FIXTURE_LOGG = (4.0, 4.5)
FIXTURE_FEH = (0.0, 0.5)
_RANGE_VAC = (8300.0, 8900.0)
_G_CGS = 6.674e-8
_M_SUN_G = 1.98841e33
_R_SUN_CM = 6.957e10


def fixture_mass(teff: float) -> float:
    """Mass written to PHXMASS for a node [M_sun] (a rough dwarf sequence)."""
    return teff / 5772.0


def fixture_radius(teff: float, logg: float) -> float:
    """Radius written to PHXREFF [R_sun], from the mass and g = GM/R²."""
    return float(np.sqrt(_G_CGS * fixture_mass(teff) * _M_SUN_G / 10.0 ** logg)) / _R_SUN_CM


def surface_continuum(teff: float, wave_vac: np.ndarray) -> np.ndarray:
    """Injected continuum πB_λ(Teff) [erg s⁻¹ cm⁻² cm⁻¹] at vacuum wavelengths [Å]."""
    lam = np.asarray(wave_vac, dtype=np.float64) * 1e-8
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16
    return np.pi * 2 * h * c ** 2 / lam ** 5 / np.expm1(h * c / (lam * k * teff))


def _spectrum(teff: float, logg: float, feh: float, wave_vac: np.ndarray) -> np.ndarray:
    depth = 0.45 + 0.15 * (6000.0 - teff) / 1000.0 + 0.1 * feh   # <= 0.65 on the grid
    gamma = 1.0 * 10 ** (0.3 * (logg - 4.5))      # wing half-width [Å]: wider at high gravity
    profile = np.ones_like(wave_vac)
    for centre, strength in zip(CA_II_VAC, (0.8, 1.0, 0.95)):
        x = wave_vac - centre
        core = depth * strength * np.exp(-0.5 * (x / 0.35) ** 2)
        wing = 0.25 * strength * gamma ** 2 / (x ** 2 + gamma ** 2)
        profile *= np.clip(1.0 - core - wing, 0.05, None)
    return surface_continuum(teff, wave_vac) * profile


def _header(teff: float, logg: float, feh: float, alpha: float = 0.0) -> fits.Header:
    hdr = fits.Header()
    hdr["PHXTEFF"] = (float(teff), "[K] effective temperature")
    hdr["PHXLOGG"] = (float(logg), "[cm/s^2] log (surface gravity)")
    hdr["PHXM_H"] = (float(feh), "[M/H] metallicity (rel. sol. - Asplund &a 2009)")
    hdr["PHXALPHA"] = (float(alpha), "[a/M] alpha element enhancement")
    # Grams and centimetres, although the real header comment says [kg].
    hdr["PHXMASS"] = (fixture_mass(teff) * _M_SUN_G, "[kg] Stellar mass")
    hdr["PHXREFF"] = (fixture_radius(teff, logg) * _R_SUN_CM, "[cm] Effective stellar radius")
    hdr["BUNIT"] = ("erg/s/cm^2/cm", "Unit of flux")
    return hdr


def loglam_wave_vac() -> np.ndarray:
    """Vacuum wavelengths [Å] of the log-λ fixture pixels: exp(ln 8300 + 1e-5 · i)."""
    n = int(np.ceil(np.log(_RANGE_VAC[1] / _RANGE_VAC[0]) / 1e-5)) + 1
    return np.exp(np.log(_RANGE_VAC[0]) + 1e-5 * np.arange(n))


def hires_wave_vac() -> np.ndarray:
    """Irregular vacuum grid [Å] of the HiRes fixture: R = 500 000 steps, then 0.015 Å steps."""
    blue = _RANGE_VAC[0] * np.exp(np.arange(0.0, np.log(8600.0 / _RANGE_VAC[0]), 2e-6))
    red = np.arange(blue[-1] + 0.015, _RANGE_VAC[1], 0.015)
    return np.concatenate([blue, red])


def write_loglam_file(directory: Path, teff: float, logg: float, feh: float, *,
                      alpha: float = 0.0, header_teff: float | None = None) -> Path:
    """One log-λ product file; ``header_teff`` writes a PHXTEFF that disagrees with the name."""
    wave = loglam_wave_vac()
    hdu = fits.PrimaryHDU(_spectrum(teff, logg, feh, wave).astype(np.float32),
                          header=_header(teff, logg, feh, alpha))
    hdu.header["CRVAL1"] = np.log(_RANGE_VAC[0])
    hdu.header["CDELT1"] = 1e-5
    hdu.header["CTYPE1"] = "AWAV-LOG"
    if header_teff is not None:
        hdu.header["PHXTEFF"] = float(header_teff)
    path = Path(directory) / phoenix_filename(teff, logg, feh, alpha)
    hdu.writeto(path)
    return path


def write_loglam_grid(directory: Path, teffs=FIXTURE_TEFF, loggs=FIXTURE_LOGG,
                      fehs=FIXTURE_FEH) -> list[Path]:
    """Log-λ files for every node of ``teffs × loggs × fehs``."""
    return [write_loglam_file(directory, t, g, z) for t in teffs for g in loggs for z in fehs]


def write_wave_file(directory: Path) -> Path:
    """The HiRes product's wavelength file (vacuum, Å, float64)."""
    path = Path(directory) / WAVE_FILENAME
    fits.PrimaryHDU(hires_wave_vac()).writeto(path)
    return path


def write_hires_file(directory: Path, teff: float, logg: float, feh: float, *,
                     header_teff: float | None = None) -> Path:
    """One HiRes flux file (no WCS keywords, as in the real product)."""
    hdu = fits.PrimaryHDU(_spectrum(teff, logg, feh, hires_wave_vac()).astype(np.float32),
                          header=_header(teff, logg, feh))
    if header_teff is not None:
        hdu.header["PHXTEFF"] = float(header_teff)
    path = Path(directory) / phoenix_filename(teff, logg, feh)
    hdu.writeto(path)
    return path


def write_hires_grid(directory: Path, teffs=FIXTURE_TEFF, loggs=FIXTURE_LOGG, fehs=FIXTURE_FEH,
                     wave_file: bool = True) -> list[Path]:
    """HiRes files for every node, plus the WAVE file unless ``wave_file`` is False."""
    paths = [write_hires_file(directory, t, g, z) for t in teffs for g in loggs for z in fehs]
    if wave_file:
        write_wave_file(directory)
    return paths


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to the first ``keep`` fraction of its bytes, as an interrupted download does."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path
