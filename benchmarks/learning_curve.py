"""Learning curve of a paper network: independent-test RMSE against training samples seen.

    nice -n 10 python benchmarks/learning_curve.py --target teff --work /work/runs/lc_teff
    nice -n 10 python benchmarks/learning_curve.py --target feh --work /work/runs/lc_feh \
        --temperature-models /work/runs/models_v2/teff-0.json /work/runs/models_v2/teff-1.json
    nice -n 10 python benchmarks/learning_curve.py --target multi --order-loss min \
        --work /work/runs/lc_multi_min

The network is exactly the shipped one (``TemperatureNet`` for ``teff``, ``ParameterNet`` fed the
ensemble-mean predicted temperatures for ``logg``/``feh``/``vsini``), trained as ``sb2dask train``
trains it (the same training rows, Adam, batch 128, MSE on the Table-1-scaled label; the order
per epoch is drawn from ``(seed, epoch)``) but with a constant learning rate after a short
warm-up, and evaluated at log-spaced sample counts ("anytime" curve). The evaluation uses an
exponential moving average of the weights (decay ``min(--ema, (1 + step) / (10 + step))``), which
approximates what an annealed schedule ending at that budget reaches; the raw weights are
evaluated too. A schedule tuned to each budget would be expected to do at least as well, so a
budget read off this curve is on the conservative side. ``--store`` (default: this machine's
realistic-recipe store, built as docs/models.md says) is any simulated training store.

``--target multi`` trains one network for all eight labels instead (issue 15's "heads sharing
one trunk"): the temperature network of Table 2 with eight outputs (both components of Teff,
log g, [Fe/H] and v sin i, scaled as the paper's networks scale them), read from the spectrum
alone, with the MSE over the eight (``--order-loss fixed``: against the cooler-first labels) or
the smaller of that and the MSE against both components swapped (``--order-loss min``: the
network may name either star first, so near-twins do not force it to the mean of two orders);
its outputs are ordered by the predicted temperature before the RMSE. It writes one file per
label, ``learning_curve_LABEL-multi-ORDER.json``, which ``--report`` plots beside the paper
network of that label.

Test rows: the first ``--n-test`` SB2s of the store's test split, never used for training or
validation. Restartable: ``--work`` keeps a checkpoint at every evaluation point; rerunning the
same command continues (other settings are refused). Writes
``benchmarks/results/learning_curve_TARGET.json`` and prints a line after every point.

    python benchmarks/learning_curve.py --report [--figure docs/figures/learning_curves.png]

reads every ``results/learning_curve_*.json``, fits RMSE(n) = a + b·n^(−c) (least squares in
log RMSE over the points from ``--fit-from`` samples on) once with a = 0 and once with a free
floor a, and prints, per target and fit, the last point, a, c and the budget at which the fit
reaches the paper's Table 4 RMSE and issue 15's goal (0.7 × the paper's), or "not reached". An
extrapolation from a curve that has not yet bent says little; the table gives the range fitted.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_results  # benchmarks/ is on sys.path when run as a script

DEFAULT_POINTS = [5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 350_000, 500_000, 750_000,
                  1_000_000, 1_500_000, 2_000_000, 3_000_000, 5_000_000, 11_250_000]


def _ema_update(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
            else:
                e.copy_(p)


def _rmse(pred: np.ndarray, truth: np.ndarray, scaling) -> dict:
    err = scaling.unscale(pred) - scaling.unscale(truth)
    return dict(rmse=float(np.sqrt(np.mean(err ** 2))),
                rmse_1=float(np.sqrt(np.mean(err[:, 0] ** 2))),
                rmse_2=float(np.sqrt(np.mean(err[:, 1] ** 2))))


#: The multi-task network's outputs: both components (cooler first) of each label, scaled to
#: [0, 1] by Table 1's ranges, as the paper's networks scale theirs.
MULTI_LABELS = ("teff", "logg", "feh", "vsini")
#: Output columns after swapping the two components of every label.
_SWAPPED = [j for i in range(len(MULTI_LABELS)) for j in (2 * i + 1, 2 * i)]


def multi_network(seed: int):
    """The paper's temperature network (Table 2) with eight outputs: one DenseNet trunk and
    head for both components of all four labels, read from the spectrum alone."""
    import torch

    from sb2dask.models.densenet import TemperatureNet

    torch.manual_seed(seed)
    return TemperatureNet(layout="2d", n_outputs=2 * len(MULTI_LABELS))


def multi_targets(train, test):
    """(y_train, y_test, scalings): the eight scaled labels of the training and test rows
    (float32, (n, 8), ``MULTI_LABELS`` order, cooler star first) and each label's scaling."""
    from sb2dask.labels import UNITS
    from sb2dask.train.config import TrainConfig
    from sb2dask.train.fit import LabelScaling

    scalings = {k: LabelScaling(*TrainConfig(target=k).scaling_range, unit=UNITS[k])
                for k in MULTI_LABELS}

    def scaled(data):
        return np.concatenate([scalings[k].scale(data.labels[k].astype(np.float64))
                               for k in MULTI_LABELS], 1).astype(np.float32)

    return scaled(train), scaled(test), scalings


