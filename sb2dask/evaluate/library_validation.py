"""Validation of one spectral library against another (the embedded grid against real PHOENIX).

Both libraries' spectra at common nodes are brought to the same footing before comparison:
resampled to a common ln λ grid, convolved to R = 11 500 (the reference's own resolution is
deconvolved in quadrature from the kernel), and re-normalised with the *same* pseudo-continuum
fit over 8470-8710 Å, so that differences in the continuum placement of the two libraries do not
masquerade as line differences.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..constants import C_KMS
from ..library.base import RVS_WINDOW, SpectralLibrary
from ..library.continuum import pseudo_continuum
from ..simulate.broadening import added_resolution, gaussian_lsf_ft

__all__ = ["CA_BANDS", "observe", "equivalent_width", "compare_libraries", "write_report"]

#: Ca II triplet line bands [Å] of Cenarro et al. (2001, MNRAS 326, 959), Table 4.
CA_BANDS = ((8484.0, 8513.0), (8522.0, 8562.0), (8642.0, 8682.0))


def observe(lib: SpectralLibrary, teff: float, logg: float, feh: float,
            resolution: float = 11500.0, dv: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A library node seen at ``resolution`` over the RVS window, re-normalised.

    Returns ``(wave, flux)`` on a ln λ grid of step ``dv`` km/s covering 8470-8710 Å.
    """
    x = np.arange(C_KMS * np.log(lib.wave[0]), C_KMS * np.log(lib.wave[-1]), dv)
    w = np.exp(x / C_KMS)
    depth = 1.0 - np.interp(w, lib.wave, lib.flux(teff, logg, feh))
    freq = np.fft.rfftfreq(len(x), d=dv)
    # Gaussian of width sqrt(σ_R² - σ_native²) brings a finite-resolution library to R.
    r_eff = added_resolution(resolution, lib.resolution)
    flux = 1.0 - np.fft.irfft(np.fft.rfft(depth) * gaussian_lsf_ft(freq, r_eff), n=len(x))
    sel = (w >= RVS_WINDOW[0]) & (w <= RVS_WINDOW[1])
    w, flux = w[sel], flux[sel]
    return w, flux / pseudo_continuum(w, flux, noise_floor=0.0)


def equivalent_width(wave: np.ndarray, flux: np.ndarray, band: tuple[float, float]) -> float:
    """Equivalent width [Å] of normalised ``flux`` integrated over ``band``."""
    sel = (wave >= band[0]) & (wave <= band[1])
    return float(np.trapezoid(1.0 - flux[sel], wave[sel]))


def compare_libraries(test: SpectralLibrary, reference: SpectralLibrary,
                      resolution: float = 11500.0) -> list[dict]:
    """Per common available node: RMS and correlation of the normalised fluxes, Ca II EWs of
    both, and the absolute continuum at 8600 Å of both."""
    rows = []
    ax = reference.axes
    for i, j, k in zip(*np.nonzero(reference.available)):
        node = (ax.teff[i], ax.logg[j], ax.feh[k])
        try:
            wt, ft = observe(test, *node, resolution=resolution)
        except KeyError:
            continue
        wr, fr = observe(reference, *node, resolution=resolution)
        fr = np.interp(wt, wr, fr)
        rows.append(dict(
            teff=node[0], logg=node[1], feh=node[2],
            rms=float(np.sqrt(np.mean((ft - fr) ** 2))),
            correlation=float(np.corrcoef(ft, fr)[0, 1]),
            ew_test=[equivalent_width(wt, ft, b) for b in CA_BANDS],
            ew_reference=[equivalent_width(wt, fr, b) for b in CA_BANDS],
            continuum_test=float(test.continuum(*node)),
            continuum_reference=float(reference.continuum(*node)),
        ))
    return rows


def write_report(rows: list[dict], out_dir: str | Path, test_name: str, ref_name: str,
                 plot_nodes: tuple = ((5000.0, 4.5, 0.0), (5800.0, 4.5, 0.0), (6400.0, 4.5, 0.0)),
                 test: SpectralLibrary | None = None,
                 reference: SpectralLibrary | None = None) -> dict:
    """Write ``validation.json``, ``validation.md`` (table) and ``validation.png`` into
    ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_t = {r["teff"]: r for r in rows}
    ratio = {}
    if 5000.0 in by_t and 6400.0 in by_t:
        for side in ("test", "reference"):
            ratio[side] = by_t[6400.0][f"continuum_{side}"] / by_t[5000.0][f"continuum_{side}"]
    summary = dict(test=test_name, reference=ref_name, nodes=rows,
                   continuum_ratio_6400_5000=ratio,
                   median_rms=float(np.median([r["rms"] for r in rows])) if rows else None,
                   median_correlation=float(np.median([r["correlation"] for r in rows]))
                   if rows else None)
    (out / "validation.json").write_text(json.dumps(summary, indent=1))
    lines = [f"| Teff | logg | [Fe/H] | RMS | corr. | EW 8498 ({test_name} / {ref_name}) | "
             "EW 8542 | EW 8662 | F8600 ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ews = " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(r["ew_test"], r["ew_reference"]))
        lines.append(f"| {r['teff']:.0f} | {r['logg']:.2f} | {r['feh']:+.1f} | {r['rms']:.4f} | "
                     f"{r['correlation']:.3f} | {ews} | "
                     f"{r['continuum_test'] / r['continuum_reference']:.3f} |")
    if ratio:
        lines.append("")
        lines.append(f"Continuum flux ratio F(6400 K)/F(5000 K) at 8600 Å: {test_name} "
                     f"{ratio['test']:.3f}, {ref_name} {ratio['reference']:.3f}.")
    (out / "validation.md").write_text("\n".join(lines) + "\n")
    have = {(r["teff"], r["logg"], r["feh"]) for r in rows}
    plot_nodes = tuple(n for n in plot_nodes if n in have)
    if test is not None and reference is not None and plot_nodes:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 2.6 * len(plot_nodes)), layout="constrained")
        axes = fig.subplots(len(plot_nodes), 1, sharex=True)
        for a, node in zip(np.atleast_1d(axes), plot_nodes):
            wt, ft = observe(test, *node)
            wr, fr = observe(reference, *node)
            a.plot(wr, fr, color="k", lw=0.8, label=ref_name)
            a.plot(wt, ft, color="tab:red", lw=0.8, label=test_name)
            a.plot(wt, ft - np.interp(wt, wr, fr) + 0.3, color="tab:blue", lw=0.6,
                   label="difference + 0.3")
            a.set_title(f"Teff {node[0]:.0f} K, logg {node[1]:g}, [Fe/H] {node[2]:+g}, "
                        "R = 11 500", fontsize=9)
            a.set_ylabel("normalised flux")
        np.atleast_1d(axes)[0].legend(fontsize=8, loc="lower left", ncol=3)
        np.atleast_1d(axes)[-1].set_xlabel("wavelength [Å, air]")
        fig.savefig(out / "validation.png", dpi=110)
    return summary
