"""The ``sb2dask`` command as users meet it: options, one-line errors, checks before any cluster,
unusable runs, reruns into the same ``--out``.

Most tests call :func:`sb2dask.cli.main` in this process; those that need workers use one small
in-process scheduler (``--cluster tcp://...``), and two run the installed console script.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sb2dask.cli import main
from sb2dask.infer.readers import read_catalogue

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *args) -> tuple[int, str, str]:
    """``sb2dask ARGS`` in this process: exit status, stdout, stderr."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse: --help, --version, wrong options
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, *needles: str) -> str:
    """The single ``sb2dask ...: error: ...`` line of ``err``, containing every needle."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """A small mock catalogue on the Gaia grid (readable by the shipped models)."""
    from sb2dask.dataset.mock_catalogue import mock_catalogue

    return mock_catalogue(tmp_path_factory.mktemp("cat"), n_sources=6, epochs=(1, 2), n_files=2,
                          seed=11)


@pytest.fixture(scope="module")
def scheduler():
    """One worker with two threads in this process, reached like a remote scheduler."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=":0") as lc:
        yield lc.scheduler_address


# -- options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["simulate", "--n", "-5", "--out", "x.zarr"], "--n"),
    (["simulate", "--chunk", "0", "--out", "x.zarr"], "--chunk"),
    (["simulate", "--out", "x.zarr", "--workers", "0"], "--workers"),
    (["simulate", "--out", "x.zarr", "--memory-limit", "lots"], "--memory-limit"),
    (["simulate", "--out", "x.zarr", "--binary-fraction", "1.5"], "--binary-fraction"),
    (["infer", "a.csv", "--out", "x", "--partition-rows", "-100"], "--partition-rows"),
    (["infer", "a.csv", "--out", "x", "--members", "0"], "--members"),
    (["infer", "a.csv", "--out", "x", "--batch-size", "0"], "--batch-size"),
    (["mock-catalogue", "--out", "m", "--seed", "-1"], "--seed"),
    (["mock-catalogue", "--out", "m", "--n-sources", "0"], "--n-sources"),
    (["train", "--store", "s.zarr", "--set", "epochs3"], "--set"),
])
def test_bad_option_values_are_argparse_errors(capsys, tmp_path, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)  # should an option slip through, its outputs land here
    rc, _, err = _run(capsys, *args)
    assert rc == 2
    assert f"argument {option}" in err and "Traceback" not in err


def test_version_and_top_level_help(capsys):
    from importlib.metadata import version

    rc, out, _ = _run(capsys, "--version")
    assert rc == 0 and out.strip() == f"sb2dask {version('sb2dask')}"
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0
    # written for users: what the tool does, the sequence of commands, an example
    assert "double-lined spectroscopic binaries" in out and "Typical sequence" in out
    for cmd in ("simulate", "train", "evaluate", "infer", "demo"):
        assert f"\n  {cmd} " in out or f"\n    {cmd} " in out, cmd
    assert "examples:\n  sb2dask demo" in out and "--debug" in out


def test_help_texts_state_the_real_defaults(capsys):
    rc, out, _ = _run(capsys, "mock-catalogue", "--help")
    assert rc == 0
    assert "(default 0.5)" in " ".join(out.split())  # what mock_catalogue really uses
    assert "(default 1)" in " ".join(out.split())  # the seed
    rc, out, _ = _run(capsys, "infer", "--help")
    text = " ".join(out.split())
    assert "1.5-1.7x" in text and "2x" not in text  # docs/inference.md's measurement
    assert "1.5-1.7" in (ROOT / "README.md").read_text()


def test_seed_zero_is_seed_zero(capsys, tmp_path):
    # #17 bug 4: `args.seed or 1` turned --seed 0 into the default seed 1
    truth = {}
    for seed in ("0", "1"):
        rc, _, err = _run(capsys, "mock-catalogue", "--out", tmp_path / seed, "--n-sources", 3,
                          "--files", 1, "--epochs", 1, 1, "--seed", seed)
        assert rc == 0, err
        truth[seed] = pd.read_parquet(tmp_path / seed / "truth.parquet")
    rc, _, _ = _run(capsys, "mock-catalogue", "--out", tmp_path / "default", "--n-sources", 3,
                    "--files", 1, "--epochs", 1, 1)
    default = pd.read_parquet(tmp_path / "default" / "truth.parquet")
    assert not truth["0"]["source_id"].equals(truth["1"]["source_id"])
    pd.testing.assert_frame_equal(default, truth["1"])  # the documented default is 1


