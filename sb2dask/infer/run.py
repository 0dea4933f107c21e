"""Distributed shell of catalogue inference: readers → ``map_partitions(predict_partition)`` →
Parquet, partition by partition, then the per-source table.

Output layout for ``--out results.parquet``::

    results.parquet/part-000000.parquet ...   epoch table, one file per input partition
    results.parquet/_inputs.json              the inputs, settings and partitioning of the run,
                                              and whether it finished
    results.sources.parquet/part-000000.parquet ...  per-source table

Each part is written under a temporary name and renamed, so no reader ever sees half a file; a
rerun with the same inputs and settings skips partitions whose part exists (and removes stale
temporaries), so an interrupted run recomputes only what is missing; ``overwrite`` recomputes
everything. Provenance (models, versions, inputs) is in every file's schema metadata, units and
descriptions in each field's metadata.

The checks that need no cluster (:func:`check_inputs`, :func:`check_output`) run first, so that
``sb2dask infer`` reports a missing file or an unwritable ``--out`` before starting workers; and
:func:`check_usable` turns a run whose spectra are mostly unusable into an error that counts them
by quality flag.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import atomic_path, atomic_write_json
from ..labels import PARAMETERS
from ..provenance import package_versions, utc_now
from .config import InferenceConfig
from .flags import QualityFlag
from .schema import arrow_schema
from .sources import (
    EPOCH_COLUMNS_NEEDED,
    EvidenceRule,
    combine_sources,
    epoch_list_columns,
    source_arrow_schema,
)

__all__ = ["STATS_META", "BYTES_PER_ROW", "READ_OVERHEAD", "MAX_UNUSABLE_FRACTION",
           "MemoryBudgetError", "UnusableRunError", "auto_partition_rows", "check_inputs",
           "check_output", "check_run", "check_usable", "run_inference", "write_parquet_atomic",
           "aggregate_sources", "sources_path", "uncertainty_floors"]

#: A run in which more than this fraction of the spectra is unusable fails
#: (:func:`check_usable`, ``sb2dask infer`` without ``--allow-unusable``): such a run almost
#: always means inputs the models cannot read (another wavelength grid, unnormalised flux), not
#: a catalogue of bad spectra.
MAX_UNUSABLE_FRACTION = 0.5

#: Why a spectrum is unusable, for the message of :class:`UnusableRunError`; ``{lo}``-``{hi}``
#: is the models' pixel grid [Å, air] and ``{max_nan:.0%}`` the allowed missing fraction.
UNUSABLE_REASONS = {
    QualityFlag.ALL_NULL: "no finite flux at all",
    QualityFlag.TOO_MANY_NAN: "more than {max_nan:.0%} of the pixels missing",
    QualityFlag.WAVE_COVERAGE: "the wavelengths do not cover the models' grid, {lo:.1f}-{hi:.1f} "
                               "Å in air (spectra simulated on another --output-grid?)",
    QualityFlag.WAVE_MISMATCH: "flux and wavelength arrays of different lengths",
}

_FLAG_COLUMNS = {f"qf_{flag.name}": flag for flag in QualityFlag}

STATS_META = pd.DataFrame({"partition": pd.Series(dtype="int64"),
                           "computed": pd.Series(dtype="bool"),
                           "rows_in": pd.Series(dtype="int64"),
                           "rows_out": pd.Series(dtype="int64"),
                           "usable": pd.Series(dtype="int64"),
                           **{c: pd.Series(dtype="int64") for c in _FLAG_COLUMNS},
                           "predict_s": pd.Series(dtype="float64"),
                           "write_s": pd.Series(dtype="float64")})


class UnusableRunError(RuntimeError):
    """Most spectra of a run were unusable (see :func:`check_usable`); the outputs were written.

    ``sb2dask infer`` exits with :attr:`exit_status` on it, so that scripts can tell "ran, but
    the results are mostly empty" from "did not run" (1).
    """

    exit_status = 3


def _partition_stats(number: int, computed: bool, usable: np.ndarray, qflags: np.ndarray,
                     rows_in: int, predict_s: float = 0.0, write_s: float = 0.0) -> pd.DataFrame:
    """One row of :data:`STATS_META`: counts of one partition, one per :class:`QualityFlag`."""
    qflags = np.asarray(qflags, np.int64)
    row = {"partition": [number], "computed": [computed], "rows_in": [rows_in],
           "rows_out": [len(qflags)], "usable": [int(np.count_nonzero(usable))]}
    row.update({c: [int(np.count_nonzero(qflags & int(flag)))]
                for c, flag in _FLAG_COLUMNS.items()})
    row.update(predict_s=[predict_s], write_s=[write_s])
    return pd.DataFrame(row).astype(STATS_META.dtypes.to_dict())


def _written_stats(path: str, number: int) -> pd.DataFrame:
    """Dask task: the counts of a part written by an earlier run (two columns are read)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["usable", "quality_flags"])
    return _partition_stats(number, False, t["usable"].to_numpy(),
                            t["quality_flags"].to_numpy(), t.num_rows)


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