def order_free_mse(pred, target):
    """Mean over the batch of the smaller of two MSEs: against the targets as given and with
    both components of every label swapped together. A network so trained may name either
    star first; :func:`multi_rmse` orders its outputs by temperature afterwards."""
    import torch

    direct = ((pred - target) ** 2).mean(1)
    swapped = ((pred - target[:, _SWAPPED]) ** 2).mean(1)
    return torch.minimum(direct, swapped).mean()


def multi_rmse(pred: np.ndarray, truth: np.ndarray, scalings: dict) -> dict:
    """Per label, :func:`_rmse` of the multi-task outputs after ordering each spectrum's pair
    by the predicted temperature (cooler first, as the truths are)."""
    swap = pred[:, 0] > pred[:, 1]
    pred = np.where(swap[:, None], pred[:, _SWAPPED], pred)
    return {k: _rmse(pred[:, 2 * i:2 * i + 2], truth[:, 2 * i:2 * i + 2], scalings[k])
            for i, k in enumerate(MULTI_LABELS)}


def fit_power_law(n: np.ndarray, rmse: np.ndarray,
                  floor: bool = True) -> tuple[float, float, float, float]:
    """(a, b, c, rms) of RMSE(n) = a + b·n^(−c) for samples seen ``n`` and RMSE ``rmse`` (the
    label's unit; a in that unit, b in unit·samples^c), least squares in log RMSE; ``rms`` is the
    fit's RMS residual in log RMSE. With ``floor``: 0 ≤ a ≤ min(rmse), c in (0, 2], the best of
    three starts; without: a = 0, a straight line in log-log (the optimistic extrapolation: no
    floor). With few points the two fit about equally well and the floor is not determined;
    the report gives both."""
    from scipy.optimize import least_squares

    n, rmse = np.asarray(n, float), np.asarray(rmse, float)
    if not floor:
        slope, icpt = np.polyfit(np.log(n), np.log(rmse), 1)
        rms = float(np.sqrt(np.mean((icpt + slope * np.log(n) - np.log(rmse)) ** 2)))
        return 0.0, float(np.exp(icpt)), float(-slope), rms
    x = np.log(n / n[0])

    def resid(q):
        a, lb, c = q
        return np.log(a + np.exp(lb - c * x)) - np.log(rmse)

    best = None
    for c0 in (0.1, 0.3, 0.6):
        q0 = [0.5 * rmse.min(), np.log(max(rmse[0] - 0.5 * rmse.min(), 1e-9)), c0]
        r = least_squares(resid, q0, bounds=([0.0, -50.0, 1e-3], [rmse.min(), 50.0, 2.0]))
        if best is None or r.cost < best.cost:
            best = r
    a, lb, c = best.x
    rms = float(np.sqrt(np.mean(resid(best.x) ** 2)))
    return float(a), float(np.exp(lb) * n[0] ** c), float(c), rms


