"""The notebooks run headless, top to bottom, with small parameters injected after their
``parameters`` cell (as papermill does), and produce their dashboard link and figures."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from sb2dask.infer.predict import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, cwd: Path, **parameters) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` in ``cwd``, ``parameters`` overriding its parameters cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell(
        "# Injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == kind]


def _text(nb) -> str:
    parts = [o.get("text", "") for o in _outputs(nb, "stream")]
    for kind in ("execute_result", "display_data"):
        parts += [o.get("data", {}).get("text/plain", "") for o in _outputs(nb, kind)]
    return "\n".join(parts)


def _figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb, "display_data"))


def test_quickstart(tmp_path):
    if any(DEFAULT_MODEL_DIR.glob("*-*.json")):
        model_dir = None  # what a user gets: the shipped networks
    else:  # not trained yet: untrained networks of the same format exercise the same cells
        from model_fixtures import random_model_set

        model_dir = str(random_model_set(tmp_path / "stand-in-models"))
    nb = run_notebook("quickstart.ipynb", tmp_path, n_spectra=200, chunk=100, n_sources=8,
                      workers=2, model_dir=model_dir, work_dir=str(tmp_path / "work"))
    text = _text(nb)
    assert "Dashboard: http://" in text
    assert "'computed': 2" in text  # two chunks simulated
    assert (tmp_path / "work" / "train.zarr" / "zarr.json").is_file()
    # spectra, label histograms, predicted vs true
    assert _figures(nb) == 3
    assert "No trained networks" not in text
    work = tmp_path / "work"
    pred = pd.read_parquet(work / "results.parquet")
    truth = pd.read_parquet(work / "catalogue" / "truth.parquet")
    assert len(pred) == len(truth) == len(pred.merge(truth, on=["source_id", "epoch_id"]))
    assert len(pd.read_parquet(work / "results.sources.parquet")) == 8


def test_hpc_session_falls_back_to_a_local_cluster(tmp_path):
    if shutil.which("sbatch") or shutil.which("qsub"):
        pytest.skip("a batch system is on PATH: this notebook would submit real jobs")
    nb = run_notebook("hpc_session.ipynb", tmp_path, n_spectra=200, chunk=100,
                      work_dir=str(tmp_path / "work"))
    text = _text(nb)
    assert "no sbatch or qsub on PATH" in text
    assert "#SBATCH --gres=gpu:1" in text  # the job script it would submit, rendered anyway
    assert "Dashboard: http://" in text
    assert "'computed': 2" in text


def test_hpc_session_on_a_stand_in_slurm(tmp_path, monkeypatch):
    """The notebook's batch path: CPU pool, simulation, GPU pool, training, with ``sbatch`` and
    ``scancel`` that run the jobs on this machine, and the site settings of the deploy files
    (ib0, the venv, 16 cores) overridden by environment variables, as a user would."""
    from test_cluster import end_stand_in_jobs, install_stand_in_queue

    install_stand_in_queue(tmp_path / "bin", tmp_path / "jobs.txt")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for key, value in dict(INTERFACE="lo", JOB_SCRIPT_PROLOGUE="[]", CORES="1", PROCESSES="1",
                           MEMORY="2GiB", PYTHON=sys.executable, LOCAL_DIRECTORY=str(tmp_path),
                           SCHEDULER_OPTIONS="{'dashboard_address': ':0'}").items():
        monkeypatch.setenv(f"DASK_JOBQUEUE__SLURM__{key}", value)
    try:
        nb = run_notebook("hpc_session.ipynb", tmp_path, n_spectra=200, chunk=100, cpu_jobs=2,
                          gpu_jobs=2, epochs=1, work_dir=str(tmp_path / "work"))
    finally:
        end_stand_in_jobs(tmp_path / "jobs.txt")
    text = _text(nb)
    assert "batch system: slurm" in text
    assert "'computed': 2" in text
    assert "workers advertise GPUs: True" in text  # --resources GPU=1 from deploy/slurm-gpu.yaml
    # 2 CPU jobs, then 2 GPU jobs
    assert len((tmp_path / "jobs.txt").read_text().split()) == 4
    models = tmp_path / "work" / "models"
    assert sorted(p.stem for p in models.glob("*.json")) == [
        "feh-0", "logg-0", "p_binary-0", "teff-0", "vsini-0"]
