"""Benchmark the networks: training samples/s and inference spectra/s per model and layout, and
the data loader's rows/s from a Zarr store.

    python benchmarks/bench_models.py [--threads 1 2] [--store train.zarr]

Weights are random (speed does not depend on them). Prints a table and writes
``benchmarks/results/bench_models.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _results import write_results  # benchmarks/ is on sys.path when run as a script


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_network(name: str, layout: str, threads: int, batch: int = 256,
                  repeats: int = 3) -> dict:
    from sb2dask.models.densenet import ParameterNet, TemperatureNet
    from sb2dask.models.detector import BinaryDetector

    torch.set_num_threads(threads)
    cls = {"TemperatureNet": TemperatureNet, "ParameterNet": ParameterNet,
           "BinaryDetector": BinaryDetector}[name]
    model = cls(layout=layout)
    x = torch.randn(batch, 903)
    args = (x, torch.rand(batch, 2)) if name == "ParameterNet" else (x,)
    model.eval()

    def infer():
        with torch.inference_mode():
            model(*args)

    t_inf = _time(infer, repeats)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    tb = 128
    targs = tuple(a[:tb] for a in args)
    y = torch.rand(tb) if name == "BinaryDetector" else torch.rand(tb, 2)
    loss_fn = torch.nn.BCEWithLogitsLoss() if name == "BinaryDetector" else torch.nn.MSELoss()

    def step():
        opt.zero_grad()
        loss_fn(model(*targs), y).backward()
        opt.step()

    t_train = _time(step, repeats)
    return dict(network=name, layout=layout, threads=threads,
                infer_spectra_per_s=batch / t_inf, train_samples_per_s=tb / t_train)


def bench_loader(store: str) -> dict:
    from sb2dask.dataset.store import load_split, split_indices

    idx = split_indices(store, "validation")
    t0 = time.perf_counter()
    d = load_split(store, idx, ["teff", "logg", "feh", "vsini", "is_binary"])
    dt = time.perf_counter() - t0
    return dict(store=store, rows=len(d.flux), seconds=dt, rows_per_s=len(d.flux) / dt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--store", default=None, help="a simulated store for the loader benchmark")
    args = ap.parse_args(argv)
    rows = [bench_network(n, layout, t) for n in ("TemperatureNet", "ParameterNet",
                                                  "BinaryDetector")
            for layout in ("1d", "2d") for t in args.threads]
    print(f"\n{'network':<16} {'layout':>6} {'threads':>7} {'infer spectra/s':>16} "
          f"{'train samples/s':>16}")
    for r in rows:
        print(f"{r['network']:<16} {r['layout']:>6} {r['threads']:>7} "
              f"{r['infer_spectra_per_s']:16.0f} {r['train_samples_per_s']:16.0f}")
    loader = bench_loader(args.store) if args.store else None
    if loader:
        print(f"\ndata loader: {loader['rows']} rows in {loader['seconds']:.2f} s = "
              f"{loader['rows_per_s']:.0f} rows/s (validation split, chunk-sequential)")
    write_results("bench_models", machine=dict(torch=torch.__version__,
                                               cuda=torch.cuda.is_available()),
                  networks=rows, loader=loader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
