"""The main job on the embedded defaults: a mock epoch catalogue (plus the real Gaia spectra when
present) through the shipped models on a LocalCluster into Parquet, and a summary against the
truth.

``sb2dask demo`` writes into ``--out`` (default ``sb2dask-demo`` in the current directory,
git-ignored in a source checkout)::

    sb2dask-demo/mock_catalogue/          the mock bulk ECSV files and truth.parquet
    sb2dask-demo/sb2dask_epochs.parquet/  the epoch table (sb2dask_epochs.sources.parquet beside)
    sb2dask-demo/summary.json             what run_demo returns
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import PARAMETERS

__all__ = ["REAL_SPECTRA", "run_demo", "summarise"]

#: The real Gaia DR3 RVS spectra beside a checkout (../shared/data/gaia_rvs), used when present.
REAL_SPECTRA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gaia_rvs"


def summarise(epochs: pd.DataFrame, truth: pd.DataFrame | None,
              detector_target: str = "is_binary") -> dict:
    """What was found: counts, flags, p_binary separation and parameter errors against the
    truth. p_binary's ROC AUC against every binary and, for models whose detector learned
    another target (:data:`sb2dask.labels.DETECTOR_TARGETS`), against that one too."""
    from ..labels import detector_truth
    from .metrics import rmse_mae, roc_auc

    s = dict(epoch_rows=int(len(epochs)), usable=int(epochs["usable"].sum()),
             sources=int(epochs["source_id"].nunique()),
             p_binary_gt_0_5=int((epochs["p_binary"] > 0.5).sum()))
    if truth is not None and len(truth):
        m = epochs.merge(truth, on=["source_id", "epoch_id"], suffixes=("", "_true"))
        m = m[m["usable"]]
        y = m["is_binary"].to_numpy(bool)
        s["mock_matched"] = int(len(m))
        s["p_binary_roc_auc"] = roc_auc(y, m["p_binary"].to_numpy())
        s["detector_target"] = detector_target
        if detector_target != "is_binary":
            lab = dict(is_binary=y, rv_separation=m["rv_separation"].to_numpy(float),
                       light_fraction=m[["light_fraction_1", "light_fraction_2"]].to_numpy(float))
            s["p_binary_roc_auc_target"] = roc_auc(detector_truth(detector_target, lab),
                                                   m["p_binary"].to_numpy())
        s["p_binary_median_sb2"] = float(np.median(m.loc[y, "p_binary"])) if y.any() else None
        s["p_binary_median_single"] = (float(np.median(m.loc[~y, "p_binary"]))
                                       if (~y).any() else None)
        sb2 = m[y]
        for p in PARAMETERS:
            pred = sb2[[f"{p}_1", f"{p}_2"]].to_numpy()
            true = sb2[[f"{p}_1_true", f"{p}_2_true"]].to_numpy()
            s[f"{p}_rmse_sb2"], s[f"{p}_mae_sb2"] = rmse_mae(pred, true)
    return s


def run_demo(out: str | Path, n_sources: int = 300, client=None, model_dir=None,
             real: Path | None = REAL_SPECTRA, progress: bool = True) -> dict:
    """Mock catalogue → ``sb2dask infer`` → summary; returns the summary dict, also written
    (atomically) to ``out/summary.json``."""
    from ..dataset.mock_catalogue import mock_catalogue
    from ..fileio import atomic_write_text
    from ..infer.config import InferenceConfig
    from ..infer.run import run_inference, sources_path
    from ..simulate.config import SimulationConfig

    out = Path(out)
    mock = mock_catalogue(out / "mock_catalogue", n_sources=n_sources, epochs=(1, 4),
                          binary_fraction=0.5, n_files=2,
                          config=SimulationConfig(snr_range=(30.0, 350.0)), seed=2026)
    inputs = list(mock["files"])
    real_files = sorted(real.glob("*.csv")) if real is not None and real.is_dir() else []
    inputs += [str(p) for p in real_files]
    config = InferenceConfig(model_dir=model_dir, partition_rows=1000)
    res = run_inference(inputs, out / "sb2dask_epochs.parquet", client, config,
                        progress=progress, overwrite=True)
    epochs = pd.read_parquet(out / "sb2dask_epochs.parquet")
    truth = pd.read_parquet(mock["truth"])
    from ..infer.predict import get_model_set

    # what its p_binary is the probability of: the set run_inference loaded here (cached)
    target = get_model_set(config.replace(device="cpu")).p_binary_target
    summary = dict(inference=res, mock=summarise(epochs[~epochs["file"].isin(
        [str(p.resolve()) for p in real_files])], truth, target))
    if real_files:
        cols = ["source_id", "p_binary", "teff_1", "teff_2", "logg_1", "logg_2", "feh_1",
                "feh_2", "vsini_1", "vsini_2", "flag_boundary", "quality_flags", "usable", "file"]
        rows = epochs[epochs["file"].isin([str(p.resolve()) for p in real_files])][cols]
        summary["real"] = rows.assign(file=rows["file"].map(lambda f: Path(f).name)).to_dict(
            orient="records")
    summary["outputs"] = dict(epochs=str(out / "sb2dask_epochs.parquet"),
                              sources=str(sources_path(out / "sb2dask_epochs.parquet")),
                              summary=str(out / "summary.json"))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary
