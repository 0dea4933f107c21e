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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["tune_process", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>

_lock = threading.Lock()
_state: dict = {}


def _set_malloc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


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
