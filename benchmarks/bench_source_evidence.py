"""Per-source SB2 decisions from many noisy epochs: the maximum p_binary against the evidence rule
of :mod:`sb2dask.infer.sources`, on simulated single stars and SB2s with 20 epochs each.

    python benchmarks/bench_source_evidence.py [--sources 200] [--epochs 20] [--snr 10 20 50]
        [--recipes paper realistic] [--models DIR_OR_PRESET --tag _NAME] [--workdir DIR]

For each recipe and S/N a mock epoch catalogue (``sb2dask.dataset.mock_catalogue``: each source
keeps its stars, orbit and nuisances, an SB2 is seen at a new orbital phase at every epoch) of
``--sources`` sources, half of them SB2s, ``--epochs`` epochs each at one S/N, is read back with
the catalogue reader, preprocessed and framed like ``sb2dask infer``
(:func:`sb2dask.observe.rv_bulk.preprocess_in_frame`: the bulk velocity removed when
``ModelSet.uses_rest_frame("auto", frames)`` says so, i.e. for models trained in the ``rv_bulk``
frame) and run through the detector ensemble of ``--models`` alone (``ModelSet.detect``;
default: ``paper``, the shipped ensembles trained on the paper's recipe at rest). The recipe
``paper`` is those models' own training recipe; ``realistic`` adds Gaia's nuisances of
``SimulationConfig.realistic()`` (continuum errors, line-depth and Ca II scaling, activity,
correlated noise, gaps), drawn once per source and so shared by its epochs like a library
mismatch. With models that remove the bulk
velocity the realistic recipe keeps its systemic velocities (±300 km/s); with rest-frame models
(the paper-recipe ones) they are set to 0, since those models never see a moved spectrum.

Prints, per recipe and S/N, the epoch-level false-positive rate and recall at p_binary > 0.5
against both truths of a detector (``is_binary``: any binary; ``double_lined``: a binary whose
spectrum at that epoch shows both stars, :func:`sb2dask.labels.double_lined`), the intra-source
correlation of the epochs' log likelihood ratios ``l`` and log evidence ``m`` (one-way ANOVA
estimator) and, per rule, the source-level false-positive rate on singles and recall on SB2s (the
source's truth is ``is_binary``), also among the SB2s with at least one double-lined epoch. The
rules are the default one as ``sb2dask infer`` sets it from the models
(``EvidenceRule().for_models``: S/N floor from their manifests, the mixture's double-lined
fraction f from their detector's target) and variants of it (f = 1 as for ``is_binary``, rho 0,
0.3, 0.7, 1, no S/N weights). Writes ``benchmarks/results/bench_source_evidence{--tag}.json`` with
the models' directory, detector target, frame and default rule; a model set other than the
paper-recipe ensembles needs a ``--tag`` (their results file is not overwritten). The detector
outputs of each catalogue are kept in ``--workdir`` (``--reuse`` evaluates the rules again
without simulating).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import write_results  # benchmarks/ is on sys.path when run as a script


def _config(recipe: str, snr: float, systemic: bool):
    """The recipe at one S/N; ``systemic`` false sets the realistic recipe's systemic velocities
    to 0 (for rest-frame models)."""
    from sb2dask.simulate.config import SimulationConfig
    from sb2dask.simulate.realism import Realism

    if recipe == "paper":
        cfg = SimulationConfig.paper()
    elif systemic:
        cfg = SimulationConfig.realistic()
    else:
        cfg = SimulationConfig.realistic(realism=Realism(systemic_velocity=(0.0, 0.0)))
    return cfg.replace(snr_range=(snr, snr))


def detector_epochs(models, recipe: str, snr: float, n_sources: int, epochs: int, seed: int,
                    workdir: Path) -> pd.DataFrame:
    """Simulate, read, preprocess, frame and detect one catalogue with ``models`` (a
    ``ModelSet``): the epoch table's columns that the combination reads, ``rv_bulk`` (the
    velocity removed, km/s; NaN where none), and the truth of :func:`epoch_truth`."""
    from sb2dask.dataset.mock_catalogue import mock_catalogue
    from sb2dask.gaia import FRAME_UNKNOWN
    from sb2dask.infer.readers import read_catalogue
    from sb2dask.infer.schema import empty_frame
    from sb2dask.observe.rv_bulk import preprocess_in_frame

    cat = mock_catalogue(workdir / f"{recipe}_snr{snr:g}", n_sources=n_sources,
                         epochs=(epochs, epochs), binary_fraction=0.5, n_files=1,
                         config=_config(recipe, snr, models.uses_rest_frame("auto")), seed=seed)
    df = pd.concat([p for f in cat["files"] for p in read_catalogue(f, partition_rows=1 << 30)],
                   ignore_index=True)
    frames = df["frame"].to_numpy(object) if "frame" in df else \
        np.full(len(df), FRAME_UNKNOWN, dtype=object)
    pre, rv_bulk, _ = preprocess_in_frame(list(df["wave"]), list(df["flux"]),
                                          list(df["flux_error"]), models.wave,
                                          models.uses_rest_frame("auto", frames))
    out = empty_frame("epoch", len(df))
    out["source_id"] = df["source_id"].to_numpy(np.int64)
    out["epoch_id"] = df["epoch_id"].to_numpy(np.int64)
    out["usable"] = pre.usable
    out["snr_estimate"] = pre.snr_estimate
    out["rv_bulk"] = rv_bulk.astype(np.float32)
    p = np.full(len(df), np.nan, np.float32)
    if pre.usable.any():
        p[pre.usable] = models.detect(pre.flux[pre.usable])["p_binary"]
    out["p_binary"] = p
    truth = pd.read_parquet(cat["truth"])
    return out.merge(epoch_truth(truth), on=["source_id", "epoch_id"], how="left",
                     validate="1:1")


def epoch_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """The truth per epoch that the rates need, from a mock catalogue's ``truth.parquet``:
    ``is_binary``, ``rv_separation`` [km/s], ``light_fraction_faint_true`` (the fainter star's
    share of the light) and ``double_lined`` (whether the epoch's spectrum shows both stars:
    :func:`sb2dask.labels.detector_truth` for that target)."""
    from sb2dask.labels import detector_truth

    lf = truth[["light_fraction_1", "light_fraction_2"]].to_numpy(np.float64)
    dl = detector_truth("double_lined", dict(is_binary=truth["is_binary"].to_numpy(bool),
                                             light_fraction=lf,
                                             rv_separation=truth["rv_separation"].to_numpy()))
    return pd.DataFrame({"source_id": truth["source_id"], "epoch_id": truth["epoch_id"],
                         "is_binary": truth["is_binary"], "rv_separation": truth["rv_separation"],
                         "light_fraction_faint_true": lf.min(axis=1), "double_lined": dl})


def intra_source_correlation(values: np.ndarray, groups: np.ndarray) -> float:
    """One-way ANOVA estimate of the intra-class correlation of ``values`` within ``groups``
    (equal group sizes assumed; NaN values dropped)."""
    ok = np.isfinite(values)
    s = pd.Series(values[ok]).groupby(groups[ok])
    k = float(s.size().mean())
    n_groups = s.ngroups
    if n_groups < 2 or k < 2:
        return float("nan")
    grand = np.mean(values[ok])
    msb = k * ((s.mean() - grand) ** 2).sum() / (n_groups - 1)
    msw = s.var(ddof=1).mean()
    return float((msb - msw) / (msb + (k - 1) * msw))


def rules(default) -> dict:
    """The per-source rules compared: name -> (EvidenceRule, column of the source table).
    ``default`` is the rule ``sb2dask infer`` uses with the models (``EvidenceRule().for_models``:
    their S/N floor and, for a ``double_lined`` detector, the mixture's double-lined fraction f);
    the variants change one setting of it."""
    rho, f = default.correlation, default.double_lined_fraction
    return {
        "max p_binary (v1 table)": (default, "p_binary_max"),
        "mean p_binary": (default, "p_binary_mean"),
        "evidence, independent epochs (rho 0, no S/N weights)": (
            default.replace(correlation=0.0, snr_full=None), "p_binary"),
        f"evidence, rho {rho:g}, no S/N weights": (default.replace(snr_full=None), "p_binary"),
        f"**evidence, rho {rho:g}, f {f:g} (default)**": (default, "p_binary"),
        f"evidence, rho {rho:g}, f 1 (as is_binary)": (default.replace(double_lined_fraction=1.0),
                                                       "p_binary"),
        **{f"evidence, rho {r:g}, f {f:g}": (default.replace(correlation=r), "p_binary")
           for r in (0.3, 0.7, 1.0)},
    }


def _rates(v: np.ndarray, b: np.ndarray, seen: np.ndarray) -> dict:
    """False-positive rate and recall at p > 0.5 and p > 0.9, ROC AUC, the recall at the score
    that keeps 1 % of the singles (NaN scores rank lowest), and the log loss of ``v`` as a
    probability (NaN as 0.5; the catalogues are half SB2s, so a calibrated rule minimises it);
    ``_seen``: the recalls among the SB2s ``seen`` (at least one double-lined epoch), the only
    ones a spectrum-level detector can find."""
    from sb2dask.stats import roc_auc

    s = np.nan_to_num(v, nan=-1.0)
    thr = np.quantile(s[~b], 0.99) if (~b).any() else np.nan
    q = np.clip(np.nan_to_num(v, nan=0.5), 1e-6, 1 - 1e-6)
    log_loss = -np.mean(np.where(b, np.log(q), np.log1p(-q)))
    bs = b & seen
    return dict(fpr=float(np.mean(s[~b] > 0.5)), recall=float(np.mean(s[b] > 0.5)),
                log_loss=float(log_loss),
                fpr_0_9=float(np.mean(s[~b] > 0.9)), recall_0_9=float(np.mean(s[b] > 0.9)),
                auc=roc_auc(b, s), recall_at_fpr_1pc=float(np.mean(s[b] > thr)),
                recall_seen=float(np.mean(s[bs] > 0.5)),
                recall_seen_0_9=float(np.mean(s[bs] > 0.9)),
                recall_seen_at_fpr_1pc=float(np.mean(s[bs] > thr)))


def evaluate(ep: pd.DataFrame, default) -> dict:
    """Epoch-level rates, the intra-source correlations (of the detector's ``l`` and of the
    default rule's per-epoch evidence ``m``) and each rule of :func:`rules` (``default``)'s
    source-level rates."""
    from sb2dask.infer.sources import combine_sources, epoch_log_evidence, epoch_log_odds

    y = ep["is_binary"].to_numpy(bool)
    dl = ep["double_lined"].to_numpy(bool)
    p = ep["p_binary"].to_numpy(float)
    lo = epoch_log_odds(p, default)
    m = epoch_log_evidence(p, default)
    sid = ep["source_id"].to_numpy()
    called = p > 0.5  # NaN (unusable) counts as not called
    res = dict(epochs=len(ep), usable=int(ep["usable"].sum()),
               epoch_fpr=float(np.mean(called[~y])), epoch_recall=float(np.mean(called[y])),
               # against the double-lined truth: negatives are singles and the SB2 epochs that
               # show one star (conjunction, faint companion)
               epoch_fpr_double_lined=float(np.mean(called[~dl])),
               epoch_recall_double_lined=float(np.mean(called[dl])),
               sb2_epochs_double_lined=float(np.mean(dl[y])),
               epoch_rate_sb2_not_double_lined=float(np.mean(called[y & ~dl])),
               icc_single=intra_source_correlation(lo[~y], sid[~y]),
               icc_sb2=intra_source_correlation(lo[y], sid[y]),
               icc_single_evidence=intra_source_correlation(m[~y], sid[~y]),
               icc_sb2_evidence=intra_source_correlation(m[y], sid[y]))
    by_source = ep.groupby("source_id")
    truth = by_source["is_binary"].first()
    seen_all = by_source["double_lined"].any()
    res["singles"], res["sb2s"] = int((~truth).sum()), int(truth.sum())
    res["sb2s_seen"] = int((truth & seen_all).sum())
    res["rules"] = {}
    for name, (rule, col) in rules(default).items():
        src = combine_sources(ep, rule).set_index("source_id")
        b = truth.reindex(src.index).to_numpy(bool)
        seen = seen_all.reindex(src.index).to_numpy(bool)
        res["rules"][name] = _rates(src[col].to_numpy(float), b, seen)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=int, default=200, help="sources per recipe and S/N")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--snr", type=float, nargs="+", default=[10.0, 20.0, 50.0])
    ap.add_argument("--recipes", nargs="+", default=["paper", "realistic"],
                    choices=["paper", "realistic"])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workdir", default=None, help="keep catalogues and detector outputs here")
    ap.add_argument("--reuse", action="store_true", help="reuse detector outputs in --workdir")
    ap.add_argument("--models", default="paper",
                    help="model directory or preset (default: the paper-recipe ensembles)")
    ap.add_argument("--tag", default="", help="suffix of the results file and detector outputs "
                    "(needed with --models)")
    args = ap.parse_args(argv)

    from sb2dask.infer.config import InferenceConfig
    from sb2dask.infer.predict import PAPER_MODEL_DIR, get_model_set, resolve_model_dir
    from sb2dask.infer.sources import EvidenceRule

    if (resolve_model_dir(args.models).resolve() != PAPER_MODEL_DIR.resolve()
            and not args.tag):
        ap.error(f"--models {args.models}: give a --tag, or the paper-recipe ensembles' "
                 "results/bench_source_evidence.json would be overwritten")
    models = get_model_set(InferenceConfig(args.models, "cpu"))
    snr_floor = float(models.training["snr_range"][0])
    default = EvidenceRule().for_models(models)  # what `sb2dask infer` combines with
    frame = "rv_bulk removed" if models.uses_rest_frame("auto") else "as read (rest)"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_source_evidence_"))
    work.mkdir(parents=True, exist_ok=True)
    results, t0 = [], time.perf_counter()
    for recipe in args.recipes:
        for snr in args.snr:
            cache = work / f"epochs_{recipe}_snr{snr:g}{args.tag}.parquet"
            if args.reuse and cache.exists():
                ep = pd.read_parquet(cache)
            else:
                ep = detector_epochs(models, recipe, snr, args.sources, args.epochs,
                                     args.seed + int(snr), work)
                ep.to_parquet(cache, index=False)
            results.append(dict(recipe=recipe, snr=snr, **evaluate(ep, default)))
    seconds = time.perf_counter() - t0

    print(f"\n{args.epochs} epochs per source; detector: {models.directory} (target "
          f"{models.detector_target}, frame {models.frame}: spectra {frame}; S/N floor "
          f"{snr_floor:g}; default rule {default.to_dict()}); epoch calls and source decision "
          "at p > 0.5\n")
    print("| recipe | S/N | singles / SB2s (seen double-lined) | SB2 epochs double-lined | "
          "epoch FPR / recall, is_binary | epoch FPR / recall, double_lined | called, SB2 "
          "epochs not double-lined | rho singles / SB2s: l | m (default rule) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['snr']:g} | {r['singles']} / {r['sb2s']} "
              f"({r['sb2s_seen']}) | {r['sb2_epochs_double_lined']:.3f} | "
              f"{r['epoch_fpr']:.3f} / {r['epoch_recall']:.3f} | "
              f"{r['epoch_fpr_double_lined']:.3f} / {r['epoch_recall_double_lined']:.3f} | "
              f"{r['epoch_rate_sb2_not_double_lined']:.3f} | {r['icc_single']:.2f} / "
              f"{r['icc_sb2']:.2f} | {r['icc_single_evidence']:.2f} / "
              f"{r['icc_sb2_evidence']:.2f} |")
    names = list(results[0]["rules"]) if results else []
    cols = [f"{r['recipe']} {r['snr']:g}" for r in results]
    for title, keys in (("false-positive rate on singles / recall on SB2s, p > 0.5",
                         ("fpr", "recall")),
                        ("false-positive rate on singles / recall on SB2s, p > 0.9",
                         ("fpr_0_9", "recall_0_9")),
                        ("ROC AUC / recall at 1 % false positives", ("auc", "recall_at_fpr_1pc")),
                        ("log loss as a probability (calibration) / ROC AUC", ("log_loss", "auc")),
                        ("recall on SB2s with >= 1 double-lined epoch: p > 0.5 / p > 0.9 / at "
                         "1 % false positives",
                         ("recall_seen", "recall_seen_0_9", "recall_seen_at_fpr_1pc"))):
        print(f"\nper source, {title}:\n")
        print("| rule | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for name in names:
            cells = [" / ".join(f"{r['rules'][name][k]:.2f}" for k in keys) for r in results]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{seconds:.0f} s")
    write_results(f"bench_source_evidence{args.tag}", sources=args.sources, epochs=args.epochs,
                  seed=args.seed, models=str(models.directory),
                  detector_target=models.detector_target, frame=models.frame,
                  rest_frame_removed=bool(models.uses_rest_frame("auto")), snr_floor=snr_floor,
                  rule=default.to_dict(), reused_detector_outputs=bool(args.reuse),
                  seconds=seconds, results=results)


if __name__ == "__main__":
    main()
