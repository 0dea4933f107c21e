"""The embedded LTE grid shipped with the package (built by :mod:`sb2dask.library.build`)."""

from __future__ import annotations

import hashlib
import zipfile
from functools import cached_property
from pathlib import Path

import numpy as np

from .base import (
    CONTINUUM_REFERENCE_WAVE,
    GridAxes,
    MissingNodeError,
    ParameterRanges,
    describe_library,
)

__all__ = ["EMBEDDED_GRID_PATH", "EmbeddedLibrary"]

EMBEDDED_GRID_PATH = Path(__file__).parent / "data" / "embedded_grid.zarr.zip"


class EmbeddedLibrary:
    """A grid written by :func:`sb2dask.library.build.assemble_grid` (zipped Zarr v3 group).

    The whole grid (~20 MB as uint16) is decoded into memory at construction; node access is then
    an array lookup. Nodes whose status is not ``ok`` are unavailable.

    Parameters
    ----------
    path : path-like, optional
        Grid file; default the package's embedded grid.
    """

    def __init__(self, path: str | Path | None = None):
        import zarr
        from zarr.storage import ZipStore

        self.path = Path(path) if path is not None else EMBEDDED_GRID_PATH
        if not self.path.exists():
            raise FileNotFoundError(
                f"{self.path}: embedded grid not found; rebuild it with `sb2dask library build`")
        try:
            store = ZipStore(self.path, mode="r")
            g = zarr.open_group(store, mode="r")
            self._provenance = dict(g.attrs["provenance"])
            scale = float(g["flux"].attrs["scale_factor"])
            self._flux_q = g["flux"][...]
            self._scale = np.float32(scale)
            self._continuum = g["continuum"][...].astype(np.float64)
            self._continuum_wave = g["continuum_wave"][...]
            self._status = g["status"][...]
            self._mass = g["mass"][...].astype(np.float64)
            self._radius = g["radius"][...].astype(np.float64)
            self._wave = g["wave"][...]
            self._axes = GridAxes(tuple(map(float, g["teff"][...])),
                                  tuple(map(float, g["logg"][...])),
                                  tuple(map(float, g["feh"][...])))
            store.close()
        except (KeyError, OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{self.path}: not a valid sb2dask grid ({exc})") from exc

    # -- SpectralLibrary -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._provenance.get("name", self.path.name)

    @property
    def axes(self) -> GridAxes:
        return self._axes

    @property
    def wave(self) -> np.ndarray:
        return self._wave

    @property
    def resolution(self) -> float:
        return float("inf")

    @property
    def available(self) -> np.ndarray:
        return self._status == 0

    @cached_property
    def provenance(self) -> dict:
        h = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return dict(self._provenance, file=self.path.name, sha256=h)

    def ranges(self) -> ParameterRanges:
        """Covered ranges: Teff nodes with any available node; per Teff, the highest logg whose
        nodes exist at every [Fe/H]."""
        avail = self.available
        t = np.asarray(self._axes.teff)
        g = np.asarray(self._axes.logg)
        z = np.asarray(self._axes.feh)
        full = avail.all(axis=2)  # (n_teff, n_logg): logg rows complete in [Fe/H]
        rows = np.flatnonzero(full.any(axis=1))
        if rows.size == 0:
            raise ValueError(f"{self.path}: no complete node row in the grid")
        gmax = [float(g[full[i]].max()) for i in rows]
        steps = []
        for n, i in enumerate(rows):
            if n + 1 == len(rows) or gmax[n + 1] != gmax[n]:
                steps.append((float(t[i]), gmax[n]))
        return ParameterRanges(teff=(float(t[rows[0]]), float(t[rows[-1]])),
                               logg=(float(g[0]), max(gmax)),
                               feh=(float(z[0]), float(z[-1])), logg_max_by_teff=tuple(steps))

    def _index(self, teff, logg, feh):
        i, j, k = self._axes.index(teff, logg, feh)
        if self._status[i, j, k] != 0:
            raise MissingNodeError(f"{self.path.name}: node Teff={teff} logg={logg} [Fe/H]={feh} "
                                   "was not computed (see provenance['not_computed'])")
        return i, j, k

    def flux(self, teff: float, logg: float, feh: float) -> np.ndarray:
        return self._flux_q[self._index(teff, logg, feh)] * self._scale

    def flux_cube(self) -> np.ndarray:
        """All node fluxes, float32 ``(n_teff, n_logg, n_feh, n_pix)``; unavailable nodes are 0."""
        return self._flux_q * self._scale

    def continuum(self, teff: float, logg: float, feh: float,
                  wave: float | np.ndarray = CONTINUUM_REFERENCE_WAVE) -> np.ndarray:
        return np.interp(wave, self._continuum_wave, self._continuum[self._index(teff, logg, feh)])

    def mass(self, teff: float, logg: float, feh: float) -> float:
        return float(self._mass[self._index(teff, logg, feh)])

    def radius(self, teff: float, logg: float, feh: float) -> float:
        return float(self._radius[self._index(teff, logg, feh)])

    def describe(self) -> str:
        p = self._provenance
        lines = [describe_library(self),
                 f"file         {self.path} ({self.path.stat().st_size / 1e6:.1f} MB)",
                 f"built        {p.get('created')} by: {p.get('command')}",
                 f"versions     {p.get('versions')}",
                 f"line list    {p.get('linelist', {}).get('source')}",
                 f"not computed {len(p.get('not_computed', {}))} nodes",
                 f"limits       {p.get('physics_limits')}"]
        return "\n".join(lines)
