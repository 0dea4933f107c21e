"""How a Dask cluster is obtained: one function, :func:`get_client`, for every subcommand.

``cluster`` is one of

``"local"``
    a LocalCluster of worker processes on this machine (the default);
``"local-gpu"``
    dask-cuda's LocalCUDACluster: one worker per visible GPU, each advertising a ``GPU=1``
    resource so that a training task (``resources={"GPU": 1}``) gets a GPU to itself;
``"slurm"`` / ``"pbs"``
    a dask-jobqueue SLURMCluster / PBSCluster: the scheduler runs in this process and each worker
    is a batch job. Cores, memory, walltime, account, partition (queue), GPU directives, worker
    resources and the network ``interface`` come from Dask's configuration (``jobqueue.slurm`` /
    ``jobqueue.pbs``), e.g. one of the ready-to-edit files in ``deploy/``;
``"tcp://host:port"`` (or ``tls://``, ``ucx://``)
    an already running scheduler; ``path/to/scheduler.json``: its scheduler file.

Configuration is Dask's own: the YAML files in ``deploy/`` are ordinary Dask config files, so they
can be passed by name or path (``config="slurm-gpu"``, ``--jobqueue-config slurm-gpu``), put in
``~/.config/dask/``, or named by ``DASK_CONFIG``; environment variables such as
``DASK_JOBQUEUE__SLURM__ACCOUNT=abc123`` override them. See ``docs/deploy.md``.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["CLUSTER_KINDS", "CONNECT_TIMEOUT_S", "JOBQUEUE_KINDS", "ClusterError",
           "check_scheduler", "deploy_config", "find_config", "get_client",
           "jobqueue_job_script", "worker_threads"]

logger = logging.getLogger(__name__)

#: The named kinds of ``cluster`` (a scheduler address or scheduler file is the other option).
CLUSTER_KINDS = ("local", "local-gpu", "slurm", "pbs")
#: The batch systems driven through dask-jobqueue, with their Dask config section.
JOBQUEUE_KINDS = ("slurm", "pbs")
_ADDRESS_PREFIXES = ("tcp://", "tls://", "ucx://", "inproc://")
#: Seconds a scheduler address has to accept a TCP connection before it is declared unreachable
#: (a refused connection fails at once: nothing listens there).
CONNECT_TIMEOUT_S = 5.0


class ClusterError(RuntimeError):
    """No cluster could be obtained: a missing optional package, an unreachable scheduler,
    batch jobs that the queue refused. The message says what to do."""


def worker_threads(n_workers: int) -> int:
    """Torch/BLAS threads per worker so that workers on one machine do not oversubscribe cores."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


def _set_thread_env(threads: int) -> None:
    # Each worker process starts its own OpenMP/MKL/OpenBLAS pool (numpy, torch). Left alone,
    # distributed pins them to 1 thread (``distributed.nanny.pre-spawn-environ``) unless these
    # variables are set, which wastes cores when there are fewer workers than cores (one training
    # worker), while "all cores in every worker" oversubscribes the machine n_workers-fold. So
    # each worker gets cores // n_workers. They are read once, when a library loads, so they must
    # be in the environment the worker processes inherit: that of this process, before spawning.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def find_config(config: str | Path) -> Path:
    """The YAML file a configuration name or path refers to.

    ``config`` is a path to an existing file, or a name looked up as ``deploy/<name>.yaml`` in the
    current directory (an edited copy) and then among the files installed with the package
    (``sb2dask.deploy``: ``slurm-cpu``, ``slurm-gpu``, ``pbs-cpu``, ``pbs-gpu``).
    """
    from .packagedata import data_folder

    path = Path(config).expanduser()
    if path.is_file():
        return path
    local = Path.cwd() / "deploy" / f"{config}.yaml"  # an edited copy wins over the shipped one
    if local.is_file():
        return local
    shipped = data_folder("deploy") / f"{config}.yaml"
    if shipped.is_file():
        return shipped
    candidates = [local, shipped]
    known = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
    raise FileNotFoundError(f"no jobqueue configuration {str(config)!r}: not a file, and none of "
                            f"{[str(c) for c in candidates]} exists (known names: {known})")