def _predict_write(df: pd.DataFrame, config: InferenceConfig, out_dir: str,
                   index_map: list[int], provenance: dict, partition_info=None) -> pd.DataFrame:
    """Dask task: predict one partition, write it as ``part-NNNNNN.parquet``, return its counts."""
    from .predict import predict_partition

    number = index_map[partition_info["number"]] if partition_info else -1
    t0 = time.perf_counter()
    pred = predict_partition(df, config)
    t1 = time.perf_counter()
    if len(pred) != len(df):  # the contract every caller relies on
        raise RuntimeError(f"partition {number}: {len(df)} spectra in, {len(pred)} rows out")
    schema = arrow_schema("epoch", dict(provenance, partition=number))
    write_parquet_atomic(pred, Path(out_dir) / _part_name(number), schema)
    return _partition_stats(number, True, pred["usable"].to_numpy(),
                            pred["quality_flags"].to_numpy(), len(df), t1 - t0,
                            time.perf_counter() - t1)


def _part_name(number: int) -> str:
    return f"part-{number:06d}.parquet"


#: Worker memory per spectrum of a partition beyond the fixed costs: the reader's arrays and,
#: above all, preprocessing (float64 copies of flux and errors while they are stacked: 128 kB
#: per row at its peak, traced with tracemalloc). Measured in a worker (fp32, shipped two-member
#: set, Parquet reader, benchmarks/bench_memory.py --partition-rows 300 / 2000): the peak grew
#: by 146 kB per row; in one process 119 kB/row between 500 and 2000 rows and 209 kB/row between
#: 2000 and 4000 (preprocessing's peak overtakes the forward passes'). The 100 kB used before came
#: from one process whose untrimmed heap, left by the forward passes, absorbed part of it.
BYTES_PER_ROW = 150_000

#: Reader buffers (a Parquet column chunk, a decompressed ECSV.gz file's text) on top of the
#: fixed cost measured by the warm-up. Measured: the first Parquet partition raised a worker's
#: resident memory by 62-77 MB (Arrow's pool peaked at 49 MB for 2000-row row groups).
READ_OVERHEAD = 128 << 20


class MemoryBudgetError(RuntimeError):
    """A worker's memory limit cannot hold the models plus a minimal partition."""


