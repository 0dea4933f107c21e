"""The distilled student (``--models fast``) beside the full ensemble, in one run, on the bulk
ECSV.gz → Parquet path.

    python benchmarks/bench_student_speed.py [--n-sources 1000] [--files 4] [--layouts 2x1]
                                             [--ensemble DIR] [--also NAME=DIR ...] [--tag NAME]

One mock catalogue (``sb2dask.dataset.mock_catalogue``, Gaia bulk ECSV.gz) is run through both
model sets: the stages timed on their own in one process on one torch thread (parse, preprocess,
the networks, ``predict_partition`` as a whole, Parquet write; :func:`bench_infer.
stage_breakdown`), then ``run_inference`` end to end (epoch and source tables) on LocalClusters
(:func:`bench_infer.end_to_end`), fp32. ``--also`` adds more model sets (e.g.
``students=students``, the student ensemble), timed the same way in the same run. Prints the
tables with each set's ratio to the ensemble and writes
``benchmarks/results/bench_student_speed.json``; ``os.getloadavg()`` before and after says how
busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from _results import write_results  # benchmarks/ is on sys.path when run as a script
from bench_infer import end_to_end, stage_breakdown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ensemble", default="paper",
                    help="ensemble directory (default: the shipped paper-recipe set)")
    ap.add_argument("--n-sources", type=int, default=1000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--layouts", nargs="+", default=["2x1"])
    ap.add_argument("--also", nargs="*", default=[], metavar="NAME=DIR",
                    help="more model sets to time beside them (a directory or a preset name)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    from sb2dask.dataset.mock_catalogue import mock_catalogue
    from sb2dask.infer.predict import resolve_model_dir

    sets = {"ensemble": args.ensemble, "fast": "fast"}
    for item in args.also:
        name, sep, d = item.partition("=")
        if not sep or not name or name in sets:
            raise SystemExit(f"--also {item!r}: expected NAME=DIR with a new NAME")
        sets[name] = d
    load = {"before": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="sb2dask-bench-student-"))
    try:
        mock = mock_catalogue(tmp / "mock", n_sources=args.n_sources, epochs=(1, 3),
                              n_files=args.files)
        files = mock["files"]
        stages = {k: stage_breakdown(files, d, "fp32", 1)[0] for k, d in sets.items()}
        e2e = {k: [end_to_end(files, d, *map(int, shape.split("x")), "fp32")
                   for shape in args.layouts] for k, d in sets.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load["after"] = os.getloadavg()
    n = stages["fast"]["spectra"]
    names = list(sets)
    others = names[1:]
    print(f"\nStages, one process, one torch thread, fp32, {n} spectra (spectra/s; ratio: "
          "time of the ensemble / of the set):")
    print(f"  {'stage':<18}" + "".join(f"{k:>10}" for k in names)
          + "".join(f"{'x ' + k:>12}" for k in others))

    def line(name, times):
        print(f"  {name:<18}" + "".join(f"{n / times[k]:10.0f}" for k in names)
              + "".join(f"{times['ensemble'] / times[k]:12.1f}" for k in others))

    for label, get in (("parse ECSV.gz", lambda st: st["parse_s"]),
                       ("preprocess", lambda st: st["preprocess_s"]),
                       ("networks", lambda st: sum(st["models_s"].values())),
                       ("predict_partition", lambda st: st["predict_partition_s"]),
                       ("write Parquet", lambda st: st["write_s"])):
        line(label, {k: get(st) for k, st in stages.items()})
    for k, st in stages.items():
        total = st["parse_s"] + st["predict_partition_s"] + st["write_s"]
        share = {"parse": st["parse_s"], "predict_partition (preprocess, rv_bulk, networks)":
                 st["predict_partition_s"], "write": st["write_s"]}
        print(f"  {k}: one thread end to end {n / total:.0f} spectra/s; shares " + ", ".join(
            f"{name} {v / total:.0%}" for name, v in share.items()))
    print(f"\nEnd to end (bulk ECSV.gz -> epoch + source Parquet, LocalCluster, "
          f"{os.cpu_count()} cores, fp32; spectra/s and the ratio to the ensemble):")
    print(f"{'layout':>8}" + "".join(f"{k:>10}" for k in names)
          + "".join(f"{'x ' + k:>12}" for k in others))
    for i, shape in enumerate(args.layouts):
        rate = {k: e2e[k][i]["spectra_per_s"] for k in names}
        print(f"{shape:>8}" + "".join(f"{rate[k]:10.0f}" for k in names)
              + "".join(f"{rate[k] / rate['ensemble']:12.1f}" for k in others))
    print(f"\nload average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    write_results(f"bench_student_speed{'_' + args.tag if args.tag else ''}",
                  machine=dict(loadavg=load),
                  models={k: str(resolve_model_dir(d)) for k, d in sets.items()},
                  spectra=n, stages=stages, end_to_end=e2e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
