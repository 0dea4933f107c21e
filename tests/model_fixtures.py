"""Untrained but complete model sets for tests of inference plumbing (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sb2dask.models.densenet import ParameterNet, TemperatureNet
from sb2dask.models.detector import BinaryDetector
from sb2dask.models.io import (
    LabelScaling,
    ModelManifest,
    feature_statistics,
    save_feature_statistics,
    save_model,
)
from sb2dask.simulate.config import output_wave

RANGES = {"teff": (3500.0, 6500.0, "K"), "logg": (3.0, 6.0, "dex"), "feh": (-4.0, 1.0, "dex"),
          "vsini": (0.0, 100.0, "km/s")}


def random_model_set(directory: Path, grid: str = "gaia_dr3_903", members: int = 1,
                     seed: int = 0) -> Path:
    """Write teff/logg/feh/vsini/p_binary models with seeded random weights into ``directory``."""
    wave = tuple(float(w) for w in output_wave(grid))
    training = dict(label_limits={k: [v[0], v[1]] for k, v in RANGES.items()},
                    logg_max_by_teff=[[4250.0, 5.5], [6500.0, 5.0]], snr_range=[30.0, 350.0])
    t_scale = LabelScaling(*RANGES["teff"])
    for m in range(members):
        for target, cls in (("teff", TemperatureNet), ("logg", ParameterNet),
                            ("feh", ParameterNet), ("vsini", ParameterNet),
                            ("p_binary", BinaryDetector)):
            torch.manual_seed(seed * 1000 + m * 10 + len(target))
            model = cls().eval()
            path = save_model(directory, model, ModelManifest(
                name=f"{target}-{m}", target=target, architecture=cls.__name__, wave=wave,
                scaling=None if target == "p_binary" else LabelScaling(*RANGES[target]),
                temperature_scaling=t_scale if cls is ParameterNet else None, member=m,
                training=training, metrics={"rmse": 1.0} if target != "p_binary" else {}))
            if target == "teff":  # reference features for the OOD distance: noisy flat spectra
                x = 1.0 + 0.02 * torch.randn(600, len(wave))
                with torch.inference_mode():
                    save_feature_statistics(path, feature_statistics(model.trunk(x).numpy()))
    return Path(directory)


def retarget_detector(directory: Path, target: str = "double_lined", members=None) -> Path:
    """Record ``target`` as the detector target of the p_binary manifests in ``directory`` (all,
    or the member numbers in ``members``), as ``train --set p_binary.detector_target=...``
    writes it in the training configuration."""
    for path in sorted(Path(directory).glob("p_binary-*.json")):
        man = json.loads(path.read_text())
        if members is not None and man.get("member") not in members:
            continue
        man["training"]["config"] = {"target": "p_binary", "detector_target": target}
        path.write_text(json.dumps(man))
    return Path(directory)
