"""Training one network: data from the Zarr store in RAM, per-epoch validation and checkpoints,
resume after interruption, learning-rate schedule and early stopping.

Checkpoints (``CHECKPOINTS/NAME-last.safetensors`` + ``NAME-state.pt`` + ``NAME-state.json``) are
written atomically after every epoch; the best model so far is saved with its manifest through
:func:`sb2dask.models.io.save_model`. A rerun with the same configuration resumes from the last
finished epoch; each epoch's shuffling order is drawn from ``(seed, member, epoch)``, so a resumed
run follows the same batches as an uninterrupted one.

:func:`fit` is the pipeline of the steps below: :func:`load_data`, :func:`fit_inputs`,
:func:`build_learner`, :func:`resume`, then per epoch :func:`run_epoch` (:func:`train_epoch` and
:func:`validation_metrics`) and :func:`save_checkpoint`, with :func:`build_manifest` describing
the saved models and :func:`save_temperature_feature_statistics` closing a temperature model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..dataset.factory import store_metadata
from ..dataset.store import (
    SplitData,
    load_split,
    split_indices,
    store_fingerprint,
    store_frame,
)
from ..devices import resolve_device
from ..fileio import atomic_path, atomic_write_json, file_sha256
from ..labels import PARAMETERS, UNITS, detector_fields, detector_truth
from ..models.io import (
    ARCHITECTURES,
    LabelScaling,
    ModelManifest,
    feature_statistics,
    load_model,
    save_feature_statistics,
    save_model,
)
from ..models.layers import canonical_state_dict, load_canonical_state_dict
from ..models.predict import predict_array, sort_pairs
from ..stats import roc_auc
from .config import PARAMETER_TARGETS, TrainConfig

__all__ = ["ARCHITECTURE", "FitData", "Learner", "build_learner", "build_manifest", "fit",
           "fit_inputs", "label_limits", "load_data", "training_mix", "training_set_fingerprint",
           "training_stores", "MIX_INDEX_SHIFT", "logg_max_by_teff", "resume", "run_epoch",
           "save_checkpoint", "save_temperature_feature_statistics", "temperature_inputs",
           "train_epoch", "training_loss", "validation_loss", "validation_metrics",
           "warmup_cosine"]

logger = logging.getLogger(__name__)

#: The network class (a key of :data:`sb2dask.models.io.ARCHITECTURES`) of each target.
ARCHITECTURE = {"teff": "TemperatureNet", **dict.fromkeys(PARAMETER_TARGETS, "ParameterNet"),
                "p_binary": "BinaryDetector"}

#: Label fields read from the store: the detector's target and the stellar labels.
_FIELDS = ["is_binary", *PARAMETERS]


def _fields(cfg: TrainConfig) -> list[str]:
    """The label fields a network of ``cfg`` is trained from."""
    if cfg.target == "p_binary":
        return list(dict.fromkeys([*_FIELDS, *detector_fields(cfg.detector_target)]))
    return _FIELDS


@dataclass(frozen=True)
class FitData:
    """What one network is fitted to, in RAM.

    Attributes
    ----------
    train, val : the training and validation rows (binaries only for the SB2 models)
    y_train, y_val : float32 targets, ``(n,)`` (detector: 1 = SB2) or ``(n, 2)`` scaled to [0, 1]
    t_train, t_val : float32 ``(n, 2)`` predicted temperatures scaled with
        ``temperature_scaling``, the second input of parameter models; None otherwise
    scaling : the target's scaling (None for the detector)
    temperature_scaling : the scaling of the temperature inputs (K)
    """

    train: SplitData
    val: SplitData
    y_train: np.ndarray
    y_val: np.ndarray
    t_train: np.ndarray | None
    t_val: np.ndarray | None
    scaling: LabelScaling | None
    temperature_scaling: LabelScaling


@dataclass(frozen=True)
class Learner:
    """The network being fitted and what fits it.

    ``scheduler`` is a per-batch :class:`~torch.optim.lr_scheduler.LambdaLR` (``cosine``), a
    per-epoch :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` (``plateau``) or None.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    loss: torch.nn.Module
    device: torch.device


def _torch_seed(key: list[int]) -> int:
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def temperature_inputs(manifests: list[str | Path], flux: np.ndarray, device,
                       scaling: LabelScaling, cache: Path | None = None,
                       index: np.ndarray | None = None) -> np.ndarray:
    """Ensemble-mean temperatures predicted by the temperature model(s), sorted lower first and
    scaled with ``scaling``: the second input of the parameter models (as in the paper, which
    feeds predicted, not true, temperatures).

    With ``cache`` (a directory) and the rows' global ``index``, predictions are stored per
    (temperature models, rows) and reused: the logg, [Fe/H] and v sin i models are all fed the
    same temperatures, which would otherwise be predicted three times.

    Returns
    -------
    numpy.ndarray : float32 ``(n_spectra, 2)``
    """
    path = None
    if cache is not None and index is not None:
        h = hashlib.sha256()
        for m in sorted(str(p) for p in manifests):
            h.update(file_sha256(Path(m).with_suffix(".safetensors")).encode())
        h.update(np.ascontiguousarray(index, dtype=np.int64).tobytes())
        h.update(repr((scaling.low, scaling.high)).encode())
        path = Path(cache) / f"temperatures-{h.hexdigest()[:24]}.npy"
        try:  # no exists() first: a cache cleaned between the two would raise
            return np.load(path)
        except FileNotFoundError:
            pass
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


def _rows(data: SplitData, keep: np.ndarray) -> SplitData:
    return SplitData(data.flux[keep], {k: v[keep] for k, v in data.labels.items()},
                     data.index[keep], data.wave, data.frame)


#: Rows of the ``k``-th store of a mix carry global indices ``k << MIX_INDEX_SHIFT`` + row, so
#: that rows of different stores never share an index (the temperature cache keys on them).
MIX_INDEX_SHIFT = 40


def training_stores(store) -> list[str]:
    """The training store(s) as a list of paths: one path, or several (a mix)."""
    return [str(store)] if isinstance(store, (str, Path)) else [str(s) for s in store]


def _mix_counts(cfg: TrainConfig, available: list[int], limit: int | None) -> list[int]:
    """Rows taken from each store: ``limit`` (default: all rows) shared by ``cfg.mix``
    (default: in proportion to each store's rows), at most what a store has."""
    total = limit or sum(available)
    weights = np.asarray(cfg.mix if cfg.mix is not None else available, float)
    want = np.floor(total * weights / weights.sum() + 0.5).astype(np.int64)
    return [int(min(a, w)) for a, w in zip(available, want)]


def _concat(parts: list[SplitData]) -> SplitData:
    if len(parts) == 1:
        return parts[0]
    keys = parts[0].labels.keys()
    return SplitData(np.concatenate([p.flux for p in parts]),
                     {k: np.concatenate([p.labels[k] for p in parts]) for k in keys},
                     np.concatenate([p.index for p in parts]), parts[0].wave, parts[0].frame)


def load_data(cfg: TrainConfig, store) -> tuple[SplitData, SplitData]:
    """The training and validation rows of ``cfg.member`` (at most ``max_train`` /
    ``max_validation``), in RAM; the SB2 models (all but the detector) keep binaries only.

    ``store`` is one store or a list of them (a mix, shared as ``cfg.mix`` says): every store is
    read in the first one's frame and onto its pixel grid.
    """
    stores = training_stores(store)
    if cfg.mix is not None and len(cfg.mix) != len(stores):
        raise ValueError(f"mix has {len(cfg.mix)} fractions for {len(stores)} training stores "
                         f"({', '.join(stores)})")
    tr = [split_indices(s, "train", cfg.member, cfg.validation_folds) for s in stores]
    va = [split_indices(s, "validation", cfg.member, cfg.validation_folds) for s in stores]
    if len(stores) == 1 and cfg.mix is None:
        tr_n = [cfg.max_train or len(tr[0])]
        va_n = [cfg.max_validation or len(va[0])]
    else:
        tr_n = _mix_counts(cfg, [len(i) for i in tr], cfg.max_train)
        va_n = _mix_counts(cfg, [len(i) for i in va], cfg.max_validation)
    frame = store_frame(stores[0])
    wave = None
    parts_tr, parts_va = [], []
    for k, s in enumerate(stores):
        for rows, n_rows, parts in ((tr[k], tr_n[k], parts_tr), (va[k], va_n[k], parts_va)):
            if not n_rows:  # a store the mix gives no rows of this split
                continue
            part = load_split(s, rows[:n_rows], _fields(cfg), frame=frame, wave=wave)
            wave = part.wave if wave is None else wave
            if len(stores) > 1:
                part = replace(part, index=part.index + (k << MIX_INDEX_SHIFT))
            parts.append(part)
    if not parts_tr or not parts_va:
        raise ValueError(f"{', '.join(stores)}: the mix {cfg.mix} leaves no training or "
                         "validation rows")
    train, val = _concat(parts_tr), _concat(parts_va)
    if cfg.target != "p_binary":
        train, val = _rows(train, train.labels["is_binary"]), _rows(val, val.labels["is_binary"])
    if len(train.flux) == 0 or len(val.flux) == 0:
        raise ValueError(f"{', '.join(stores)}: no usable training or validation spectra for "
                         f"{cfg.target} ({len(train.flux)} training, {len(val.flux)} validation "
                         f"rows{'' if cfg.target == 'p_binary' else ' that are binaries'})")
    return train, val


def training_mix(cfg: TrainConfig, store, data: FitData) -> list[dict]:
    """Per training store: its fingerprint, the requested fraction and the rows it gave to
    training and validation (the record of a mix in the model manifests)."""
    stores = training_stores(store)
    tr_k = data.train.index >> MIX_INDEX_SHIFT if len(stores) > 1 else np.zeros(
        len(data.train.index), np.int64)
    va_k = data.val.index >> MIX_INDEX_SHIFT if len(stores) > 1 else np.zeros(
        len(data.val.index), np.int64)
    out = []
    for k, s in enumerate(stores):
        fp = store_fingerprint(s)
        out.append(dict(store=fp["path"], sha256=fp["sha256"],
                        library=store_metadata(s)["provenance"]["library"]["name"],
                        fraction=None if cfg.mix is None else cfg.mix[k] / sum(cfg.mix),
                        n_train=int(np.sum(tr_k == k)), n_validation=int(np.sum(va_k == k))))
    return out


def training_set_fingerprint(store) -> dict:
    """:func:`~sb2dask.dataset.store.store_fingerprint` of one store; for a mix, the stores'
    fingerprints and a SHA-256 over theirs (``sha256``, what inference reports)."""
    stores = training_stores(store)
    if len(stores) == 1:
        return store_fingerprint(stores[0])
    fps = [store_fingerprint(s) for s in stores]
    h = hashlib.sha256("".join(f["sha256"] for f in fps).encode()).hexdigest()
    return dict(sha256=h, n=sum(f["n"] for f in fps), stores=fps)


def _targets(cfg: TrainConfig, data: SplitData, scaling: LabelScaling | None) -> np.ndarray:
    lab = data.labels
    if cfg.target == "p_binary":
        return detector_truth(cfg.detector_target, lab).astype(np.float32)
    y = lab[cfg.target].astype(np.float64)
    return scaling.scale(y).astype(np.float32)


def fit_inputs(cfg: TrainConfig, train: SplitData, val: SplitData,
               temperature_models: list[str | Path], device: torch.device,
               cache: Path | None = None) -> FitData:
    """Scaled targets and, for parameter models, the temperatures predicted by
    ``temperature_models`` (cached in ``cache``, see :func:`temperature_inputs`)."""
    scaling = (LabelScaling(*cfg.scaling_range, unit=UNITS[cfg.target])
               if cfg.scaling_range else None)
    t_scaling = LabelScaling(*cfg.temperature_range, unit=UNITS["teff"])
    t_train = t_val = None
    if ARCHITECTURE[cfg.target] == "ParameterNet":
        if not temperature_models:
            raise ValueError(f"a {cfg.target} model needs temperature_model (the trained "
                             "temperature model's manifest)")
        t_train = temperature_inputs(temperature_models, train.flux, device, t_scaling, cache,
                                     train.index)
        t_val = temperature_inputs(temperature_models, val.flux, device, t_scaling, cache,
                                   val.index)
    return FitData(train, val, _targets(cfg, train, scaling), _targets(cfg, val, scaling),
                   t_train, t_val, scaling, t_scaling)


def warmup_cosine(steps: int) -> Callable[[int], float]:
    """Learning-rate factor per batch over a budget of ``steps`` batches: linear warm-up over
    2 % of the steps, then cosine decay to 1/50, held there past ``steps``.

    For :class:`~torch.optim.lr_scheduler.LambdaLR`. ``SequentialLR(LinearLR,
    CosineAnnealingLR)`` reproduces it only to ~1e-15 (its cosine is a recursive update, not this
    closed form), rises again past ``T_max`` instead of holding lr/50, and stores ``T_max`` in
    its state, so a run resumed with more epochs would keep the old horizon; a plain function is
    not stored (``lr_lambdas: [None]``), so the horizon follows the current budget and the
    checkpoints of earlier versions still load.
    """
    warm = max(1, steps // 50)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, steps - warm))
        return float(0.02 + 0.98 * 0.5 * (1.0 + np.cos(np.pi * t)))

    return factor


def training_loss(target: str, y_train: np.ndarray, device: torch.device) -> torch.nn.Module:
    """MSE for the regression targets; for the detector, binary cross-entropy on logits with the
    positives weighted by n_negative / n_positive of ``y_train`` (a tensor on ``device``)."""
    if target != "p_binary":
        return torch.nn.MSELoss()
    n_pos = float(y_train.sum())
    pos_weight = torch.tensor((len(y_train) - n_pos) / max(n_pos, 1.0), device=device)
    return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def build_learner(cfg: TrainConfig, y_train: np.ndarray, layout: str,
                  device: torch.device) -> Learner:
    """A fresh network of ``cfg.target``'s architecture on ``device`` (initial weights drawn
    from ``(seed, member)``), Adam, the schedule (``cosine``: per batch, over ``epochs``
    passes through the rows of ``y_train``) and the loss (:func:`training_loss`)."""
    # initial weights from (seed, member) alone: loading the temperature models for the inputs
    # draws from torch's RNG too, but not when another job already cached the temperatures
    torch.manual_seed(_torch_seed([cfg.seed, cfg.member]))
    model = ARCHITECTURES[ARCHITECTURE[cfg.target]](layout=layout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate,
                           weight_decay=cfg.weight_decay)
    sched = None
    if cfg.lr_schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5,
                                                           patience=cfg.lr_patience)
    elif cfg.lr_schedule == "cosine":
        # per batch: suits short budgets (a few epochs), where a per-epoch schedule barely moves
        steps = cfg.epochs * -(-len(y_train) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    return Learner(model, opt, sched, training_loss(cfg.target, y_train, device), device)


def _checkpoint_files(ckpt_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """Weights (safetensors), optimiser and scheduler (tensors only), progress (JSON)."""
    return (ckpt_dir / f"{name}-last.safetensors", ckpt_dir / f"{name}-state.pt",
            ckpt_dir / f"{name}-state.json")


def resume(cfg: TrainConfig, ckpt_dir: Path, learner: Learner) -> dict:
    """The training progress: fresh, or that of the last checkpoint in ``ckpt_dir``, whose
    weights, optimiser and scheduler states are then loaded into ``learner``.

    Returns
    -------
    dict : ``epoch`` (finished), ``best`` (validation loss), ``best_epoch``, ``stale`` (epochs
        since the best), ``history`` (per-epoch metrics), ``config``
    """
    weights, extra_path, state_json = _checkpoint_files(ckpt_dir, cfg.name)
    if not state_json.exists():
        return dict(epoch=0, best=float("inf"), best_epoch=-1, stale=0, history=[],
                    config=cfg.to_dict())
    prev = json.loads(state_json.read_text())
    # The budget (epochs) may be extended on resume; everything else must match.
    # read back as a configuration: settings added later take their defaults in older checkpoints
    if TrainConfig.from_dict(prev["config"]).replace(epochs=cfg.epochs) != cfg:
        raise ValueError(f"{state_json}: checkpoint of a different configuration; remove "
                         f"{ckpt_dir} or use another output directory")
    load_canonical_state_dict(learner.model, load_file(str(weights)))
    # weights_only: tensors and plain containers only, never code. NumPy scalars (which
    # checkpoints of sb2dask <= 0.1.0 could hold in the scheduler state) are allowed too.
    with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype,
                                           type(np.dtype(np.float64))]):
        extra = torch.load(extra_path, weights_only=True, map_location=learner.device)
    learner.optimizer.load_state_dict(extra["optimizer"])
    if learner.scheduler is not None and extra.get("scheduler"):
        learner.scheduler.load_state_dict(extra["scheduler"])
    logger.info("%s: resuming after epoch %d", cfg.name, prev["epoch"])
    return dict(prev, config=cfg.to_dict())


def save_checkpoint(ckpt_dir: Path, name: str, learner: Learner, state: dict) -> None:
    """Write the last-epoch checkpoint atomically: weights, optimiser and scheduler, then the
    progress ``state`` (last, so a checkpoint with progress is always complete)."""
    weights, extra_path, state_json = _checkpoint_files(ckpt_dir, name)
    with atomic_path(weights) as tmp:
        save_file(canonical_state_dict(learner.model), str(tmp))
    sched = learner.scheduler
    with atomic_path(extra_path) as tmp:
        torch.save(dict(optimizer=learner.optimizer.state_dict(),
                        scheduler=sched.state_dict() if sched is not None else None), tmp)
    atomic_write_json(state_json, state)


def train_epoch(cfg: TrainConfig, learner: Learner, data: FitData, epoch: int,
                progress: bool = False) -> float:
    """One pass over the training rows in an order drawn from ``(seed, member, epoch)``
    (dropout masks too), stepping a ``cosine`` schedule per batch.

    Returns
    -------
    float : the mean training loss over the epoch
    """
    from tqdm.auto import tqdm

    model, opt, device = learner.model, learner.optimizer, learner.device
    per_batch = learner.scheduler if cfg.lr_schedule == "cosine" else None
    n, bs = len(data.y_train), cfg.batch_size
    model.train()
    key = [cfg.seed, cfg.member, epoch]
    perm = np.random.default_rng(key).permutation(n)
    # dropout masks too depend only on (seed, member, epoch), so a resumed run matches
    torch.manual_seed(_torch_seed(key))
    y_all = torch.from_numpy(data.y_train)
    total = 0.0
    for s in tqdm(range(0, n, bs), desc=f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}",
                  leave=False, disable=not progress, file=sys.stderr):
        idx = np.sort(perm[s:s + bs])
        args = [torch.from_numpy(data.train.flux[idx]).to(device)]
        if data.t_train is not None:
            args.append(torch.from_numpy(data.t_train[idx]).to(device))
        opt.zero_grad(set_to_none=True)
        loss = learner.loss(model(*args), y_all[idx].to(device))
        loss.backward()
        opt.step()
        if per_batch is not None:
            per_batch.step()
        total += float(loss.detach()) * len(idx)
    return total / n


def validation_loss(loss_fn: torch.nn.Module, pred: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """The training loss of predictions ``pred`` against targets ``y`` (numpy, same shape),
    computed on the device of the loss's own tensors (the detector's ``pos_weight`` lives on the
    training device); a 0-d tensor on that device."""
    device = next(loss_fn.buffers(), torch.empty(0)).device
    return loss_fn(torch.from_numpy(pred).to(device), torch.from_numpy(y).to(device))


def validation_metrics(target: str, loss_fn: torch.nn.Module, pred: np.ndarray, y: np.ndarray,
                       scaling: LabelScaling | None) -> dict:
    """Validation loss (the training loss) and, for the detector, the ROC AUC; for the
    regression targets the RMSE and MAE in physical units (the target's unit)."""
    val_loss = float(validation_loss(loss_fn, pred, y))
    if target == "p_binary":
        return dict(val_loss=val_loss, roc_auc=roc_auc(y, pred))
    phys = scaling.unscale(pred) - scaling.unscale(y)
    return dict(val_loss=val_loss, rmse=float(np.sqrt(np.mean(phys ** 2))),
                mae=float(np.mean(np.abs(phys))))


def run_epoch(cfg: TrainConfig, learner: Learner, data: FitData, epoch: int,
              progress: bool = False) -> dict:
    """Train epoch ``epoch`` (0-based), validate, and step a ``plateau`` schedule.

    Returns
    -------
    dict : the validation metrics, ``epoch`` (1-based), ``train_loss``, ``lr`` (at the end of
        the epoch, before a plateau step), ``train_samples_per_s`` and ``seconds``
    """
    te = time.perf_counter()
    train_loss = train_epoch(cfg, learner, data, epoch, progress)
    train_s = time.perf_counter() - te
    pred = predict_array(learner.model, data.val.flux, data.t_val, device=learner.device)
    metrics = validation_metrics(cfg.target, learner.loss, pred, data.y_val, data.scaling)
    metrics.update(epoch=epoch + 1, train_loss=train_loss,
                   lr=learner.optimizer.param_groups[0]["lr"],
                   train_samples_per_s=len(data.y_train) / train_s,
                   seconds=time.perf_counter() - te)
    if cfg.lr_schedule == "plateau":
        learner.scheduler.step(metrics["val_loss"])
    return metrics


def _record(state: dict, metrics: dict) -> bool:
    """Add an epoch's metrics to the progress; True when it is the best epoch so far."""
    improved = metrics["val_loss"] < state["best"]
    if improved:
        state.update(best=metrics["val_loss"], best_epoch=metrics["epoch"], stale=0)
    else:
        state["stale"] += 1
    state["epoch"] = metrics["epoch"]
    state["history"].append(metrics)
    return improved


def _patience_exhausted(cfg: TrainConfig, state: dict) -> bool:
    return cfg.early_stopping is not None and state["stale"] >= cfg.early_stopping


def _report(name: str, metrics: dict, progress: bool) -> None:
    logger.info("%s epoch %d: %s", name, metrics["epoch"], metrics)
    if progress:
        shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
        print(f"{name} {shown}", file=sys.stderr)


def label_limits(labels: dict) -> dict:
    """``[min, max]`` of each stellar label over the finite values of both components (None
    when there is none): the label space a network was trained on, in the labels' units."""
    limits = {}
    for key in PARAMETERS:
        v = labels[key][np.isfinite(labels[key])]
        limits[key] = [float(v.min()), float(v.max())] if v.size else None
    return limits


def logg_max_by_teff(labels: dict, width: float = 250.0) -> list[list[float]]:
    """Highest training logg (dex) per ``width`` K bin of Teff, as ``[bin upper edge (K), max
    logg]`` for the bins that hold any star: where the training set's main sequence ends."""
    t_all, g_all = labels["teff"].ravel(), labels["logg"].ravel()
    ok = np.isfinite(t_all) & np.isfinite(g_all)
    t, g = t_all[ok], g_all[ok]
    edges = np.arange(np.floor(t.min() / width) * width, t.max() + width, width)
    return [[float(hi), float(g[(t >= lo) & (t < hi)].max())]
            for lo, hi in pairwise(edges) if np.any((t >= lo) & (t < hi))]


def build_manifest(cfg: TrainConfig, store: str | Path, data: FitData,
                   temperature_models: list[str | Path]) -> ModelManifest:
    """The manifest saved with the best model (its ``metrics`` are added per epoch): the
    target's scalings, the training set's identity, and the label space it covers."""
    train = data.train
    ranges = [store_metadata(s)["config"]["snr_range"] for s in training_stores(store)]
    snr_range = [min(r[0] for r in ranges), max(r[1] for r in ranges)]
    return ModelManifest(
        name=cfg.name, target=cfg.target, architecture=ARCHITECTURE[cfg.target],
        wave=tuple(train.wave), scaling=data.scaling,
        temperature_scaling=data.temperature_scaling if data.t_train is not None else None,
        member=cfg.member, seed=cfg.seed, training_set=training_set_fingerprint(store),
        training=dict(config=cfg.to_dict(), frame=data.train.frame, n_train=len(data.y_train),
                      n_validation=len(data.y_val),
                      temperature_models=[str(p) for p in temperature_models],
                      label_limits=label_limits(train.labels),
                      logg_max_by_teff=logg_max_by_teff(train.labels),
                      snr_range=list(snr_range), mix=training_mix(cfg, store, data)))


def save_temperature_feature_statistics(manifest_path: Path, flux: np.ndarray, layout: str,
                                        device: torch.device, max_rows: int = 20000,
                                        batch: int = 512) -> None:
    """Feature statistics of a temperature model on (the first ``max_rows`` of) its training
    spectra ``flux`` ``(n, n_pix)``: the reference for the out-of-distribution distance at
    inference, saved beside the model."""
    model, _ = load_model(manifest_path, layout=layout, device=device)
    sub = flux[: min(len(flux), max_rows)]
    with torch.inference_mode():
        feats = np.concatenate([model.trunk(torch.from_numpy(sub[s:s + batch]).to(device))
                                .cpu().numpy() for s in range(0, len(sub), batch)])
    save_feature_statistics(manifest_path, feature_statistics(feats))


def fit(cfg: TrainConfig, store: str | Path, out_dir: str | Path, progress: bool = True,
        temperature_models: list[str | Path] | None = None) -> dict:
    """Train (or resume) one network; returns a summary with the best manifest path and metrics.

    Parameters
    ----------
    cfg : TrainConfig
    store : path of the simulated Zarr training set, or a list of them (a mix: ``cfg.mix``)
    out_dir : where models (``NAME.json`` / ``NAME.safetensors``) and ``checkpoints/`` go
    temperature_models : manifest paths of the temperature model(s) for parameter models
        (default: ``cfg.temperature_model``)
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    layout = cfg.layout if device.type == "cpu" else "1d"
    t0 = time.perf_counter()
    train, val = load_data(cfg, store)
    load_s = time.perf_counter() - t0
    temp_paths = temperature_models or ([cfg.temperature_model] if cfg.temperature_model else [])
    data = fit_inputs(cfg, train, val, temp_paths, device, cache=ckpt_dir)
    learner = build_learner(cfg, data.y_train, layout, device)
    state = resume(cfg, ckpt_dir, learner)
    manifest = build_manifest(cfg, store, data, temp_paths)
    while state["epoch"] < cfg.epochs and not _patience_exhausted(cfg, state):
        metrics = run_epoch(cfg, learner, data, state["epoch"], progress)
        if _record(state, metrics):
            save_model(out_dir, learner.model,
                       replace(manifest, metrics=dict(metrics, best_epoch=metrics["epoch"])))
        save_checkpoint(ckpt_dir, cfg.name, learner, state)
        _report(cfg.name, metrics, progress)
    best_path = out_dir / f"{cfg.name}.json"
    if cfg.target == "teff" and best_path.exists():
        save_temperature_feature_statistics(best_path, data.train.flux, layout, device)
    return dict(name=cfg.name, manifest=str(best_path), epochs=state["epoch"],
                best_epoch=state["best_epoch"], best_val_loss=state["best"],
                history=state["history"], load_s=load_s,
                stopped_early=_patience_exhausted(cfg, state))
