"""Per-process tuning of the processes that run networks: Dask workers and the CLI itself.

Two settings decide CPU throughput when torch runs inside a Dask worker:

* **torch threads.** Each worker process would otherwise start one OpenMP thread per core, so
  ``n`` workers on a node oversubscribe it ``n``-fold. :func:`tune_process` gives torch as many
  intra-op threads as the worker has task threads (``SB2DASK_TORCH_THREADS`` overrides).
* **glibc malloc.** Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (so that
  freed memory goes back to the OS). Setting the trim threshold also freezes glibc's mmap threshold
  at 128 kB, so every activation tensor of a forward pass (tens of MB at batch 256) is a fresh
  ``mmap`` whose pages fault in again on every batch and are unmapped on free. Measured on this
  project's 2-core machine, full model set, fp32, one thread per worker: 33 spectra/s per worker
  with the nanny's setting, 86-94/s after :func:`tune_process` (``/tmp`` experiment recorded in
  docs/inference.md). We raise the mmap threshold to 64 MiB and the trim threshold to 128 MiB:
  activations are reused from the heap, and at most 128 MiB of free heap stays mapped per process.

  The price is fragmentation. DenseNet activations are 10-80 MB each at batch 128-256, and the
  small long-lived allocations made while they are alive (output arrays, oneDNN primitives for a
  new batch shape) split the holes they leave: the heap kept growing with every new batch shape
  (one process, one model per network, fp32, batch 256, 20 partitions of 300-600 rows: peak RSS
  1.73 GB against 0.58-0.81 GB after one warm-up batch; docs/inference.md, "Memory"). Three
  things bound it: :func:`release_free_memory` after every prediction call (``malloc_trim``
  returns the free pages inside the heap, not only its top), few distinct batch shapes
  (:class:`sb2dask.infer.predict.ModelSet` pads a short last batch) and a smaller CPU batch.
  :func:`peak_rss` measures what a warm-up really needed, transients included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["tune_process", "release_free_memory", "reset_peak_rss", "peak_rss",
           "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>

_lock = threading.Lock()
_state: dict = {}
_libc: dict = {}  # glibc functions looked up once


def _glibc_function(name: str):
    """``name`` from glibc, or None elsewhere (macOS, musl: no mallopt/malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


def _set_malloc() -> bool:
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_memory() -> bool:
    """Give the free pages of every malloc arena back to the OS (glibc ``malloc_trim(0)``).

    Cheap (milliseconds for a heap of a few hundred MB); the pages fault in again when the next
    forward pass needs them, once per call rather than once per batch. Returns False where
    there is no glibc.
    """
    if "malloc_trim" not in _libc:
        _libc["malloc_trim"] = _glibc_function("malloc_trim")
    trim = _libc["malloc_trim"]
    if trim is None:
        return False
    trim(0)
    return True


def reset_peak_rss() -> bool:
    """Start a new peak for :func:`peak_rss` (Linux: ``/proc/self/clear_refs``); False where the
    peak cannot be reset, so that :func:`peak_rss` reports the whole process's peak instead."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident bytes of this process since :func:`reset_peak_rss` (since start where it
    could not reset), transients included; the current resident bytes where no peak is kept."""
    import psutil

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def tune_process(threads: int | None = None) -> dict:
    """Set torch threads and malloc thresholds once per process; returns what is in effect.

    ``threads``: torch intra-op threads; default ``SB2DASK_TORCH_THREADS``, else the task
    threads of the Dask worker this runs in, else torch's own default (outside a worker).
    """
    import torch

    with _lock:
        if not _state:
            n = threads or os.environ.get("SB2DASK_TORCH_THREADS") or _worker_threads()
            if n is not None and int(n) > 0:
                torch.set_num_threads(int(n))
            _state["malloc_tuned"] = _set_malloc()
        _state["torch_threads"] = torch.get_num_threads()
        return dict(_state)
