"""Memory benchmark: inference over a catalogue larger than one worker's memory limit.

    python benchmarks/bench_memory.py [--spectra 80000] [--memory-limit 1.4GB] [--models DIR]
                                      [--precision bf16]

Writes a Parquet epoch catalogue of ``--spectra`` 2401-pixel spectra (flux and flux_error,
float32: 19.2 kB each) whose in-memory size exceeds ``--memory-limit``, runs ``run_inference`` on a
LocalCluster of 2 workers with that limit and partitions sized automatically from it, and records
each worker's resident memory after loading the models and one warm-up batch (baseline) and at
its peak (sampled every 0.25 s), worker restarts (a worker killed by its nanny for memory comes
back under a new address), and rows in/out. The peak-minus-baseline per partition row checks the
``BYTES_PER_ROW`` estimate that :func:`sb2dask.infer.run.auto_partition_rows` sizes partitions
with. Prints a table and writes ``benchmarks/results/bench_memory.json``.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spectra", type=int, default=80000)
    ap.add_argument("--memory-limit", default="1.4GB")
    ap.add_argument("--models", default=None)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = ap.parse_args(argv)
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.run import BYTES_PER_ROW, auto_partition_rows, run_inference

    tmp = Path(tempfile.mkdtemp(prefix="sb2dask-bench-mem-"))
    try:
        cat = tmp / "catalogue.parquet"
        write_catalogue(cat, args.spectra)
        in_memory = args.spectra * 2401 * 4 * 2
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=args.memory_limit,
                          dashboard_address=":0") as lc, Client(lc) as client:
            t0 = time.perf_counter()
            config = InferenceConfig(model_dir=args.models, precision=args.precision)
            rows = auto_partition_rows(client, config)  # loads the models
            sizing_s = time.perf_counter() - t0
            rss = lambda: __import__("psutil").Process().memory_info().rss  # noqa: E731
            baseline = client.run(rss)
            seen = set(baseline)
            peak = dict(baseline)
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        now = client.run(rss)
                    except Exception:  # a worker dying mid-call: seen on the next sample
                        now = {}
                    seen.update(now)
                    for addr, m in now.items():
                        peak[addr] = max(peak.get(addr, 0), m)
                    time.sleep(0.25)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t0 = time.perf_counter()
            r = run_inference([cat], tmp / "out.parquet", client, config, progress=False)
            wall = time.perf_counter() - t0
            stop.set()
            th.join()
            final = set(client.scheduler_info()["workers"])
        growth = max(peak[a] - baseline[a] for a in baseline)
        result = dict(spectra=args.spectra, catalogue_in_memory_gb=in_memory / 1e9,
                      worker_memory_limit_gb=parse_bytes(args.memory_limit) / 1e9,
                      partition_rows=rows, partitions=r["partitions"],
                      rows_in=r["rows_in"], rows_out=r["rows_out"],
                      baseline_worker_rss_gb=max(baseline.values()) / 1e9,
                      peak_worker_rss_gb=max(peak.values()) / 1e9,
                      peak_growth_bytes_per_partition_row=growth / rows,
                      bytes_per_row_estimate=BYTES_PER_ROW,
                      workers_restarted=len(seen - set(baseline)) + len(set(baseline) - final),
                      precision=args.precision, sizing_s=sizing_s, wall_s=wall,
                      spectra_per_s=r["rows_in"] / wall)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:>26}: {v:.3g}" if isinstance(v, float) else f"{k:>26}: {v}")
    write_results("bench_memory", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
