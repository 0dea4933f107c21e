"""Semi-empirical training across a library gap, measured with PHOENIX as the "real sky".

The eight PHOENIX spectra in ``../shared/data/phoenix`` are split into two disjoint Teff sets.
Set A (5000/5400/5800/6200 K) plays the user's real single stars: rendered onto the Gaia DR3 grid
at several v sin i and S/N, with noise, written as a Parquet catalogue plus a label table, and
turned into a semi-empirical detector store by ``sb2dask.dataset.semi_empirical.build`` (SB2s and
singles, binary fraction 0.5). Three detectors are trained at one budget: (a) synthetic only (the
realistic recipe: rows of ``/work/runs/det_v2.zarr``), (b) semi-empirical only, (c) the two mixed
half and half. All three are evaluated on PHOENIX singles and SB2 pairs made from set B
(5200/5600/6000/6400 K) through the real-sky suite's independent path
(:func:`sb2dask.evaluate.real_sky.render_phoenix`, not the builder), with the realistic-recipe
parameter networks of ``/work/runs/models_v2`` beside each detector, through
:func:`sb2dask.infer.predict.predict_partition` as a catalogue would be.

Then the same mechanics with the three real DR3 spectra of ``../shared/data/gaia_rvs`` as a tiny
"real" set (a mechanics test, not a result).

Usage (resumable: finished stores and trainings are reused)::

    nice -n 5 python benchmarks/semi_empirical_demo.py --work /work/runs/semiemp

Writes ``benchmarks/results/semi_empirical_demo.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SET_A = (5000, 5400, 5800, 6200)
SET_B = (5200, 5600, 6000, 6400)
VSINI_A = (1.0, 4.0, 8.0, 15.0, 30.0)
SNR_A = (20.0, 80.0, 150.0, 300.0, 600.0)  # S/N 20 is below the requested 30: rejected
SEEDS_A = 3
REAL_LABELS = {  # Kepler-93: Cannon fit (Angelo et al. 2024); KOI-001: literature; the rest and
    # every error and v_broad not quoted in ../shared/data/README.md are assumptions for the
    # mechanics test (HD176650 is a giant: it can only be a single star)
    2052747119115620352: ("Kepler-93", 5566, 60, 4.39, 0.1, -0.12, 0.08, 5.7),
    2131314401800665344: ("KOI-001", 5850, 100, 4.45, 0.1, -0.15, 0.1, 4.0),
    4268620287278693120: ("HD176650", 4800, 150, 2.8, 0.3, 0.0, 0.15, 5.0),
}


def phoenix_file(teff: int) -> Path:
    return SHARED / "phoenix" / f"lte0{teff}-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"


def make_real_set_a(work: Path) -> tuple[Path, Path]:
    """Set A as a user's "real" catalogue: Parquet of spectra on the DR3 grid (vacuum nm by
    length, as Gaia delivers them) and a label table with errors."""
    from sb2dask.constants import C_KMS
    from sb2dask.evaluate.real_sky import read_phoenix_vacuum, render_phoenix, upper_envelope
    from sb2dask.simulate.broadening import rotational_broadening

    spectra, labels = work / "set_a_spectra.parquet", work / "set_a_labels.csv"
    if spectra.exists() and labels.exists():
        return spectra, labels
    rng = np.random.default_rng(20261130)
    rows, lab = [], []
    sid = 1_000_000
    for teff in SET_A:
        wave, flux, h = read_phoenix_vacuum(phoenix_file(teff))
        env = upper_envelope(wave, flux)
        dv = float(np.median(np.diff(np.log(wave)))) * C_KMS
        for vsini in VSINI_A:
            broad = rotational_broadening(flux / env, dv, vsini) * env
            for snr in SNR_A:
                for _ in range(SEEDS_A):
                    f, e = render_phoenix([(wave, broad, 1.0, 0.0)], rng, snr=snr)
                    rows.append(dict(source_id=sid, flux=f.tolist(), flux_error=e.tolist()))
                    lab.append(dict(source_id=sid, teff=float(h["PHXTEFF"]), e_teff=50.0,
                                    logg=float(h["PHXLOGG"]), e_logg=0.1,
                                    fe_h=float(h["PHXM_H"]), e_fe_h=0.05, vsini=vsini,
                                    e_vsini=1.0))
                    sid += 1
    pd.DataFrame(rows).to_parquet(spectra)
    pd.DataFrame(lab).to_csv(labels, index=False)
    return spectra, labels


def make_real_three(work: Path) -> tuple[list[Path], Path]:
    labels = work / "gaia3_labels.csv"
    pd.DataFrame([dict(source_id=k, star=v[0], teff=v[1], e_teff=v[2], logg=v[3], e_logg=v[4],
                       fe_h=v[5], e_fe_h=v[6], vbroad=v[7]) for k, v in REAL_LABELS.items()]
                 ).to_csv(labels, index=False)
    return sorted((SHARED / "gaia_rvs").glob("*.csv")), labels


def evaluation_cases():
    """PHOENIX set B through the real-sky suite's independent renderer: singles and SB2 pairs
    (every pair of distinct Teff, light weights R² from PHXREFF times the surface flux)."""
    from sb2dask.evaluate.real_sky import (
        RealSkyCase,
        _gaia_air,
        read_phoenix_vacuum,
        render_phoenix,
    )

    rng = np.random.default_rng(20261201)
    stars = [read_phoenix_vacuum(phoenix_file(t)) for t in SET_B]
    cases = []
    for gamma in (-40.0, 0.0, 40.0):
        for snr in (50.0, 100.0, 200.0):
            for wave, flux, h in stars:
                for k in range(5):
                    f, e = render_phoenix([(wave, flux, 1.0, gamma)], rng, snr=snr)
                    cases.append(RealSkyCase(
                        case=f"single {h['PHXTEFF']:.0f} S/N {snr:.0f} γ {gamma:+.0f} #{k}",
                        kind="phoenix_single", wave=_gaia_air(), flux=f, flux_error=e,
                        truth=dict(teff=float(h["PHXTEFF"]), snr=snr, gamma=gamma)))
            for i, (w1, f1, h1) in enumerate(stars):
                for w2, f2, h2 in stars[i + 1:]:
                    r1, r2 = float(h1["PHXREFF"]) ** 2, float(h2["PHXREFF"]) ** 2
                    for dv in (20.0, 40.0, 60.0, 80.0):
                        f, e = render_phoenix([(w1, f1, r1 / (r1 + r2), gamma - dv / 2),
                                               (w2, f2, r2 / (r1 + r2), gamma + dv / 2)],
                                              rng, snr=snr)
                        cases.append(RealSkyCase(
                            case=f"SB2 {h1['PHXTEFF']:.0f}+{h2['PHXTEFF']:.0f} dv {dv:.0f} "
                                 f"S/N {snr:.0f} γ {gamma:+.0f}",
                            kind="phoenix_sb2", wave=_gaia_air(), flux=f, flux_error=e,
                            truth=dict(teff_1=float(h1["PHXTEFF"]), teff_2=float(h2["PHXTEFF"]),
                                       rv_separation=dv, snr=snr, gamma=gamma)))
    return cases


def model_dir(work: Path, name: str, detector: Path) -> Path:
    """A model set: the realistic-recipe member-0 networks of models_v2 and this detector."""
    d = work / f"modelset_{name}"
    d.mkdir(parents=True, exist_ok=True)
    for p in Path("/work/runs/models_v2").glob("*-0.*"):
        if not p.name.startswith("p_binary"):
            dst = d / p.name
            if not dst.exists():
                os.symlink(p, dst)
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(detector.with_suffix(suffix), d / f"p_binary-0{suffix}")
    return d


def metrics(p: np.ndarray, is_sb2: np.ndarray) -> dict:
    from sb2dask.stats import roc_auc

    call = p > 0.5
    tp = int(np.sum(call & is_sb2))
    fp = int(np.sum(call & ~is_sb2))
    return dict(n_sb2=int(is_sb2.sum()), n_single=int((~is_sb2).sum()),
                precision=tp / max(tp + fp, 1), recall=tp / max(int(is_sb2.sum()), 1),
                single_fpr=fp / max(int((~is_sb2).sum()), 1),
                roc_auc=float(roc_auc(is_sb2.astype(np.float32), p)),
                median_p_single=float(np.median(p[~is_sb2])),
                median_p_sb2=float(np.median(p[is_sb2])))


def train(work: Path, name: str, stores, mix, budget: dict) -> tuple[Path, dict]:
    from sb2dask.train.config import TrainConfig
    from sb2dask.train.fit import fit

    out = work / f"train_{name}"
    cfg = TrainConfig(target="p_binary", lr_schedule="cosine", early_stopping=None, threads=2,
                      mix=mix, **budget)
    t0 = time.perf_counter()
    res = fit(cfg, stores if len(stores) > 1 else stores[0], out, progress=False)
    res["wall_s"] = time.perf_counter() - t0
    print(f"trained {name}: {res['wall_s']:.0f} s, best val {res['best_val_loss']:.4f}",
          flush=True)
    return out / "p_binary-0.json", {k: v for k, v in res.items() if k != "history"} | dict(
        history=res["history"])


def train_and_evaluate(work: Path, stores: dict, mixes: dict, budget: dict, cases):
    """Train one detector per entry of ``stores`` and evaluate them all on ``cases``."""
    runs, detectors = {}, {}
    for name in stores:
        det, res = train(work, name, stores[name], mixes[name], budget)
        detectors[name] = det
        man = json.loads(det.read_text())
        runs[name] = dict(n_train=man["training"]["n_train"], wall_s=res["wall_s"],
                          mix=man["training"]["mix"], val=man["metrics"])
    ev = evaluate(cases, detectors, work)
    for name in runs:
        runs[name]["metrics"] = ev[name]
    return runs, detectors


def build_store(out: Path, spectra, labels: Path, n: int, snr, shared: bool,
                velocity_label: str, input_noise: str, client) -> dict:
    from sb2dask.dataset.semi_empirical import build
    from sb2dask.simulate.config import SimulationConfig
    from sb2dask.simulate.semi_empirical import SemiEmpiricalSettings, semi_empirical_realism

    cfg = SimulationConfig(binary_fraction=0.5, snr_range=snr, seed=20261130,
                           realism=semi_empirical_realism())
    settings = SemiEmpiricalSettings(shared_stars=shared, velocity_label=velocity_label,
                                     input_noise=input_noise)
    t0 = time.perf_counter()
    summary = build(out, spectra, labels, cfg, settings, n=n, chunk=2000, client=client,
                    progress=False, command="benchmarks/semi_empirical_demo.py",
                    main_sequence_table=SHARED / "PecautMamajek_table.csv")
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def evaluate(cases, detectors: dict, work: Path) -> dict:
    from sb2dask.evaluate.real_sky import run_suite
    from sb2dask.infer.config import InferenceConfig

    is_sb2 = np.array([c.kind == "phoenix_sb2" for c in cases])
    out = {}
    for name, det in detectors.items():
        res = run_suite(cases, InferenceConfig(model_dir=str(model_dir(work, name, det)),
                                               members=1, device="cpu"))
        p = res["p_binary"].to_numpy(float)
        out[name] = metrics(p, is_sb2)
        snr = np.array([c.truth["snr"] for c in cases])
        out[name]["by_snr"] = {f"{s:.0f}": metrics(p[snr == s], is_sb2[snr == s])
                               for s in np.unique(snr)}
    return out


def real_three_p(detectors: dict, work: Path) -> dict:
    from sb2dask.evaluate.real_sky import _real_cases, run_suite
    from sb2dask.infer.config import InferenceConfig

    cases = [c for c in _real_cases(SHARED / "gaia_rvs") if c.truth["shift_kms"] == 0.0]
    out = {}
    for name, det in detectors.items():
        res = run_suite(cases, InferenceConfig(model_dir=str(model_dir(work, name, det)),
                                               members=1, device="cpu"))
        out[name] = {c.truth["star"]: float(p) for c, p in zip(cases, res["p_binary"])}
    return out


def table(rows: dict) -> list[str]:
    lines = ["| detector | precision | recall | single FPR | ROC AUC | median p (single / SB2) "
             "| train rows | train wall [s] |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        m = r["metrics"]
        lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"{m['single_fpr']:.3f} | {m['roc_auc']:.3f} | {m['median_p_single']:.2f} / "
                     f"{m['median_p_sb2']:.2f} | {r['n_train']} | {r['wall_s']:.0f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/work/runs/semiemp")
    ap.add_argument("--synthetic", default="/work/runs/det_v2.zarr")
    ap.add_argument("--n", type=int, default=22000, help="rows of the semi-empirical store")
    ap.add_argument("--max-train", type=int, default=14000)
    ap.add_argument("--max-validation", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    from _results import RESULTS, write_results

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    budget = dict(epochs=args.epochs, max_train=args.max_train,
                  max_validation=args.max_validation)
    spectra, labels = make_real_set_a(work)
    gaia3, gaia3_labels = make_real_three(work)
    with Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True)) as client:
        se_summary = build_store(work / "semi_a.zarr", [spectra], labels, args.n, (30.0, 350.0),
                                 False, "vsini", "white", client)
        print(json.dumps({k: v for k, v in se_summary.items() if k != "splits"}), flush=True)
        g3_summary = build_store(work / "semi_gaia3.zarr", gaia3, gaia3_labels, 3000,
                                 (15.0, 120.0), True, "vbroad", "correlated", client)
    stores = dict(a_synthetic=[args.synthetic], b_semi_empirical=[str(work / "semi_a.zarr")],
                  c_mix=[args.synthetic, str(work / "semi_a.zarr")])
    mixes = dict(a_synthetic=None, b_semi_empirical=None, c_mix=(0.5, 0.5))
    cases = evaluation_cases()
    runs, detectors = train_and_evaluate(work, stores, mixes, budget, cases)
    # mechanics test: the three real DR3 spectra as the "real" set (tiny budget)
    tiny = dict(epochs=1, max_train=2000, max_validation=500)
    mech_stores = dict(b_real3=[str(work / "semi_gaia3.zarr")],
                       c_real3_mix=[args.synthetic, str(work / "semi_gaia3.zarr")])
    mech_mix = dict(b_real3=None, c_real3_mix=(0.5, 0.5))
    mech, mech_det = train_and_evaluate(work, mech_stores, mech_mix, tiny, cases)
    real3 = real_three_p({**detectors, **mech_det}, work)
    train_wall = sum(r["wall_s"] for r in runs.values()) + sum(r["wall_s"] for r in
                                                                mech.values())
    command = "nice -n 5 python benchmarks/semi_empirical_demo.py --work /work/runs/semiemp"
    write_results("semi_empirical_demo", demo=runs, mechanics_test=mech,
                  real_spectra_p_binary=real3, evaluation=dict(
                      n_cases=len(cases), set_a=SET_A, set_b=SET_B,
                      n_single=int(sum(c.kind == "phoenix_single" for c in cases)),
                      n_sb2=int(sum(c.kind == "phoenix_sb2" for c in cases))),
                  semi_empirical_store={k: v for k, v in se_summary.items()},
                  real3_store={k: v for k, v in g3_summary.items()}, budget=budget,
                  training_wall_s_total=train_wall, command=command)
    md = ["# Semi-empirical training across a library gap (PHOENIX as the real sky)", "",
          f"Command: `{command}`; one run; CPU, 2 threads (shared machine).", "",
          f"Evaluation: {len(cases)} PHOENIX spectra from set B ({'/'.join(map(str, SET_B))} K, "
          "real-sky suite's independent renderer): "
          f"{sum(c.kind == 'phoenix_single' for c in cases)} singles, "
          f"{sum(c.kind == 'phoenix_sb2' for c in cases)} SB2 pairs (Δv 20-80 km/s, S/N 50/100/"
          "200, γ -40/0/+40 km/s). Threshold p_binary > 0.5.", "",
          f"Training: detector only, {budget['epochs']} epochs, {budget['max_train']} rows, "
          "cosine schedule; the semi-empirical rows made from set A "
          f"({'/'.join(map(str, SET_A))} K; {se_summary['inputs']['n']} input spectra, "
          f"{se_summary['inputs']['too noisy for the requested S/N']} rejected as too noisy for "
          "S/N >= 30).", ""] + table(runs) + [
          "", "## Mechanics test (three real DR3 spectra; not a result)", "",
          "The three spectra of ../shared/data/gaia_rvs as the \"real\" set (shared between "
          "splits, one epoch on 2000 rows): it exercises the reader, label join, pairing, noise "
          "accounting and training path only.", ""] + table(mech) + [
          "", "p_binary of the three real spectra at rest:", "",
          "| detector | " + " | ".join(next(iter(real3.values()))) + " |",
          "|---" * (1 + len(next(iter(real3.values())))) + "|"]
    for name, d in real3.items():
        md.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in d.values()) + " |")
    md += ["", f"Total training wall time: {train_wall / 60:.1f} min."]
    (RESULTS / "semi_empirical_demo.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
