"""Memory benchmark: inference over a catalogue larger than one worker's memory limit.

    python benchmarks/bench_memory.py [--spectra 80000] [--memory-limit 1.4GB] [--models DIR]
                                      [--precision bf16] [--members N] [--workers 2]
                                      [--threads 1] [--partition-rows N] [--catalogue PATH]
                                      [--tag TAG]

Writes a Parquet epoch catalogue of ``--spectra`` 2401-pixel spectra (flux and flux_error,
float32: 19.2 kB each) whose in-memory size exceeds ``--memory-limit`` (``--catalogue`` keeps it
at PATH and reuses it when it exists), runs ``run_inference`` on a LocalCluster of ``--workers``
workers with that limit and partitions sized automatically from it (or ``--partition-rows``),
and records per worker:

* the sizing's fixed cost: the peak resident memory while the warm-up predicted
  (``warm_peak``; the kernel's high-water mark, VmHWM) and the resident memory after it
  (``baseline``);
* the peak during the run, both as the kernel saw it (VmHWM, reset after the sizing: the figure
  an out-of-memory killer acts on) and as sampled every 0.25 s (what Dask's memory monitor, which
  samples too, can see);
* worker restarts (a worker killed by its nanny for memory comes back under a new address), rows
  in/out and Dask's "unmanaged memory" warnings.

``unexplained_growth`` is the true peak minus what the sizing planned for (warm peak +
``READ_OVERHEAD`` + partition rows × ``BYTES_PER_ROW`` × threads): positive means the planning
missed something. Prints a table and writes ``benchmarks/results/bench_memory[-TAG].json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script


def write_catalogue(path: Path, n: int, seed: int = 0) -> int:
    """A Parquet catalogue of ``n`` noisy spectra, written in row groups of 2000."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sb2dask.dataset.factory import simulate_chunk
    from sb2dask.simulate.config import SimulationConfig

    cfg = SimulationConfig(output_grid="gaia_dr3", binary_fraction=0.5, seed=seed)
    base_flux, _ = simulate_chunk(cfg, 0, 2000)
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, 2000):
        k = min(2000, n - start)
        flux = base_flux[:k] + 0.002 * rng.standard_normal((k, base_flux.shape[1])).astype(
            np.float32)
        err = np.full_like(flux, 0.01)
        table = pa.table({
            "source_id": pa.array(np.arange(start, start + k, dtype=np.int64) + (1 << 43)),
            "epoch_id": pa.array(np.full(k, -1, dtype=np.int64)),
            "flux": pa.FixedSizeListArray.from_arrays(pa.array(flux.ravel()), flux.shape[1]),
            "flux_error": pa.FixedSizeListArray.from_arrays(pa.array(err.ravel()), err.shape[1]),
        })
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=2000)
    writer.close()
    return n


# Run on the workers (by value: this module is __main__). Written here rather than imported, so
# that the benchmark also measures older versions of the package.
def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _high_water_mark() -> int:
    """The kernel's peak resident bytes of this process (VmHWM), since start or the last reset."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spectra", type=int, default=80000)
    ap.add_argument("--memory-limit", default="1.4GB")
    ap.add_argument("--models", default="paper",
                    help="model directory or preset (default: the paper-recipe ensembles)")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--members", type=int, default=None, help="members per network (all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="task threads per worker")
    ap.add_argument("--partition-rows", type=int, default=None, help="default: sized from the "
                    "memory limit (auto_partition_rows)")
    ap.add_argument("--catalogue", type=Path, default=None,
                    help="keep the catalogue here (reused when it exists)")
    ap.add_argument("--tag", default="", help="results file bench_memory-TAG.json")
    args = ap.parse_args(argv)
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.run import (
        BYTES_PER_ROW,
        READ_OVERHEAD,
        MemoryBudgetError,
        auto_partition_rows,
        run_inference,
    )

    tmp = Path(tempfile.mkdtemp(prefix="sb2dask-bench-mem-"))
    try:
        cat = args.catalogue or tmp / "catalogue.parquet"
        if not cat.exists():
            write_catalogue(cat, args.spectra)
        import pyarrow.parquet as pq

        spectra = pq.ParquetFile(cat).metadata.num_rows
        in_memory = spectra * 2401 * 4 * 2
        limit = parse_bytes(args.memory_limit)
        with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                          memory_limit=args.memory_limit, dashboard_address=":0") as lc, \
                Client(lc) as client:
            t0 = time.perf_counter()
            config = InferenceConfig(model_dir=args.models, precision=args.precision,
                                     members=args.members)
            try:  # loads the models and predicts the warm-up, also with --partition-rows
                auto = auto_partition_rows(client, config)
            except MemoryBudgetError:
                if not args.partition_rows:
                    raise
                auto = None
            rows = args.partition_rows or auto
            sizing_s = time.perf_counter() - t0
            baseline = client.run(_rss)
            warm_peak = client.run(_high_water_mark)
            client.run(_reset_high_water_mark)
            seen = set(baseline)
            peak = dict(baseline)
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        now = client.run(_rss)
                    except Exception:  # a worker dying mid-call: seen on the next sample
                        now = {}
                    seen.update(now)
                    for addr, m in now.items():
                        peak[addr] = max(peak.get(addr, 0), m)
                    time.sleep(0.25)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t0 = time.perf_counter()
            config = InferenceConfig(model_dir=args.models, precision=args.precision,
                                     members=args.members, partition_rows=rows)
            r = run_inference([cat], tmp / "out.parquet", client, config, progress=False)
            wall = time.perf_counter() - t0
            stop.set()
            th.join()
            true_peak = client.run(_high_water_mark)
            final = set(client.scheduler_info()["workers"])
            logs = client.get_worker_logs(n=1000)
            unmanaged = sum("nmanaged memory" in msg for lines in logs.values()
                            for _, msg in lines)
        planned = {a: warm_peak[a] + READ_OVERHEAD + rows * BYTES_PER_ROW * args.threads
                   for a in warm_peak}
        result = dict(
            spectra=spectra, catalogue_in_memory_gb=in_memory / 1e9,
            worker_memory_limit_gb=limit / 1e9, workers=args.workers, threads=args.threads,
            precision=args.precision, members=args.members,
            partition_rows=rows, partition_rows_auto=auto, partitions=r["partitions"],
            rows_in=r["rows_in"], rows_out=r["rows_out"],
            baseline_worker_rss_gb=max(baseline.values()) / 1e9,
            warm_peak_worker_rss_gb=max(warm_peak.values()) / 1e9,
            peak_worker_rss_gb=max(true_peak.values()) / 1e9,
            peak_fraction_of_limit=max(true_peak.values()) / limit,
            sampled_peak_worker_rss_gb=max(peak.values()) / 1e9,
            sampled_peak_fraction_of_limit=max(peak.values()) / limit,
            growth_above_baseline_gb=max(true_peak[a] - baseline[a] for a in true_peak) / 1e9,
            unexplained_growth_gb=max(true_peak[a] - planned[a] for a in true_peak) / 1e9,
            bytes_per_row_estimate=BYTES_PER_ROW, read_overhead_bytes=READ_OVERHEAD,
            workers_restarted=len(seen - set(baseline)) + len(set(baseline) - final),
            unmanaged_memory_warnings=unmanaged,
            sizing_s=sizing_s, wall_s=wall, spectra_per_s=r["rows_in"] / wall)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:>32}: {v:.3g}" if isinstance(v, float) else f"{k:>32}: {v}")
    write_results("bench_memory" + (f"-{args.tag}" if args.tag else ""), **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
