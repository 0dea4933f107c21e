"""The output schemas of ``catalogs/`` as pandas meta frames and Arrow schemas with units."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pandas as pd

from ..packagedata import data_folder

__all__ = ["load_schema", "empty_frame", "arrow_schema", "TABLES"]

TABLES = {"epoch": "epoch_parameters.yaml", "source": "source_parameters.yaml"}


@cache
def load_schema(table: str) -> dict:
    """The YAML schema of ``table`` (``"epoch"`` or ``"source"``) from ``catalogs/``."""
    import yaml

    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose from {sorted(TABLES)}")
    text = (data_folder("catalogs") / TABLES[table]).read_text()
    return yaml.safe_load(text)


def empty_frame(table: str, n: int = 0) -> pd.DataFrame:
    """A frame with the table's columns and dtypes (``n`` rows of NaN/0), usable as Dask meta."""
    cols = {}
    for c in load_schema(table)["columns"]:
        dt = c["dtype"]
        if dt == "string":
            cols[c["name"]] = pd.Series([""] * n, dtype="str")  # object in pandas 2
        elif dt == "bool":
            cols[c["name"]] = pd.Series(np.zeros(n, dtype=bool))
        elif dt.startswith("float"):
            cols[c["name"]] = pd.Series(np.full(n, np.nan, dtype=dt))
        else:
            cols[c["name"]] = pd.Series(np.zeros(n, dtype=dt))
    return pd.DataFrame(cols)


def arrow_schema(table: str, metadata: dict | None = None):
    """The pyarrow schema, each field carrying ``unit`` and ``description`` metadata, and the
    table's name, version, description plus ``metadata`` (JSON) in the schema metadata."""
    import pyarrow as pa

    s = load_schema(table)
    types = {"int64": pa.int64(), "int32": pa.int32(), "int16": pa.int16(), "float32": pa.float32(),
             "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string()}
    fields = [pa.field(c["name"], types[c["dtype"]],
                       metadata={"unit": c["unit"], "description": c["description"]})
              for c in s["columns"]]
    meta = {"sb2dask.table": s["name"], "sb2dask.schema_version": str(s["version"]),
            "sb2dask.description": s["description"]}
    for k, v in (metadata or {}).items():
        meta[f"sb2dask.{k}"] = json.dumps(v, default=str)
    return pa.schema(fields, metadata=meta)
