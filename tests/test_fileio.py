"""Atomic writes: unique temporaries per call (not per process), no leftovers, ordinary modes."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest
import torch

from sb2dask.fileio import atomic_path, atomic_write_json, atomic_write_text, file_sha256


def _hammer(target, writer, n_threads=8, repeats=25):
    """Run ``writer(target, i)`` from many threads at once; return the exceptions raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(i):
        barrier.wait()
        for r in range(repeats):
            try:
                writer(target, i * repeats + r)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_of_one_process_never_share_a_temporary(tmp_path):
    target = tmp_path / "state.json"
    errors = _hammer(target, lambda p, i: atomic_write_json(p, {"i": i, "pad": "x" * 20000}))
    assert errors == []
    assert set(os.listdir(tmp_path)) == {"state.json"}  # no temporaries left behind


def test_temperature_cache_written_by_concurrent_training_tasks(tmp_path):
    # The race of issue 17: the logg/feh/vsini tasks of one worker all cache the same predicted
    # temperatures; with pid-only temporary names np.save and os.replace collided.
    from model_fixtures import random_model_set
    from sb2dask.models.io import LabelScaling
    from sb2dask.train.fit import temperature_inputs

    models = random_model_set(tmp_path / "m")
    flux = np.ones((8, 903), np.float32)
    index = np.arange(8)
    cache = tmp_path / "cache"
    cache.mkdir()
    scaling = LabelScaling(3500.0, 6500.0, "K")
    results = []

    def writer(_, i):
        results.append(temperature_inputs([models / "teff-0.json"], flux, torch.device("cpu"),
                                          scaling, cache, index))
        for p in cache.glob("temperatures-*.npy"):  # force the next call to write again
            p.unlink(missing_ok=True)

    errors = _hammer(None, writer, n_threads=4, repeats=6)
    assert errors == []
    assert all(np.array_equal(r, results[0]) for r in results)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_outputs_get_the_mode_of_ordinary_files(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    ordinary = tmp_path / "plain"
    ordinary.write_text("x")
    target = tmp_path / "atomic"
    atomic_write_text(target, "x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode)


def test_suffix_for_writers_that_append_extensions(tmp_path):
    target = tmp_path / "x.npy"
    with atomic_path(target, suffix=".npy") as tmp:
        assert tmp.name.startswith(".x.npy.") and tmp.name.endswith(".tmp.npy")
        np.save(tmp, np.arange(3))
    assert np.load(target).tolist() == [0, 1, 2]
    assert len(file_sha256(target)) == 64
