"""PHOENIX-ACES-AGSS-COND-2011 spectra (Husser et al. 2013, A&A 553, A6) as a spectral library.

Two file products are read from one directory, told apart by their headers:

``HiRes``
    The native files ``lte05000-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits``: the primary
    HDU holds the flux only; the wavelengths (vacuum, Å, an irregular grid) are in
    ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``, which must sit in the same directory.
    R = 500 000 in the optical/near-IR (Husser et al. 2013, Sect. 2.3).
``log-lambda``
    Files resampled to a grid uniform in ln λ, with ``CTYPE1 = 'AWAV-LOG'``, ``CRVAL1 = ln(3000)``
    and ``CDELT1 = 1e-5`` (212 027 pixels, 3000-25 000 Å, R = 1/CDELT1 = 100 000) and no
    ``CRPIX1`` (FITS default 1), so pixel ``i`` (0-based) lies at
    ``λ_i = exp(CRVAL1 + CDELT1 · (i + 1 - CRPIX1))``. ``CRVAL1`` is ln(λ/Å), not λ as the FITS
    ``-LOG`` convention (Greisen et al. 2006) would have it. The header says air (``AWAV``), but
    the Ca II triplet minima sit at their vacuum wavelengths (8500.31, 8544.46, 8664.49 Å for
    Teff = 5000 K, logg = 4.5), so the wavelengths are vacuum, as in the HiRes product.

For both products this module applies the same conversions: vacuum → air wavelengths
(:func:`~sb2dask.library.wavelength.vac_to_air`); flux from erg s⁻¹ cm⁻² cm⁻¹ to
erg s⁻¹ cm⁻² Å⁻¹ (÷ 1e8; the ≈3e-4 Jacobian between vacuum and air Å is neglected); cut to the
air window; a pseudo-continuum (:func:`~sb2dask.library.continuum.pseudo_continuum`) fitted in the
window; ``PHXMASS`` [g, although the header comment says kg] → M_sun; ``PHXREFF`` [cm] → R_sun.
Files with a non-zero alpha enhancement (``.Alpha=+0.40``) are ignored, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from .base import CONTINUUM_REFERENCE_WAVE, GridAxes, MissingNodeError, ParameterRanges
from .continuum import pseudo_continuum
from .wavelength import vac_to_air

__all__ = ["PhoenixLibrary", "PhoenixFileError", "fetch_phoenix", "phoenix_filename",
           "parse_phoenix_filename", "phoenix_url", "WAVE_FILENAME", "PHOENIX_TEFF",
           "PHOENIX_LOGG", "PHOENIX_FEH", "PRODUCT_HIRES", "PRODUCT_LOGLAM", "DEFAULT_WINDOW",
           "LOGLAM_RESOLUTION"]

logger = logging.getLogger(__name__)

#: Wavelength file of the HiRes product (vacuum, Å).
WAVE_FILENAME = "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
BASE_URL = "https://phoenix.astro.physik.uni-goettingen.de/data/HiResFITS"
PRODUCT_HIRES = "HiRes"
PRODUCT_LOGLAM = "log-lambda"
#: Air window [Å] kept from every spectrum: the RVS window 8470-8710 Å with margins for
#: ±100 km/s shifts and rotational broadening.
DEFAULT_WINDOW = (8440.0, 8740.0)

#: The PHOENIX-ACES-AGSS-COND-2011 grid definition (Husser et al. 2013, Table 1).
PHOENIX_TEFF = tuple(range(2300, 7000, 100)) + tuple(range(7000, 12001, 200))
PHOENIX_LOGG = tuple(0.5 * i for i in range(13))
PHOENIX_FEH = (-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)

M_SUN_G = 1.98841e33
R_SUN_CM = 6.957e10
#: erg s⁻¹ cm⁻² cm⁻¹ → erg s⁻¹ cm⁻² Å⁻¹.
PER_CM_TO_PER_ANGSTROM = 1e-8
_HIRES_RESOLUTION = 500_000.0
#: Resolving power of the log-λ product (the library's R = 10 000 files on a ln λ grid of step
#: 1e-5, i.e. sampled ten times finer than they resolve). Measured on the eight shared files
#: (``benchmarks/library_fidelity.py``): their lines match the embedded grid convolved to
#: R = 10 100-12 100 (median 10 400) best, not 1/CDELT1 = 100 000 as the sampling suggests.
LOGLAM_RESOLUTION = 10_000.0
_CONVERSIONS = (
    "wavelength: vacuum -> air (IAU standard, Morton 2000), for both products",
    "flux: erg/s/cm^2/cm -> erg/s/cm^2/Angstrom (x 1e-8), surface flux",
    "normalised flux: flux / pseudo_continuum (asymmetric sigma-clipped Legendre fit in window)",
    "mass: PHXMASS [g] / 1.98841e33 -> M_sun; radius: PHXREFF [cm] / 6.957e10 -> R_sun",
    "log-lambda product: CRVAL1 read as ln(lambda/Angstrom); header's AWAV taken as vacuum",
)

_NAME_RE = re.compile(r"^lte(?P<teff>\d{5})-(?P<logg>\d+\.\d{2})(?P<feh>[+-]\d+\.\d)"
                      r"(?:\.Alpha=(?P<alpha>[+-]\d+\.\d{2}))?"
                      r"\.PHOENIX-ACES-AGSS-COND-2011(?:-[A-Za-z]+)?\.fits$")


class PhoenixFileError(ValueError):
    """A PHOENIX file is unreadable, truncated, or disagrees with its name or its siblings."""


def _feh_str(feh: float) -> str:
    # PHOENIX writes solar metallicity as "-0.0", never "+0.0".
    return "-0.0" if abs(feh) < 0.05 else f"{feh:+.1f}"


def phoenix_filename(teff: float, logg: float, feh: float, alpha: float = 0.0) -> str:
    """File name of a HiRes node, e.g. ``lte05000-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits``.

    Parameters
    ----------
    teff : float
        Effective temperature [K].
    logg : float
        Surface gravity [dex, cgs].
    feh : float
        [Fe/H] [dex]; 0 is written ``-0.0``.
    alpha : float
        [α/Fe] [dex]; only a non-zero value adds the ``.Alpha=+0.40`` part.
    """
    alpha_part = f".Alpha={alpha:+.2f}" if abs(alpha) > 0.005 else ""
    return (f"lte{int(round(teff)):05d}-{logg:.2f}{_feh_str(feh)}{alpha_part}"
            ".PHOENIX-ACES-AGSS-COND-2011-HiRes.fits")


def parse_phoenix_filename(name: str) -> tuple[float, float, float, float] | None:
    """``(teff, logg, feh, alpha)`` parsed from a PHOENIX spectrum's file name.

    Returns ``None`` for any other file name (e.g. the WAVE file).
    """
    m = _NAME_RE.match(name)
    if m is None:
        return None
    alpha = float(m["alpha"]) if m["alpha"] else 0.0
    return float(m["teff"]), float(m["logg"]), float(m["feh"]) + 0.0, alpha


def phoenix_url(teff: float, logg: float, feh: float) -> str:
    """Download URL of a HiRes node on the Göttingen server."""
    return (f"{BASE_URL}/PHOENIX-ACES-AGSS-COND-2011/Z{_feh_str(feh)}/"
            f"{phoenix_filename(teff, logg, feh)}")


def _nodes_covering(grid: tuple[float, ...], lo: float, hi: float, name: str) -> list[float]:
    """Grid nodes spanning ``[lo, hi]`` rounded outward to the nearest nodes."""
    nodes = np.asarray(sorted(grid), dtype=float)
    eps = 1e-6
    if lo > hi:
        raise ValueError(f"{name} range ({lo}, {hi}) has min > max")
    if hi < nodes[0] - eps or lo > nodes[-1] + eps:
        raise ValueError(f"{name} range ({lo}, {hi}) lies outside the PHOENIX grid "
                         f"({nodes[0]:g} to {nodes[-1]:g})")
    i0 = max(int(np.searchsorted(nodes, lo + eps, side="right")) - 1, 0)
    i1 = min(int(np.searchsorted(nodes, hi - eps, side="left")), nodes.size - 1)
    return [float(v) for v in nodes[i0:i1 + 1]]


def fetch_phoenix(dest: str | os.PathLike, teff: tuple[float, float] = (3500, 6500),
                  logg: tuple[float, float] = (3.0, 6.0), feh: tuple[float, float] = (-4.0, 1.0),
                  dry_run: bool = False, timeout: float = 120.0) -> list[Path | str]:
    """Download the HiRes files (and the WAVE file) a parameter range needs.

    Each requested range is rounded outward to grid nodes of the PHOENIX definition
    (:data:`PHOENIX_TEFF`, :data:`PHOENIX_LOGG`, :data:`PHOENIX_FEH`), and every
    (Teff, logg, [Fe/H]) combination in the rounded box is fetched, alpha = 0 only.

    Parameters
    ----------
    dest : path
        Directory the files are written to (created if needed); a :class:`PhoenixLibrary` reads it.
    teff, logg, feh : (float, float)
        Ranges [K], [dex], [dex], inclusive.
    dry_run : bool
        Return the URLs (WAVE file first) without downloading anything.
    timeout : float
        Socket timeout per file [s].

    Returns
    -------
    list
        URLs (``dry_run``) or local paths of the files now present in ``dest``. A file already
        present with non-zero size is not downloaded again; each download goes to a temporary
        name renamed on completion, so an interrupted run leaves no partial file. Some
        combinations are absent from the PHOENIX grid (the server answers 404): those are logged
        and skipped.
    """
    teffs = _nodes_covering(PHOENIX_TEFF, *teff, name="teff")
    loggs = _nodes_covering(PHOENIX_LOGG, *logg, name="logg")
    fehs = _nodes_covering(PHOENIX_FEH, *feh, name="feh")
    items = [(f"{BASE_URL}/{WAVE_FILENAME}", WAVE_FILENAME)]
    items += [(phoenix_url(t, g, z), phoenix_filename(t, g, z))
              for z in fehs for t in teffs for g in loggs]
    if dry_run:
        return [url for url, _ in items]

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path | str] = []
    for url, name in items:
        path = dest / name
        if path.exists() and path.stat().st_size > 0:
            out.append(path)
            continue
        try:  # a failed or interrupted download leaves no partial file behind
            with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=timeout) as resp, \
                    open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh, 1 << 20)
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and name != WAVE_FILENAME:
                logger.warning("%s: not on the PHOENIX server (HTTP 404), skipped", url)
                continue
            raise OSError(f"downloading {url} to {path} failed: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise OSError(f"downloading {url} to {path} failed: {reason}") from exc
        logger.info("fetched %s", path)
        out.append(path)
    return out


def _key(teff: float, logg: float, feh: float) -> tuple[int, int, int]:
    return int(round(teff)), int(round(logg * 100)), int(round(feh * 100))


@dataclass(frozen=True, slots=True)
class _Grid:
    """Where a file's window lies: its product, pixel slice, and air wavelengths there."""

    product: str
    pixels: slice
    wave: np.ndarray          # air, Å, shape (n_window,)
    resolution: float
    source: str               # file whose header (or WAVE file) defined the grid