def deploy_config(config: str | Path | dict, kind: str | None = None) -> dict:
    """The Dask configuration a deploy file sets, with ``DASK_*`` environment variables on top.

    Parameters
    ----------
    config : name, path or dict
        A Dask config file (nested mapping, e.g. ``{"jobqueue": {"slurm": {...}}}``); a name or
        path is resolved with :func:`find_config`.
    kind : ``"slurm"`` or ``"pbs"``, optional
        Check that the file configures ``jobqueue.<kind>``.

    Returns
    -------
    dict
        Nested configuration; environment variables (``DASK_JOBQUEUE__SLURM__ACCOUNT`` ...) win
        over the file, as they win over every other Dask config file.
    """
    import dask.config
    import yaml

    if isinstance(config, dict):
        source, data = "<dict>", config
    else:
        path = find_config(config)
        source = str(path)
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of Dask configuration, got "
                         f"{type(data).__name__}")
    if kind is not None and kind not in data.get("jobqueue", {}):
        raise ValueError(f"{source} configures {sorted(data.get('jobqueue', {}))} under "
                         f"'jobqueue', not {kind!r}: use a {kind}-* file for --cluster {kind}")
    env = dask.config.collect_env()
    # update(), unlike merge(), matches job-extra-directives (file) with job_extra_directives (env)
    return dask.config.update(copy.deepcopy(data), {k: env[k] for k in data if k in env})


#: ``jobqueue.<kind>`` as Dask had it before this process applied any deploy file.
_BASE_SECTIONS: dict[str, dict] = {}


def _config_settings(config: str | Path | dict, kind: str) -> dict:
    """``dask.config.set`` arguments that apply a deploy file for ``kind``.

    ``jobqueue.<kind>`` is set as a whole, from what Dask had before any deploy file was applied
    (dask-jobqueue's defaults, the user's config files, environment) updated with the file, so
    that applying the GPU pool's file after the CPU pool's leaves nothing of the CPU pool behind.
    Everything else the file sets (e.g. ``distributed.*``) is set key by key.
    """
    import dask.config

    cfg = deploy_config(config, kind)
    _jobqueue_class(kind)  # importing dask_jobqueue loads its defaults into Dask's config
    base = _BASE_SECTIONS.setdefault(kind, copy.deepcopy(dask.config.get(f"jobqueue.{kind}")))
    section = dask.config.update(copy.deepcopy(base), cfg["jobqueue"][kind])
    rest = {k: v for k, v in cfg.items() if k != "jobqueue"}
    return {f"jobqueue.{kind}": section, **dict(_dotted(rest))}


def _dotted(config: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    # dask.config.set({"distributed": {...}}) would replace the whole section, defaults included;
    # setting each leaf keeps the defaults of everything the file does not mention.
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _jobqueue_class(kind: str):
    """dask-jobqueue's cluster class for ``kind``, with jobs that end closed when cancelled."""
    try:
        import dask_jobqueue
        from distributed.deploy.spec import ProcessInterface
    except ImportError as exc:
        raise ClusterError(f"--cluster {kind} needs dask-jobqueue, which is not installed: "
                           "pip install 'sb2dask[jobqueue]'") from exc
    if kind not in _JOBQUEUE_CLASSES:
        base = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]

        class ClosingJob(base.job_cls):
            # dask-jobqueue 0.9's Job.close cancels the job but leaves its status "running",
            # and SpecCluster.close asserts that every job it created that is still referenced
            # anywhere (a user's variable, a task not yet garbage-collected) is closed: closing
            # a cluster raised AssertionError at random under load. A cancelled job is closed.
            async def close(self):
                try:
                    await super().close()
                finally:
                    await ProcessInterface.close(self)

        _JOBQUEUE_CLASSES[kind] = type(base.__name__, (base,), {
            "job_cls": ClosingJob, "__module__": __name__,
            "__doc__": f"{base.__doc__ or ''}\n(sb2dask: jobs are marked closed when cancelled.)"})
    return _JOBQUEUE_CLASSES[kind]


