"""Training many networks on a pool of Dask workers (GPU workers when the cluster has them).

The temperature-model ensemble runs first; every parameter model (logg, [Fe/H], v sin i, each an
ensemble) then starts as soon as the temperature members it is fed by are finished, and the SB2
detector runs alongside. Each training job is one Dask task that asks for ``resources={"GPU": 1}``
when the workers advertise GPUs (``--resources GPU=1``, as dask-cuda and the jobqueue configs in
``deploy/`` do), so each GPU trains one network at a time; on a CPU-only cluster the same jobs run
on CPU workers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..labels import PARAMETERS
from .config import PARAMETER_TARGETS, TrainConfig

__all__ = ["PARAMETER_TARGETS", "cluster_has_gpus", "train_all"]


def cluster_has_gpus(client) -> bool:
    """True when at least one worker advertises a ``GPU`` resource."""
    info = client.scheduler_info()["workers"]
    return any(w.get("resources", {}).get("GPU", 0) >= 1 for w in info.values())


def _fit_task(cfg_dict: dict, store: str, out_dir: str, temperature_results=None) -> dict:
    from ..runtime import tune_process
    from .fit import fit

    cfg = TrainConfig.from_dict(cfg_dict)
    tune_process(cfg.threads)  # torch threads = worker task threads; malloc for big tensors
    temps = [r["manifest"] for r in temperature_results] if temperature_results else None
    return fit(cfg, store, out_dir, progress=False, temperature_models=temps)


def train_all(store: str | Path, out_dir: str | Path, client, base: TrainConfig,
              ensemble: int = 1, targets=PARAMETERS,
              detector_store: str | Path | None = None, progress: bool = True,
              per_target: dict | None = None) -> dict:
    """Train the temperature ensemble, the parameter ensembles and (optionally) the detector.

    Parameters
    ----------
    store : the simulated SB2 training set, or a list of stores trained on together (a mix;
        ``base.mix`` or ``per_target[...]["mix"]`` give the fractions)
    base : TrainConfig with the shared budget; ``target`` and ``member`` are set per job
    ensemble : members per target (different seeds and, with ``base.validation_folds`` > 1,
        different validation folds)
    detector_store : a store with single stars and SB2s (``--binary-fraction 0.5``), or a list
        of them, to train the detector on; None skips the detector
    per_target : target -> TrainConfig field overrides (e.g. a different budget per network)

    Returns
    -------
    dict : target -> list of fit summaries (without the per-epoch history)
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    resources = {"GPU": 1} if cluster_has_gpus(client) else None
    per_target = per_target or {}

    def config(target: str, member: int) -> dict:
        # per-target overrides win, member included: --set teff.member=3 adds a 4th member
        fields = {"target": target, "member": member, **per_target.get(target, {})}
        return base.replace(**fields).to_dict()

    # one path stays a string (the manifests of single-store runs are unchanged); several: a mix
    def paths(s):
        return str(s) if isinstance(s, (str, Path)) else [str(x) for x in s]

    store, out_dir = paths(store), str(out_dir)
    futures = {}
    temp = []
    if "teff" in targets:
        temp = [client.submit(_fit_task, config("teff", m),
                              store, out_dir, key=f"train-teff-{m}", resources=resources,
                              pure=False) for m in range(ensemble)]
        futures["teff"] = temp
    elif any(t in targets for t in PARAMETER_TARGETS) and base.temperature_model is None:
        raise ValueError("parameter models need a temperature model: include 'teff' in targets "
                         "or set temperature_model")
    for target in (t for t in targets if t in PARAMETER_TARGETS):
        futures[target] = [client.submit(
            _fit_task, config(target, m), store, out_dir,
            temp or None, key=f"train-{target}-{m}", resources=resources, pure=False)
            for m in range(ensemble)]
    if detector_store is not None:
        futures["p_binary"] = [client.submit(
            _fit_task, config("p_binary", m), paths(detector_store),
            out_dir, key=f"train-p_binary-{m}", resources=resources, pure=False)
            for m in range(ensemble)]
    results: dict = {k: [None] * len(v) for k, v in futures.items()}
    where = {f.key: (k, i) for k, fs in futures.items() for i, f in enumerate(fs)}
    all_futures = [f for fs in futures.values() for f in fs]
    with tqdm(total=len(all_futures), desc="training jobs", disable=not progress,
              file=sys.stderr) as bar:
        for fut in as_completed(all_futures):
            k, i = where[fut.key]
            r = fut.result()
            results[k][i] = {key: v for key, v in r.items() if key != "history"}
            bar.update()
    return results
