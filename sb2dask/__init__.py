"""sb2dask: single-epoch characterisation of double-lined spectroscopic binaries in Gaia RVS
spectra, at data-release scale with Dask (Binnenfeld et al. 2025)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    # pyproject.toml is the one place the version is written; installs record it in metadata.
    __version__ = version("sb2dask")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
