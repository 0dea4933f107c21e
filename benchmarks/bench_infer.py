"""End-to-end inference benchmark: bulk ECSV.gz → Parquet with the full model set.

    python benchmarks/bench_infer.py [--models DIR] [--members N] [--n-sources 2500] [--files 8]
                                     [--layouts 2x1 1x2] [--tag NAME]

Stages are timed separately in one process on one torch thread (parse, preprocess, each network,
write) for each precision (fp32, bf16), with the largest bf16-fp32 differences of the outputs; then
the whole ``run_inference`` (epoch and source tables) is timed on LocalClusters of 2 workers x 1
thread and 1 worker x 2 threads. The projection of wall time for 10^8 and 10^9 epoch spectra
assumes linear scaling per core from the best end-to-end rate. Prints a table and writes
``benchmarks/results/bench_infer.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import write_results  # benchmarks/ is on sys.path when run as a script
from sb2dask.infer.predict import resolve_model_dir


def stage_breakdown(files: list[str], model_dir, precision: str, threads: int,
                    members: int | None = None) -> dict:
    """Each stage timed on its own in this process with ``threads`` torch threads."""
    import torch

    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.predict import PARAMETERS, ModelSet, predict_partition
    from sb2dask.infer.readers import read_catalogue
    from sb2dask.infer.run import write_parquet_atomic
    from sb2dask.infer.schema import arrow_schema
    from sb2dask.observe.preprocess import preprocess

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    parts = [p for f in files for p in read_catalogue(f, partition_rows=1000)]
    t_parse = time.perf_counter() - t0
    n = sum(len(p) for p in parts)
    models = ModelSet(resolve_model_dir(model_dir), "cpu", precision=precision, members=members)
    t0 = time.perf_counter()
    pre = [preprocess(list(p["wave"]), list(p["flux"]), list(p["flux_error"]), models.wave)
           for p in parts]
    t_pre = time.perf_counter() - t0
    x = torch.from_numpy(np.concatenate([p.flux for p in pre]))
    temps = torch.full((models.batch_size, 2), 0.5)
    per_model = {}
    with torch.inference_mode(), models._autocast():
        for st in models.students:  # a student: one network does it all (several: seeds)
            model, man = st["model"], st["manifest"]
            model(x[:8])
            t0 = time.perf_counter()
            for s in range(0, len(x), models.batch_size):
                model(x[s:s + models.batch_size])
            per_model[man.name] = time.perf_counter() - t0
        for target in ("p_binary", "teff") + PARAMETERS:
            for model, man in models.members[target]:
                if man.architecture != "ParameterNet":
                    model(x[:8])  # warm-up: oneDNN picks its kernels on the first call
                else:
                    model(x[:8], temps[:8])
                t0 = time.perf_counter()
                for s in range(0, len(x), models.batch_size):
                    xb = x[s:s + models.batch_size]
                    if man.architecture == "ParameterNet":
                        model(xb, temps[:len(xb)])
                    else:
                        model(xb)
                per_model[man.name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    config = InferenceConfig(model_dir=model_dir, device="cpu", precision=precision,
                             members=members)
    preds = [predict_partition(p, config) for p in parts]
    t_predict_all = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    for i, p in enumerate(preds):
        write_parquet_atomic(p, tmp / f"part-{i}.parquet", arrow_schema("epoch"))
    t_write = time.perf_counter() - t0
    shutil.rmtree(tmp)
    return dict(spectra=n, precision=precision, threads=threads, parse_s=t_parse,
                preprocess_s=t_pre, models_s=per_model, predict_partition_s=t_predict_all,
                write_s=t_write), pd.concat(preds)


def agreement(a, b) -> dict:
    """Largest and 99th-percentile |bf16 - fp32| of each output, over usable rows."""
    u = a["usable"].to_numpy()
    out = {}
    for col in ("p_binary", "teff_1", "teff_2", "logg_1", "logg_2", "feh_1", "feh_2",
                "vsini_1", "vsini_2", "ood_distance"):
        d = np.abs(a[col].to_numpy()[u] - b[col].to_numpy()[u])
        out[col] = dict(max=float(d.max()), p99=float(np.quantile(d, 0.99)))
    return out


def end_to_end(files: list[str], model_dir, workers: int, threads: int, precision: str,
               members: int | None = None) -> dict:
    from sb2dask.cluster import get_client
    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.run import run_inference

    tmp = Path(tempfile.mkdtemp())
    try:
        with get_client("local", workers=workers, threads_per_worker=threads,
                        quiet=True) as client:
            t0 = time.perf_counter()
            r = run_inference(files, tmp / "out.parquet", client, InferenceConfig(
                model_dir=model_dir, partition_rows=500, precision=precision, members=members),
                progress=False)
            wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp)
    return dict(workers=workers, threads_per_worker=threads, precision=precision,
                spectra=r["rows_in"], rows_out=r["rows_out"], wall_s=wall,
                spectra_per_s=r["rows_in"] / wall, epoch_table_s=r["seconds"],
                epoch_table_spectra_per_s=r["rows_in"] / r["seconds"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="paper",
                    help="model directory or preset (default: the paper-recipe ensembles)")
    ap.add_argument("--n-sources", type=int, default=2500)
    ap.add_argument("--files", type=int, default=8, help="bulk ECSV files (one partition each)")
    ap.add_argument("--layouts", nargs="+", default=["2x1", "1x2"],
                    help="LocalCluster shapes WORKERSxTHREADS to time end to end")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--members", type=int, default=None,
                    help="ensemble members per network (default: all in --models)")
    ap.add_argument("--tag", default="", help="results file bench_infer[_TAG].json")
    args = ap.parse_args(argv)
    from sb2dask.dataset.mock_catalogue import mock_catalogue

    cores = os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="sb2dask-bench-infer-"))
    try:
        mock = mock_catalogue(tmp / "mock", n_sources=args.n_sources, epochs=(1, 3),
                              n_files=args.files)
        files = mock["files"]
        stages, preds = {}, {}
        for prec in args.precisions:
            stages[prec], preds[prec] = stage_breakdown(files, args.models, prec, 1, args.members)
        e2e = [end_to_end(files, args.models, *map(int, shape.split("x")), prec, args.members)
               for prec in args.precisions for shape in args.layouts]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    agree = agreement(preds["fp32"], preds["bf16"]) if {"fp32", "bf16"} <= set(preds) else {}
    first = next(iter(stages.values()))
    n = first["spectra"]
    print(f"\nStage breakdown, one process, one torch thread, {n} spectra (spectra/s):")
    print(f"  {'stage':<16}" + "".join(f"{p:>10}" for p in stages))
    rows = [("parse ECSV.gz", "parse_s"), ("preprocess", "preprocess_s")]
    for name, key in rows:
        print(f"  {name:<16}" + "".join(f"{n / st[key]:10.0f}" for st in stages.values()))
    for name in first["models_s"]:
        print(f"  {name:<16}" + "".join(f"{n / st['models_s'][name]:10.0f}"
                                        for st in stages.values()))
    print(f"  {'predict (all)':<16}" + "".join(f"{n / st['predict_partition_s']:10.0f}"
                                             for st in stages.values()))
    print(f"  {'write Parquet':<16}" + "".join(f"{n / st['write_s']:10.0f}"
                                             for st in stages.values()))
    if agree:
        print("\nbf16 against fp32 on the same spectra, |difference| max / 99th percentile:")
        for col, d in agree.items():
            print(f"  {col:<13} {d['max']:10.4g} {d['p99']:10.4g}")
    print(f"\nEnd to end (bulk ECSV.gz -> epoch + source Parquet, LocalCluster, {cores} cores):")
    print(f"{'workers':>8} {'threads':>8} {'precision':>10} {'spectra':>8} {'wall s':>8} "
          f"{'spectra/s':>10} {'epoch-table/s':>14}")
    for r in e2e:
        print(f"{r['workers']:8d} {r['threads_per_worker']:8d} {r['precision']:>10} "
              f"{r['spectra']:8d} {r['wall_s']:8.1f} {r['spectra_per_s']:10.0f} "
              f"{r['epoch_table_spectra_per_s']:14.0f}")
    proj = {}
    for prec in args.precisions:
        best = max((r for r in e2e if r["precision"] == prec), key=lambda r: r["spectra_per_s"])
        per_core = best["spectra_per_s"] / cores
        proj[prec] = dict(spectra_per_s_per_core=per_core, hours={
            f"{N:.0e}": {str(c): N / (per_core * c) / 3600 for c in (64, 512, 4096)}
            for N in (1e8, 1e9)})
        print(f"\nProjection ({prec}, {per_core:.0f} spectra/s per core of this machine, "
              "linear scaling):")
        for N, v in proj[prec]["hours"].items():
            print(f"  {N} spectra: " + ", ".join(f"{c} cores {h:,.1f} h" for c, h in v.items()))
    write_results(f"bench_infer{'_' + args.tag if args.tag else ''}",
                  models=str(resolve_model_dir(args.models)), members=args.members,
                  stages=stages, bf16_vs_fp32=agree, end_to_end=e2e, projection=proj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