@dataclass(frozen=True, slots=True)
class _Node:
    flux: np.ndarray          # normalised, shape (n_pix,), read-only
    continuum: np.ndarray     # erg s⁻¹ cm⁻² Å⁻¹, shape (n_pix,), read-only
    mass: float               # M_sun
    radius: float             # R_sun


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.flags.writeable = False
    return a


class PhoenixLibrary:
    """A directory of PHOENIX-ACES-AGSS-COND-2011 spectra as a :class:`SpectralLibrary`.

    Construction only lists the directory and parses file names; each node's FITS file is read,
    checked (header against file name, length, units), cut to ``window``, normalised and cached
    on first access.

    Parameters
    ----------
    directory : path
        Directory with ``lte*.PHOENIX-ACES-AGSS-COND-2011*.fits`` files of either product (and,
        for HiRes files, ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``).
    window : (float, float)
        Air wavelength range [Å] kept from every spectrum.
    continuum_degree : int
        Degree of the pseudo-continuum polynomial over the window.
    cache_size : int or None
        Number of nodes kept in memory (least recently used dropped first); ``None`` keeps all
        (a full grid in the default window is ~2000 nodes × ~3500 log-λ pixels).

    Notes
    -----
    All nodes share one wavelength grid, :attr:`wave`: that of the first file in name order.
    A node file of the same product on a different grid (e.g. log-λ files written with another
    ``CRVAL1``) is linearly interpolated onto it. Files of the other product raise
    :class:`PhoenixFileError`: their resolving power differs by a factor 5, and resampling would
    silently give the library nodes with different line spread functions.
    """

    def __init__(self, directory: str | os.PathLike, window: tuple[float, float] = DEFAULT_WINDOW,
                 continuum_degree: int = 3, cache_size: int | None = None) -> None:
        self._dir = Path(directory)
        if not self._dir.is_dir():
            raise FileNotFoundError(f"PHOENIX directory {self._dir} does not exist or is not a "
                                    "directory")
        wmin, wmax = (float(w) for w in window)
        if not 0 < wmin < wmax:
            raise ValueError(f"window must be (wmin, wmax) with 0 < wmin < wmax [Å], got {window}")
        self._window = (wmin, wmax)
        self._degree = int(continuum_degree)
        self._cache_size = cache_size
        self._files: dict[tuple[int, int, int], Path] = {}
        self._nodes: dict[tuple[int, int, int], tuple[float, float, float]] = {}
        self._ignored: list[str] = []
        sizes = []
        for path in sorted(self._dir.iterdir()):
            parsed = parse_phoenix_filename(path.name)
            if parsed is None:
                if path.name == WAVE_FILENAME:
                    sizes.append((path.name, path.stat().st_size))
                continue
            teff, logg, feh, alpha = parsed
            if alpha != 0.0:
                self._ignored.append(path.name)
                continue
            k = _key(teff, logg, feh)
            if k in self._files:
                raise ValueError(f"{self._dir}: {path.name} and {self._files[k].name} are both "
                                 f"the node Teff={teff:g}, logg={logg:g}, [Fe/H]={feh:+g}")
            self._files[k] = path
            self._nodes[k] = (teff, logg, feh)
            sizes.append((path.name, path.stat().st_size))
        if not self._files:
            extra = (f" ({len(self._ignored)} alpha-enhanced files ignored)"
                     if self._ignored else "")
            raise ValueError(f"no PHOENIX spectra (lte*.PHOENIX-ACES-AGSS-COND-2011*.fits with "
                             f"alpha = 0) in {self._dir}{extra}")
        self._sizes = sorted(sizes)
        vals = np.array(list(self._nodes.values()))
        self._axes = GridAxes(*(tuple(float(v) for v in np.unique(vals[:, i])) for i in range(3)))
        self._available = np.zeros(self._axes.shape, dtype=bool)
        for t, g, z in self._nodes.values():
            self._available[self._axes.index(t, g, z)] = True
        self._available.flags.writeable = False
        self._first = self._files[min(self._files, key=lambda k: self._files[k].name)]
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._cache: OrderedDict[tuple[int, int, int], _Node] = OrderedDict()
        self._ref: _Grid | None = None
        self._grids: dict[tuple, _Grid] = {}
        self._hires_wave: np.ndarray | None = None
        # Dask's threaded workers share one library; the LRU bookkeeping must not interleave.
        self._lock = threading.Lock()

    # Dask ships the library to workers: send the file list, not the cached spectra.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_cache", "_ref", "_grids", "_hires_wave", "_lock"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    def __repr__(self) -> str:
        return (f"PhoenixLibrary({str(self._dir)!r}, window={self._window}, "
                f"{len(self._files)} nodes)")

    # ----------------------------------------------------------------------------------- reading
    def _hires_wave_vac(self, flux_file: Path) -> np.ndarray:
        if self._hires_wave is None:
            path = self._dir / WAVE_FILENAME
            if not path.is_file():
                raise PhoenixFileError(
                    f"{flux_file}: HiRes flux file without its wavelengths: expected "
                    f"{WAVE_FILENAME} in {self._dir}")
            try:
                with warnings.catch_warnings(record=True), _fits().open(path, memmap=False) as h:
                    wave = np.asarray(h[0].data, dtype=np.float64).ravel()
            except (OSError, ValueError, TypeError, IndexError) as exc:
                raise PhoenixFileError(f"{path}: not a readable FITS wavelength file "
                                       f"({type(exc).__name__}: {exc})") from exc
            if wave.size < 2 or not np.all(np.diff(wave) > 0):
                raise PhoenixFileError(f"{path}: expected increasing vacuum wavelengths [Å] in "
                                       f"the primary HDU, got {wave.size} values")
            self._hires_wave = wave
        return self._hires_wave

    def _grid_from_header(self, path: Path, header) -> tuple[_Grid, np.ndarray | None]:
        """Grid of a file from its header; the second item is the full vacuum WAVE array (HiRes)."""
        n = int(header.get("NAXIS1", 0))
        if header.get("NAXIS", 0) != 1 or n < 2:
            raise PhoenixFileError(f"{path}: expected a 1-D spectrum in the primary HDU, got "
                                   f"NAXIS={header.get('NAXIS')}, NAXIS1={header.get('NAXIS1')}")
        unit = str(header.get("BUNIT", "erg/s/cm^2/cm")).replace(" ", "")
        if unit != "erg/s/cm^2/cm":
            raise PhoenixFileError(f"{path}: expected BUNIT = 'erg/s/cm^2/cm', got {unit!r}")
        ctype = str(header.get("CTYPE1", "")).upper()
        if ctype.endswith("-LOG"):
            try:
                crval, cdelt = float(header["CRVAL1"]), float(header["CDELT1"])
            except KeyError as exc:
                raise PhoenixFileError(f"{path}: CTYPE1 = {ctype!r} but no {exc.args[0]}") from exc
            crpix = float(header.get("CRPIX1", 1.0))
            # CRVAL1 must be ln(λ/Å) for λ between ~50 Å and ~1 mm; the product never uses λ.
            if not (4.0 < crval < 16.0 and 0 < cdelt < 1e-2):
                raise PhoenixFileError(f"{path}: expected CRVAL1 = ln(λ/Å) and a small positive "
                                       f"CDELT1 in ln λ, got CRVAL1={crval}, CDELT1={cdelt}")
            gkey = (PRODUCT_LOGLAM, crval, cdelt, crpix, n)
            if gkey not in self._grids:
                wave = vac_to_air(np.exp(crval + cdelt * (np.arange(n) + 1.0 - crpix)))
                self._grids[gkey] = self._cut(path, wave, PRODUCT_LOGLAM, LOGLAM_RESOLUTION)
            return self._grids[gkey], None
        wave_vac = self._hires_wave_vac(path)
        if wave_vac.size != n:
            raise PhoenixFileError(f"{path}: {n} flux pixels but {WAVE_FILENAME} in {self._dir} "
                                   f"has {wave_vac.size} wavelengths")
        gkey = (PRODUCT_HIRES, n)
        if gkey not in self._grids:
            self._grids[gkey] = self._cut(self._dir / WAVE_FILENAME, vac_to_air(wave_vac),
                                          PRODUCT_HIRES, _HIRES_RESOLUTION)
        return self._grids[gkey], wave_vac

    def _cut(self, path: Path, wave_air: np.ndarray, product: str, resolution: float) -> _Grid:
        wmin, wmax = self._window
        if wave_air[0] > wmin or wave_air[-1] < wmax:
            raise PhoenixFileError(f"{path}: covers {wave_air[0]:.2f}-{wave_air[-1]:.2f} Å (air), "
                                   f"expected the window {wmin:g}-{wmax:g} Å inside it")
        i0 = int(np.searchsorted(wave_air, wmin, side="left"))
        i1 = int(np.searchsorted(wave_air, wmax, side="right"))
        return _Grid(product, slice(i0, i1), _readonly(wave_air[i0:i1]), float(resolution),
                     path.name)

    @property
    def _reference(self) -> _Grid:
        if self._ref is None:
            header = self._read_header(self._first)
            self._ref = self._grid_from_header(self._first, header)[0]
        return self._ref

    @staticmethod
    def _read_header(path: Path):
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                return _fits().getheader(path, 0)
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise PhoenixFileError(f"{path}: not a readable FITS file ({type(exc).__name__}: "
                                   f"{exc})") from exc

    def _read_node(self, path: Path, node: tuple[float, float, float]) -> _Node:
        teff, logg, feh = node
        ref = self._reference
        with warnings.catch_warnings(record=True) as caught:
            # astropy reports truncation as a warning and then fails on the data; keep the
            # warning for the error message instead of letting it reach the log.
            warnings.simplefilter("always")
            try:
                with _fits().open(path, memmap=True) as hdul:
                    header = hdul[0].header
                    grid, _ = self._grid_from_header(path, header)
                    data = hdul[0].data
                    if data is None or data.shape != (int(header["NAXIS1"]),):
                        raise ValueError(f"data shape {None if data is None else data.shape}, "
                                         f"header NAXIS1 = {header.get('NAXIS1')}")
                    raw = np.array(data[grid.pixels], dtype=np.float64)
            except PhoenixFileError:
                raise
            except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
                notes = "".join(f"; {w.message}" for w in caught)
                raise PhoenixFileError(f"{path}: corrupt or truncated FITS file "
                                       f"({type(exc).__name__}: {exc}{notes})") from exc

        expected = {"PHXTEFF": (teff, 0.5), "PHXLOGG": (logg, 0.005), "PHXM_H": (feh, 0.005)}
        for kw, (want, tol) in expected.items():
            if kw not in header:
                raise PhoenixFileError(f"{path}: header lacks {kw} (expected {want:g})")
            if abs(float(header[kw]) - want) > tol:
                raise PhoenixFileError(f"{path}: header {kw} = {header[kw]} disagrees with the "
                                       f"file name, which says {want:g}")
        for kw in ("PHXMASS", "PHXREFF"):
            if kw not in header:
                raise PhoenixFileError(f"{path}: header lacks {kw}")
        if not np.all(np.isfinite(raw)) or np.any(raw <= 0):
            raise PhoenixFileError(f"{path}: non-finite or non-positive flux in the window "
                                   f"{self._window[0]:g}-{self._window[1]:g} Å")

        if grid.product != ref.product:
            raise PhoenixFileError(
                f"{path}: {grid.product} product, but the library's grid comes from the "
                f"{ref.product} file {self._first.name}; keep one product per directory")
        flux = raw * PER_CM_TO_PER_ANGSTROM
        if grid.wave.shape != ref.wave.shape or not np.array_equal(grid.wave, ref.wave):
            flux = np.interp(ref.wave, grid.wave, flux)
        # Models are noiseless: no noise floor, so the fit stays on the upper envelope.
        cont = pseudo_continuum(ref.wave, flux, degree=self._degree, noise_floor=0.0)
        return _Node(flux=_readonly(flux / cont), continuum=_readonly(cont),
                     mass=float(header["PHXMASS"]) / M_SUN_G,
                     radius=float(header["PHXREFF"]) / R_SUN_CM)

    def _node(self, teff: float, logg: float, feh: float) -> _Node:
        k = _key(teff, logg, feh)
        with self._lock:
            hit = self._cache.get(k)
            if hit is not None:
                self._cache.move_to_end(k)
                return hit
        path = self._files.get(k)
        if path is None:
            raise MissingNodeError(
                f"no PHOENIX spectrum for Teff={teff:g}, logg={logg:g}, [Fe/H]={feh:+g}: expected "
                f"{phoenix_filename(teff, logg, feh)} in {self._dir}")
        # Read outside the lock: two threads may both read a node once, which is harmless.
        node = self._read_node(path, self._nodes[k])
        with self._lock:
            self._cache[k] = node
            if self._cache_size is not None and len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return node

    # ------------------------------------------------------------------------ SpectralLibrary
    @property
    def name(self) -> str:
        return "phoenix-aces-agss-cond-2011"

    @property
    def directory(self) -> Path:
        """The directory the spectra are read from."""
        return self._dir

    @property
    def window(self) -> tuple[float, float]:
        """Air wavelength window [Å] kept from every spectrum."""
        return self._window

    @property
    def product(self) -> str:
        """:data:`PRODUCT_HIRES` or :data:`PRODUCT_LOGLAM`, from the first file's header."""
        return self._reference.product

    @property
    def axes(self) -> GridAxes:
        """Node values present in the directory (alpha = 0 files only)."""
        return self._axes

    @property
    def wave(self) -> np.ndarray:
        """Air wavelengths [Å] of the window pixels, shape ``(n_pix,)``, read-only."""
        return self._reference.wave

    @property
    def resolution(self) -> float:
        """λ/Δλ of the spectra: :data:`LOGLAM_RESOLUTION` (10 000) for the log-λ product,
        500 000 for HiRes."""
        return self._reference.resolution

    @property
    def available(self) -> np.ndarray:
        """Boolean mask of shape ``axes.shape``: which (teff, logg, feh) files are present."""
        return self._available

    @property
    def provenance(self) -> dict:
        """Product, directory, file count and checksum of the file list, and conversions."""
        digest = hashlib.sha256(json.dumps(self._sizes).encode()).hexdigest()
        return dict(
            name=self.name,
            product=self.product,
            reference="Husser et al. 2013, A&A 553, A6",
            directory=str(self._dir.resolve()),
            n_files=len(self._files),
            files_sha256=digest,
            files_sha256_of="sorted JSON list of [filename, size in bytes] of the node files "
                            f"and {WAVE_FILENAME} if present",
            ignored_alpha_files=len(self._ignored),
            window_air=list(self._window),
            n_pix=int(self.wave.size),
            resolution=self.resolution,
            wavelength_grid_from=self._reference.source,
            continuum_degree=self._degree,
            conversions=list(_CONVERSIONS),
            units=dict(wave="Angstrom (air)", continuum="erg s-1 cm-2 Angstrom-1 (surface flux)",
                       mass="Msun", radius="Rsun"),
        )

    def ranges(self) -> ParameterRanges:
        """Covered label ranges; ``logg_max_by_teff`` lists runs of Teff nodes sharing the same
        highest available logg when that highest logg varies with Teff."""
        ax, av = self._axes, self._available
        top = [max(g for j, g in enumerate(ax.logg) if av[i, j].any())
               for i in range(len(ax.teff))]
        runs: list[tuple[float, float]] = []
        for t, g in zip(ax.teff, top):
            if runs and runs[-1][1] == g:
                runs[-1] = (t, g)
            else:
                runs.append((t, g))
        return ParameterRanges(teff=(ax.teff[0], ax.teff[-1]), logg=(ax.logg[0], ax.logg[-1]),
                               feh=(ax.feh[0], ax.feh[-1]),
                               logg_max_by_teff=tuple(runs) if len(runs) > 1 else ())

    def flux(self, teff: float, logg: float, feh: float) -> np.ndarray:
        """Continuum-normalised flux on :attr:`wave`, shape ``(n_pix,)``, read-only.

        Raises
        ------
        MissingNodeError
            No file for this node (the message names the expected file and directory).
        PhoenixFileError
            The file is corrupt or truncated, its header disagrees with its name, or a HiRes
            file's wavelength file is missing.
        """
        return self._node(teff, logg, feh).flux

    def continuum(self, teff: float, logg: float, feh: float,
                  wave: float | np.ndarray = CONTINUUM_REFERENCE_WAVE) -> np.ndarray:
        """Fitted pseudo-continuum [erg s⁻¹ cm⁻² Å⁻¹, stellar surface] at air ``wave`` [Å].

        ``wave`` is a scalar or an array inside :attr:`window`; the result has its shape.
        """
        wave = np.asarray(wave, dtype=np.float64)
        ref = self.wave
        if np.any(wave < ref[0]) or np.any(wave > ref[-1]):
            raise ValueError(f"continuum wavelengths must lie in {ref[0]:.2f}-{ref[-1]:.2f} Å "
                             f"(air) for {self._dir}, got {wave.min():g}-{wave.max():g} Å")
        return np.interp(wave, ref, self._node(teff, logg, feh).continuum)

    def mass(self, teff: float, logg: float, feh: float) -> float:
        """Stellar mass of the model [M_sun] from ``PHXMASS``."""
        return self._node(teff, logg, feh).mass

    def radius(self, teff: float, logg: float, feh: float) -> float:
        """Effective radius of the model [R_sun] from ``PHXREFF``."""
        return self._node(teff, logg, feh).radius


def _fits():
    # Imported on use: astropy.io.fits costs ~0.3 s and only this reader needs it.
    from astropy.io import fits

    return fits
