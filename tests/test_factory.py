"""The Dask → Zarr training-set factory: determinism, restarts, provenance."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from sb2dask.cluster import get_client
from sb2dask.dataset.factory import DONE_DIR, SplitSpec, chunk_status, generate, store_metadata
from sb2dask.simulate.config import SimulationConfig

pytestmark = pytest.mark.integration

N, CHUNK = 600, 200
CFG = SimulationConfig(seed=7)


@pytest.fixture(scope="module")
def client2():
    with get_client("local", workers=2, quiet=True) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tmp_path_factory, client2):
    out = tmp_path_factory.mktemp("ref") / "two_workers.zarr"
    summary = generate(out, CFG, N, CHUNK, client=client2, progress=False)
    assert summary["computed"] == 3 and summary["skipped"] == 0
    return out


def _arrays(path):
    root = zarr.open_group(str(path), mode="r")
    out = {"flux": root["flux"][...], "split": root["split"][...]}
    for name in root["labels"].array_keys():
        out[f"labels/{name}"] = root["labels"][name][...]
    return out


def _assert_identical(a, b):
    a, b = _arrays(a), _arrays(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_one_and_two_workers_give_identical_bytes(reference, tmp_path):
    out = tmp_path / "one_worker.zarr"
    with get_client("local", workers=1, quiet=True) as c1:
        generate(out, CFG, N, CHUNK, client=c1, progress=False)
    _assert_identical(reference, out)
    flux = _arrays(out)["flux"]
    assert flux.shape == (N, 903) and np.isfinite(flux).all()


def test_restart_recomputes_only_missing_chunks(reference, tmp_path, client2):
    out = tmp_path / "restart.zarr"
    shutil.copytree(reference, out)
    # simulate an interrupted run: chunk 1 never finished (no marker, its flux chunk gone)
    (out / DONE_DIR / "chunk-000001").unlink()
    shutil.rmtree(out / "flux" / "c" / "1")
    assert chunk_status(out) == (3, [0, 2])
    summary = generate(out, CFG, N, CHUNK, client=client2, progress=False)
    assert summary["computed"] == 1 and summary["skipped"] == 2
    _assert_identical(reference, out)
    again = generate(out, CFG, N, CHUNK, client=client2, progress=False)
    assert again["computed"] == 0


def test_store_records_split_labels_and_provenance(reference):
    meta = store_metadata(reference)
    assert meta["config"] == CFG.to_dict() and meta["n"] == N and meta["chunk"] == CHUNK
    assert meta["split"] == {"train": 450, "validation": 90, "test": 60}
    assert meta["provenance"]["library"]["sha256"]
    assert meta["provenance"]["versions"]["zarr"]
    assert meta["label_units"]["teff"] == "K"
    arrays = _arrays(reference)
    assert np.bincount(arrays["split"]).tolist() == [450, 90, 60]
    assert np.all(arrays["labels/teff"][:, 0] <= arrays["labels/teff"][:, 1])
    assert len(np.unique(arrays["labels/seed"])) == N


def test_paper_split_counts():
    assert SplitSpec().counts(200_000) == (150_000, 30_000, 20_000)


def test_a_different_config_is_refused_not_mixed(reference, tmp_path, client2):
    out = tmp_path / "other.zarr"
    shutil.copytree(reference, out)
    with pytest.raises(ValueError, match="different data set"):
        generate(out, CFG.replace(seed=8), N, CHUNK, client=client2, progress=False)