def _warm_rss(config: InferenceConfig) -> int:
    """Peak resident bytes of this worker while it predicts what partitions make it predict:
    the fixed cost every partition pays (torch, weights, oneDNN primitives, activations and the
    heap they leave, transients included).

    After the models of ``config`` are loaded (the run's own set, which its partitions then
    reuse), the warm-up predicts one full batch and every shape a short last batch is padded to
    (:data:`~sb2dask.infer.predict.PAD_STEPS` shapes; 4.5 batches in all), the fragmentation of
    which a long run would otherwise add later. The resident memory *after* one batch, which this
    used to return, missed 0.2-0.4 GB per worker: the transient peak of a forward pass and the
    heap grown by later batch shapes (docs/inference.md, "Memory").
    """
    from ..runtime import peak_rss, reset_peak_rss
    from .predict import PAD_STEPS, get_model_set

    models = get_model_set(config)
    batch = models.batch_size
    step = -(-batch // PAD_STEPS)
    reset_peak_rss()
    flux = np.ones((batch + step, models.wave.size), np.float32)
    models.predict(flux)  # a full batch and the smallest padded shape, as in one partition
    for k in range(2, PAD_STEPS):
        models.predict(flux[:k * step])
    return peak_rss()


def auto_partition_rows(client, config: InferenceConfig | None = None, fraction: float = 0.6,
                        lo: int = 100, hi: int = 20000) -> int:
    """Rows per partition from the workers' memory limits and their measured fixed cost.

    Each worker loads the models and predicts a warm-up (:func:`_warm_rss`); ``fraction`` of its
    memory limit (Dask pauses a worker at 80 % and restarts it at 95 %) minus that peak minus
    :data:`READ_OVERHEAD` is shared by its task threads at :data:`BYTES_PER_ROW` each. The
    smallest worker decides. Raises :class:`MemoryBudgetError` when that leaves fewer than ``lo``
    rows: workers would be killed, so we say so before starting.
    """
    config = InferenceConfig() if config is None else config
    info = client.scheduler_info()["workers"]
    limits = {a: (w.get("memory_limit") or 0, max(1, w.get("nthreads", 1)))
              for a, w in info.items()}
    if not any(m for m, _ in limits.values()):
        return 2000  # no limits configured: a size that fits any machine that runs torch
    warm = client.run(_warm_rss, config)
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
                f"({warm[addr] / 2**30:.2f} GiB peak while predicting a warm-up); give workers at "
                f"least {need / 2**30:.2f} GiB (--memory-limit) or fewer threads, or set "
                "--partition-rows")
        rows = min(rows, n)
    return int(rows)


def check_inputs(inputs: list[str | Path]) -> list[str]:
    """Every input exists, can be read and is recognised by a reader: checks that need no
    cluster, so that a typo is reported in a second, not after the workers have started.

    Returns the absolute paths, sorted (the order of the output partitions).

    Raises
    ------
    ReaderError
        A path is missing, empty, unreadable or no reader recognises it (the message names it).
    """
    from .readers import ReaderError, identify_format

    if not inputs:
        raise ValueError("no input files given")
    paths = []
    for p in inputs:
        path = Path(p)
        if not path.exists():
            raise ReaderError(path, "no such file or directory")
        try:
            if path.is_file():
                if path.stat().st_size == 0:
                    raise ReaderError(path, "the file is empty (0 bytes)")
                with open(path, "rb") as fh:
                    fh.read(1)
            else:
                os.listdir(path)
        except PermissionError as exc:
            raise ReaderError(path, f"cannot be read ({exc.strerror})") from None
        identify_format(path)
        paths.append(str(path.resolve()))
    return sorted(paths)


def _record_path(out: Path) -> Path:
    return out / "_inputs.json"


def _read_record(out: Path) -> dict | None:
    path = _record_path(out)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:  # not ours, or a version that wrote it non-atomically and was killed
        return None
    # records written before `infer --fit` existed are runs without it
    return {"fit": False, "fit_threshold": 0.0, **record} if isinstance(record, dict) else None


#: The settings of a run a rerun into the same ``--out`` must share to continue it.
_RUN_KEYS = ("inputs", "model_dir", "models", "precision", "members", "fit", "fit_threshold",
             "calibration", "fit_config")


