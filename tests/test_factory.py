"""The Dask → Zarr training-set factory: determinism, restarts, provenance."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pytest
import zarr

from sb2dask.cluster import get_client
from sb2dask.completion import LEGACY_RECORDS_DIR, RECORDS_ARRAY, finished_chunks, records_sha256
from sb2dask.dataset.factory import SplitSpec, chunk_status, generate, store_metadata
from sb2dask.infer.readers import ReaderError, read_catalogue
from sb2dask.simulate.config import SimulationConfig

pytestmark = pytest.mark.integration

N, CHUNK = 600, 200
CFG = SimulationConfig.realistic(seed=7)  # survey nuisances and gaps: the hardest bytes


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


def _drop_record(store, c):
    """What a task killed before recording chunk ``c`` leaves: no record file for that row."""
    (store / RECORDS_ARRAY / "c" / str(c) / "0").unlink()


def _to_format_1(store):
    """Rewrite a store's completion records the way format 1 kept them: marker files."""
    (store / LEGACY_RECORDS_DIR).mkdir()
    for c, digest in finished_chunks(store).items():
        (store / LEGACY_RECORDS_DIR / f"chunk-{c:06d}").write_text(digest)
    shutil.rmtree(store / RECORDS_ARRAY)


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
    assert flux.shape == (N, 903)
    # finite everywhere but in the recorded runs of missing pixels (survey realism)
    import zarr

    from sb2dask.simulate.realism import gap_mask

    lab = zarr.open_group(str(out), mode="r")["labels"]
    missing = gap_mask(903, lab["gap_start"][...], lab["gap_width"][...])
    assert missing.any() and np.array_equal(~np.isfinite(flux), missing)


def test_dr4_recipe_is_worker_count_and_chunk_size_independent(tmp_path, client2):
    """The DR4 recipe draws CCD counts, phases, G_RVS and S/N per spectrum from its own seed:
    byte-identical stores for 1 and 2 workers and for different chunk sizes."""
    cfg = SimulationConfig.dr4(seed=17, binary_fraction=0.5)
    two = tmp_path / "dr4_two.zarr"
    generate(two, cfg, 90, 30, client=client2, progress=False)
    one = tmp_path / "dr4_one.zarr"
    with get_client("local", workers=1, quiet=True) as c1:
        generate(one, cfg, 90, 45, client=c1, progress=False)
    a, b = _arrays(two), _arrays(one)
    assert a.keys() == b.keys() and a["flux"].shape == (90, 961)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert (a["labels/combined_ccds"] >= 1).all() and (a["labels/snr"] >= 5).all()
    # measured as inference would: NaN where no lines are detected (NO_LINES), i.e. at low S/N
    measured = np.isfinite(a["labels/rv_bulk"])
    assert measured.mean() > 0.6
    assert np.median(a["labels/snr"][~measured]) < np.median(a["labels/snr"][measured])


def test_restart_recomputes_only_missing_chunks(reference, tmp_path, client2):
    out = tmp_path / "restart.zarr"
    shutil.copytree(reference, out)
    # simulate an interrupted run: chunk 1 never finished (no record, its flux chunk gone)
    _drop_record(out, 1)
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


def test_plain_zarr_opens_and_reads_a_store_without_warnings(reference):
    """Regression: the .sb2dask-done/ marker folder inside the hierarchy made zarr warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root = zarr.open_group(str(reference), mode="r")
        members = dict(root.members(max_depth=None))
        for node in members.values():
            if isinstance(node, zarr.Array):
                node[...]
    assert {"flux", "wave", "split", "labels/teff", RECORDS_ARRAY} <= set(members)


def test_records_hold_each_chunks_flux_digest(reference):
    flux = zarr.open_group(str(reference), mode="r")["flux"]
    records = finished_chunks(reference)
    assert sorted(records) == [0, 1, 2]
    for c, digest in records.items():
        assert digest == hashlib.sha256(flux[c * CHUNK:(c + 1) * CHUNK].tobytes()).hexdigest()
    assert finished_chunks(reference, range(1, 2)) == {1: records[1]}


def test_reader_refuses_a_chunk_without_record(reference, tmp_path):
    out = tmp_path / "unfinished.zarr"
    shutil.copytree(reference, out)
    _drop_record(out, 1)
    with pytest.raises(ReaderError, match=r"chunk 1 \(rows 200-399\) has no completion record"):
        list(read_catalogue(out, partition_rows=CHUNK))
    assert len(next(read_catalogue(out, partition_rows=CHUNK))) == CHUNK


def test_format_1_store_is_fingerprinted_read_and_resumed_as_before(reference, tmp_path,
                                                                     client2):
    out = tmp_path / "format1.zarr"
    shutil.copytree(reference, out)
    _to_format_1(out)
    # the fingerprint model manifests record, computed as format 1 code computed it
    old = hashlib.sha256()
    for p in sorted((out / LEGACY_RECORDS_DIR).glob("chunk-*")):
        old.update(p.name.encode() + p.read_bytes())
    assert records_sha256(out) == old.hexdigest() == records_sha256(reference)
    assert chunk_status(out) == (3, [0, 1, 2])
    (out / LEGACY_RECORDS_DIR / "chunk-000001").unlink()
    shutil.rmtree(out / "flux" / "c" / "1")
    with pytest.raises(ReaderError, match="chunk 1 "):
        list(read_catalogue(out, partition_rows=CHUNK))
    summary = generate(out, CFG, N, CHUNK, client=client2, progress=False)
    assert summary["computed"] == 1 and summary["skipped"] == 2
    _assert_identical(reference, out)
    assert not (out / RECORDS_ARRAY).exists()  # resumed in its own layout
    assert records_sha256(out) == old.hexdigest()


def test_a_store_written_before_newer_settings_is_resumed_not_refused(reference, tmp_path,
                                                                       client2):
    import json

    out = tmp_path / "older.zarr"
    shutil.copytree(reference, out)
    # a store written before the line-depth field existed: its realism has no such keys
    meta_path = out / "zarr.json"
    meta = json.loads(meta_path.read_text())
    realism = meta["attributes"]["sb2dask"]["config"]["realism"]
    for key in ("line_depth_scatter", "line_depth_length"):
        del realism[key]
    meta_path.write_text(json.dumps(meta))
    assert generate(out, CFG, N, CHUNK, client=client2, progress=False)["computed"] == 0
