"""The training-set factory: simulated spectra written as a chunked Zarr v3 group across Dask
workers.

Store layout (``out.zarr``, format 2)::

    flux              float32 (n, n_pix), chunks (chunk, n_pix)
    wave              float64 (n_pix,)   air wavelengths [Å]
    split             uint8   (n,)       0 train, 1 validation, 2 test
    labels/<name>     (n,) or (n, 2)     see sb2dask.simulate.systems.LABEL_FIELDS
    chunk_sha256      uint8 (n_chunks, 32): completion record of each finished chunk, the SHA-256
                      of its flux (see sb2dask.completion; format 1 kept them in .sb2dask-done/)

Root attributes ``sb2dask`` hold the configuration, counts, split, label units and provenance
(package versions, the library's provenance and hash). One Dask task writes one chunk of every
array and then its completion record; a rerun recomputes exactly the chunks without records, so
an interrupted run (killed worker or killed client) ends byte-identical to an uninterrupted one.
Zarr's local store writes each chunk file under a temporary name and renames it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..completion import create_records, finished_chunks, record_finished
from ..fileio import bytes_sha256
from ..provenance import package_versions, utc_now
from ..simulate.config import SimulationConfig
from ..simulate.simulator import simulator_for

__all__ = ["FORMAT_VERSION", "SplitSpec", "generate", "simulate_chunk", "measure_rv_bulk",
           "chunk_status", "store_metadata", "create_store", "check_existing", "run_chunks",
           "blosc"]

#: 2: completion records in the ``chunk_sha256`` array (1: files in ``.sb2dask-done/``).
FORMAT_VERSION = 2
SPLIT_NAMES = ("train", "validation", "test")


def blosc():
    """The compressor of every row-chunked array of a store."""
    import zarr

    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


@dataclass(frozen=True, slots=True)
class SplitSpec:
    """Fractions of train / validation / test; contiguous index ranges in that order (the spectra
    are i.i.d., so contiguous ranges are random splits that stay chunk-aligned)."""

    train: float = 0.75
    validation: float = 0.15
    test: float = 0.10

    def counts(self, n: int) -> tuple[int, int, int]:
        total = self.train + self.validation + self.test
        n_train = int(round(n * self.train / total))
        n_val = int(round(n * self.validation / total))
        return n_train, n_val, n - n_train - n_val


def simulate_chunk(config: SimulationConfig, start: int, stop: int) -> tuple[np.ndarray, dict]:
    """Pure core: spectra ``start..stop-1`` of a data set, as (flux (n, n_pix), labels)."""
    from ..simulate.systems import draw_systems

    lib, sampler, renderer = simulator_for(config)
    labels, interp, noise = draw_systems(lib, config, np.arange(start, stop), sampler=sampler)
    flux = renderer.render(labels, interp, noise)
    if not config.realism.is_paper:
        labels["rv_bulk"] = measure_rv_bulk(config.wave, flux)
    return flux, labels


def measure_rv_bulk(wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """The bulk velocities [km/s] inference will measure on these observed spectra (the same
    preprocessing, estimator and line-detection rule), float32 (n,); NaN for spectra inference
    would not use or not shift (no lines detected)."""
    from ..observe.preprocess import preprocess
    from ..observe.rv_bulk import estimate_rv

    pre = preprocess([wave] * len(flux), list(flux), None, wave)
    rv = np.full(len(flux), np.nan, dtype=np.float32)
    if pre.usable.any():
        rv[pre.usable] = estimate_rv(wave, pre.flux[pre.usable],
                                     missing=pre.filled[pre.usable]).rv_if_detected
    return rv


def _write_chunk(out: str, config_dict: dict, c: int) -> dict:
    """Dask task: simulate chunk ``c`` and write it into every array, then its record."""
    import zarr

    config = SimulationConfig.from_dict(config_dict)
    root = zarr.open_group(out, mode="r+")
    meta = root.attrs["sb2dask"]
    start, stop = c * meta["chunk"], min(meta["n"], (c + 1) * meta["chunk"])
    t0 = time.perf_counter()
    flux, labels = simulate_chunk(config, start, stop)
    t1 = time.perf_counter()
    root["flux"][start:stop] = flux
    for name, values in labels.items():
        root["labels"][name][start:stop] = values
    record_finished(out, c, bytes_sha256(flux.tobytes()))
    return dict(chunk=c, n=stop - start, simulate_s=t1 - t0, write_s=time.perf_counter() - t1)


def chunk_status(out: str | Path) -> tuple[int, list[int]]:
    """(number of chunks, indices of finished chunks) of a store."""
    meta = store_metadata(out)
    n_chunks = -(-meta["n"] // meta["chunk"])
    done = finished_chunks(out) or {}
    return n_chunks, sorted(c for c in done if c < n_chunks)


def store_metadata(out: str | Path) -> dict:
    """The ``sb2dask`` attributes of a simulated store."""
    import zarr

    try:
        root = zarr.open_group(str(out), mode="r")
        return dict(root.attrs["sb2dask"])
    except (FileNotFoundError, KeyError) as exc:
        raise ValueError(f"{out}: not an sb2dask simulated store ({exc})") from exc


def _create_store(out: Path, config: SimulationConfig, n: int, chunk: int, split: SplitSpec,
                  command: str) -> None:
    lib, _, _ = simulator_for(config)
    lib_prov = lib.provenance
    create_store(out, config, n, chunk, split, command,
                 library=dict(name=lib.name, sha256=lib_prov.get("sha256"),
                              provenance=lib_prov))


def create_store(out: Path, config: SimulationConfig, n: int, chunk: int, split: SplitSpec,
                 command: str, library: dict, extra: dict | None = None):
    """Create an empty store of ``n`` rows in ``chunk``-row chunks: every array of the layout
    above, the split, and the root attributes (``config``, counts, label units, provenance with
    ``library``: name, sha256, provenance; ``extra`` is merged into the attributes). Returns the
    open Zarr group, so a builder can add its own arrays."""
    import zarr

    from ..simulate.systems import LABEL_FIELDS

    wave = config.wave
    counts = split.counts(n)
    meta = dict(
        format_version=FORMAT_VERSION, n=n, chunk=chunk, config=config.to_dict(),
        split=dict(zip(SPLIT_NAMES, counts)),
        label_units={k: v[2] for k, v in LABEL_FIELDS.items()},
        label_descriptions={k: v[3] for k, v in LABEL_FIELDS.items()},
        provenance=dict(created=utc_now(),
                        command=command,
                        versions=package_versions("scipy", "zarr", "dask", "distributed"),
                        library=library),
        **(extra or {}),
    )
    root = zarr.open_group(str(out), mode="w", attributes=dict(sb2dask=meta))
    codec = blosc()
    root.create_array("flux", shape=(n, len(wave)), chunks=(chunk, len(wave)), dtype="f4",
                      compressors=[codec], attributes=dict(units="", description=(
                          "continuum-normalised observed flux")))
    root.create_array("wave", shape=wave.shape, dtype="f8", compressors=None,
                      attributes=dict(units="Angstrom", description="air wavelength"))[...] = wave
    sp = np.repeat(np.arange(3, dtype=np.uint8), counts)
    root.create_array("split", shape=(n,), chunks=(chunk,), dtype="u1", compressors=[codec],
                      attributes=dict(values=dict(enumerate(SPLIT_NAMES))))[...] = sp
    labels = root.create_group("labels")
    for name, (shape, dtype, unit, desc) in LABEL_FIELDS.items():
        labels.create_array(name, shape=(n,) + shape, chunks=(chunk,) + shape, dtype=dtype,
                            compressors=[codec], attributes=dict(units=unit, description=desc))
    create_records(root, -(-n // chunk))
    return root


def check_existing(out: Path, want: tuple, overwrite: bool) -> bool:
    """True when ``out`` already holds the data set described by ``want`` (config, n, chunk,
    split) and is to be resumed; False when it is to be created; raises for a different one."""
    if not (out / "zarr.json").exists() or overwrite:
        return False
    existing = store_metadata(out)
    # the stored configuration read back as a configuration: settings added since the store
    # was written (with their neutral defaults) do not make it another data set
    have = (SimulationConfig.from_dict(existing["config"]).to_dict(), existing["n"],
            existing["chunk"], existing["split"])
    if want != have:
        raise ValueError(f"{out} holds a different data set (config, n, chunk or split "
                         "differ); pass overwrite=True (--overwrite) to replace it")
    return True


def run_chunks(out: Path, task, args: list, n: int, chunk: int, client=None,
               progress: bool = True, desc: str = "simulate") -> dict:
    """Compute the unfinished chunks of the store ``out``, one Dask task per chunk:
    ``task(*args, c)`` writes chunk ``c`` and its completion record and returns a dict with
    ``n`` (rows written). A ``LocalCluster`` is started when ``client`` is None.

    Returns
    -------
    dict
        ``n_chunks``, ``computed`` (chunks computed by this call), ``skipped``, ``seconds``,
        ``spectra_per_s`` (of the computed chunks).
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    n_chunks, done = chunk_status(out)
    todo = sorted(set(range(n_chunks)) - set(done))
    t0 = time.perf_counter()
    own_client = client is None
    if own_client and todo:
        from ..cluster import get_client

        client = get_client("local")
    try:
        if todo:
            k = len(todo)
            futures = client.map(task, *[[a] * k for a in args], todo, pure=False, retries=3)
            with tqdm(total=n, initial=len(done) * chunk if done else 0, unit="spectra",
                      desc=desc, disable=not progress, file=sys.stderr) as bar:
                for fut in as_completed(futures):
                    bar.update(fut.result()["n"])
    finally:
        if own_client and client is not None:
            client.close()
    seconds = time.perf_counter() - t0
    n_new = sum(min(n, (c + 1) * chunk) - c * chunk for c in todo)
    return dict(n_chunks=n_chunks, computed=len(todo), skipped=len(done), seconds=seconds,
                spectra_per_s=n_new / seconds if seconds > 0 and n_new else 0.0)


def generate(out: str | Path, config: SimulationConfig, n: int, chunk: int = 10000,
             client=None, split: SplitSpec | None = None, overwrite: bool = False,
             progress: bool = True, command: str = "") -> dict:
    """Simulate ``n`` spectra into the Zarr group ``out``, one Dask task per chunk.

    A store that already exists with the same configuration, ``n`` and ``chunk`` is resumed (only
    chunks without markers are computed); a different one raises unless ``overwrite``.

    Returns
    -------
    dict
        ``n_chunks``, ``computed`` (chunks computed by this call), ``skipped``, ``seconds``,
        ``spectra_per_s`` (of the computed chunks).
    """
    out = Path(out)
    split = split or SplitSpec()
    if n <= 0 or chunk <= 0:
        raise ValueError(f"n and chunk must be positive, got n={n}, chunk={chunk}")
    want = (config.to_dict(), n, chunk, dict(zip(SPLIT_NAMES, split.counts(n))))
    if not check_existing(out, want, overwrite):
        _create_store(out, config, n, chunk, split, command)
    return run_chunks(out, _write_chunk, [str(out), config.to_dict()], n, chunk, client,
                      progress)
