"""The data folders shipped inside the package: ``sb2dask.catalogs`` and ``sb2dask.deploy``.

In the source tree they are the top-level ``catalogs/`` (output schemas) and ``deploy/``
(ready-to-edit Dask jobqueue configurations) folders, which ``pyproject.toml`` maps to these two
subpackages; an editable install and a wheel therefore both find them with
:mod:`importlib.resources`, whatever the installation directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DATA_PACKAGES", "data_folder"]

#: Folder name in the source tree -> the subpackage it is installed as.
DATA_PACKAGES = {"catalogs": "sb2dask.catalogs", "deploy": "sb2dask.deploy"}


def data_folder(name: str) -> Path:
    """The installed folder of ``name`` (``"catalogs"`` or ``"deploy"``).

    Parameters
    ----------
    name : str
        A key of :data:`DATA_PACKAGES`.

    Returns
    -------
    Path
        The directory holding the package's data files (a real directory: pip installs
        packages unpacked).
    """
    if name not in DATA_PACKAGES:
        raise ValueError(f"unknown data folder {name!r}; choose from {sorted(DATA_PACKAGES)}")
    package = DATA_PACKAGES[name]
    try:
        folder = resources.files(package)
    except ModuleNotFoundError as exc:
        # Only a source tree put on PYTHONPATH without installing lacks the mapping.
        raise ModuleNotFoundError(
            f"{package} (the {name}/ folder of the source tree) is not installed: install "
            f"sb2dask, e.g. `python -m pip install -e .` in the repository") from exc
    if not isinstance(folder, Path):
        # e.g. a namespace package: an editable install made before these data packages existed
        # maps sb2dask.* to the old layout
        raise RuntimeError(f"{package} is not installed as a package directory ({folder!r}): "
                           "reinstall sb2dask, e.g. `python -m pip install -e .` in the "
                           "repository")
    return folder