def check_output(out: str | Path, inputs: list[str] | None = None,
                 config: InferenceConfig | None = None, overwrite: bool = False) -> None:
    """``out`` (and its per-source sibling, :func:`sources_path`) can be written, and a finished
    run of other inputs or settings in it is replaced only with ``overwrite``.

    ``inputs`` are the resolved paths of :func:`check_inputs`; with ``config`` they are compared
    with the run recorded in ``out``. Raises :class:`FileExistsError`, :class:`PermissionError`
    or :class:`ValueError` naming the path.
    """
    import tempfile

    out = Path(out)
    for target in (out, sources_path(out)):
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"--out {out}: {target} is an existing file; expected a "
                                  "directory for the Parquet dataset (or a new name)")
    if out.is_dir() and any(out.iterdir()) and not _record_path(out).exists():
        raise FileExistsError(f"--out {out} is a directory with other contents (no "
                              "_inputs.json of an earlier sb2dask run); choose a new name")
    here = out
    while not here.exists():  # the directory that mkdir will write into
        here = here.parent
    if not here.is_dir():
        raise NotADirectoryError(f"--out {out}: {here} is a file, not a directory")
    # out itself, or the directory mkdir creates it in; and out's parent, home of the sources
    probes = {here} | ({out.parent} if out.parent.is_dir() else set())
    for where in sorted(probes):
        try:
            with tempfile.TemporaryFile(dir=where):
                pass
        except OSError as exc:
            raise PermissionError(f"--out {out}: cannot write in {where} ({exc.strerror})") \
                from None
    old = _read_record(out)
    if inputs is None or config is None or old is None or overwrite or not old.get(
            "finished", True):
        return
    new = _run_settings(inputs, config)
    differ = [k for k in _RUN_KEYS if old.get(k) != new[k]]
    if config.partition_rows is not None and old.get("partition_rows") != config.partition_rows:
        differ.append("partition_rows")
    if differ:
        raise ValueError(f"--out {out} holds the finished results of a run with other "
                         f"{', '.join(differ)}; use --overwrite to replace them, or another --out")


def _run_settings(inputs: list[str], config: InferenceConfig) -> dict:
    from ..fileio import file_sha256
    from ..train.calibrate import CALIBRATION_FILE
    from .predict import resolve_model_dir

    model_dir = resolve_model_dir(config.model_dir)
    # a calibration added (or refitted) between two runs changes every *_err: not the same run
    cal = model_dir / CALIBRATION_FILE
    # the evidence fits' whole configuration: a run fitted with other settings (or by an older
    # fitter, whose records lack this) is not the same run
    fit_config = config.fit_config().to_dict() if config.fit else None
    # the manifests (weights' hashes, detector target, a student's calibration): new weights
    # under the same path, or p_binary with another meaning, are another run
    manifests = sorted(model_dir.glob("*.json"))
    models = hashlib.sha256("".join(f"{m.name}:{file_sha256(m)};" for m in manifests
                                    if m.name != CALIBRATION_FILE).encode()).hexdigest()
    return dict(inputs=list(inputs), model_dir=str(model_dir.resolve()), models=models,
                precision=config.precision, members=config.members, fit=config.fit,
                fit_threshold=config.fit_threshold,
                calibration=file_sha256(cal) if cal.exists() else None, fit_config=fit_config)


def check_run(inputs: list[str | Path], out: str | Path, config: InferenceConfig | None = None,
              overwrite: bool = False) -> list[str]:
    """Everything about a run that can be checked without a cluster: the inputs
    (:func:`check_inputs`), the output path (:func:`check_output`) and the model set (loaded on
    the CPU of this process, where :func:`run_inference` reuses it). Returns the resolved,
    sorted input paths."""
    from .predict import get_model_set

    config = InferenceConfig() if config is None else config
    paths = check_inputs(inputs)
    check_output(out, paths, config, overwrite)
    get_model_set(config.replace(device="cpu"))
    return paths


def check_usable(summary: dict, max_fraction: float = MAX_UNUSABLE_FRACTION) -> str | None:
    """Say why, when more than ``max_fraction`` of a run's spectra are unusable.

    Parameters
    ----------
    summary : dict
        What :func:`run_inference` returned (``rows_out``, ``usable``, ``quality_flags``,
        ``model_wave_range``, ``max_nan_fraction``).
    max_fraction : float

    Returns
    -------
    str or None
        One line counting the unusable spectra by flag when some are unusable (None when all
        are usable).

    Raises
    ------
    UnusableRunError
        More than ``max_fraction`` of the spectra are unusable; the message is that line.
    """
    n, usable = summary["rows_out"], summary["usable"]
    if n == 0 or usable == n:
        return None
    lo, hi = summary.get("model_wave_range") or (float("nan"), float("nan"))
    counts = summary.get("quality_flags", {})
    reasons = [f"{counts[flag.name]} {flag.name} ("
               + text.format(lo=lo, hi=hi, max_nan=summary.get("max_nan_fraction", 0.2)) + ")"
               for flag, text in UNUSABLE_REASONS.items() if counts.get(flag.name)]
    line = (f"{n - usable} of {n} spectra ({(n - usable) / n:.0%}) are unusable, by quality "
            f"flag: {'; '.join(reasons) or 'none recorded'}")
    if (n - usable) / n > max_fraction:
        raise UnusableRunError(line)
    return line


