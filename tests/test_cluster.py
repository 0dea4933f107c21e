"""Getting a Dask cluster: deploy YAML → jobqueue job scripts; local clusters; batch clusters on a
stand-in queue (``sbatch``/``qsub`` that run the job script on this machine); and the CLI against
a scheduler and workers started on loopback, as a batch system would start them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import dask_jobqueue  # noqa: F401  (loads the jobqueue defaults into Dask's config)
import pytest

from sb2dask.cluster import deploy_config, get_client, jobqueue_job_script

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def _worker_command(script: str) -> str:
    (line,) = [x for x in script.splitlines() if "distributed.cli.dask_worker" in x]
    return line


# ---------------------------------------------------------------- deploy YAML → job scripts

def test_slurm_gpu_script_from_deploy_yaml():
    script = jobqueue_job_script("slurm", config="slurm-gpu")
    d = _directives(script, "#SBATCH")
    assert "--gres=gpu:1" in d
    assert "-A my-account" in d and "-p gpu" in d and "-t 12:00:00" in d
    assert "--mem=64G" in d  # 64GiB in the YAML; SLURM's G is GiB
    assert "--cpus-per-task=8" in d
    cmd = _worker_command(script)
    assert "--resources GPU=1" in cmd and "--interface ib0" in cmd and "--nthreads 8" in cmd
    assert cmd.startswith("python -m distributed.cli.dask_worker")  # the activated env's python
    # the prologue activates the environment before the worker starts
    lines = script.splitlines()
    activate = next(i for i, x in enumerate(lines) if x.startswith("source ") and "activate" in x)
    assert activate < lines.index(cmd)


def test_slurm_cpu_script_has_one_single_threaded_worker_per_core():
    script = jobqueue_job_script("slurm", config="slurm-cpu")
    d = _directives(script, "#SBATCH")
    assert "-p cpu" in d and "-A my-account" in d and "-t 04:00:00" in d and "--mem=64G" in d
    assert not any("gres" in x for x in d)
    cmd = _worker_command(script)
    assert "--nworkers 16" in cmd and "--nthreads 1" in cmd and "--memory-limit 4.00GiB" in cmd
    assert "--resources" not in cmd
    assert "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1" in script


def test_pbs_scripts_from_deploy_yaml():
    gpu = jobqueue_job_script("pbs", config="pbs-gpu")
    d = _directives(gpu, "#PBS")
    select = [x for x in d if x.startswith("-l select=")]
    assert len(select) == 1 and re.fullmatch(r"-l select=1:ncpus=8:mem=64GB:ngpus=1", select[0])
    assert "-l walltime=12:00:00" in d and "-q gpu" in d and "-A my-account" in d
    assert "--resources GPU=1" in _worker_command(gpu)
    assert "cd $PBS_O_WORKDIR" in gpu.splitlines()

    cpu = jobqueue_job_script("pbs", config="pbs-cpu")
    d = _directives(cpu, "#PBS")
    # derived by dask-jobqueue from cores and memory: 64GiB is PBS's 64GB
    assert "-l select=1:ncpus=16:mem=64GB" in d and "-q workq" in d
    assert "-l walltime=04:00:00" in d and "ngpus" not in cpu


def test_memory_units_gib_vs_gb():
    # what docs/deploy.md warns about: 16GB (10^9) is 14.9 GiB, which SLURM gets as 15G
    assert "#SBATCH --mem=16G" in jobqueue_job_script("slurm", "slurm-cpu", memory="16GiB")
    assert "#SBATCH --mem=15G" in jobqueue_job_script("slurm", "slurm-cpu", memory="16GB")


def test_environment_and_keywords_override_the_deploy_file(monkeypatch):
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__ACCOUNT", "astro123")
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__QUEUE", "short")
    assert deploy_config("slurm-gpu")["jobqueue"]["slurm"]["account"] == "astro123"
    script = jobqueue_job_script("slurm", config="slurm-gpu", walltime="01:30:00")
    d = _directives(script, "#SBATCH")
    assert "-A astro123" in d and "-p short" in d and "-t 01:30:00" in d
    assert "--gres=gpu:1" in d  # the rest of the file still applies


def test_config_by_path_is_applied_only_during_rendering(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text((REPO / "deploy" / "slurm-cpu.yaml").read_text()
                    .replace("queue: cpu", "queue: astro-long"))
    before = dask.config.get("jobqueue.slurm.queue")
    assert "#SBATCH -p astro-long" in jobqueue_job_script("slurm", config=str(path))
    assert dask.config.get("jobqueue.slurm.queue") == before


def test_a_pool_applied_after_another_keeps_nothing_of_it(batch_queue):
    # the hpc notebook's order: CPU pool for simulation, then GPU pool for training, then CPU
    from sb2dask.cluster import _config_settings

    dask.config.set(_config_settings("pbs-gpu", "pbs"))
    assert "ngpus=1" in jobqueue_job_script("pbs")  # applied for the whole process
    dask.config.set(_config_settings("pbs-cpu", "pbs"))
    script = jobqueue_job_script("pbs")
    assert "ngpus" not in script and "GPU=1" not in script
    assert "#PBS -l select=1:ncpus=16:mem=64GB" in script


def test_config_errors_name_the_file():
    with pytest.raises(ValueError, match=r"slurm-gpu\.yaml configures \['slurm'\]"):
        jobqueue_job_script("pbs", config="slurm-gpu")
    with pytest.raises(FileNotFoundError, match="known names: .*pbs-cpu"):
        jobqueue_job_script("slurm", config="no-such-pool")
    with pytest.raises(ValueError, match="only applies to --cluster slurm or pbs"):
        get_client("local", config="slurm-cpu")
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(ValueError, match="--jobqueue-config slurm-cpu"):
            get_client("slurm", quiet=True)


# ---------------------------------------------------------------- local clusters

def test_local_client_has_the_requested_workers():
    with get_client("local", workers=2, threads_per_worker=1, memory_limit="1GiB",
                    quiet=True) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        assert len(workers) == 2
        assert all(w["nthreads"] == 1 and w["memory_limit"] == 2 ** 30 for w in workers)
        # workers inherit BLAS/OpenMP threads = cores // workers
        env = client.run(lambda: os.environ["OMP_NUM_THREADS"])
        assert set(env.values()) == {str(max(1, (os.cpu_count() or 1) // 2))}
        cluster = client.cluster
    assert cluster.status.name == "closed"  # closing the client closed its local cluster


def test_local_gpu_needs_dask_cuda():
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs dask-cuda.*pip install dask-cuda"):
            get_client("local-gpu", quiet=True)
    else:
        pytest.skip("dask-cuda is installed: the missing-package error cannot be triggered")


def test_unknown_cluster_is_rejected():
    with pytest.raises(ValueError, match="unknown cluster 'lsf'"):
        get_client("lsf")


# ---------------------------------------------------------------- batch clusters, stand-in queue

SUBMIT = """#!{python}
import pathlib, subprocess, sys
# a copy of the job script that outlives this call, as a real queue keeps its own: dask-jobqueue
# deletes its temporary script as soon as the submit command returns, and a job started on the
# original could find it gone ("No such file or directory": a worker that never came, a hang)
script = pathlib.Path(sys.argv[-1])
keep = pathlib.Path({jobs!r}).with_name(script.name)
keep.write_text(script.read_text())
log = open(keep.with_suffix(".log"), "w")
job = subprocess.Popen(["bash", str(keep)], start_new_session=True, stdout=log, stderr=log)
with open({jobs!r}, "a") as f:
    f.write(f"{{job.pid}}\\n")
