"""Distributed shell of catalogue inference: readers → ``map_partitions(predict_partition)`` →
Parquet, partition by partition, then the per-source table.

Output layout for ``--out results.parquet``::

    results.parquet/part-000000.parquet ...   epoch table, one file per input partition
    results.parquet/_inputs.json              the inputs and partitioning of the run
    results.sources.parquet/part-000000.parquet ...  per-source table

Each part is written under a temporary name and renamed, so no reader ever sees half a file; a
rerun skips partitions whose part exists (and removes stale temporaries), so an interrupted run
recomputes only what is missing. Provenance (models, versions, inputs) is in every file's
schema metadata, units and descriptions in each field's metadata.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path
from ..provenance import package_versions, utc_now
from .schema import arrow_schema, empty_frame

__all__ = ["STATS_META", "BYTES_PER_ROW", "READ_OVERHEAD", "MemoryBudgetError",
           "auto_partition_rows", "run_inference",
           "write_parquet_atomic", "aggregate_sources", "sources_path"]

STATS_META = pd.DataFrame({"partition": pd.Series(dtype="int64"),
                           "rows_in": pd.Series(dtype="int64"),
                           "rows_out": pd.Series(dtype="int64"),
                           "usable": pd.Series(dtype="int64"),
                           "predict_s": pd.Series(dtype="float64"),
                           "write_s": pd.Series(dtype="float64")})


def sources_path(out: str | Path) -> Path:
    """``results.parquet`` → ``results.sources.parquet``."""
    out = Path(out)
    stem = out.name[: -len(".parquet")] if out.name.endswith(".parquet") else out.name
    return out.with_name(f"{stem}.sources.parquet")


def write_parquet_atomic(df: pd.DataFrame, path: Path, schema) -> None:
    """Write ``df`` with ``schema`` to ``path`` via a temporary file and an atomic rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _complete(path: Path) -> bool:
    """A part counts as written when it exists and its Parquet footer reads; anything else
    (absent, truncated, corrupted) is removed and recomputed."""
    import pyarrow.parquet as pq

    if not path.exists():
        return False
    try:
        pq.read_metadata(path)
        return True
    except (OSError, ValueError):
        path.unlink()
        return False


def _predict_write(df: pd.DataFrame, model_dir: str, out_dir: str, index_map: list[int],
                   provenance: dict, device: str, precision: str = "fp32",
                   batch_size: int | None = None, members: int | None = None,
                   partition_info=None) -> pd.DataFrame:
    from .predict import predict_partition

    number = index_map[partition_info["number"]] if partition_info else -1
    t0 = time.perf_counter()
    pred = predict_partition(df, model_dir, device=device, precision=precision,
                             batch_size=batch_size, members=members)
    t1 = time.perf_counter()
    if len(pred) != len(df):  # the contract every caller relies on
        raise RuntimeError(f"partition {number}: {len(df)} spectra in, {len(pred)} rows out")
    schema = arrow_schema("epoch", dict(provenance, partition=number))
    write_parquet_atomic(pred, Path(out_dir) / f"part-{number:06d}.parquet", schema)
    return pd.DataFrame({"partition": [number], "rows_in": [len(df)], "rows_out": [len(pred)],
                         "usable": [int(pred["usable"].sum())], "predict_s": [t1 - t0],
                         "write_s": [time.perf_counter() - t1]})


#: Worker memory per spectrum of a partition beyond the fixed costs: the reader's arrays, the
#: float64 copies of preprocessing, the model-grid copy and the output row. Measured with the
#: Parquet reader and one model per network (fp32): peak resident memory 874 MB at 500 rows and
#: 1228 MB at 4000 rows of one partition, i.e. 101 kB per row (benchmarks/bench_memory.py checks
#: it end to end).
BYTES_PER_ROW = 100_000

#: Reader buffers (a Parquet column chunk, a decompressed ECSV.gz file's text) on top of the
#: resident memory measured after a warm-up prediction.
READ_OVERHEAD = 128 << 20


class MemoryBudgetError(RuntimeError):
    """A worker's memory limit cannot hold the models plus a minimal partition."""


def _warm_rss(model_dir: str | None, precision: str, members: int | None = None,
              device: str = "auto") -> int:
    """Resident bytes of this worker after loading the models and predicting one batch (the
    fixed cost every partition pays: weights, oneDNN caches, activations, allocator slack)."""
    import psutil

    from .predict import get_model_set

    models = get_model_set(model_dir, device, precision, members=members)  # the run's own set
    models.predict(np.ones((models.batch_size, models.wave.size), np.float32))
    return psutil.Process().memory_info().rss


