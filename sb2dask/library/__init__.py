"""Spectral libraries: PHOENIX files, the embedded LTE grid, and the grid builder."""

from __future__ import annotations

from pathlib import Path

from .base import (
    CONTINUUM_REFERENCE_WAVE,
    RVS_WINDOW,
    GridAxes,
    MissingNodeError,
    ParameterRanges,
    SpectralLibrary,
    describe_library,
)

__all__ = ["CONTINUUM_REFERENCE_WAVE", "RVS_WINDOW", "GridAxes", "MissingNodeError",
           "ParameterRanges", "SpectralLibrary", "describe_library", "load_library"]


def load_library(spec: str | Path = "embedded") -> SpectralLibrary:
    """Open a library: ``"embedded"`` (the shipped grid), a grid file ``*.zarr.zip``, or a
    directory of PHOENIX-ACES-AGSS-COND-2011 FITS files."""
    if str(spec) == "embedded":
        from .embedded import EmbeddedLibrary

        return EmbeddedLibrary()
    path = Path(spec)
    if path.is_dir():
        from .phoenix import PhoenixLibrary

        return PhoenixLibrary(path)
    if path.suffix == ".zip":
        from .embedded import EmbeddedLibrary

        return EmbeddedLibrary(path)
    raise ValueError(f"{path}: expected 'embedded', a *.zarr.zip grid or a PHOENIX directory")
