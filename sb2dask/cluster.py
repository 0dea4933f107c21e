"""How a Dask cluster is obtained: one function, :func:`get_client`, for every subcommand.

``cluster`` may be ``"local"`` (a LocalCluster of processes), ``"local-gpu"`` (dask-cuda's
LocalCUDACluster, one worker per GPU with a ``GPU=1`` resource), ``"slurm"`` / ``"pbs"``
(dask-jobqueue, configured through Dask's own config system, see ``deploy/``), or a scheduler
address ``tcp://host:port``.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["get_client", "worker_threads"]

logger = logging.getLogger(__name__)


def worker_threads(n_workers: int) -> int:
    """Torch/BLAS threads per worker so that workers on one machine do not oversubscribe cores."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


def _set_thread_env(threads: int) -> None:
    # Inherited by LocalCluster worker processes at start-up, before numpy/torch load BLAS.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def get_client(cluster: str | None = "local", workers: int | None = None,
               threads_per_worker: int = 1, memory_limit: str | None = "auto",
               resources: dict | None = None, scale: int | None = None, quiet: bool = False):
    """Return a connected :class:`distributed.Client`.

    Parameters
    ----------
    cluster : str
        ``local``, ``local-gpu``, ``slurm``, ``pbs`` or ``tcp://host:port``.
    workers : int, optional
        Worker processes (local) or jobs (slurm/pbs); default: one per core for ``local``.
    threads_per_worker : int
        Dask threads per worker (tasks here are CPU-heavy numpy/torch; 1 is right for most).
    resources : dict, optional
        Abstract resources each local worker advertises, e.g. ``{"GPU": 1}``.
    """
    from distributed import Client

    cluster = cluster or "local"
    if cluster.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        client = Client(cluster)
    elif cluster == "local":
        from distributed import LocalCluster

        n = workers or (os.cpu_count() or 1)
        _set_thread_env(worker_threads(n))
        lc = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                          memory_limit=memory_limit, resources=resources,
                          dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(lc)
    elif cluster == "local-gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise RuntimeError("--cluster local-gpu needs dask-cuda (pip install dask-cuda)") from exc
        lc = LocalCUDACluster(n_workers=workers, threads_per_worker=threads_per_worker,
                              resources={"GPU": 1})
        client = Client(lc)
    elif cluster in ("slurm", "pbs"):
        try:
            from dask_jobqueue import PBSCluster, SLURMCluster
        except ImportError as exc:
            raise RuntimeError(f"--cluster {cluster} needs dask-jobqueue "
                               "(pip install 'sb2dask[jobqueue]')") from exc
        jq = SLURMCluster() if cluster == "slurm" else PBSCluster()
        jq.scale(jobs=scale or workers or 1)
        client = Client(jq)
    else:
        raise ValueError(f"unknown cluster {cluster!r}: expected local, local-gpu, slurm, pbs "
                         "or a scheduler address tcp://host:port")
    if not quiet:
        print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
    return client