print({template!r}.format(job.pid))
"""
CANCEL = """#!{python}
import os, signal, sys
for job in sys.argv[1:]:
    try:
        os.killpg(int(job.split(".")[0]), signal.SIGTERM)
    except ProcessLookupError:
        pass
"""


def install_stand_in_queue(bin_dir: Path, jobs: Path) -> None:
    """Write ``sbatch``/``qsub`` that run the job script on this machine (in a process group of its
    own, listed in ``jobs``) and ``scancel``/``qdel`` that end that group."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text, template in (("sbatch", SUBMIT, "Submitted batch job {}"),
                                 ("qsub", SUBMIT, "{}.pbs-server"),
                                 ("scancel", CANCEL, ""), ("qdel", CANCEL, "")):
        (bin_dir / name).write_text(text.format(python=sys.executable, jobs=str(jobs),
                                                template=template))
        (bin_dir / name).chmod(0o755)


def end_stand_in_jobs(jobs: Path) -> None:
    """Kill the jobs the cluster did not cancel (only those the stand-in queue started)."""
    import signal

    for pid in (jobs.read_text().split() if jobs.exists() else []):
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def batch_queue(tmp_path, monkeypatch):
    """A stand-in batch system on PATH; Dask's config is restored afterwards."""
    import copy

    install_stand_in_queue(tmp_path / "bin", tmp_path / "jobs.txt")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    saved = copy.deepcopy(dask.config.config)  # get_client applies deploy files process-wide
    try:
        yield tmp_path
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)
        end_stand_in_jobs(tmp_path / "jobs.txt")


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_gpu_pool_workers_advertise_gpus_to_training_tasks(kind, batch_queue):
    from sb2dask.train.pool import cluster_has_gpus

    # the GPU pool's deploy file, shrunk to this machine: no ib0, no venv to activate
    client = get_client(kind, workers=1, config=f"{kind}-gpu", cores=1, memory="1GiB",
                        interface="lo", python=sys.executable, job_script_prologue=[],
                        local_directory=str(batch_queue),
                        scheduler_options={"dashboard_address": ":0"}, quiet=True)
    try:
        assert len((batch_queue / "jobs.txt").read_text().split()) == 1  # one job submitted
        assert cluster_has_gpus(client)  # --resources GPU=1 from the deploy file
        # what train_all submits: a task that needs a GPU to itself
        fut = client.submit(os.getpid, resources={"GPU": 1}, pure=False)
        assert fut.result(timeout=60) != os.getpid()
        assert "--resources GPU=1" in client.cluster.job_script()
    finally:
        client.cluster.close()
        client.close()


