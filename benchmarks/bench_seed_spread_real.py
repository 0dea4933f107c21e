"""Diagnosis: how much of an off-library p_binary is the training seed? (issue 14)

Each student of a directory (``student-0``, ``student-1``, ...: seeds of one recipe) alone and
their mixture (what ``sb2dask infer`` reports), on the real Gaia DR3 spectra of the real-sky
suite at rest (the shared and the held-out ones) and the PHOENIX single stars of the suite
(its own rendering, S/N 100), read through the inference path (bulk velocity removed).

    python benchmarks/bench_seed_spread_real.py --models students [runs/students_E ...] \
        [--names C E ...]

Not a target and not a criterion of any rule. One run (the cases and the networks are
deterministic). Writes ``benchmarks/results/bench_seed_spread_real.json`` and prints p_binary
per student and of the mixture.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script
from library_fidelity import add_spectra_args, model_names


def per_student(ms, flux: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """p_binary of every student of ``ms`` alone, each with its own logit offset: (n_st, n)."""
    import torch

    from sb2dask.models.student import decode

    x = torch.from_numpy(np.ascontiguousarray(flux, np.float32))
    out = []
    with torch.inference_mode():
        for st in ms.students:
            logit, mean, log_width = (t.float().numpy() for t in st["model"](x))
            out.append(decode(logit, mean, log_width, snr, st["width_scales"], st["snr_edges"],
                              st["logit_offset"])["p_binary"])
    return np.asarray(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_spectra_args(ap, models=True)
    args = ap.parse_args(argv)
    names = model_names(args)

    from sb2dask.evaluate.real_sky import _as_reader_frame, build_cases
    from sb2dask.infer.predict import ModelSet
    from sb2dask.observe.rv_bulk import preprocess_in_frame

    cases = [c for c in build_cases(Path(args.gaia_dir), Path(args.phoenix_dir))
             if (c.kind == "real" and c.truth.get("shift_kms") == 0.0)
             or c.kind == "phoenix_single"]
    if not cases:
        raise SystemExit("bench_seed_spread_real: no real or PHOENIX spectra found")
    df = _as_reader_frame(cases)
    table = {}
    for name, models in zip(names, args.models):
        ms = ModelSet(models, "cpu")
        if len(ms.students) < 2:
            raise SystemExit(f"{models}: fewer than two students; nothing to spread")
        pre, _, _ = preprocess_in_frame(list(df["wave"]), list(df["flux"]),
                                        list(df["flux_error"]), ms.wave, True, 0.2)
        snr = pre.snr_estimate.astype(np.float64)
        each = per_student(ms, pre.flux, snr)
        mix = ms.predict(pre.flux, snr=snr)["p_binary"]
        table[name] = {c.case: dict(students=[float(v) for v in each[:, j]],
                                    mixture=float(mix[j]))
                       for j, c in enumerate(cases)}
    print("| spectrum | " + " | ".join(f"{n}: students; mixture" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for c in cases:
        cells = [", ".join(f"{v:.2f}" for v in table[n][c.case]["students"])
                 + f"; {table[n][c.case]['mixture']:.2f}" for n in names]
        print(f"| {c.case} | " + " | ".join(cells) + " |")
    write_results(f"bench_seed_spread_real{'_' + args.tag if args.tag else ''}",
                  models=dict(zip(names, args.models)), p_binary=table,
                  note="each student alone and the mixture, real spectra at rest and PHOENIX "
                       "singles, inference path; diagnosis, one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