def test_inconsistent_values_are_one_line_errors(capsys, tmp_path):
    rc, _, err = _run(capsys, "mock-catalogue", "--out", tmp_path / "m", "--epochs", 5, 2)
    assert rc == 1
    _one_error_line(err, "--epochs", "MIN (5)")
    assert not (tmp_path / "m").exists()
    # a training run with nothing to train says so before any cluster starts
    rc, _, err = _run(capsys, "train", "--store", tmp_path / "s.zarr", "--out", tmp_path / "o",
                      "--targets", "--cluster", "tcp://127.0.0.1:9")
    assert rc == 1
    _one_error_line(err, "nothing to train")


# -- errors before any cluster ----------------------------------------------------------------

def _infer_fails_fast(capsys, tmp_path, inputs, *needles, out=None):
    out = tmp_path / "out.parquet" if out is None else out
    t0 = time.monotonic()
    # --cluster points at nothing: reaching get_client would be a different error
    rc, stdout, err = _run(capsys, "infer", *inputs, "--out", out, "--no-progress",
                           "--cluster", "tcp://127.0.0.1:9")
    assert rc == 1 and stdout == ""
    line = _one_error_line(err, *needles)
    assert "Dask dashboard" not in err and "no Dask scheduler" not in err
    assert time.monotonic() - t0 < 30
    return line


def test_missing_input_is_reported_before_a_cluster(capsys, tmp_path, catalogue):
    missing = tmp_path / "RvsEpochSpectrum_000000-000001.csv.gz"
    line = _infer_fails_fast(capsys, tmp_path, [catalogue["files"][0], missing], str(missing),
                             "no such file")
    assert line.startswith("sb2dask infer: error: ")
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("kind, content, expect", [
    ("empty", b"", "empty (0 bytes)"),
    ("garbage", bytes(range(256)) * 20, "no reader recognises"),
    ("other-csv", b"ra,dec\n1.0,2.0\n", "no reader recognises"),
])
def test_unreadable_inputs_are_named(capsys, tmp_path, kind, content, expect):
    path = tmp_path / f"{kind}.csv"
    path.write_bytes(content)
    _infer_fails_fast(capsys, tmp_path, [path], str(path), expect)