def budget_for(level: float, a: float, b: float, c: float) -> float:
    """Training samples at which a + b·n^(−c) falls to ``level`` (the RMSE's unit); inf when
    the floor a is not below ``level``."""
    if level <= a or c <= 0:  # a flat or rising curve never gets there
        return float("inf")
    with np.errstate(over="ignore"):
        return float(np.exp(np.log(b / (level - a)) / c))


def reference_points(models: str | None) -> dict:
    """Per target, (samples seen, validation RMSE) of member 0 of a trained model set (its
    manifest: rows × epochs of its own schedule, cosine in the shipped recipes), to put the
    models actually trained beside the curve; {} without ``models``."""
    out = {}
    for target in ("teff", "logg", "feh", "vsini"):
        path = Path(models or "") / f"{target}-0.json"
        if models and path.is_file():
            man = json.loads(path.read_text())
            out[target] = (man["training"]["n_train"] * man["metrics"]["epoch"],
                           man["metrics"]["rmse"])
    return out


def report(figure: str | None, fit_from: int, models: str | None = None) -> int:
    """Print the table of every recorded curve (``results/learning_curve_*.json``), write
    ``results/learning_curves_summary.json`` (budgets that are not reached as null) and, with
    ``figure``, plot the curves with their fits (and member 0 of ``models``, a trained model
    set, as a point). Returns 0."""
    from _results import RESULTS
    from sb2dask.evaluate.metrics import PAPER_TABLE4

    rows = []
    curves = {}
    order = ["teff", "logg", "feh", "vsini"]
    def label_of(q):  # learning_curve_LABEL[-VARIANT].json
        return q.stem.split("_", 2)[2].split("-")[0]

    for path in sorted(RESULTS.glob("learning_curve_*.json"),
                       key=lambda q: (order.index(label_of(q)) if label_of(q) in order else 9,
                                      q.stem)):
        rec = json.loads(path.read_text())
        if "history" not in rec:  # not a curve
            continue
        hist = rec["history"]
        n = np.array([h["samples"] for h in hist], float)
        y = np.array([h["ema"]["rmse"] for h in hist], float)
        use = n >= fit_from
        fits = {}
        if use.sum() >= 3:
            fits["power law"] = fit_power_law(n[use], y[use], floor=False)
        if use.sum() >= 4:
            fits["+ floor"] = fit_power_law(n[use], y[use], floor=True)
        paper = PAPER_TABLE4[rec["target"]][0]
        curves[path.stem] = (rec, n, y, fits, paper)
        row = dict(name=path.stem.removeprefix("learning_curve_"), target=rec["target"],
                   variant=rec.get("variant", "paper network"),
                   last_samples=int(n[-1]), last_rmse=float(y[-1]),
                   best_rmse=float(y.min()), paper=paper, goal=0.7 * paper,
                   fitted_range=[int(n[use][0]), int(n[use][-1])] if fits else None, fits={})
        for kind, (a, b, c, rms) in fits.items():
            row["fits"][kind] = dict(floor=a, b=b, exponent=c, rms_log=rms,
                                     samples_for_paper=budget_for(paper, a, b, c),
                                     samples_for_goal=budget_for(0.7 * paper, a, b, c))
        rows.append(row)
    print(f"{'curve':<18} {'samples':>8} {'RMSE':>7} {'paper':>6} {'goal':>6} {'fit':<10} "
          f"{'floor a':>8} {'c':>5} {'rms':>7} {'n(paper)':>11} {'n(goal)':>11}")
    for r in rows:
        f = lambda v: "-" if v is None else ("not reached" if not np.isfinite(v)  # noqa: E731
                                             else f"{v:.2g}")
        for kind, q in (r["fits"] or {"-": {}}).items():
            print(f"{r['name']:<18} {r['last_samples']:>8d} {r['last_rmse']:>7.4g} "
                  f"{r['paper']:>6.4g} {r['goal']:>6.4g} {kind:<10} "
                  f"{q.get('floor', float('nan')):>8.4g} {q.get('exponent', float('nan')):>5.2f} "
                  f"{q.get('rms_log', float('nan')):>7.1e} {f(q.get('samples_for_paper')):>11} "
                  f"{f(q.get('samples_for_goal')):>11}")
    if figure and curves:
        refs = reference_points(models)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # one panel per label: the paper network's curve with its fits, the other variants
        # (the multi-task network) as curves beside it
        panels: dict = {}
        for rec, n, y, fits, paper in curves.values():
            panels.setdefault(rec["target"], []).append((rec, n, y, fits, paper))
        fig = Figure(figsize=(4.2 * len(panels), 4.2))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, group in zip(axes, panels.values()):
            rec, paper = group[0][0], group[0][4]  # (one label per panel: one Table 4 value)
            for k, (rec_k, n, y, fits, _) in enumerate(group):
                variant = rec_k.get("variant", "paper network")
                if variant != "paper network":
                    ax.plot(n, y, "^-", ms=3, color=f"C{3 + k}",
                            label=f"{variant} (EMA)")
                    continue
                raw = [h["raw"]["rmse"] for h in rec_k["history"]]
                ax.plot(n, y, "o-", ms=3, label="paper network: test RMSE (EMA weights)")
                ax.plot(n, raw, ".", color="0.6", label="raw weights")
                grid = np.geomspace(fit_from, 1.125e7, 100)
                for (kind, (a, b, c, _)), style in zip(fits.items(), ("--", "-.")):
                    ax.plot(grid, a + b * grid ** -c, style, color="C1",
                            label=f"{kind}: a = {a if a > 1e-6 * y[-1] else 0:.3g}, c = {c:.2f}")
            if rec["target"] in refs:
                ax.plot(*refs[rec["target"]], "s", color="C3",
                        label="trained member (cosine, validation)")
            ax.axhline(paper, color="k", ls=":", lw=1, label="paper Table 4")
            ax.axhline(0.7 * paper, color="C2", ls=":", lw=1, label="goal (0.7 x paper)")
            ax.axvline(1.125e7, color="0.5", lw=0.8, label="paper budget (150k x 75)")
            ax.set(xscale="log", xlabel="training samples seen",
                   ylabel=f"{rec['target']} RMSE [{rec['unit']}]", title=rec["target"])
            ax.legend(fontsize=5.5, loc="lower left")
        fig.tight_layout()
        fig.savefig(figure, dpi=110)
        print(f"wrote {figure}")
    def finite(v):  # JSON has no Infinity
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return None if isinstance(v, float) and not np.isfinite(v) else v

    finite_rows = [finite(r) for r in rows]
    write_results("learning_curves_summary", fit_from=fit_from, curves=finite_rows)
    return 0