def auto_partition_rows(client, model_dir: str | Path | None = None, precision: str = "fp32",
                        fraction: float = 0.6, lo: int = 100, hi: int = 20000,
                        members: int | None = None, device: str = "auto") -> int:
    """Rows per partition from the workers' memory limits and their measured fixed cost.

    Each worker loads the models and predicts one batch; ``fraction`` of its memory limit (Dask
    pauses a worker at 80 % and restarts it at 95 %) minus that resident memory minus
    :data:`READ_OVERHEAD` is shared by its task threads at :data:`BYTES_PER_ROW` each. The
    smallest worker decides. Raises :class:`MemoryBudgetError` when that leaves fewer than ``lo``
    rows: workers would be killed, so we say so before starting.
    """
    info = client.scheduler_info()["workers"]
    limits = {a: (w.get("memory_limit") or 0, max(1, w.get("nthreads", 1)))
              for a, w in info.items()}
    if not any(m for m, _ in limits.values()):
        return 2000  # no limits configured: a size that fits any machine that runs torch
    warm = client.run(_warm_rss, None if model_dir is None else str(model_dir), precision,
                      members, device)
    rows = hi
    for addr, (limit, nthreads) in limits.items():
        if not limit or addr not in warm:
            continue
        budget = fraction * limit - warm[addr] - READ_OVERHEAD
        n = int(budget // (BYTES_PER_ROW * nthreads))
        if n < lo:
            need = (warm[addr] + READ_OVERHEAD + lo * BYTES_PER_ROW * nthreads) / fraction
            raise MemoryBudgetError(
                f"worker {addr}: memory limit {limit / 2**30:.2f} GiB is too small for "
                f"{nthreads} partition(s) of {lo}+ spectra next to the models "
                f"({warm[addr] / 2**30:.2f} GiB resident after loading them); give workers at "
                f"least {need / 2**30:.2f} GiB or fewer threads, or set --partition-rows")
        rows = min(rows, n)
    return int(rows)


def run_inference(inputs: list[str | Path], out: str | Path, model_dir: str | Path | None, client,
                  partition_rows: int | None = None, device: str = "auto", progress: bool = True,
                  overwrite: bool = False, precision: str = "fp32",
                  batch_size: int | None = None, members: int | None = None) -> dict:
    """Predict every spectrum of ``inputs`` into the Parquet dataset ``out`` and its per-source
    table; returns counts (rows in/out, partitions computed/skipped) and timings.

    ``precision`` (``fp32`` or ``bf16``, see :data:`sb2dask.infer.predict.PRECISIONS`) and
    ``members`` (ensemble members per network, default all) are recorded with the run: a rerun
    into the same ``out`` must use the same ones, so a dataset never mixes arithmetic or models.
    ``batch_size`` does not change results."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    from .predict import DEFAULT_MODEL_DIR, PRECISIONS, get_model_set
    from .readers import to_dask

    out = Path(out)
    model_dir = DEFAULT_MODEL_DIR if model_dir is None else Path(model_dir)
    inputs = sorted(str(Path(p).resolve()) for p in inputs)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    rec_path = out / "_inputs.json"
    old = json.loads(rec_path.read_text()) if rec_path.exists() else None
    if partition_rows is None:
        same = old and all(old.get(k) == v for k, v in (
            ("inputs", inputs), ("precision", precision), ("members", members),
            ("model_dir", str(Path(model_dir).resolve()))))
        if same:
            partition_rows = old["partition_rows"]  # a rerun continues the run's partitioning
        else:
            partition_rows = auto_partition_rows(client, model_dir, precision, members=members,
                                                 device=device)
    ddf = to_dask(inputs, partition_rows=partition_rows)
    n_parts = ddf.npartitions
    record = dict(inputs=inputs, partition_rows=partition_rows, npartitions=n_parts,
                  model_dir=str(Path(model_dir).resolve()), precision=precision, members=members)
    out.mkdir(parents=True, exist_ok=True)
    if old is not None:
        if old != record:
            if not overwrite:
                raise ValueError(f"{out} holds results of other inputs, partitioning or models; "
                                 "use --overwrite or another --out")
            for p in out.glob("part-*.parquet"):
                p.unlink()
    rec_path.write_text(json.dumps(record, indent=1))
    for tmp in out.glob(".part-*.tmp"):
        tmp.unlink()  # left by an interrupted writer
    todo = [i for i in range(n_parts) if not _complete(out / f"part-{i:06d}.parquet")]
    models = get_model_set(model_dir, "cpu", precision, members=members)  # validate first
    provenance = dict(models=models.provenance,
                      versions=package_versions("torch", "dask", "distributed", "pyarrow"),
                      inputs=inputs, inference=dict(precision=precision, device=device,
                                                    batch_size=batch_size, members=members),
                      created=utc_now())
    t0 = time.perf_counter()
    stats = []
    if todo:
        sub = ddf.partitions[todo]
        mapped = sub.map_partitions(_predict_write, str(model_dir), str(out), todo, provenance,
                                    device, precision, batch_size, members, meta=STATS_META,
                                    align_dataframes=False)
        futures = client.compute(mapped.to_delayed())
        with tqdm(total=len(todo), desc="infer partitions", disable=not progress,
                  file=sys.stderr) as bar:
            for fut in as_completed(futures):
                stats.append(fut.result())
                bar.update()
    seconds = time.perf_counter() - t0
    st = pd.concat(stats) if stats else STATS_META
    agg = aggregate_sources(out, sources_path(out), models, client)
    return dict(partitions=n_parts, computed=len(todo), skipped=n_parts - len(todo),
                rows_in=int(st["rows_in"].sum()), rows_out=int(st["rows_out"].sum()),
                usable=int(st["usable"].sum()), seconds=seconds,
                spectra_per_s=float(st["rows_in"].sum() / seconds) if seconds > 0 else 0.0,
                predict_s=float(st["predict_s"].sum()), write_s=float(st["write_s"].sum()),
                sources=agg)


PARAMS = ("teff", "logg", "feh", "vsini")


def _source_partials(df: pd.DataFrame, floors: dict) -> pd.DataFrame:
    """Per-row terms whose group sums give the inverse-variance weighted means."""
    u = df["usable"].to_numpy(bool)
    out = pd.DataFrame({"source_id": df["source_id"].to_numpy(np.int64),
                        "n_epochs": np.ones(len(df), np.int64),
                        "n_usable": u.astype(np.int64),
                        "p_max": np.where(u, df["p_binary"], -np.inf),
                        "p_sum": np.where(u, df["p_binary"], 0.0),
                        "flag_boundary": np.where(u, df["flag_boundary"], 0).astype(np.int64),
                        "quality_flags": df["quality_flags"].to_numpy(np.int64)})
    for p in PARAMS:
        for c in (1, 2):
            x = df[f"{p}_{c}"].to_numpy(np.float64)
            e = df[f"{p}_{c}_err"].to_numpy(np.float64)
            var = np.nan_to_num(e, nan=0.0) ** 2 + floors.get(p, 0.0) ** 2
            ok = u & np.isfinite(x) & (var > 0)
            w = np.where(ok, 1.0 / np.where(var > 0, var, 1.0), 0.0)
            out[f"w_{p}_{c}"] = w
            out[f"wx_{p}_{c}"] = np.where(ok, w * np.nan_to_num(x), 0.0)
    return out


def _bitwise_or(s):
    return s.agg(lambda v: np.bitwise_or.reduce(v.to_numpy()))


def aggregate_sources(epoch_dir: Path, out_dir: Path, models, client) -> dict:
    """Combine epochs per source (p_binary = max over usable epochs; parameters by inverse-variance
    weighting with the ensemble spread plus a floor of the models' validation RMSE)."""
    import dask.dataframe as dd

    floors = {}
    for p in PARAMS:
        rmse = [m["metrics"].get("rmse") for m in models.manifests[p]
                if m["metrics"].get("rmse") is not None]
        floors[p] = float(np.median(rmse)) if rmse else 0.0
    files = sorted(Path(epoch_dir).glob("part-*.parquet"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    if not files:
        return dict(sources=0, floors=floors)
    ddf = dd.read_parquet([str(f) for f in files])
    partial_meta = _source_partials(empty_frame("epoch"), floors)
    parts = ddf.map_partitions(_source_partials, floors, meta=partial_meta)
    bor = dd.Aggregation("bor", chunk=_bitwise_or, agg=_bitwise_or)
    spec = {c: "sum" for c in partial_meta.columns if c not in ("source_id", "p_max",
                                                                 "flag_boundary", "quality_flags")}
    spec.update(p_max="max", flag_boundary=bor, quality_flags=bor)
    grouped = parts.groupby("source_id").agg(spec, split_out=max(1, ddf.npartitions // 8))
    schema = arrow_schema("source", dict(models=models.provenance, uncertainty_floors=floors))
    n = 0
    for i, part in enumerate(client.compute(grouped.to_delayed())):
        g = part.result().reset_index()
        res = empty_frame("source", len(g))
        res["source_id"] = g["source_id"].to_numpy(np.int64)
        res["n_epochs"] = g["n_epochs"].to_numpy(np.int32)
        res["n_usable"] = g["n_usable"].to_numpy(np.int32)
        has = g["n_usable"].to_numpy() > 0
        res["p_binary"] = np.where(has, g["p_max"], np.nan).astype(np.float32)
        res["p_binary_mean"] = np.where(has, g["p_sum"] / np.maximum(g["n_usable"], 1),
                                        np.nan).astype(np.float32)
        for p in PARAMS:
            for c in (1, 2):
                w = g[f"w_{p}_{c}"].to_numpy()
                with np.errstate(divide="ignore", invalid="ignore"):
                    res[f"{p}_{c}"] = np.where(w > 0, g[f"wx_{p}_{c}"] / w, np.nan).astype(
                        np.float32)
                    res[f"{p}_{c}_err"] = np.where(w > 0, 1.0 / np.sqrt(w), np.nan).astype(
                        np.float32)
        res["flag_boundary"] = g["flag_boundary"].to_numpy(np.int32)
        res["quality_flags"] = g["quality_flags"].to_numpy(np.int32)
        res = res.sort_values("source_id")
        write_parquet_atomic(res, out_dir / f"part-{i:06d}.parquet", schema)
        n += len(res)
    return dict(sources=n, floors=floors)