def test_a_rejected_batch_job_fails_instead_of_waiting_forever(batch_queue, monkeypatch):
    import sb2dask.cluster

    sbatch = batch_queue / "bin" / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid account or partition' >&2\nexit 1\n")
    monkeypatch.setattr(sb2dask.cluster, "SUBMIT_TIMEOUT_S", 1.0)
    with pytest.raises(RuntimeError, match="none of the 1 batch job.*accepted by sbatch"):
        get_client("slurm", workers=1, config="slurm-cpu", interface="lo",
                   scheduler_options={"dashboard_address": ":0"}, quiet=True)


# ---------------------------------------------------------------- the CLI against an address

def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A scheduler and two single-threaded workers on 127.0.0.1, started like a batch job would."""
    from distributed import Client

    d = tmp_path_factory.mktemp("scheduler")
    sched_file = d / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=open(d / "scheduler.log", "w"), env=env))
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert procs[0].poll() is None, (d / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "scheduler did not write its file in 60 s"
            time.sleep(0.2)
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                 str(sched_file), "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                 "--no-dashboard", "--memory-limit", "3GiB", "--local-directory", str(d)],
                stdout=subprocess.DEVNULL, stderr=open(d / f"worker{i}.log", "w"), env=env))
        address = json.loads(sched_file.read_text())["address"]
        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=90)
        yield dict(address=address, scheduler_file=str(sched_file))
    finally:
        _stop(procs)


def _sb2dask(*args, timeout=240):
    r = subprocess.run([sys.executable, "-m", "sb2dask.cli", *map(str, args), "--no-progress"],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"sb2dask {args[0]} failed:\n{r.stdout}\n{r.stderr}"
    return r


def _task_prefixes(address: str) -> set[str]:
    from distributed import Client

    with Client(address, timeout=30) as c:
        return set(c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


@pytest.fixture(scope="module")
def cli_store(scheduler, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "train.zarr"
    r = _sb2dask("simulate", "--n", 200, "--chunk", 100, "--out", out, "--seed", 3,
                 "--output-grid", "gaia_dr3_903", "--binary-fraction", 0.5,
                 "--cluster", scheduler["address"])
    return out, r


def test_simulate_against_a_scheduler_address(scheduler, cli_store):
    import numpy as np
    import zarr

    from sb2dask.dataset.factory import chunk_status

    out, r = cli_store
    assert json.loads(r.stdout.strip().splitlines()[-1])["computed"] == 2
    assert "Dask dashboard: http://127.0.0.1:" in r.stderr
    assert chunk_status(out) == (2, [0, 1])
    flux = zarr.open_group(str(out), mode="r")["flux"][...]
    assert flux.shape == (200, 903) and np.isfinite(flux).all()
    assert "write_chunk" in _task_prefixes(scheduler["address"])  # ran on those workers


@pytest.fixture(scope="module")
def cli_models(scheduler, cli_store, tmp_path_factory):
    store, _ = cli_store
    out = tmp_path_factory.mktemp("cli") / "models"
    r = _sb2dask("train", "--store", store, "--detector-store", store, "--out", out,
                 "--targets", "teff", "logg", "feh", "vsini", "--epochs", 1,
                 "--max-train", 64, "--max-validation", 32, "--batch-size", 16,
                 "--cluster", scheduler["address"])
    return out, r


def test_train_against_a_scheduler_address(scheduler, cli_models):
    out, r = cli_models
    results = json.loads(r.stdout[r.stdout.index("{"):])
    assert sorted(results) == ["feh", "logg", "p_binary", "teff", "vsini"]
    for target in results:
        assert (out / f"{target}-0.json").is_file() and (out / f"{target}-0.safetensors").is_file()
    assert {"train-teff", "train-logg", "train-feh", "train-vsini"} <= _task_prefixes(
        scheduler["address"])


def test_infer_against_a_scheduler_file(scheduler, cli_models, tmp_path):
    import pandas as pd

    from sb2dask.dataset.mock_catalogue import mock_catalogue

    models, _ = cli_models
    cat = mock_catalogue(tmp_path / "catalogue", n_sources=6, epochs=(1, 2), n_files=2, seed=5)
    out = tmp_path / "results.parquet"
    r = _sb2dask("infer", *cat["files"], "--out", out, "--models", models,
                 "--cluster", scheduler["scheduler_file"])
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["rows_in"] == summary["rows_out"] == cat["epoch_spectra"]
    assert summary["sources"]["sources"] == 6
    epochs = pd.read_parquet(out)
    truth = pd.read_parquet(cat["truth"])
    assert len(epochs.merge(truth, on=["source_id", "epoch_id"])) == cat["epoch_spectra"]


def test_closing_a_batch_cluster_closes_every_job_it_created(batch_queue):
    """dask-jobqueue's ``Job.close`` cancels the job but leaves its status ``running``;
    ``SpecCluster.close`` then asserts on any job still referenced somewhere (a notebook's
    namespace, a task not yet collected): the notebook's final ``cluster.close()`` failed under
    load that way."""
    client = get_client("slurm", workers=1, config="slurm-cpu", cores=1, memory="1GiB",
                        interface="lo", python=sys.executable, job_script_prologue=[],
                        local_directory=str(batch_queue),
                        scheduler_options={"dashboard_address": ":0"}, quiet=True)
    jobs = list(client.cluster.workers.values())  # referenced, as a user's variable would be
    client.close()
    client.cluster.close()
    assert [job.status.name for job in jobs] == ["closed"]