def main(argv=None) -> int:
    """Train one curve (restartable) or, with ``--report``, summarise the recorded ones."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true",
                    help="summarise and plot the recorded curves instead of training")
    ap.add_argument("--figure", default=None, help="with --report: the figure's path")
    ap.add_argument("--models", default=None,
                    help="with --report: a trained model set whose member 0 is plotted")
    ap.add_argument("--fit-from", type=int, default=20_000,
                    help="with --report: fit the points from this many samples on")
    ap.add_argument("--target", default="teff", choices=["teff", "logg", "feh", "vsini", "multi"],
                    help="one paper network, or 'multi': one trunk for all eight labels")
    ap.add_argument("--order-loss", default="fixed", choices=["fixed", "min"],
                    help="with --target multi: MSE against the cooler-first labels (fixed) or "
                    "the smaller of it and the MSE against both components swapped (min)")
    ap.add_argument("--store", default="/work/runs/train_v2.zarr")
    ap.add_argument("--temperature-models", nargs="*", default=[],
                    help="manifests of the temperature models fed to a parameter network")
    ap.add_argument("--work", help="checkpoint directory (restartable); required to train")
    ap.add_argument("--points", type=int, nargs="*", default=DEFAULT_POINTS)
    ap.add_argument("--max-samples", type=int, default=None,
                    help="stop after this many samples (default: the last point)")
    ap.add_argument("--n-test", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--warmup", type=int, default=500, help="warm-up steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.figure, args.fit_from, args.models)
    if not args.work:
        ap.error("--work is required to train")
    if args.warmup < 1 or not args.points:
        ap.error("--warmup must be at least 1 step and --points must not be empty")
    import torch
    from safetensors.torch import load_file, save_file

    from sb2dask.dataset.store import load_split, split_indices
    from sb2dask.fileio import atomic_path, atomic_write_json
    from sb2dask.models.predict import predict_array
    from sb2dask.runtime import tune_process
    from sb2dask.train.config import TrainConfig
    from sb2dask.train.fit import (
        _FIELDS,
        _rows,
        _targets,
        build_learner,
        fit_inputs,
        load_data,
        temperature_inputs,
    )

    tune_process()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    # (multi: the SB2 rows as the temperature network reads them; its targets come below)
    cfg = TrainConfig(target="teff" if args.target == "multi" else args.target,
                      batch_size=args.batch_size, learning_rate=args.lr,
                      lr_schedule="none", seed=args.seed, max_validation=1, epochs=1)
    t0 = time.perf_counter()
    train, val = load_data(cfg, args.store)
    test_rows = split_indices(args.store, "test")
    test = load_split(args.store, test_rows[: 4 * args.n_test], _FIELDS, frame=train.frame)
    test = _rows(test, np.flatnonzero(test.labels["is_binary"])[: args.n_test])
    test_flux = test.flux
    multi = args.target == "multi"
    if multi:
        if args.temperature_models:
            ap.error("--target multi reads every label from the spectrum alone: no "
                     "--temperature-models")
        y_train, y_test, scalings = multi_targets(train, test)
        t_train = t_test = None
        model = multi_network(args.seed)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=cfg.weight_decay)
    else:
        data = fit_inputs(cfg, train, val, args.temperature_models, device,
                          cache=work if args.temperature_models else None)
        y_train, t_train = data.y_train, data.t_train
        y_test = _targets(cfg, test, data.scaling)
        t_test = None
        if data.t_train is not None:
            t_test = temperature_inputs(args.temperature_models, test_flux, device,
                                        data.temperature_scaling)
        learner = build_learner(cfg, data.y_train, "2d", device)
        model, opt = learner.model, learner.optimizer
    print(f"loaded {len(y_train)} training and {len(y_test)} test SB2s in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    ema = copy.deepcopy(model)
    state_path = work / "state.json"
    settings = dict(target=args.target, store=str(args.store), lr=args.lr,
                    batch_size=args.batch_size, ema=args.ema, warmup=args.warmup, seed=args.seed,
                    temperature_models=[str(m) for m in args.temperature_models],
                    n_test=args.n_test)
    if multi:  # (older single-network checkpoints carry no such key: unchanged for them)
        settings["order_loss"] = args.order_loss
    state = dict(step=0, seen=0, history=[], train_seconds=0.0, settings=settings)
    if state_path.exists():
        state = json.loads(state_path.read_text())
        # checkpoints of the first version carry no settings: taken as this run's
        if state.setdefault("settings", settings) != settings:
            raise SystemExit(f"{state_path}: a curve of other settings ({state['settings']}); "
                             "use another --work directory")
        # the files of the step state.json names (first-version checkpoints: unsuffixed)
        tag = f"-{state['step']}" if "checkpoint_step" in state else ""
        model.load_state_dict(load_file(str(work / f"model{tag}.safetensors")))
        ema.load_state_dict(load_file(str(work / f"ema{tag}.safetensors")))
        opt.load_state_dict(torch.load(work / f"optimizer{tag}.pt", weights_only=True))
        print(f"resuming at {state['seen']} samples", file=sys.stderr)
    n, bs = len(y_train), args.batch_size
    y_all = torch.from_numpy(y_train)
    stop = args.max_samples or max(args.points)
    points = sorted(p for p in args.points if p > state["seen"] and p <= stop)
    loss_fn = (order_free_mse if multi and args.order_loss == "min" else torch.nn.MSELoss())
    train_flux = train.flux if multi else data.train.flux
    perm_epoch, perm = -1, None
    for point in points:
        tick = time.perf_counter()
        model.train()
        while state["seen"] < point:
            epoch, pos = divmod(state["seen"], n)
            if epoch != perm_epoch:  # the order of each epoch from (seed, epoch) alone
                perm_epoch, perm = epoch, np.random.default_rng([args.seed, epoch]).permutation(n)
            idx = np.sort(perm[pos:pos + bs])
            lr = args.lr * min(1.0, (state["step"] + 1) / args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            inputs = [torch.from_numpy(train_flux[idx])]
            if t_train is not None:
                inputs.append(torch.from_numpy(t_train[idx]))
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(*inputs), y_all[idx])
            loss.backward()
            opt.step()
            state["step"] += 1
            state["seen"] += len(idx)
            _ema_update(ema, model, min(args.ema, (1 + state["step"]) / (10 + state["step"])))
        state["train_seconds"] += time.perf_counter() - tick
        row = dict(samples=state["seen"], epochs=state["seen"] / n, step=state["step"],
                   train_seconds=state["train_seconds"])
        for name, net in (("ema", ema), ("raw", model)):
            pred = predict_array(net, test_flux, t_test)
            row[name] = (multi_rmse(pred, y_test, scalings) if multi
                         else _rmse(pred, y_test, data.scaling))
        state["history"].append(row)
        # the results first, then the checkpoint files under this step's name, then the
        # progress that names them, then the files of earlier steps are removed: a run killed
        # at any point resumes from one complete, consistent checkpoint
        common = dict(machine=dict(threads=args.threads), store=args.store, n_train_rows=n,
                      n_test=len(y_test), temperature_models=args.temperature_models,
                      settings=dict(lr=args.lr, batch_size=bs, ema=args.ema,
                                    warmup=args.warmup, seed=args.seed, schedule="constant"))
        if multi:  # one file per label, beside the paper networks' curves of that label
            variant = f"multi-task, {args.order_loss} order"
            for label, sc in scalings.items():
                write_results(f"learning_curve_{label}-multi-{args.order_loss}{args.tag}",
                              **common, target=label, variant=variant, unit=sc.unit,
                              order_loss=args.order_loss,
                              history=[{**{k: v for k, v in h.items() if k not in ("ema", "raw")},
                                        "ema": h["ema"][label], "raw": h["raw"][label]}
                                       for h in state["history"]])
        else:
            write_results(f"learning_curve_{args.target}{args.tag}", **common,
                          target=args.target, variant="paper network",
                          unit=data.scaling.unit, history=state["history"])
        tag = f"-{state['step']}"
        for name, net in (("model", model), ("ema", ema)):
            with atomic_path(work / f"{name}{tag}.safetensors") as tmp:
                save_file(net.state_dict(), str(tmp))
        with atomic_path(work / f"optimizer{tag}.pt") as tmp:
            torch.save(opt.state_dict(), tmp)
        state["checkpoint_step"] = state["step"]
        atomic_write_json(state_path, state)
        keep = {f"{name}{tag}{ext}" for name, ext in (("model", ".safetensors"),
                                                      ("ema", ".safetensors"),
                                                      ("optimizer", ".pt"))}
        for old in [*work.glob("model*.safetensors"), *work.glob("ema*.safetensors"),
                    *work.glob("optimizer*.pt")]:
            if old.name not in keep:
                old.unlink()
        shown = row["ema"].items() if multi else [(args.target, row["ema"])]
        print(f"{row['samples']:>10d} samples ({row['epochs']:.2f} epochs, "
              f"{row['train_seconds'] / 60:.0f} min): test RMSE (EMA) " + "; ".join(
                  f"{k} {r['rmse']:.4g} [{r['rmse_1']:.4g} / {r['rmse_2']:.4g}]"
                  for k, r in shown), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
