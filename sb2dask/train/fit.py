"""Training one network: data from the Zarr store in RAM, per-epoch validation and checkpoints,
resume after interruption, learning-rate schedule and early stopping.

Checkpoints (``CHECKPOINTS/NAME-last.safetensors`` + ``NAME-state.pt`` + ``NAME-state.json``) are
written atomically after every epoch; the best model so far is saved with its manifest through
:func:`sb2dask.models.io.save_model`. A rerun with the same configuration resumes from the last
finished epoch; each epoch's shuffling order is drawn from ``(seed, member, epoch)``, so a resumed
run follows the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..devices import resolve_device
from ..fileio import atomic_path, atomic_write_json
from ..models.io import (ARCHITECTURES, LabelScaling, ModelManifest, feature_statistics,
                         load_model, save_feature_statistics, save_model)
from ..models.predict import predict_array, sort_pairs
from ..stats import roc_auc
from .config import TrainConfig
from ..dataset.store import load_split, split_indices, store_fingerprint

__all__ = ["fit", "temperature_inputs"]

logger = logging.getLogger(__name__)

_ARCH = {"teff": "TemperatureNet", "logg": "ParameterNet", "feh": "ParameterNet",
         "vsini": "ParameterNet", "p_binary": "BinaryDetector"}


def temperature_inputs(manifests: list[str | Path], flux: np.ndarray, device,
                       scaling: LabelScaling, cache: Path | None = None,
                       index: np.ndarray | None = None) -> np.ndarray:
    """Ensemble-mean temperatures predicted by the temperature model(s), sorted lower first and
    scaled with ``scaling``: the second input of the parameter models (as in the paper, which
    feeds predicted, not true, temperatures).

    With ``cache`` (a directory) and the rows' global ``index``, predictions are stored per
    (temperature models, rows) and reused: the logg, [Fe/H] and v sin i models are all fed the
    same temperatures, which would otherwise be predicted three times.
    """
    from ..fileio import file_sha256

    path = None
    if cache is not None and index is not None:
        import hashlib

        h = hashlib.sha256()
        for m in sorted(str(p) for p in manifests):
            h.update(file_sha256(Path(m).with_suffix(".safetensors")).encode())
        h.update(np.ascontiguousarray(index, dtype=np.int64).tobytes())
        h.update(repr((scaling.low, scaling.high)).encode())
        path = Path(cache) / f"temperatures-{h.hexdigest()[:24]}.npy"
        if path.exists():
            return np.load(path)
    preds = []
    for m in manifests:
        model, man = load_model(m, layout="2d" if device.type == "cpu" else "1d",
                                device=device)
        t = man.scaling.unscale(predict_array(model, flux, device=device))
        preds.append(sort_pairs(t)[0])
    out = scaling.scale(np.mean(preds, axis=0)).astype(np.float32)
    if path is not None:
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, out)
    return out


def _targets(cfg: TrainConfig, data, scaling):
    lab = data.labels
    if cfg.target == "p_binary":
        return lab["is_binary"].astype(np.float32)
    y = lab[cfg.target].astype(np.float64)
    return scaling.scale(y).astype(np.float32)


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def fit(cfg: TrainConfig, store: str | Path, out_dir: str | Path, progress: bool = True,
        temperature_models: list[str | Path] | None = None) -> dict:
    """Train (or resume) one network; returns a summary with the best manifest path and metrics.

    Parameters
    ----------
    cfg : TrainConfig
    store : path of the simulated Zarr training set
    out_dir : where models (``NAME.json`` / ``NAME.safetensors``) and ``checkpoints/`` go
    temperature_models : manifest paths of the temperature model(s) for parameter models
        (default: ``cfg.temperature_model``)
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    layout = cfg.layout if device.type == "cpu" else "1d"
    rng_seed = [cfg.seed, cfg.member]
    torch.manual_seed(int(np.random.SeedSequence(rng_seed).generate_state(1)[0]))

    fields = ["is_binary", "teff", "logg", "feh", "vsini"]
    t0 = time.perf_counter()
    tr_idx = split_indices(store, "train", cfg.member, cfg.validation_folds)
    va_idx = split_indices(store, "validation", cfg.member, cfg.validation_folds)
    if cfg.max_train:
        tr_idx = tr_idx[: cfg.max_train]
    if cfg.max_validation:
        va_idx = va_idx[: cfg.max_validation]
    train, val = load_split(store, tr_idx, fields), load_split(store, va_idx, fields)
    load_s = time.perf_counter() - t0
    if cfg.target != "p_binary":  # the SB2 models learn from binaries only
        keep_tr, keep_va = train.labels["is_binary"], val.labels["is_binary"]
        train = type(train)(train.flux[keep_tr], {k: v[keep_tr] for k, v in train.labels.items()},
                            train.index[keep_tr], train.wave)
        val = type(val)(val.flux[keep_va], {k: v[keep_va] for k, v in val.labels.items()},
                        val.index[keep_va], val.wave)
    if len(train.flux) == 0 or len(val.flux) == 0:
        raise ValueError(f"{store}: no usable training or validation spectra for {cfg.target}")

    scaling = (LabelScaling(*cfg.scaling_range, unit={"teff": "K", "logg": "dex", "feh": "dex",
                                                      "vsini": "km/s"}[cfg.target])
               if cfg.scaling_range else None)
    t_scaling = LabelScaling(*cfg.temperature_range, unit="K")
    y_tr, y_va = _targets(cfg, train, scaling), _targets(cfg, val, scaling)
    x2_tr = x2_va = None
    temp_paths = temperature_models or ([cfg.temperature_model] if cfg.temperature_model else [])
    if _ARCH[cfg.target] == "ParameterNet":
        if not temp_paths:
            raise ValueError(f"a {cfg.target} model needs temperature_model (the trained "
                             "temperature model's manifest)")
        x2_tr = temperature_inputs(temp_paths, train.flux, device, t_scaling, ckpt_dir,
                                   train.index)
        x2_va = temperature_inputs(temp_paths, val.flux, device, t_scaling, ckpt_dir, val.index)

    model = ARCHITECTURES[_ARCH[cfg.target]](layout=layout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate,
                           weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5,
                                                           patience=cfg.lr_patience)
    elif cfg.lr_schedule == "cosine":
        # per batch: linear warm-up over 2 % of the steps, then cosine decay to lr/50; suits
        # short budgets (a few epochs), where a per-epoch schedule would barely move
        steps = cfg.epochs * -(-len(y_tr) // cfg.batch_size)
        warm = max(1, steps // 50)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, steps - warm))
            return float(0.02 + 0.98 * 0.5 * (1.0 + np.cos(np.pi * t)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    else:
        sched = None
    if cfg.target == "p_binary":
        n_pos = float(y_tr.sum())
        pos_weight = torch.tensor((len(y_tr) - n_pos) / max(n_pos, 1.0), device=device)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    else:
        loss_fn = torch.nn.MSELoss()

    name = cfg.name
    state_json = ckpt_dir / f"{name}-state.json"
    state = dict(epoch=0, best=float("inf"), best_epoch=-1, stale=0, history=[],
                 config=cfg.to_dict())
    if state_json.exists():
        prev = json.loads(state_json.read_text())
        # The budget (epochs) may be extended on resume; everything else must match.
        if {**prev["config"], "epochs": cfg.epochs} != cfg.to_dict():
            raise ValueError(f"{state_json}: checkpoint of a different configuration; remove "
                             f"{ckpt_dir} or use another output directory")
        from safetensors.torch import load_file

        from ..models.layers import load_canonical_state_dict

        load_canonical_state_dict(model, load_file(str(ckpt_dir / f"{name}-last.safetensors")))
        # weights_only: tensors and plain containers only, never code. NumPy scalars (which
        # checkpoints of sb2dask <= 0.1.0 could hold in the scheduler state) are allowed too.
        with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype,
                                               type(np.dtype(np.float64))]):
            extra = torch.load(ckpt_dir / f"{name}-state.pt", weights_only=True,
                               map_location=device)
        opt.load_state_dict(extra["optimizer"])
        if sched is not None and extra.get("scheduler"):
            sched.load_state_dict(extra["scheduler"])
        state = dict(prev, config=cfg.to_dict())
        logger.info("%s: resuming after epoch %d", name, state["epoch"])

    limits = {}
    for key in ("teff", "logg", "feh", "vsini"):
        v = train.labels[key][np.isfinite(train.labels[key])]
        limits[key] = [float(v.min()), float(v.max())] if v.size else None
    t_all, g_all = train.labels["teff"].ravel(), train.labels["logg"].ravel()
    ok = np.isfinite(t_all) & np.isfinite(g_all)
    edges = np.arange(np.floor(t_all[ok].min() / 250) * 250, t_all[ok].max() + 250, 250)
    logg_max = [[float(hi), float(g_all[ok][(t_all[ok] >= lo) & (t_all[ok] < hi)].max())]
                for lo, hi in zip(edges[:-1], edges[1:])
                if np.any((t_all[ok] >= lo) & (t_all[ok] < hi))]
    from ..dataset.factory import store_metadata

    snr_range = store_metadata(store)["config"]["snr_range"]
    manifest = ModelManifest(
        name=name, target=cfg.target, architecture=_ARCH[cfg.target], wave=tuple(train.wave),
        scaling=scaling, temperature_scaling=t_scaling if x2_tr is not None else None,
        member=cfg.member, seed=cfg.seed, training_set=store_fingerprint(store),
        training=dict(config=cfg.to_dict(), n_train=int(len(y_tr)), n_validation=int(len(y_va)),
                      temperature_models=[str(p) for p in temp_paths], label_limits=limits,
                      logg_max_by_teff=logg_max, snr_range=list(snr_range)))

    from ..models.layers import canonical_state_dict
    from safetensors.torch import save_file

    n = len(y_tr)
    bs = cfg.batch_size
    y_tr_t = torch.from_numpy(y_tr)
    stop = state["stale"] >= (cfg.early_stopping or 10 ** 9)
    while state["epoch"] < cfg.epochs and not stop:
        epoch = state["epoch"]
        model.train()
        perm = np.random.default_rng(rng_seed + [epoch]).permutation(n)
        # dropout masks too depend only on (seed, member, epoch), so a resumed run matches
        torch.manual_seed(int(np.random.SeedSequence(rng_seed + [epoch]).generate_state(1)[0]))
        te = time.perf_counter()
        total = 0.0
        bar = tqdm(range(0, n, bs), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not progress, file=sys.stderr)
        for s in bar:
            idx = np.sort(perm[s:s + bs])
            x = torch.from_numpy(train.flux[idx]).to(device)
            y = y_tr_t[idx].to(device)
            args = [x] if x2_tr is None else [x, torch.from_numpy(x2_tr[idx]).to(device)]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(*args), y)
            loss.backward()
            opt.step()
            if cfg.lr_schedule == "cosine":
                sched.step()
            total += float(loss.detach()) * len(idx)
        train_s = time.perf_counter() - te
        pred = predict_array(model, val.flux, x2_va, device=device)
        if cfg.target == "p_binary":
            val_loss = float(loss_fn(torch.from_numpy(pred), torch.from_numpy(y_va)))
            metrics = dict(val_loss=val_loss, roc_auc=roc_auc(y_va, pred))
        else:
            val_loss = float(np.mean((pred - y_va) ** 2))
            phys = scaling.unscale(pred) - scaling.unscale(y_va)
            metrics = dict(val_loss=val_loss, rmse=float(np.sqrt(np.mean(phys ** 2))),
                           mae=float(np.mean(np.abs(phys))))
        metrics.update(epoch=epoch + 1, train_loss=total / n, lr=opt.param_groups[0]["lr"],
                       train_samples_per_s=n / train_s, seconds=time.perf_counter() - te)
        if cfg.lr_schedule == "plateau":
            sched.step(val_loss)
        improved = val_loss < state["best"]
        if improved:
            state.update(best=val_loss, best_epoch=epoch + 1, stale=0)
            save_model(out_dir, model, replace(manifest, metrics=dict(metrics, best_epoch=epoch + 1)))
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        state["history"].append(metrics)
        # Last-epoch checkpoint: weights (safetensors), optimizer (tensors only), then the state.
        with atomic_path(ckpt_dir / f"{name}-last.safetensors") as tmp:
            save_file(canonical_state_dict(model), str(tmp))
        _atomic_torch_save(dict(optimizer=opt.state_dict(),
                                scheduler=sched.state_dict() if sched is not None else None),
                           ckpt_dir / f"{name}-state.pt")
        atomic_write_json(state_json, state)
        logger.info("%s epoch %d: %s", name, epoch + 1, metrics)
        if progress:
            shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
            print(f"{name} {shown}", file=sys.stderr)
        stop = cfg.early_stopping is not None and state["stale"] >= cfg.early_stopping
    best_path = out_dir / f"{name}.json"
    if cfg.target == "teff" and best_path.exists():
        # Feature statistics of the best model on its training spectra: the reference for the
        # out-of-distribution distance at inference.
        best, _ = load_model(best_path, layout=layout, device=device)
        sub = train.flux[: min(len(train.flux), 20000)]
        with torch.inference_mode():
            feats = np.concatenate([best.trunk(torch.from_numpy(sub[s:s + 512]).to(device))
                                    .cpu().numpy() for s in range(0, len(sub), 512)])
        save_feature_statistics(best_path, feature_statistics(feats))
    return dict(name=name, manifest=str(best_path), epochs=state["epoch"],
                best_epoch=state["best_epoch"], best_val_loss=state["best"],
                history=state["history"], load_s=load_s, stopped_early=bool(stop))
