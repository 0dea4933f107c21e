"""Output schemas of ``sb2dask infer`` (installed as the data package ``sb2dask.catalogs``)."""