def run_inference(inputs: list[str | Path], out: str | Path, client,
                  config: InferenceConfig | None = None, *, progress: bool = True,
                  overwrite: bool = False) -> dict:
    """Predict every spectrum of ``inputs`` into the Parquet dataset ``out`` and its per-source
    table.

    Parameters
    ----------
    inputs : list of paths
        Catalogue files (any format of :mod:`sb2dask.infer.readers`).
    out : path
        Epoch table directory, e.g. ``results.parquet`` (sources go to :func:`sources_path`).
    client : distributed.Client
    config : InferenceConfig, optional
        Models, device, precision, batch size, members, partition size (default: the shipped
        models, ``InferenceConfig()``). Precision and members are recorded with the run: a rerun
        into the same ``out`` must use the same ones, so a dataset never mixes arithmetic or
        models; ``batch_size`` does not change results.
    progress : bool
        Show a progress bar (stderr).
    overwrite : bool
        Recompute every partition, replacing what ``out`` holds. Without it, a rerun with the
        same inputs and settings continues the recorded run: parts already written are kept
        (counted in ``skipped``) and only missing ones are computed; the results of a finished
        run with other inputs or settings are an error; those of an unfinished (failed) run are
        replaced.

    Returns
    -------
    dict
        ``partitions``, ``computed``, ``skipped``; ``rows_in``, ``rows_out``, ``usable`` and
        ``quality_flags`` (rows with each :class:`~sb2dask.infer.flags.QualityFlag` set) over
        the whole dataset, written now or before; ``rows_computed``, ``seconds``,
        ``spectra_per_s``, ``predict_s``, ``write_s`` of this call; ``model_wave_range`` [Å,
        air]; ``sources`` (the per-source table). :func:`check_usable` reads it.
    """
    from .predict import get_model_set

    config = InferenceConfig() if config is None else config
    out = Path(out)
    inputs = check_run(inputs, out, config, overwrite)
    models = get_model_set(config.replace(device="cpu"))  # loaded by check_run
    ddf, record, old = _plan_partitions(inputs, out, client, config, overwrite)
    todo, done = _prepare_out(out, old, record, overwrite)
    provenance = dict(models=models.provenance, calibration=models.calibration_record,
                      versions=package_versions("torch", "dask", "distributed", "pyarrow"),
                      inputs=inputs, inference=config.replace(
                          partition_rows=record["partition_rows"]).to_dict(), created=utc_now(),
                      evidence_fit=record.get("fit_config"))
    t0 = time.perf_counter()
    stats = _compute_partitions(ddf, out, client, config, todo, done, provenance, progress)
    seconds = time.perf_counter() - t0
    agg = aggregate_sources(out, sources_path(out), models, client)
    atomic_write_json(_record_path(out), dict(record, finished=True))
    return _run_summary(stats, record, todo, done, seconds, models, config, agg)