def test_output_problems_are_reported_before_a_cluster(capsys, tmp_path, catalogue):
    good = catalogue["files"][0]
    a_file = tmp_path / "results.parquet"
    a_file.write_text("not a dataset")
    _infer_fails_fast(capsys, tmp_path, [good], str(a_file), "existing file", out=a_file)
    _infer_fails_fast(capsys, tmp_path, [good], "is a file", out=a_file / "sub" / "x.parquet")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    _infer_fails_fast(capsys, tmp_path, [good], "other contents", out=foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_read_only_output_is_reported_before_a_cluster(capsys, tmp_path, catalogue):
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    elif sys.platform.startswith("linux") and Path("/sys").is_dir():
        ro = Path("/sys")  # root writes anywhere else; sysfs refuses new files even to root
    else:
        pytest.skip("no directory this user cannot write")
    try:
        _infer_fails_fast(capsys, tmp_path, [catalogue["files"][0]], "cannot write",
                          str(ro), out=ro / "results.parquet")
    finally:
        if ro != Path("/sys"):
            ro.chmod(0o755)


def test_missing_model_directory_is_reported_before_a_cluster(capsys, tmp_path, catalogue):
    empty = tmp_path / "models"
    empty.mkdir()
    rc, _, err = _run(capsys, "infer", catalogue["files"][0], "--out", tmp_path / "o.parquet",
                      "--models", empty, "--cluster", "tcp://127.0.0.1:9")
    assert rc == 1
    _one_error_line(err, str(empty), "no models")


def test_infer_config_file_is_checked_before_a_cluster(capsys, tmp_path, catalogue):
    cfg = tmp_path / "infer.yaml"
    cfg.write_text("precision: bf16\nmembers: 0\n")
    _infer_fails_fast(capsys, tmp_path, [catalogue["files"][0], "--config", cfg],
                      "members must be a positive integer")
    cfg.write_text("precision: bf16\nlayers: 3\n")
    _infer_fails_fast(capsys, tmp_path, [catalogue["files"][0], "--config", cfg],
                      "unknown InferenceConfig settings")


def test_debug_shows_the_traceback(tmp_path):
    from sb2dask.infer.readers import ReaderError

    for args in (["--debug", "infer"], ["infer", "--debug"]):
        with pytest.raises(ReaderError, match="no such file"):
            main(args + [str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_fails_within_five_seconds(capsys, tmp_path):
    import distributed  # noqa: F401  (imported beforehand: the time measured is the connection's)

    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens: the connection is refused
    t0 = time.monotonic()
    rc, _, err = _run(capsys, "simulate", "--n", 10, "--chunk", 10, "--out", tmp_path / "s.zarr",
                      "--cluster", address)
    assert time.monotonic() - t0 <= 5
    assert rc == 1
    _one_error_line(err, address, "connection refused")
    bad_file = tmp_path / "scheduler.json"
    bad_file.write_text("{}")
    rc, _, err = _run(capsys, "simulate", "--n", 10, "--out", tmp_path / "s.zarr",
                      "--cluster", bad_file)
    assert rc == 1
    _one_error_line(err, str(bad_file), "address")


# -- runs -------------------------------------------------------------------------------------

def _infer(capsys, scheduler, inputs, out, *extra):
    rc, stdout, err = _run(capsys, "infer", *inputs, "--out", out, "--no-progress",
                           "--partition-rows", 50, "--cluster", scheduler, *extra)
    summary = json.loads(stdout) if stdout.strip() else None
    return rc, summary, err


def test_unusable_run_says_why_and_fails(capsys, tmp_path, scheduler):
    # #17 bug 2: spectra simulated on the paper's rvs903 window end 10 Å past what the shipped
    # (gaia_dr3_903) models read: every row unusable, and the run said nothing and exited 0
    store = tmp_path / "rvs.zarr"
    rc, _, err = _run(capsys, "simulate", "--n", 20, "--chunk", 20, "--out", store,
                      "--output-grid", "rvs903", "--cluster", scheduler, "--no-progress")
    assert rc == 0, err
    rc, summary, err = _infer(capsys, scheduler, [store], tmp_path / "x.parquet")
    assert rc == 3
    line = _one_error_line(err, "20 of 20 spectra", "WAVE_COVERAGE")
    assert "8457.7-8697.6" in line  # the models' grid, in air
    assert summary["usable"] == 0 and summary["quality_flags"]["WAVE_COVERAGE"] == 20
    # asked not to fail: exit 0, and the reason is still given (as a note)
    rc, summary, err = _infer(capsys, scheduler, [store], tmp_path / "x.parquet",
                              "--allow-unusable")
    assert rc == 0 and "note: 20 of 20 spectra" in err and summary["skipped"] == 1


def test_failed_run_does_not_block_the_next(capsys, tmp_path, scheduler, catalogue):
    good, other = catalogue["files"]
    truncated = tmp_path / Path(other).name
    truncated.write_bytes(Path(other).read_bytes()[:5000])
    out = tmp_path / "res.parquet"
    rc, summary, err = _infer(capsys, scheduler, [good, truncated], out)
    assert rc == 1 and summary is None
    _one_error_line(err, str(truncated), "truncated")
    # the same --out with other inputs: the failed run's leftovers are replaced, not an error
    rc, summary, err = _infer(capsys, scheduler, [good], out)
    assert rc == 0, err
    n_good = sum(len(p) for p in read_catalogue(good))
    assert summary["computed"] == summary["partitions"]
    assert len(pd.read_parquet(out)) == summary["rows_in"] == summary["rows_out"] == n_good


def test_reruns_into_the_same_out(capsys, tmp_path, scheduler, catalogue):
    out = tmp_path / "res.parquet"
    n = catalogue["epoch_spectra"]
    rc, first, err = _infer(capsys, scheduler, catalogue["files"], out)
    assert rc == 0, err
    assert first["rows_in"] == first["rows_out"] == n and first["computed"] == 2
    # unchanged inputs, no --overwrite: kept, said so, and counted in the summary
    rc, again, err = _infer(capsys, scheduler, catalogue["files"], out)
    assert rc == 0 and again["computed"] == 0 and again["skipped"] == 2
    assert again["rows_in"] == again["rows_out"] == n and again["rows_computed"] == 0
    assert "2 of 2 partitions" in err and "kept" in err
    # --overwrite recomputes (it reported rows_in: 0 and computed nothing)
    before = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    rc, over, err = _infer(capsys, scheduler, catalogue["files"], out, "--overwrite")
    assert rc == 0 and over["computed"] == 2 and over["rows_computed"] == n
    assert all(p.stat().st_mtime_ns != t for p, t in before.items())
    # a finished run with other settings is protected without --overwrite
    rc, _, err = _infer(capsys, scheduler, catalogue["files"], out, "--precision", "bf16")
    _one_error_line(err, str(out), "precision", "--overwrite")
    assert rc == 1


def test_demo_writes_where_the_user_expects(capsys, tmp_path, scheduler, monkeypatch):
    from sb2dask.cli import build_parser

    # the default --out is ./sb2dask-demo, which a source checkout's .gitignore lists
    assert build_parser().parse_args(["demo"]).out == "sb2dask-demo"
    assert "/sb2dask-demo/" in (ROOT / ".gitignore").read_text().split()
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "demo", "--n-sources", 4, "--cluster", scheduler,
                        "--no-progress")
    assert rc == 0, err
    demo = tmp_path / "sb2dask-demo"
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["outputs"]["epochs"] == str(Path("sb2dask-demo") / "sb2dask_epochs.parquet")
    assert summary["inference"]["rows_out"] == len(pd.read_parquet(demo / "sb2dask_epochs.parquet"))
    assert not list(demo.glob(".*.tmp"))  # written atomically: no temporaries left
    assert f"and {Path('sb2dask-demo') / 'summary.json'}" in out
    # the default models' p_binary is scored against their own target too
    assert summary["mock"]["detector_target"] == "double_lined"
    auc = summary["mock"]["p_binary_roc_auc_target"]  # NaN: 4 sources may hold no SB2 at all
    assert auc is None or np.isnan(auc) or 0.0 <= auc <= 1.0
    assert "against the models' target (double_lined)" in out


def test_demo_summary_scores_p_binary_against_the_models_target():
    from sb2dask.evaluate.demo import summarise

    # two SB2s, one of them single-lined (its companion gives 2 % of the light), two singles
    truth = pd.DataFrame(dict(
        source_id=[1, 2, 3, 4], epoch_id=-1, is_binary=[True, True, False, False],
        rv_separation=[40.0, 40.0, np.nan, np.nan], light_fraction_1=[0.6, 0.98, 1.0, 1.0],
        light_fraction_2=[0.4, 0.02, np.nan, np.nan],
        **{f"{p}_{c}": 1.0 for p in ("teff", "logg", "feh", "vsini") for c in (1, 2)}))
    epochs = truth[["source_id", "epoch_id"]].assign(
        usable=True, p_binary=[0.9, 0.1, 0.2, 0.3],
        **{f"{p}_{c}": 1.0 for p in ("teff", "logg", "feh", "vsini") for c in (1, 2)})
    s = summarise(epochs, truth, "double_lined")
    assert s["p_binary_roc_auc"] == pytest.approx(0.5)  # the single-lined one scores lowest
    assert s["p_binary_roc_auc_target"] == pytest.approx(1.0)
    assert "p_binary_roc_auc_target" not in summarise(epochs, truth)


# -- the console script -----------------------------------------------------------------------

def _console_script() -> str:
    exe = shutil.which("sb2dask", path=str(Path(sys.executable).parent)) or shutil.which(
        "sb2dask")
    if exe is None:
        pytest.skip("the sb2dask console script is not installed")
    return exe


def test_console_script_version_and_missing_input(tmp_path):
    exe = _console_script()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.startswith("sb2dask ")
    t0 = time.monotonic()
    r = subprocess.run([exe, "infer", str(tmp_path / "nope.csv"), "--out",
                        str(tmp_path / "o.parquet")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"sb2dask infer: error: {tmp_path / 'nope.csv'}: no such file or directory"]
    assert time.monotonic() - t0 < 60  # no cluster was started (that took 13-26 s before)
