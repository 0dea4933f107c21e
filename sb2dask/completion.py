"""Per-chunk completion records of the simulated Zarr stores, for every stage that reads them.

The factory (:mod:`sb2dask.dataset.factory`) writes a store's row chunks from independent Dask
tasks. A task writes its chunk of every array and only then records the chunk as finished,
with the SHA-256 of the chunk's float32 flux bytes. A rerun recomputes exactly the chunks without
a record, the catalogue reader refuses chunks without one (the store is still being written),
and model manifests identify a training set by its records (:func:`records_sha256`).

Layout (store format 2): the records are an array of the Zarr group, so plain zarr finds nothing
it does not recognise (and does not warn)::

    chunk_sha256    uint8 (n_chunks, 32), chunks (1, 32), fill value 0, no compression

Row ``c`` holds the digest of chunk ``c``. Each row is its own chunk file, which zarr's local
store writes under a temporary name and renames, so tasks never share a file and a row is either
absent (all zeros: not finished) or complete.

Format 1 stores kept the records as files ``.sb2dask-done/chunk-NNNNNN`` holding the hex digest,
a folder zarr warns about. They are still read, resumed in that layout, and give the same
:func:`records_sha256` as before (the shipped models' manifests record such fingerprints).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .fileio import atomic_write_text

__all__ = ["RECORDS_ARRAY", "LEGACY_RECORDS_DIR", "create_records", "record_finished",
           "finished_chunks", "records_sha256"]

#: Name of the records array inside the store's root group (format 2).
RECORDS_ARRAY = "chunk_sha256"
#: Folder of one marker file per finished chunk (format 1 stores).
LEGACY_RECORDS_DIR = ".sb2dask-done"
_DIGEST_BYTES = 32


def _legacy_name(chunk: int) -> str:
    return f"chunk-{chunk:06d}"


def _has_array(store: Path) -> bool:
    return (store / RECORDS_ARRAY / "zarr.json").is_file()


def create_records(root, n_chunks: int) -> None:
    """Add an empty records array (nothing finished) to the open Zarr group ``root``."""
    root.create_array(
        RECORDS_ARRAY, shape=(n_chunks, _DIGEST_BYTES), chunks=(1, _DIGEST_BYTES), dtype="u1",
        fill_value=0, compressors=None,
        attributes=dict(units="", description=(
            "SHA-256 of each row chunk's float32 flux bytes, written after the chunk's data; "
            "all zeros: the chunk is not finished")))


def record_finished(store: str | Path, chunk: int, digest: str) -> None:
    """Record row chunk ``chunk`` of ``store`` as finished, with its hex SHA-256 ``digest``.

    Call it after every array's chunk has been written. A format 1 store gets a marker file.
    """
    import zarr

    store = Path(store)
    if not _has_array(store) and (store / LEGACY_RECORDS_DIR).is_dir():
        atomic_write_text(store / LEGACY_RECORDS_DIR / _legacy_name(chunk), digest)
        return
    records = zarr.open_group(str(store), mode="r+")[RECORDS_ARRAY]
    records[chunk] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)


def finished_chunks(store: str | Path, chunks: range | None = None) -> dict[int, str] | None:
    """Finished row chunks of ``store`` and their recorded digests (hex).

    Parameters
    ----------
    store : str or Path
        A simulated Zarr store (a directory).
    chunks : range, optional
        Only look at these chunk indices (a reader checking one partition); default all.

    Returns
    -------
    dict or None
        ``{chunk index: digest}``; None when the store has no completion records at all (it was
        not written by the factory's resumable writer, or does not exist).
    """
    import zarr

    store = Path(store)
    if _has_array(store):
        records = zarr.open_group(str(store), mode="r")[RECORDS_ARRAY]
        lo, hi = (0, records.shape[0]) if chunks is None else (
            max(chunks.start, 0), min(chunks.stop, records.shape[0]))
        rows = records[lo:hi] if hi > lo else np.zeros((0, _DIGEST_BYTES), np.uint8)
        return {lo + i: row.tobytes().hex() for i, row in enumerate(rows) if row.any()}
    legacy = store / LEGACY_RECORDS_DIR
    if not legacy.is_dir():
        return None
    if chunks is not None:
        paths = [legacy / _legacy_name(c) for c in chunks]
        paths = [p for p in paths if p.is_file()]
    else:
        paths = [p for p in legacy.glob("chunk-*") if p.name[6:].isdigit()]
    # surrogateescape keeps any bytes of a marker file, so records_sha256 hashes them unchanged
    return {int(p.name[6:]): p.read_bytes().decode("utf-8", "surrogateescape") for p in paths}


def records_sha256(store: str | Path) -> str:
    """Hex SHA-256 over the finished chunks' names and digests, in name order: the identity of
    a store's contents used in model manifests. A store with no records hashes nothing."""
    h = hashlib.sha256()
    records = finished_chunks(store) or {}
    for name, digest in sorted((_legacy_name(c), d) for c, d in records.items()):
        h.update(name.encode() + digest.encode("utf-8", "surrogateescape"))
    return h.hexdigest()