def _plan_partitions(inputs: list[str], out: Path, client, config: InferenceConfig,
                     overwrite: bool):
    """The partitioned inputs, the record of the run and that of an earlier run in ``out``.

    Returns
    -------
    ddf : dask.dataframe.DataFrame
        The inputs in partitions of ``config.partition_rows`` rows; unset, those of an earlier
        run with the same inputs and settings (a rerun continues its partitioning), else sized
        from the workers' memory (:func:`auto_partition_rows`).
    record : dict
        The run's settings, ``partition_rows`` and ``npartitions``.
    old : dict or None
        The record found in ``out``, if any.
    """
    from .readers import to_dask

    settings = _run_settings(inputs, config)
    old = _read_record(out)
    same_run = old is not None and all(old.get(k) == v for k, v in settings.items())
    partition_rows = config.partition_rows
    if partition_rows is None:
        if same_run and not overwrite:
            partition_rows = old["partition_rows"]  # a rerun continues the run's partitioning
        else:
            partition_rows = auto_partition_rows(client, config)
    ddf = to_dask(inputs, partition_rows=partition_rows)
    record = dict(settings, partition_rows=partition_rows, npartitions=ddf.npartitions)
    return ddf, record, old


def _compute_partitions(ddf, out: Path, client, config: InferenceConfig, todo: list[int],
                        done: list[int], provenance: dict, progress: bool) -> list[pd.DataFrame]:
    """Predict and write the partitions ``todo``; the statistics of those and of the ``done``
    ones already written (one :data:`STATS_META`-like frame per partition)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    stats = list(client.gather(client.map(
        _written_stats, [str(out / _part_name(i)) for i in done], done, pure=False)))
    if todo:
        sub = ddf.partitions[todo]
        mapped = sub.map_partitions(_predict_write, config, str(out), todo, provenance,
                                    meta=STATS_META, align_dataframes=False)
        futures = client.compute(mapped.to_delayed())
        with tqdm(total=len(todo), desc="infer partitions", disable=not progress,
                  file=sys.stderr) as bar:
            for fut in as_completed(futures):
                stats.append(fut.result())
                bar.update()
    return stats


def _run_summary(stats: list[pd.DataFrame], record: dict, todo: list[int], done: list[int],
                 seconds: float, models, config: InferenceConfig, agg: dict) -> dict:
    """The dict :func:`run_inference` returns, from the per-partition statistics."""
    st = pd.concat(stats) if stats else STATS_META
    new = st[st["computed"]]
    return dict(partitions=record["npartitions"], computed=len(todo), skipped=len(done),
                rows_in=int(st["rows_in"].sum()), rows_out=int(st["rows_out"].sum()),
                usable=int(st["usable"].sum()),
                quality_flags={flag.name: int(st[c].sum()) for c, flag in _FLAG_COLUMNS.items()},
                rows_computed=int(new["rows_in"].sum()), seconds=seconds,
                spectra_per_s=float(new["rows_in"].sum() / seconds) if seconds > 0 else 0.0,
                predict_s=float(new["predict_s"].sum()), write_s=float(new["write_s"].sum()),
                model_wave_range=[float(models.wave.min()), float(models.wave.max())],
                max_nan_fraction=config.max_nan_fraction, sources=agg)


def _prepare_out(out: Path, old: dict | None, record: dict,
                 overwrite: bool) -> tuple[list[int], list[int]]:
    """Make ``out`` ready for the run ``record`` describes: the partitions to compute and those
    an earlier run of the same record already wrote (kept unless ``overwrite``).

    The record is written with ``finished: false`` first (the caller sets it true at the end),
    so that the leftovers of a run that failed never stand in the way of another: they are
    replaced, whereas a finished run of other inputs or settings is replaced only with
    ``overwrite``.
    """
    out.mkdir(parents=True, exist_ok=True)
    if old is not None and not overwrite and {k: old.get(k) for k in record} != record:
        if old.get("finished", True):  # check_output let it through: the partitioning differs
            raise ValueError(
                f"--out {out} holds the finished results of a run with another partitioning "
                f"({old.get('npartitions')} partitions of {old.get('partition_rows')} rows; now "
                f"{record['npartitions']} of {record['partition_rows']}: have the inputs "
                "changed?); use --overwrite to replace them, or another --out")
        stale = list(out.glob("part-*.parquet"))
        if stale:
            print(f"{out}: removing {len(stale)} partition(s) of an unfinished run with other "
                  "inputs or settings", file=sys.stderr)
        overwrite = True
    if overwrite:
        for p in out.glob("part-*.parquet"):
            p.unlink()
    atomic_write_json(_record_path(out), dict(record, finished=False))
    for tmp in out.glob(".part-*.tmp"):
        tmp.unlink()  # left by an interrupted writer
    n_parts = record["npartitions"]
    written = {i for i in range(n_parts) if _complete(out / _part_name(i))}
    todo = [i for i in range(n_parts) if i not in written]
    if written:
        print(f"{out}: {len(written)} of {n_parts} partitions were written by an earlier run with "
              f"the same inputs and settings and are kept; computing the other {len(todo)} "
              "(--overwrite recomputes all)", file=sys.stderr)
    return todo, sorted(written)


def _has_component_rvs(files: list[Path]) -> bool:
    """Whether the epoch files hold per-epoch component RVs: the schema always has ``rv_1``
    (NaN without ``infer --fit``), so a run's recorded setting decides, and files without one
    are scanned for a finite ``rv_1`` (stopping at the first)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = pq.read_schema(files[0]).metadata or {}
    if b"sb2dask.inference" in meta:
        return bool(json.loads(meta[b"sb2dask.inference"]).get("fit", False))
    if "rv_1" not in pq.read_schema(files[0]).names:
        return False
    for f in files:
        col = pq.read_table(f, columns=["rv_1"])["rv_1"]
        if pc.any(pc.is_finite(col)).as_py():
            return True
    return False