_JOBQUEUE_CLASSES: dict[str, type] = {}


def jobqueue_job_script(kind: str, config: str | Path | dict | None = None,
                        **overrides) -> str:
    """The batch script one worker job of ``kind`` would run, without submitting anything.

    It is the cluster object's own ``job_script()``, rendered from Dask's configuration with
    ``config`` (a deploy file name, path or dict, see :func:`deploy_config`) applied for the
    duration of the call and keyword ``overrides`` of the cluster class (``account=``,
    ``walltime=``, ``job_extra_directives=`` ...) on top. No scheduler is started, so the
    script shows a placeholder scheduler address.
    """
    import dask.config

    if kind not in JOBQUEUE_KINDS:
        raise ValueError(f"kind must be one of {JOBQUEUE_KINDS}, got {kind!r}")
    cls = _jobqueue_class(kind)
    settings = _config_settings(config, kind) if config is not None else {}

    async def render() -> str:
        # An asynchronous cluster that is never awaited never starts its scheduler.
        cluster = cls(asynchronous=True, **overrides)
        try:
            return cluster.job_script()
        finally:
            await cluster.close()

    with dask.config.set(settings):
        # in a thread of its own: a Jupyter kernel already runs an event loop in this one
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, render()).result()


def _dashboard_link(client) -> str:
    try:
        link = client.dashboard_link
    except KeyError:  # a scheduler started with --no-dashboard
        return "none (the scheduler runs without one)"
    if client.cluster is not None and importlib.util.find_spec("bokeh") is None:
        link += " (serves plots once bokeh>=3.1 is installed: pip install 'sb2dask[notebook]')"
    return link


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`ClusterError` unless something accepts TCP connections at ``address``.

    Only ``tcp://`` and ``tls://`` addresses are probed. A refused connection is reported at
    once (distributed itself would retry it until its 30 s connect timeout), a silent host after
    ``timeout`` seconds.
    """
    import socket

    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    scheme, location = parse_address(address)
    if scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parse_host_port(location)
    except ValueError as exc:
        raise ClusterError(f"--cluster {address}: expected tcp://host:port ({exc})") from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        raise ClusterError(f"no Dask scheduler at {address}: connection refused (nothing listens "
                           f"on port {port} of {host}); start one with `dask scheduler` or check "
                           "the address") from None
    except TimeoutError:
        raise ClusterError(f"no Dask scheduler at {address}: no answer within {timeout:.0f} s "
                           "(wrong host, or a firewall?)") from None
    except OSError as exc:  # unknown host name, unreachable network
        raise ClusterError(f"no Dask scheduler at {address}: {exc.strerror or exc}") from None


def _scheduler_file_address(path: str) -> str:
    import json

    if not Path(path).is_file():
        raise FileNotFoundError(f"scheduler file {path} does not exist (written by "
                                "`dask scheduler --scheduler-file ...`)")
    try:
        return json.loads(Path(path).read_text())["address"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"scheduler file {path}: expected the JSON that `dask scheduler "
                         "--scheduler-file` writes, with an \"address\"") from None


def get_client(cluster: str | None = "local", workers: int | None = None,
               threads_per_worker: int = 1, memory_limit: str | None = "auto",
               resources: dict | None = None, config: str | Path | dict | None = None,
               min_workers: int | None = None, quiet: bool = False,
               worker_log_level: int = logging.ERROR, **cluster_kwargs):
    """Return a connected :class:`distributed.Client` and print its dashboard address.

    Parameters
    ----------
    cluster : str
        ``local``, ``local-gpu``, ``slurm``, ``pbs``, a scheduler address ``tcp://host:port`` or a
        scheduler file ``*.json``.
    workers : int, optional
        Worker processes (``local``: default one per core; ``local-gpu``: default one per GPU)
        or batch jobs (``slurm``/``pbs``: default 1; each job runs the ``processes`` workers of
        its configuration).
    threads_per_worker : int
        Dask threads per local worker (tasks here are CPU-heavy numpy/torch; 1 is right for most).
        For slurm/pbs it is ``cores / processes`` of the configuration.
    memory_limit : str
        Per local worker, e.g. ``"4GiB"`` or ``"auto"`` (memory / workers). For slurm/pbs it is
        ``memory / processes`` of the configuration.
    resources : dict, optional
        Extra abstract resources each local worker advertises, e.g. ``{"GPU": 1}``. Batch workers
        advertise theirs with ``worker-extra-args: ["--resources", "GPU=1"]``.
    config : name, path or dict, optional
        A Dask config file applied before the cluster starts, e.g. ``"slurm-gpu"`` for
        ``deploy/slurm-gpu.yaml`` (see :func:`deploy_config`). It stays applied for the rest of
        the process because dask-jobqueue reads it again for every job it submits.
    min_workers : int, optional
        Wait until this many workers are connected (default: 1 for slurm/pbs and a scheduler
        address, so that callers see the workers' resources, e.g. ``GPU``, before submitting).
    quiet : bool
        Do not print the dashboard address.
    worker_log_level : int
        The least severe log messages of ``local``/``local-gpu`` workers that reach this
        terminal (default ``logging.ERROR``: a failed task's traceback). The command line raises
        it to ``CRITICAL`` unless ``--debug``: it reports the failure itself, in one line.
    **cluster_kwargs
        Passed to the cluster class (LocalCluster, LocalCUDACluster, SLURMCluster, PBSCluster),
        e.g. ``account="abc123"`` or ``walltime="02:00:00"`` for slurm/pbs.

    Closing the client closes a ``local`` cluster with it; a ``local-gpu`` or batch cluster is
    closed with ``client.cluster.close()`` or at interpreter exit (which cancels its jobs).
    """
    # distributed (and its config defaults) loads before a jobqueue configuration is applied
    import dask.config
    import distributed  # noqa: F401

    cluster = cluster or "local"
    if config is not None:
        if cluster not in JOBQUEUE_KINDS:
            raise ValueError(f"a jobqueue configuration ({config}) only applies to --cluster "
                             f"slurm or pbs, not {cluster!r}")
        dask.config.set(_config_settings(config, cluster))
    if cluster.startswith(_ADDRESS_PREFIXES) or cluster.endswith(".json"):
        client = _connect_client(cluster, cluster_kwargs)
        wait = 1 if min_workers is None else min_workers
    elif cluster == "local":
        client = _local_client(workers, threads_per_worker, memory_limit, resources,
                               worker_log_level, cluster_kwargs)
        wait = min_workers or 0
    elif cluster == "local-gpu":
        client = _local_gpu_client(workers, threads_per_worker, memory_limit, resources,
                                   worker_log_level, cluster_kwargs)
        wait = min_workers or 0
    elif cluster in JOBQUEUE_KINDS:
        client = _jobqueue_client(cluster, workers, cluster_kwargs)
        wait = 1 if min_workers is None else min_workers
    else:
        raise ValueError(f"unknown cluster {cluster!r}: expected one of {CLUSTER_KINDS}, a "
                         "scheduler address tcp://host:port or a scheduler file *.json")
    _announce_and_wait(client, cluster, wait, quiet)
    return client


def _connect_client(cluster: str, cluster_kwargs: dict):
    """A client of a running scheduler: an address ``tcp://host:port`` or a scheduler file."""
    from distributed import Client

    if cluster.startswith(_ADDRESS_PREFIXES):
        check_scheduler(cluster)
        return Client(cluster, **cluster_kwargs)
    check_scheduler(_scheduler_file_address(cluster))
    return Client(scheduler_file=cluster, **cluster_kwargs)


def _local_client(workers: int | None, threads_per_worker: int, memory_limit: str | None,
                  resources: dict | None, worker_log_level: int, cluster_kwargs: dict):
    """A client that owns a LocalCluster of worker processes on this machine."""
    from distributed import Client

    n = workers or (os.cpu_count() or 1)
    _set_thread_env(worker_threads(n))
    # Client(...) with LocalCluster keywords owns the cluster and closes it on close()
    return Client(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                  memory_limit=memory_limit, resources=resources,
                  dashboard_address=":0", silence_logs=worker_log_level, **cluster_kwargs)


def _local_gpu_client(workers: int | None, threads_per_worker: int, memory_limit: str | None,
                      resources: dict | None, worker_log_level: int, cluster_kwargs: dict):
    """A client of a LocalCUDACluster: one worker per GPU, each advertising ``GPU: 1``."""
    from distributed import Client

    try:
        from dask_cuda import LocalCUDACluster
        from dask_cuda.utils import get_n_gpus
    except ImportError as exc:
        raise ClusterError("--cluster local-gpu needs dask-cuda, which is not installed: "
                           "pip install dask-cuda (with a CUDA build of PyTorch, see "
                           "docs/deploy.md), or use --cluster local") from exc
    n = workers or get_n_gpus()
    _set_thread_env(worker_threads(n))
    lc = LocalCUDACluster(n_workers=n, threads_per_worker=threads_per_worker,
                          memory_limit=memory_limit, resources={**(resources or {}), "GPU": 1},
                          dashboard_address=":0", silence_logs=worker_log_level,
                          **cluster_kwargs)
    return Client(lc)


def _jobqueue_client(cluster: str, workers: int | None, cluster_kwargs: dict):
    """A client of a SLURM or PBS cluster scaled to ``workers`` batch jobs (default 1)."""
    from distributed import Client

    cls = _jobqueue_class(cluster)
    try:
        jq = cls(**cluster_kwargs)
    except ValueError as exc:
        if "cores and memory" not in str(exc):
            raise
        raise ValueError(f"{exc}; or apply a deploy configuration: --jobqueue-config "
                         f"{cluster}-cpu (or {cluster}-gpu), see docs/deploy.md") from exc
    jq.scale(jobs=workers or 1)
    return Client(jq)


def _announce_and_wait(client, cluster: str, wait: int, quiet: bool) -> None:
    """Print the dashboard address, then wait for ``wait`` workers (none when 0)."""
    if not quiet:
        print(f"Dask dashboard: {_dashboard_link(client)}", file=sys.stderr)
    if wait:
        if not quiet:
            print(f"waiting for {wait} worker(s) to connect to {client.scheduler.address}",
                  file=sys.stderr)
        if cluster in JOBQUEUE_KINDS:
            _wait_for_jobs(client, wait)
        else:
            client.wait_for_workers(wait)


#: Seconds after which a batch cluster none of whose jobs got a job id is declared failed.
SUBMIT_TIMEOUT_S = 120.0


def _wait_for_jobs(client, n: int) -> None:
    """Wait for ``n`` workers of a batch cluster, however long the jobs queue, but stop when no
    job could be submitted at all (a wrong account or partition), instead of waiting forever."""
    import time

    start = time.monotonic()
    while True:
        try:
            client.wait_for_workers(n, timeout=2)
            return
        except TimeoutError:
            pass
        jobs = list(client.cluster.workers.values())
        if (time.monotonic() - start > SUBMIT_TIMEOUT_S and jobs
                and not any(job.job_id for job in jobs)):
            command = jobs[0].submit_command
            client.cluster.close()
            client.close()
            raise ClusterError(f"none of the {len(jobs)} batch job(s) was accepted by {command} "
                               f"in {SUBMIT_TIMEOUT_S:.0f} s: see its errors above (account, "
                               "partition/queue, resources?) and docs/deploy.md")
