"""Ready-to-edit Dask jobqueue configurations and the pipeline batch script (installed as the
data package ``sb2dask.deploy``; ``--jobqueue-config NAME`` finds them by name)."""