def uncertainty_floors(models) -> dict[str, float]:
    """Per parameter, the floor added in quadrature to the epochs' ``_err`` in the source table:
    the models' median validation RMSE where the errors are raw ensemble spreads, 0 where they
    are calibrated totals already (a ``calibration.json``, or a student's widths)."""
    calibrated = getattr(models, "calibration", None) is not None
    floors = {}
    for p in PARAMETERS:
        rmse = [m["metrics"].get("rmse") for m in models.manifests.get(p, [])
                if m["metrics"].get("rmse") is not None]
        floors[p] = float(np.median(rmse)) if rmse and not calibrated else 0.0
    return floors


def aggregate_sources(epoch_dir: Path, out_dir: Path, models, client,
                      rule: EvidenceRule | None = None) -> dict:
    """Combine the epochs of each source into the per-source table ``out_dir``.

    The thin Dask shell of :func:`sb2dask.infer.sources.combine_sources` (the rule is in its
    module docstring): the epoch table's needed columns are shuffled on ``source_id`` so that
    every source's epochs meet in one partition, combined there and written as
    ``part-NNNNNN.parquet``. ``rule`` defaults to ``EvidenceRule()`` with the S/N floor of
    ``models``; the parameters' uncertainty floors are the models' validation RMSE. Both are
    recorded in the files' metadata and returned (``sources``, ``floors``, ``rule``).
    """
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    rule = (EvidenceRule() if rule is None else rule).for_models(models)
    floors = uncertainty_floors(models)
    files = sorted(Path(epoch_dir).glob("part-*.parquet"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    summary = dict(sources=0, floors=floors, rule=rule.to_dict())
    if not files:
        return summary
    available = pq.read_schema(files[0]).names
    lists = epoch_list_columns(available) if _has_component_rvs(files) else []
    columns = list(dict.fromkeys([*EPOCH_COLUMNS_NEEDED, *lists]))
    ddf = dd.read_parquet([str(f) for f in files], columns=columns)
    if ddf.npartitions > 1:
        ddf = ddf.shuffle(on="source_id", npartitions=max(1, ddf.npartitions // 8))
    meta = combine_sources(ddf._meta, rule, floors)
    combined = ddf.map_partitions(combine_sources, rule, floors, meta=meta)
    schema = source_arrow_schema(dict(models=models.provenance,
                                      calibration=models.calibration_record,
                                      uncertainty_floors=floors,
                                      evidence_rule=rule.to_dict()), lists)
    n = 0
    for i, fut in enumerate(client.compute(combined.to_delayed())):
        res = fut.result()
        write_parquet_atomic(res, out_dir / f"part-{i:06d}.parquet", schema)
        n += len(res)
    return dict(summary, sources=n)
