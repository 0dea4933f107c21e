"""Main-sequence masses and radii for grid nodes.

Masses follow the Pecaut & Mamajek (2013, ApJS 208, 9; updated table) dwarf sequence,
interpolated in Teff; radii follow from the node's surface gravity and that mass,
``R = sqrt(G M / g)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["G_CGS", "M_SUN_G", "R_SUN_CM", "TEFF_SUN", "MAIN_SEQUENCE_TABLE",
           "read_mass_teff_relation",
           "read_main_sequence_logg", "mass_from_teff", "radius_from_logg", "logg_from_radius"]

G_CGS = 6.67430e-8  # cm^3 g^-1 s^-2
M_SUN_G = 1.98841e33  # g
R_SUN_CM = 6.957e10  # cm (IAU nominal)
TEFF_SUN = 5772.0  # K (IAU nominal)

#: The Pecaut & Mamajek dwarf table shipped with the package (provenance: library/data/NOTICE.md).
MAIN_SEQUENCE_TABLE = Path(__file__).resolve().parent / "data" / "PecautMamajek_table.csv"


def read_mass_teff_relation(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read (Teff [K], mass [M_sun]) of the dwarf sequence from the Pecaut & Mamajek table.

    The file is whitespace-separated with ``...`` for missing values; rows without a mass are
    dropped. Returns both arrays sorted by Teff.

    Raises
    ------
    ValueError
        If the file lacks the ``Teff`` or ``Msun`` columns or holds fewer than two usable rows.
    """
    import pandas as pd

    path = Path(path)
    table = pd.read_csv(path, sep=r"\s+", na_values="...", usecols=lambda c: c in ("Teff", "Msun"))
    if set(table.columns) != {"Teff", "Msun"}:
        raise ValueError(f"{path}: expected columns 'Teff' and 'Msun', found {list(table.columns)}")
    table = table.dropna().sort_values("Teff")
    if len(table) < 2:
        raise ValueError(f"{path}: fewer than two rows with both Teff and Msun")
    return table["Teff"].to_numpy(float), table["Msun"].to_numpy(float)


def mass_from_teff(teff, relation: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Main-sequence mass [M_sun] at ``teff`` [K], linear in Teff between table rows."""
    t, m = relation
    teff = np.asarray(teff, dtype=float)
    if np.any(teff < t[0]) or np.any(teff > t[-1]):
        raise ValueError(f"Teff outside the mass relation's range {t[0]:.0f}-{t[-1]:.0f} K")
    return np.interp(teff, t, m)


def radius_from_logg(logg, mass_msun) -> np.ndarray:
    """Radius [R_sun] from surface gravity ``logg`` [dex, cgs] and mass [M_sun]."""
    g = 10.0 ** np.asarray(logg, dtype=float)
    return np.sqrt(G_CGS * np.asarray(mass_msun, dtype=float) * M_SUN_G / g) / R_SUN_CM


def logg_from_radius(radius_rsun, mass_msun) -> np.ndarray:
    """Surface gravity log10(g / cm s-2) of a star of ``radius_rsun`` [R_sun] and ``mass_msun``
    [M_sun]; the inverse of :func:`radius_from_logg`."""
    r = np.asarray(radius_rsun, dtype=float) * R_SUN_CM
    return np.log10(G_CGS * np.asarray(mass_msun, dtype=float) * M_SUN_G / r ** 2)


def read_main_sequence_logg(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(Teff [K], logg [dex]) of the Pecaut & Mamajek dwarf sequence: the radius from its
    luminosity and Teff (L = 4πR²σT⁴, solar units), the gravity from that radius and its mass.
    Rows without Teff, logL or mass are dropped; sorted by Teff.

    Raises
    ------
    ValueError
        If the file lacks the ``Teff``, ``logL`` or ``Msun`` columns or holds fewer than two
        usable rows.
    """
    import pandas as pd

    path = Path(path)
    want = ("Teff", "logL", "Msun")
    table = pd.read_csv(path, sep=r"\s+", na_values="...", usecols=lambda c: c in want)
    if set(table.columns) != set(want):
        raise ValueError(f"{path}: expected columns {list(want)}, found {list(table.columns)}")
    table = table.apply(pd.to_numeric, errors="coerce").dropna().sort_values("Teff")
    if len(table) < 2:
        raise ValueError(f"{path}: fewer than two rows with Teff, logL and Msun")
    teff = table["Teff"].to_numpy(float)
    radius = np.sqrt(10.0 ** table["logL"].to_numpy(float)) * (TEFF_SUN / teff) ** 2
    return teff, logg_from_radius(radius, table["Msun"].to_numpy(float))
