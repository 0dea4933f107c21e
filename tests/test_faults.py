"""Faults injected into real runs: killed workers, killed clients, partial writes, bad input.

Each test records what it injected and what came out in ``fault_log``; ``conftest.py`` prints the
table at the end of the session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import Client, LocalCluster, WorkerPlugin

from model_fixtures import random_model_set
from sb2dask.completion import RECORDS_ARRAY, finished_chunks
from sb2dask.dataset.factory import chunk_status, generate
from sb2dask.dataset.gaia_ecsv import write_bulk_ecsv
from sb2dask.dataset.mock_catalogue import mock_catalogue
from sb2dask.infer.config import InferenceConfig
from sb2dask.infer.predict import predict_partition
from sb2dask.infer.readers import read_catalogue
from sb2dask.infer.readers.base import RVS_WAVE
from sb2dask.infer.run import run_inference, sources_path
from sb2dask.simulate.config import SimulationConfig

pytestmark = pytest.mark.integration

CFG = SimulationConfig(seed=99, output_grid="gaia_dr3_903")
N, CHUNK = 1600, 100


def _flux_bytes(path):
    root = zarr.open_group(str(path), mode="r")
    out = {"flux": root["flux"][...].tobytes()}
    for k in root["labels"].array_keys():
        out[k] = root["labels"][k][...].tobytes()
    return out


def _epochs(path):
    df = pd.read_parquet(path)
    return df.sort_values(["file", "row"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def cluster3():
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=50) as lc, Client(lc) as client:
        yield client


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, cluster3):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    generate(out, CFG, N, CHUNK, client=cluster3, progress=False)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return random_model_set(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    d = tmp_path_factory.mktemp("cat")
    m = mock_catalogue(d, n_sources=120, epochs=(1, 3), n_files=4,
                       config=SimulationConfig(), seed=5)
    return m


@pytest.fixture(scope="module")
def reference_epochs(tmp_path_factory, catalogue, models, cluster3):
    out = tmp_path_factory.mktemp("inf") / "ref.parquet"
    run_inference(catalogue["files"], out, cluster3, InferenceConfig(models, partition_rows=1000),
                  progress=False)
    return _epochs(out)


class _KillWhileRunning(WorkerPlugin):
    """Worker plugin: records each start of a task whose key contains ``match`` (a file
    ``start-<ns>-<pid>`` in ``log_dir`` holding the key) and SIGKILLs its own worker once, the
    first time such a task is still executing ``delay`` seconds after it started.

    The kill comes from inside the worker because it must land while the task runs: a kill sent
    by the test after asking Dask which task runs where can arrive after that task finished.
    """

    name = "kill-while-running"

    def __init__(self, match: str, log_dir: Path, delay: float = 0.05):
        self.match, self.log_dir, self.delay = match, str(log_dir), delay

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or self.match not in str(key):
            return
        marker = Path(self.log_dir) / f"start-{time.time_ns()}-{os.getpid()}"
        marker.write_text(json.dumps(dict(key=str(key), pid=os.getpid())))
        threading.Thread(target=self._kill_if_running, args=(key,), daemon=True).start()

    def _kill_if_running(self, key):
        time.sleep(self.delay)
        ts = self.worker.state.tasks.get(key)
        if ts is None or ts.state != "executing":
            return
        try:  # one kill per run, by whichever worker gets here first
            fd = os.open(Path(self.log_dir) / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, json.dumps(dict(key=str(key), pid=os.getpid())).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def _kill_a_worker_running(client, match: str, log_dir: Path):
    """While the block runs, the first worker found running a task whose key contains ``match``
    is SIGKILLed mid-task (see :class:`_KillWhileRunning`)."""
    log_dir.mkdir()
    plugin = _KillWhileRunning(match, log_dir)
    client.register_plugin(plugin, name=plugin.name)
    try:
        yield
    finally:
        client.unregister_worker_plugin(plugin.name)


def _rerun_of_killed_task(log_dir: Path) -> tuple[dict, list[int]]:
    """(the task killed and its worker's pid, the pids that started that task, in order)."""
    # the first task of every worker also loads the library or the models: it runs far longer
    # than the plugin's delay, so some task is always caught running
    assert (log_dir / "killed").exists(), "no worker was killed: no task ran long enough"
    killed = json.loads((log_dir / "killed").read_text())
    starts = sorted(log_dir.glob("start-*"), key=lambda p: int(p.name.split("-")[1]))
    pids = [d["pid"] for d in map(json.loads, (p.read_text() for p in starts))
            if d["key"] == killed["key"]]
    return killed, pids


def _assert_killed_task_was_rerun(log_dir: Path) -> dict:
    killed, pids = _rerun_of_killed_task(log_dir)
    # the killed worker had started the task; Dask started it again in another worker process,
    # and that attempt's result is the one in the output (the killed one could not finish)
    assert pids[0] == killed["pid"] and len(pids) >= 2 and pids[-1] != killed["pid"], pids
    return killed


def test_worker_killed_during_simulate(tmp_path, cluster3, reference_store, fault_log):
    out = tmp_path / "killed.zarr"
    with _kill_a_worker_running(cluster3, "_write_chunk", tmp_path / "log"):
        result = generate(out, CFG, N, CHUNK, client=cluster3, progress=False)
    killed = _assert_killed_task_was_rerun(tmp_path / "log")
    assert result["computed"] == N // CHUNK
    assert chunk_status(out) == (N // CHUNK, list(range(N // CHUNK)))
    assert _flux_bytes(out) == _flux_bytes(reference_store)
    fault_log.append(dict(test="simulate: SIGKILL worker mid-task",
                          fault=f"worker pid {killed['pid']} running {killed['key']}",
                          completed=True, rows_in=N, rows_out=N, recomputed="by Dask"))


def test_worker_killed_during_infer(tmp_path, cluster3, catalogue, models, reference_epochs,
                                   fault_log):
    out = tmp_path / "killed.parquet"
    with _kill_a_worker_running(cluster3, "_predict_write", tmp_path / "log"):
        result = run_inference(catalogue["files"], out, cluster3,
                               InferenceConfig(models, partition_rows=1000), progress=False)
    killed = _assert_killed_task_was_rerun(tmp_path / "log")
    got = _epochs(out)
    pd.testing.assert_frame_equal(got, reference_epochs)
    assert result["computed"] == result["partitions"] == len(list(out.glob("part-*.parquet")))
    assert result["rows_in"] == result["rows_out"] == len(reference_epochs)
    fault_log.append(dict(test="infer: SIGKILL worker mid-task",
                          fault=f"worker pid {killed['pid']} running {killed['key']}",
                          completed=True, rows_in=result["rows_in"], rows_out=len(got),
                          recomputed="by Dask"))


def _run_cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "sb2dask.cli", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def _kill_cli_when(args, when):
    proc = subprocess.Popen([sys.executable, "-m", "sb2dask.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while not when():
            if proc.poll() is not None:
                raise AssertionError(f"finished before the fault: {proc.stderr.read()[-2000:]}")
            if time.time() > deadline:
                raise TimeoutError("the run never reached the point of the fault")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its LocalCluster workers
        proc.wait()


def test_client_killed_during_simulate_then_rerun(tmp_path, reference_store, fault_log):
    out = tmp_path / "cli.zarr"
    args = ["simulate", "--n", str(N), "--chunk", str(CHUNK), "--out", str(out),
            "--seed", "99", "--output-grid", "gaia_dr3_903", "--workers", "2", "--no-progress"]
    _kill_cli_when(args, lambda: len(finished_chunks(out) or {}) >= 3)
    n_chunks, done = chunk_status(out)
    assert 0 < len(done) < n_chunks
    r = _run_cli(args)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["computed"] == n_chunks - len(done) and summary["skipped"] == len(done)
    assert _flux_bytes(out) == _flux_bytes(reference_store)
    fault_log.append(dict(test="simulate: SIGKILL client, rerun", fault="client + workers",
                          completed=True, rows_in=N, rows_out=N,
                          recomputed=f"{summary['computed']} of {n_chunks} chunks"))


def test_client_killed_during_infer_then_rerun(tmp_path, catalogue, models, reference_epochs,
                                               fault_log):
    out = tmp_path / "cli.parquet"
    args = ["infer", *catalogue["files"], "--out", str(out), "--models", str(models),
            "--partition-rows", "1000", "--workers", "1", "--no-progress"]
    _kill_cli_when(args, lambda: out.exists() and len(list(out.glob("part-*.parquet"))) >= 1)
    before = len(list(out.glob("part-*.parquet")))
    r = _run_cli(args)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["skipped"] == before and summary["computed"] == summary["partitions"] - before
    got = _epochs(out)
    pd.testing.assert_frame_equal(got, reference_epochs)
    assert pd.read_parquet(sources_path(out))["source_id"].nunique() == \
        reference_epochs["source_id"].nunique()
    fault_log.append(dict(test="infer: SIGKILL client, rerun", fault="client + workers",
                          completed=True, rows_in=len(reference_epochs), rows_out=len(got),
                          recomputed=f"{summary['computed']} of {summary['partitions']} parts"))


def test_incomplete_outputs_are_replaced(tmp_path, cluster3, reference_store, catalogue, models,
                                         reference_epochs, fault_log):
    # Zarr: a chunk without its marker (half-finished task) is recomputed
    out = tmp_path / "partial.zarr"
    shutil.copytree(reference_store, out)
    (out / RECORDS_ARRAY / "c" / "3" / "0").unlink()
    flux_chunk = out / "flux" / "c" / "3" / "0"
    flux_chunk.write_bytes(flux_chunk.read_bytes()[:50])  # truncated chunk file
    r = generate(out, CFG, N, CHUNK, client=cluster3, progress=False)
    assert r["computed"] == 1
    assert _flux_bytes(out) == _flux_bytes(reference_store)
    # Parquet: a truncated part and a stale temporary file are replaced / removed
    pout = tmp_path / "partial.parquet"
    run_inference(catalogue["files"], pout, cluster3, InferenceConfig(models, partition_rows=1000),
                  progress=False)
    part = sorted(pout.glob("part-*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:100])
    (pout / ".part-000000.parquet.12345.tmp").write_bytes(b"half")
    r = run_inference(catalogue["files"], pout, cluster3,
                      InferenceConfig(models, partition_rows=1000), progress=False)
    assert r["computed"] == 1 and not list(pout.glob(".part-*.tmp"))
    pd.testing.assert_frame_equal(_epochs(pout), reference_epochs)
    fault_log.append(dict(test="partial writes", fault="truncated chunk + part, stale tmp",
                          completed=True, rows_in=len(reference_epochs),
                          rows_out=len(reference_epochs), recomputed="1 chunk, 1 part"))


BAD_ROWS = {
    "nan_pixels": lambda f: np.where(np.arange(f.size) % 7 == 0, np.nan, f),
    "inf_pixels": lambda f: np.where(np.arange(f.size) % 11 == 0, np.inf, f),
    "negative_flux": lambda f: f - 1.5,
    "all_null": lambda f: np.full_like(f, np.nan),
    "wrong_length": lambda f: f[:2000],
}


def test_bad_spectra_give_flagged_rows_not_lost_rows(tmp_path, models, fault_log):
    good = np.clip(1.0 - 0.3 * np.exp(-0.5 * ((RVS_WAVE - 8542.0) / 0.5) ** 2), 0, 1)
    flux = [good.astype(np.float32)] + [fn(good).astype(np.float32) for fn in BAD_ROWS.values()]
    ids = np.arange(len(flux), dtype=np.int64) + (1 << 43)
    ids[-1] = ids[-2]  # a duplicated source_id too
    df = pd.DataFrame({"source_id": ids, "epoch_id": np.full(len(flux), -1, np.int64),
                       "flux": flux, "flux_error": [None] * len(flux)})
    path = write_bulk_ecsv(tmp_path / "RvsMeanSpectrum_000001-000001.csv.gz", df)
    parts = list(read_catalogue(path))
    rows_in = sum(len(p) for p in parts)
    out = pd.concat([predict_partition(p, InferenceConfig(models, "cpu")) for p in parts])
    assert rows_in == len(flux) == len(out)
    by = dict(zip(["good", *BAD_ROWS], out.itertuples()))
    assert by["good"].usable and by["nan_pixels"].usable and by["nan_pixels"].quality_flags & 2
    assert not by["all_null"].usable and np.isnan(by["all_null"].teff_1)
    assert by["negative_flux"].quality_flags & 8
    assert by["wrong_length"].read_flags != 0 and by["inf_pixels"].nan_fraction > 0
    fault_log.append(dict(test="bad spectra in a good file", fault=", ".join(BAD_ROWS),
                          completed=True, rows_in=rows_in, rows_out=len(out), recomputed="-"))


@pytest.mark.parametrize("damage", ["truncated_gz", "empty", "bad_header", "text_id"])
def test_bad_files_raise_errors_naming_the_file(tmp_path, damage, fault_log):
    from sb2dask.infer.readers.base import ReaderError

    df = pd.DataFrame({"source_id": np.array([1 << 43, (1 << 43) + 1]),
                       "epoch_id": [-1, -1], "flux": [np.ones(2401, np.float32)] * 2,
                       "flux_error": [None, None]})
    path = write_bulk_ecsv(tmp_path / "RvsMeanSpectrum_000001-000001.csv.gz", df)
    import gzip

    raw = gzip.decompress(path.read_bytes())
    if damage == "truncated_gz":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bad_header":
        path.write_bytes(gzip.compress(raw.replace(b"# %ECSV 1.0", b"# %ECSV 1.0\n# datatype: [")))
    else:
        path.write_bytes(gzip.compress(raw.replace(str(1 << 43).encode(), b"abc", 1)))
    with pytest.raises(ReaderError) as err:
        for _ in read_catalogue(path):
            pass
    assert path.name in str(err.value)
    fault_log.append(dict(test=f"bad file: {damage}", fault=damage, completed=False,
                          rows_in="-", rows_out="-", recomputed=f"error names {path.name}"))
