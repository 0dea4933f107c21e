"""The stellar labels every stage predicts, stores and reports: names, units, descriptions and
the ranges of Binnenfeld et al. (2025), Table 1. Import these; never re-type the tuple."""

from __future__ import annotations

__all__ = ["PARAMETERS", "UNITS", "DESCRIPTIONS", "TABLE1_RANGES", "TARGETS", "TRUE_PREFIX"]

#: The per-component labels of the temperature and parameter networks, in the paper's order.
PARAMETERS = ("teff", "logg", "feh", "vsini")

#: What the trained networks predict: the four labels and the SB2 detector's probability.
TARGETS = PARAMETERS + ("p_binary",)

#: Units as written in Zarr attributes, Parquet field metadata and manifests.
UNITS = {"teff": "K", "logg": "dex", "feh": "dex", "vsini": "km/s", "p_binary": ""}

DESCRIPTIONS = {
    "teff": "effective temperature",
    "logg": "surface gravity log10(g / cm s-2)",
    "feh": "metallicity [Fe/H]",
    "vsini": "projected rotational velocity",
    "p_binary": "probability that the spectrum is an SB2",
}

#: Label ranges of Table 1, used to scale network targets to [0, 1].
TABLE1_RANGES = {"teff": (3500.0, 6500.0), "logg": (3.0, 6.0), "feh": (-4.0, 1.0),
                 "vsini": (0.0, 100.0)}

#: Prefix of catalogue columns that carry true labels (``true_teff_1``): written with simulated
#: catalogues, passed through by the readers.
TRUE_PREFIX = "true_"
