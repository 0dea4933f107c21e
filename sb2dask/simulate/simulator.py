"""The simulator of one configuration: its spectral library, label sampler and renderer, built
once per process (once per Dask worker) and reused for every batch."""

from __future__ import annotations

from .config import SimulationConfig

__all__ = ["simulator_for"]

#: The SimulationConfig fields the library, sampler and renderer are built from; the others
#: (seed, binary fraction, orbit and S/N ranges, gamma) are only read when drawing systems.
_BUILD_FIELDS = ("library", "teff_range", "logg_range", "feh_range", "vsini_range",
                 "working_dv", "resolution", "output_grid", "limb_darkening", "realism")

_CACHE: dict = {}


def simulator_for(config: SimulationConfig):
    """(library, sampler, renderer) for ``config``: a
    :class:`~sb2dask.library.base.SpectralLibrary`, a :class:`~.systems.GridSampler` and a
    :class:`~.spectra.SpectrumRenderer`.

    The last one built is cached per process, so a worker builds them once for all the chunks of
    a data set (building the renderer transforms every library node).
    """
    from ..library import load_library
    from .spectra import SpectrumRenderer
    from .systems import GridSampler

    key = tuple(getattr(config, name) for name in _BUILD_FIELDS)
    if key not in _CACHE:
        lib = load_library(config.library)
        _CACHE.clear()
        _CACHE[key] = (lib, GridSampler(lib, config), SpectrumRenderer(lib, config))
    return _CACHE[key]
