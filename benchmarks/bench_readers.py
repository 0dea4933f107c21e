"""Reader throughput: Gaia DR3 bulk ECSV and Gaia DR4 epoch spectra in every layout and format.

    python benchmarks/bench_readers.py [--n 3000] [--per-source 10] [--repeats 3]

Writes the same spectra (flux ~ 1 with 1 % noise, errors, the DR4 per-transit columns) in each
layout and format, then reads every file with :func:`sb2dask.infer.readers.read_catalogue` in one
process and one thread, and reports spectra per CPU-second (``time.process_time``: the rate of
one core, whatever else the machine runs) and per wall-second, best of ``--repeats``. Formats:

- DR3 bulk ECSV.gz (2401 pixels, the reference: what ``sb2dask infer`` reads today);
- DR4 bulk ECSV.gz (961-pixel arrays, no wavelength column: the layout of DR3's bulk files, the
  likely bulk layout of DR4);
- DR4 ``DATAMODEL_GAIA`` (arrays per row, a wavelength array column): CSV, ECSV, VOTable
  (BINARY2), FITS, and Parquet;
- DR4 ``DATAMODEL_STANDARD`` (one row per pixel, one file per source with ``--per-source``
  transits): CSV, ECSV, VOTable, FITS.

The bulk formats (the first two, Parquet, FITS arrays) are the ones the issue's target of ≥ 3000
spectra/s per core applies to. Prints a table and writes ``benchmarks/results/bench_readers.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from _results import write_results  # benchmarks/ is on sys.path when run as a script


def _spectra(n: int, n_pix: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flux = (1.0 + 0.01 * rng.standard_normal((n, n_pix))).astype(np.float32)
    return flux, np.full((n, n_pix), 0.01, np.float32) * (1 + 0.1 * rng.random((n, n_pix))
                                                          ).astype(np.float32)


def _transits(n: int, per_source: int) -> pd.DataFrame:
    flux, err = _spectra(n, 961)
    return pd.DataFrame({
        "source_id": 4295806720 + (np.arange(n) // per_source) * 7,
        "transit_id": 10 ** 12 + np.arange(n), "obs_time_rv": 1700.0 + np.arange(n) * 0.37,
        "flux": list(flux), "flux_error": list(err),
        "normalisation_method": np.full(n, 3, np.int16),
        "combined_ccds": np.full(n, 3, np.int16), "deblended_ccds": np.zeros(n, np.int16)})


def write_inputs(folder: Path, n: int, per_source: int) -> dict[str, list[Path]]:
    """One file set per format name; each set holds ``n`` spectra."""
    from sb2dask.dataset.gaia_dr4 import write_dr4_epoch
    from sb2dask.dataset.gaia_ecsv import write_bulk_ecsv
    from sb2dask.gaia import DR4_EPOCH_WAVE, RVS_WAVE
    from sb2dask.infer.readers.base import build_partition

    out: dict[str, list[Path]] = {}
    flux, err = _spectra(n, 2401)
    dr3 = build_partition(source_id=np.arange(n), epoch_id=np.full(n, -1), wave=RVS_WAVE,
                          flux=flux, flux_error=err, file="", row=np.arange(n),
                          read_flags=np.zeros(n))
    out["DR3 bulk ECSV.gz (2401 px)"] = [write_bulk_ecsv(
        folder / "RvsMeanSpectrum_000000-003111.csv.gz", dr3, array_length=2401)]
    tr = _transits(n, per_source)
    dr4 = build_partition(
        source_id=tr["source_id"], epoch_id=tr["transit_id"], wave=DR4_EPOCH_WAVE,
        flux=np.stack(tr["flux"]), flux_error=np.stack(tr["flux_error"]), file="",
        row=np.arange(n), read_flags=np.zeros(n),
        transit={k: tr[k].to_numpy(np.float64) for k in ("obs_time_rv", "normalisation_method",
                                                          "combined_ccds", "deblended_ccds")})
    out["DR4 bulk ECSV.gz (961 px)"] = [write_bulk_ecsv(
        folder / "RvsEpochSpectrum_000000-003111.csv.gz", dr4, array_length=961)]
    for fmt in ("csv", "ecsv", "votable", "fits"):
        out[f"DR4 DATAMODEL_GAIA {fmt}"] = [write_dr4_epoch(
            folder / f"gaia.{fmt}", tr, structure="DATAMODEL_GAIA", fmt=fmt)]
    table = pa.table({"source_id": tr["source_id"], "transit_id": tr["transit_id"],
                      "obs_time_rv": tr["obs_time_rv"],
                      "flux": pa.array(list(np.stack(tr["flux"])), pa.list_(pa.float32())),
                      "flux_error": pa.array(list(np.stack(tr["flux_error"])),
                                             pa.list_(pa.float32())),
                      "normalisation_method": tr["normalisation_method"]})
    pq.write_table(table, folder / "gaia.parquet", row_group_size=1000)
    out["DR4 arrays Parquet"] = [folder / "gaia.parquet"]
    for fmt in ("csv", "ecsv", "votable", "fits"):
        files = []
        for k, (_, rows) in enumerate(tr.groupby("source_id")):
            files.append(write_dr4_epoch(folder / f"std{k}.{fmt}", rows,
                                         structure="DATAMODEL_STANDARD", fmt=fmt))
        out[f"DR4 DATAMODEL_STANDARD {fmt}"] = files
    return out


def time_read(files: list[Path], repeats: int) -> dict:
    """Best-of-``repeats`` CPU and wall seconds to read every spectrum of ``files``."""
    from sb2dask.infer.readers import read_catalogue

    best_cpu = best_wall = np.inf
    n = 0
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        n = sum(len(part) for f in files for part in read_catalogue(f, partition_rows=5000))
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    size = sum(f.stat().st_size for f in files)
    return dict(spectra=n, files=len(files), bytes=size, cpu_s=best_cpu, wall_s=best_wall,
                spectra_per_cpu_s=n / best_cpu, spectra_per_wall_s=n / best_wall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="spectra per format (default 3000)")
    ap.add_argument("--per-source", type=int, default=10,
                    help="transits per source, i.e. per DATAMODEL_STANDARD file (default 10)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None,
                    help="substrings of the format names to time (default: all)")
    args = ap.parse_args(argv)
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    tmp = Path(tempfile.mkdtemp(prefix="sb2dask-bench-readers-"))
    try:
        inputs = write_inputs(tmp, args.n, args.per_source)
        results = {}
        for name, files in inputs.items():
            if args.only and not any(s in name for s in args.only):
                continue
            results[name] = time_read(files, args.repeats)
            r = results[name]
            print(f"  {name:<32} {r['spectra_per_cpu_s']:8.0f} spectra/CPU-s "
                  f"{r['spectra_per_wall_s']:8.0f} spectra/wall-s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nReaders, one process, one thread, {args.n} spectra per format (best of "
          f"{args.repeats}):")
    print(f"  {'format':<32} {'files':>6} {'MB':>7} {'spectra/CPU-s':>14} {'spectra/wall-s':>15}")
    for name, r in results.items():
        print(f"  {name:<32} {r['files']:6d} {r['bytes'] / 1e6:7.1f} "
              f"{r['spectra_per_cpu_s']:14.0f} {r['spectra_per_wall_s']:15.0f}")
    write_results("bench_readers", n=args.n, per_source=args.per_source, repeats=args.repeats,
                  readers=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
