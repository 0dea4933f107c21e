"""End-to-end inference benchmark: bulk ECSV.gz → Parquet with the full model set.

    python benchmarks/bench_infer.py [--models DIR] [--n-sources 1500] [--workers 1 2]

Stages are timed separately in one process (parse, preprocess, each network, write), then the
whole ``run_inference`` is timed on LocalClusters of 1 and 2 workers. The projection of wall time
for 10^8 and 10^9 epoch spectra on N workers assumes linear scaling from the measured per-worker
rate. Prints a table and writes ``benchmarks/results/bench_infer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def stage_breakdown(files: list[str], model_dir) -> dict:
    import pyarrow as pa
    import torch

    from sb2dask.infer.predict import get_model_set, predict_partition
    from sb2dask.infer.preprocess import preprocess
    from sb2dask.infer.readers import read_catalogue
    from sb2dask.infer.run import write_parquet_atomic
    from sb2dask.infer.schema import arrow_schema

    t0 = time.perf_counter()
    parts = [p for f in files for p in read_catalogue(f, partition_rows=2000)]
    t_parse = time.perf_counter() - t0
    n = sum(len(p) for p in parts)
    models = get_model_set(model_dir, "cpu")
    t0 = time.perf_counter()
    pre = [preprocess(list(p["wave"]), list(p["flux"]), list(p["flux_error"]), models.wave)
           for p in parts]
    t_pre = time.perf_counter() - t0
    flux = np.concatenate([p.flux for p in pre])
    x = torch.from_numpy(flux)
    per_model = {}
    with torch.inference_mode():
        for target, members in models.members.items():
            for model, man in members:
                t0 = time.perf_counter()
                for s in range(0, len(x), 1024):
                    xb = x[s:s + 1024]
                    if man.architecture == "ParameterNet":
                        model(xb, torch.full((len(xb), 2), 0.5))
                    else:
                        model(xb)
                per_model[man.name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = [predict_partition(p, model_dir, device="cpu") for p in parts]
    t_predict_all = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    for i, p in enumerate(preds):
        write_parquet_atomic(p, tmp / f"part-{i}.parquet", arrow_schema("epoch"))
    t_write = time.perf_counter() - t0
    shutil.rmtree(tmp)
    return dict(spectra=n, parse_s=t_parse, preprocess_s=t_pre, models_s=per_model,
                predict_partition_s=t_predict_all, write_s=t_write,
                threads=__import__("torch").get_num_threads())


def end_to_end(files: list[str], model_dir, workers: int) -> dict:
    from sb2dask.cluster import get_client
    from sb2dask.infer.run import run_inference

    tmp = Path(tempfile.mkdtemp())
    try:
        with get_client("local", workers=workers, quiet=True) as client:
            t0 = time.perf_counter()
            r = run_inference(files, tmp / "out.parquet", model_dir, client, partition_rows=1000,
                              progress=False)
            wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp)
    return dict(workers=workers, spectra=r["rows_in"], wall_s=wall,
                spectra_per_s=r["rows_in"] / wall, rows_out=r["rows_out"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=None, help="model directory (default: shipped models)")
    ap.add_argument("--n-sources", type=int, default=1500)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    from sb2dask.dataset.mock_catalogue import mock_catalogue

    tmp = Path(tempfile.mkdtemp(prefix="sb2dask-bench-infer-"))
    try:
        mock = mock_catalogue(tmp / "mock", n_sources=args.n_sources, epochs=(1, 3), n_files=2)
        files = mock["files"]
        stages = stage_breakdown(files, args.models)
        e2e = [end_to_end(files, args.models, w) for w in args.workers]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = stages["spectra"]
    print(f"\nStage breakdown, one process ({stages['threads']} torch threads), {n} spectra:")
    print(f"  parse ECSV.gz   {n / stages['parse_s']:9.0f} spectra/s")
    print(f"  preprocess      {n / stages['preprocess_s']:9.0f} spectra/s")
    for name, s in stages["models_s"].items():
        print(f"  {name:<15} {n / s:9.0f} spectra/s")
    print(f"  predict (all)   {n / stages['predict_partition_s']:9.0f} spectra/s")
    print(f"  write Parquet   {n / stages['write_s']:9.0f} spectra/s")
    print(f"\nEnd to end (bulk ECSV.gz -> Parquet, LocalCluster):")
    print(f"{'workers':>8} {'spectra':>8} {'wall s':>8} {'spectra/s':>10}")
    for r in e2e:
        print(f"{r['workers']:8d} {r['spectra']:8d} {r['wall_s']:8.1f} {r['spectra_per_s']:10.0f}")
    per_worker = e2e[-1]["spectra_per_s"] / e2e[-1]["workers"]
    proj = {f"{int(N)}": {f"{w}_workers_h": N / (per_worker * w) / 3600 for w in (1, 16, 64, 256)}
            for N in (1e8, 1e9)}
    print(f"\nProjection at {per_worker:.0f} spectra/s per CPU worker of this machine:")
    for N, v in proj.items():
        print(f"  {float(N):.0e} spectra: " + ", ".join(f"{k.split('_')[0]} workers {h:,.1f} h"
                                                      for k, h in v.items()))
    out = HERE / "results" / "bench_infer.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), stages=stages,
        end_to_end=e2e, projection_hours=proj, per_worker_spectra_per_s=per_worker), indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
