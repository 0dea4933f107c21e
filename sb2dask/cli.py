"""The ``sb2dask`` command: it only parses arguments, checks them and calls the package."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["main", "build_parser", "expected_errors"]

DEFAULT_MASS_TABLE = Path(__file__).resolve().parent / "library" / "data" / \
    "PecautMamajek_table.csv"  # shipped (library/data/NOTICE.md); the dwarf masses

DESCRIPTION = """\
sb2dask finds double-lined spectroscopic binaries (SB2s) in Gaia RVS epoch spectra and gives
both stars' Teff, log g, [Fe/H] and v sin i with uncertainties (Binnenfeld et al. 2025), one
spectrum at a time, on Dask: a laptop, a GPU workstation or a SLURM/PBS cluster.

Typical sequence (each step writes what the next one reads; `sb2dask COMMAND --help` for more):
  simulate  a training set of SB2 spectra into a Zarr store
            (or semi-empirical: one made of real single-star spectra)
  train     the temperature, parameter and SB2-detector networks on it
  calibrate the label uncertainties on held-out spectra (calibration.json in the model directory)
  evaluate  the trained networks on the store's test split (the paper's tables and figures)
  infer     p_binary and both stars' parameters for catalogues of spectra, into Parquet
The package ships trained networks, so `infer` works without the first three steps, and `demo`
runs it end to end on a mock catalogue."""

EPILOG = """\
examples:
  sb2dask demo --out sb2dask-demo                  # mock catalogue -> shipped models -> Parquet
  sb2dask infer RvsEpochSpectrum_*.csv.gz --out sb2.parquet
  sb2dask simulate --n 200000 --out train.zarr
  sb2dask train --store train.zarr --out models --ensemble 4 --cluster local-gpu
  sb2dask infer RvsEpochSpectrum_*.csv.gz --out sb2.parquet --models models --cluster slurm \\
      --jobqueue-config slurm-gpu --workers 8

Errors in the inputs or the environment (a missing or unreadable file, an unwritable --out, an
unreachable scheduler) are reported in one line with exit status 1 (2 for a wrong option; 3 when
`infer` finished but most spectra were unusable); --debug shows the Python traceback instead.
Documentation: README.md and docs/ of the source tree."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sb2dask")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _checked(convert, accept, expected: str):
    """An argparse type: ``convert`` the text, then require ``accept(value)``; the message says
    what was ``expected``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")  # seeds, indices
_positive_float = _checked(float, lambda v: v > 0, "a positive number")
_fraction = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
_non_negative_float = _checked(float, lambda v: v >= 0, "a number >= 0")
_number = _checked(float, lambda v: True, "a number")


def _memory_limit(text: str) -> str:
    """argparse type: ``auto`` or a size Dask understands (4GiB, 500MB)."""
    if text == "auto":
        return text
    from dask.utils import parse_bytes

    try:
        if parse_bytes(text) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a size such as 4GiB, got {text!r}"
                                         ) from None
    return text


def _target_setting(text: str) -> tuple[str, str, object]:
    """argparse type of ``train --set``: ``TARGET.FIELD=VALUE`` (VALUE read as YAML)."""
    import yaml

    try:
        key, value = text.split("=", 1)
        target, field = key.split(".", 1)
        return target, field, yaml.safe_load(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TARGET.FIELD=VALUE, got {text!r}") from None


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that describe a user's inputs or environment, not a bug in sb2dask: ``main``
    prints them as one line (exit status 1, or the exception's ``exit_status``) instead of a
    traceback, unless ``--debug``.

    Our own classes: ReaderError (a catalogue file), ModelFileError (a model directory),
    PhoenixFileError (a PHOENIX file) (all ValueError), MissingNodeError (a library node),
    MemoryBudgetError (workers too small for the models), UnusableRunError (most spectra of a run
    unusable), ClusterError (no cluster to be had). Python's: OSError (missing, unreadable or
    unwritable files, connections) and ValueError (the validation of configurations and
    arguments). A Dask ``KilledWorker`` (workers that died on a task, e.g. out of memory) too.
    Imported here, when an error is being reported, so that ``sb2dask --help`` stays fast.
    """
    from .cluster import ClusterError
    from .infer.run import MemoryBudgetError, UnusableRunError
    from .library.base import MissingNodeError

    errors: tuple[type[BaseException], ...] = (
        ClusterError, MemoryBudgetError, UnusableRunError, MissingNodeError, OSError, ValueError)
    if "distributed" in sys.modules:
        from distributed.scheduler import KilledWorker

        errors += (KilledWorker,)
    return errors


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster", "where the Dask workers run (docs/deploy.md)")
    g.add_argument("--cluster", default="local",
                   help="local | local-gpu | slurm | pbs | tcp://host:port | scheduler.json "
                        "(default: local)")
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes (local: default one per core; local-gpu: one per GPU) "
                        "or batch jobs (slurm/pbs: default 1)")
    g.add_argument("--threads-per-worker", type=_positive_int, default=1,
                   help="Dask threads per local worker (default 1)")
    g.add_argument("--memory-limit", type=_memory_limit, default="auto",
                   help="memory per local worker, e.g. 4GiB (default: auto = RAM / workers)")
    g.add_argument("--jobqueue-config", default=None, metavar="NAME|FILE",
                   help="Dask jobqueue config for slurm/pbs: slurm-cpu, slurm-gpu, pbs-cpu, "
                        "pbs-gpu (deploy/NAME.yaml) or a YAML file; DASK_JOBQUEUE__* environment "
                        "variables override it")


def _cluster_kwargs(args) -> dict:
    """``get_client`` keywords from the options of :func:`_add_cluster_options`."""
    import logging

    # a task's error reaches the user as main's one line; the workers' own log of it (with a
    # traceback) only with --debug
    return dict(cluster=args.cluster, workers=args.workers,
                threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                config=args.jobqueue_config,
                worker_log_level=logging.ERROR if args.debug else logging.CRITICAL)


def _command_line(args) -> str:
    """The command as typed, for the provenance of what it writes."""
    return "sb2dask " + shlex.join(args.argv)


def _cmd_library_info(args) -> int:
    from .library import describe_library, load_library

    lib = load_library(args.library)
    print(lib.describe() if hasattr(lib, "describe") else describe_library(lib))
    return 0


def _cmd_library_build(args) -> int:
    from .cluster import get_client
    from .library.build import GridSpec, assemble_grid, build_nodes
    from .library.embedded import EMBEDDED_GRID_PATH

    spec = GridSpec()
    out = Path(args.out) if args.out else EMBEDDED_GRID_PATH
    if not args.assemble_only:
        with get_client(**_cluster_kwargs(args)) as client:
            counts = build_nodes(args.workdir, spec, client, progress=not args.no_progress)
        print(json.dumps(counts))
    prov = assemble_grid(args.workdir, out, spec, args.mass_table,
                         command=_command_line(args))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {prov['counts']}")
    return 0


def _cmd_library_validate(args) -> int:
    from .evaluate.library_validation import compare_libraries, write_report
    from .library import load_library

    test, ref = load_library(args.library), load_library(args.reference)
    rows = compare_libraries(test, ref)
    if not rows:
        print(f"no common nodes between {args.library} and {args.reference}", file=sys.stderr)
        return 1
    summary = write_report(rows, args.out, "embedded" if args.library == "embedded" else
                           Path(args.library).name, "PHOENIX", test=test, reference=ref)
    print((Path(args.out) / "validation.md").read_text())
    print(json.dumps({k: summary[k] for k in ("median_rms", "median_correlation")}))
    return 0


def _cmd_library_fetch_phoenix(args) -> int:
    from .library.phoenix import fetch_phoenix

    paths = fetch_phoenix(args.dest, teff=(args.teff_min, args.teff_max),
                          logg=(args.logg_min, args.logg_max), feh=(args.feh_min, args.feh_max),
                          dry_run=args.dry_run)
    for p in paths:
        print(p)
    return 0


def _simulation_config(args):
    from .simulate.config import SimulationConfig

    if args.config:
        cfg = SimulationConfig.from_yaml(args.config)
        if args.recipe == "paper":
            cfg = cfg.replace(realism=SimulationConfig.paper(resolution=cfg.resolution).realism)
        elif args.recipe == "realistic":
            cfg = cfg.replace(realism=SimulationConfig.realistic().realism)
        elif args.recipe == "dr4":
            dr4 = SimulationConfig.dr4()
            cfg = cfg.replace(realism=dr4.realism, output_grid=dr4.output_grid,
                              snr_range=dr4.snr_range)
    else:
        cfg = {"realistic": SimulationConfig.realistic, "dr4": SimulationConfig.dr4}.get(
            args.recipe, SimulationConfig)()
    changes = {k: v for k, v in dict(
        library=args.library, seed=args.seed, binary_fraction=args.binary_fraction,
        output_grid=args.output_grid, resolution=args.resolution).items() if v is not None}
    if args.snr is not None:
        changes["snr_range"] = tuple(args.snr)
    return cfg.replace(**changes) if changes else cfg


def _cmd_simulate(args) -> int:
    from .cluster import get_client
    from .dataset.factory import SplitSpec, generate

    cfg = _simulation_config(args)
    split = SplitSpec(*args.split) if args.split else SplitSpec()
    with get_client(**_cluster_kwargs(args)) as client:
        summary = generate(args.out, cfg, args.n, args.chunk, client=client, split=split,
                           overwrite=args.overwrite, progress=not args.no_progress,
                           command=_command_line(args))
    print(json.dumps(summary))
    return 0


def _cmd_semi_empirical(args) -> int:
    from .cluster import get_client
    from .dataset.factory import SplitSpec
    from .dataset.semi_empirical import compute, prepare
    from .simulate.config import SimulationConfig
    from .simulate.semi_empirical import SemiEmpiricalSettings, semi_empirical_realism

    realism = semi_empirical_realism(
        systemic_velocity=tuple(args.systemic_velocity),
        noise_exponent=tuple(args.noise_exponent), noise_correlation=tuple(args.noise_correlation),
        gap_fraction=args.gap_fraction)
    cfg = SimulationConfig(library=args.library, seed=args.seed,
                           binary_fraction=args.binary_fraction, snr_range=tuple(args.snr),
                           k_sum_range=tuple(args.k_sum), output_grid=args.output_grid,
                           realism=realism)
    settings = SemiEmpiricalSettings(feh_sigma=args.feh_sigma,
                                     ms_logg_tolerance=args.ms_logg_tolerance,
                                     shared_stars=args.shared_stars, input_noise=args.input_noise,
                                     velocity_label=args.velocity_label)
    split = SplitSpec(*args.split) if args.split else SplitSpec()
    # inputs read and checked before any worker starts: bad inputs fail in seconds
    prepared = prepare(args.out, args.spectra, args.labels, cfg, settings, n=args.n,
                       chunk=args.chunk, split=split, overwrite=args.overwrite,
                       command=_command_line(args), main_sequence_table=args.main_sequence_table)
    with get_client(**_cluster_kwargs(args)) as client:
        summary = {**compute(args.out, client, progress=not args.no_progress), **prepared}
    print(json.dumps(summary, indent=1))
    noisy = summary["inputs"]["too noisy for the requested S/N"]
    if noisy:
        print(f"sb2dask semi-empirical: note: {noisy} of {summary['inputs']['n']} input "
              f"spectra are too noisy for S/N >= "
              f"{args.snr[0]:g} and were not used", file=sys.stderr)
    return 0


def _cmd_train(args) -> int:
    from .cluster import get_client
    from .train.config import TrainConfig
    from .train.pool import train_all

    base = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    changes = {k: v for k, v in dict(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        max_train=args.max_train, max_validation=args.max_validation, seed=args.seed,
        early_stopping=args.early_stopping, temperature_model=args.temperature_model,
        validation_folds=args.validation_folds, device=args.device,
        lr_schedule=args.lr_schedule).items() if v is not None}
    base = base.replace(**changes) if changes else base
    targets = tuple(args.targets)
    if not targets and not args.detector_store:
        raise ValueError("nothing to train: --targets names no label network and there is no "
                         "--detector-store")
    per_target: dict = {}
    for flag, stores, mix in (("--mix", args.store, args.mix),
                              ("--detector-mix", args.detector_store, args.detector_mix)):
        if mix is not None and len(mix) != len(stores or []):
            raise ValueError(f"{flag} gives {len(mix)} fractions for {len(stores or [])} stores")
    if args.mix is not None:
        for target in targets:
            per_target.setdefault(target, {})["mix"] = tuple(args.mix)
    if args.detector_mix is not None:
        per_target.setdefault("p_binary", {})["mix"] = tuple(args.detector_mix)
    for target, field, value in args.set or []:
        per_target.setdefault(target, {})[field] = value
    store = args.store[0] if len(args.store) == 1 else args.store
    detector = (None if not args.detector_store else args.detector_store[0]
                if len(args.detector_store) == 1 else args.detector_store)
    with get_client(**_cluster_kwargs(args)) as client:
        results = train_all(store, args.out, client, base, ensemble=args.ensemble,
                            targets=targets, detector_store=detector,
                            progress=not args.no_progress, per_target=per_target)
    print(json.dumps(results, indent=1, default=str))
    return 0


def _cmd_infer(args) -> int:
    from .cluster import get_client
    from .infer.config import InferenceConfig
    from .infer.run import MAX_UNUSABLE_FRACTION, check_run, check_usable, run_inference

    config = InferenceConfig.from_yaml(args.config) if args.config else InferenceConfig()
    changes = {k: v for k, v in dict(
        model_dir=args.models, device=args.device, precision=args.precision,
        batch_size=args.batch_size, members=args.members,
        partition_rows=args.partition_rows, rest_frame=args.rest_frame, fit=args.fit,
        fit_threshold=args.fit_threshold, fit_fast=args.fit_fast).items()
        if v is not None}
    config = config.replace(**changes) if changes else config
    # inputs, --out and the models are checked before any worker starts (seconds, not minutes)
    inputs = check_run(args.inputs, args.out, config, overwrite=args.overwrite)
    with get_client(**_cluster_kwargs(args)) as client:
        summary = run_inference(inputs, args.out, client, config,
                                progress=not args.no_progress, overwrite=args.overwrite)
    print(json.dumps(summary, indent=1))
    note = check_usable(summary, 1.0 if args.allow_unusable else MAX_UNUSABLE_FRACTION)
    if note:  # a few unusable spectra are normal (all-NaN epochs); say which flags
        print(f"sb2dask infer: note: {note}", file=sys.stderr)
    return 0


def _cmd_mock(args) -> int:
    from .dataset.mock_catalogue import mock_catalogue, mock_catalogue_dr4

    lo, hi = args.epochs
    if lo > hi:
        raise ValueError(f"--epochs MIN MAX: MIN ({lo}) is larger than MAX ({hi})")
    cfg = _simulation_config(args)
    if args.layout == "dr4":
        r = mock_catalogue_dr4(args.out, n_sources=args.n_sources, epochs=(lo, hi),
                               binary_fraction=args.binary_fraction, n_files=args.files,
                               formats=tuple(args.formats), structures=tuple(args.structures),
                               config=cfg, seed=args.seed)
    else:
        r = mock_catalogue(args.out, n_sources=args.n_sources, epochs=(lo, hi),
                           binary_fraction=args.binary_fraction, n_files=args.files, config=cfg,
                           seed=args.seed)
    print(json.dumps(r, indent=1))
    return 0


def _cmd_real_sky(args) -> int:
    from .evaluate.real_sky import HELDOUT_DIR, build_cases, run_suite, summarise, write_report
    from .infer.config import InferenceConfig
    from .infer.predict import DEFAULT_PRESET

    for name in ("gaia_dir", "phoenix_dir", "heldout_dir"):
        if getattr(args, name) is None:
            continue
        if not Path(getattr(args, name)).is_dir():
            print(f"sb2dask real-sky: note: {getattr(args, name)} is not a directory; its cases "
                  "are left out", file=sys.stderr)
    config = InferenceConfig(model_dir=args.models, rest_frame=args.rest_frame, fit=args.fit)
    heldout = None if args.no_heldout else (args.heldout_dir or HELDOUT_DIR)
    results = run_suite(build_cases(args.gaia_dir, args.phoenix_dir, heldout_dir=heldout,
                                    twins=not args.no_twins), config)
    summary = summarise(results)
    md = write_report(results, summary, args.out, models=args.models or DEFAULT_PRESET)
    print(md.read_text())
    return 0


def _cmd_compare_dpac(args) -> int:
    from .evaluate.dpac import compare_dpac, load_column_map

    report = compare_dpac(args.results, args.dpac, args.out, load_column_map(args.columns),
                          add_bary_corr=args.add_bary_corr)
    print((Path(args.out) / "compare_dpac.md").read_text())
    if report["counts"]["matched"] == 0:
        print("sb2dask compare-dpac: note: no transit matched on (source_id, transit_id)",
              file=sys.stderr)
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate.report import evaluate

    res = evaluate(args.store, args.models, args.out, single_store=args.single_store,
                   detector_store=args.detector_store, max_test=args.max_test,
                   n_perm=args.permutations, rest_frame=args.rest_frame)
    print((Path(args.out) / "evaluation.md").read_text())
    return 0 if res else 1


def _cmd_calibrate(args) -> int:
    from .infer.predict import resolve_model_dir
    from .train.calibrate import CALIBRATION_FILE, calibrate

    res = calibrate(args.models, args.store, split=args.split, max_n=args.max_n,
                    snr_edges=args.snr_edges or (), value_bins=args.value_bins,
                    rest_frame=args.rest_frame, predictions=args.predictions)
    # a preset name ('paper') is written where it resolves, which the message must say
    print(json.dumps(dict(written=str(resolve_model_dir(args.models) / CALIBRATION_FILE),
                          n=res["provenance"]["n"], seconds=round(res["seconds"], 1),
                          coverage_on_calibration_rows=res["fit_summary"]), indent=1))
    return 0


def _cmd_finetune(args) -> int:
    import torch

    from .train.finetune import finetune_students

    if args.threads:
        torch.set_num_threads(args.threads)
    res = finetune_students(
        args.models, args.stores, args.out, margin=args.margin or None,
        min_companion_signal=args.min_companion_signal or None, epochs=args.epochs, lr=args.lr,
        distill_weight=args.distill_weight, truth_weight=args.truth_weight,
        max_train=args.max_train, max_validation=args.max_validation,
        bridge_ca_ii=args.bridge_ca_ii, progress=True)
    print(json.dumps(dict(written=str(args.out), seconds=round(res["seconds"], 1),
                          validation_before=res["before"], validation_after=res["after"]),
                     indent=1))
    return 0


def _cmd_demo(args) -> int:
    from .cluster import get_client
    from .evaluate.demo import run_demo
    from .labels import PARAMETERS

    with get_client(**_cluster_kwargs(args)) as client:
        s = run_demo(args.out, n_sources=args.n_sources, client=client, model_dir=args.models,
                     progress=not args.no_progress)
    m, inf = s["mock"], s["inference"]
    print(f"\nsb2dask: {inf['rows_in']} epoch spectra in, {inf['rows_out']} rows out "
          f"({inf['usable']} usable) in {inf['seconds']:.1f} s "
          f"({inf['spectra_per_s']:.0f} spectra/s); {inf['sources']['sources']} sources")
    if "p_binary_roc_auc" in m:
        against = ""
        if "p_binary_roc_auc_target" in m:
            against = (f" against every binary, {m['p_binary_roc_auc_target']:.3f} against "
                       f"the models' target ({m['detector_target']})")
        print(f"mock catalogue: SB2 detection ROC AUC {m['p_binary_roc_auc']:.3f}{against} "
              f"(median p_binary: SB2 {m['p_binary_median_sb2']:.2f}, "
              f"single {m['p_binary_median_single']:.2f})")
        print("  SB2 components, RMSE / MAE against the truth: " + ", ".join(
            f"{p} {m[f'{p}_rmse_sb2']:.3g} / {m[f'{p}_mae_sb2']:.3g}" for p in PARAMETERS))
    for r in s.get("real", []):
        print(f"real Gaia spectrum {r['file']} (source {r['source_id']}): p_binary "
              f"{r['p_binary']:.2f}, Teff {r['teff_1']:.0f}/{r['teff_2']:.0f} K, logg "
              f"{r['logg_1']:.2f}/{r['logg_2']:.2f}, [Fe/H] {r['feh_1']:+.2f}/{r['feh_2']:+.2f}, "
              f"flags {r['flag_boundary']}/{r['quality_flags']}")
    o = s["outputs"]
    print(f"outputs: {o['epochs']}, {o['sources']} and {o['summary']}")
    return 0


def _cmd_figures(args) -> int:
    from .evaluate.simulation_figures import figure_1, figure_2

    cfg = _simulation_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for fig in (figure_1(cfg, out / "fig1_rv_curve.png", index=args.index),
                figure_2(cfg, out / "fig2_spectra.png", index=args.index)):
        print(fig)
    return 0


def _add_simulation_options(p: argparse.ArgumentParser, seed: int | None = None,
                            binary_fraction: float | None = None) -> None:
    """Options of :class:`~sb2dask.simulate.config.SimulationConfig`; ``seed`` and
    ``binary_fraction`` are this command's defaults (None: the configuration's)."""
    g = p.add_argument_group("simulation")
    g.add_argument("--config", default=None, help="YAML file of SimulationConfig fields")
    g.add_argument("--library", default=None, help="'embedded', a grid file or a PHOENIX dir")
    g.add_argument("--seed", type=_non_negative_int, default=seed,
                   help=f"random seed (default {seed})" if seed is not None else
                   "random seed (default: the configuration's, 20250717)")
    g.add_argument("--binary-fraction", type=_fraction, default=binary_fraction,
                   help="fraction of SB2s, the rest single stars (default "
                        + (f"{binary_fraction})" if binary_fraction is not None else
                           "1.0: the paper's all-SB2 training set)"))
    g.add_argument("--snr", type=_positive_float, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="continuum S/N range (default 30 350; the dr4 recipe 5 150)")
    from .simulate.config import DEFAULT_OUTPUT_GRID, OUTPUT_GRIDS

    g.add_argument("--output-grid", choices=sorted(OUTPUT_GRIDS), default=None,
                   help=f"output pixels (default {DEFAULT_OUTPUT_GRID}, the shipped models' "
                        "grid; see docs/simulation.md)")
    g.add_argument("--resolution", type=_positive_float, default=None,
                   help="spectral resolution R of the paper's recipe (default 11500; the "
                        "realistic recipe draws R per spectrum)")
    g.add_argument("--recipe", choices=["realistic", "paper", "dr4"], default=None,
                   help="paper (default, what the paper-recipe ensembles were trained on): "
                        "Binnenfeld et al.'s recipe, every star at rest; realistic: stars at any "
                        "systemic velocity with Gaia's nuisances drawn per spectrum; dr4: "
                        "realistic, as "
                        "Gaia DR4 epoch spectra (961 pixels, CCD spectra combined, S/N 5-150 "
                        "from G_RVS; docs/simulation.md)")


#: ``command(parent, name, **kw)``: a subcommand parser of ``parent`` that also takes --debug
_Command = Callable[..., argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the subcommand; SUPPRESS keeps a subcommand's unset
    # option from overwriting the top-level one
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks instead of one-line errors")

    ap = argparse.ArgumentParser(prog="sb2dask", description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    ap.add_argument("--debug", action="store_true", default=False,
                    help="show Python tracebacks instead of one-line errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, **kw) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[common], **kw)

    # in the order of `sb2dask --help`
    for add in (_add_library_parsers, _add_simulate_parser, _add_semi_empirical_parser,
                _add_train_parser, _add_calibrate_parser, _add_finetune_parser, _add_infer_parser,
                _add_mock_parser, _add_evaluate_parser, _add_real_sky_parser,
                _add_compare_dpac_parser, _add_demo_parser, _add_figures_parser):
        add(sub, command)
    return ap


def _add_library_parsers(sub, command: _Command) -> None:
    """``library`` and its subcommands: info, build, validate, fetch-phoenix."""
    lib = command(sub, "library", help="spectral libraries: info, build, validate, "
                                       "fetch-phoenix").add_subparsers(
        dest="library_command", required=True, metavar="LIBRARY_COMMAND")
    p = command(lib, "info", help="nodes, ranges, size and provenance of a library")
    p.add_argument("--library", default="embedded",
                   help="'embedded' or a directory of PHOENIX files")
    p.set_defaults(func=_cmd_library_info)

    p = command(lib, "build", help="(re)build the embedded LTE grid (needs the 'grid' extra)")
    p.add_argument("--workdir", default="grid-build", help="finished nodes are kept here")
    p.add_argument("--out", default=None, help="grid file (default: the package's embedded grid)")
    p.add_argument("--mass-table", default=str(DEFAULT_MASS_TABLE),
                   help="Pecaut & Mamajek main-sequence table")
    p.add_argument("--assemble-only", action="store_true",
                   help="only pack finished nodes into the grid file")
    p.add_argument("--no-progress", action="store_true")
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_library_build)

    p = command(lib, "validate", help="compare a library with reference spectra (PHOENIX)")
    p.add_argument("--library", default="embedded")
    p.add_argument("--reference", default="../shared/data/phoenix",
                   help="directory of PHOENIX files (default: ../shared/data/phoenix)")
    p.add_argument("--out", default="docs/validation")
    p.set_defaults(func=_cmd_library_validate)

    p = command(lib, "fetch-phoenix", help="download the PHOENIX files a parameter range needs")
    p.add_argument("dest")
    p.add_argument("--teff-min", type=float, default=3500)
    p.add_argument("--teff-max", type=float, default=6500)
    p.add_argument("--logg-min", type=float, default=3.0)
    p.add_argument("--logg-max", type=float, default=6.0)
    p.add_argument("--feh-min", type=float, default=-4.0)
    p.add_argument("--feh-max", type=float, default=1.0)
    p.add_argument("--dry-run", action="store_true", help="print the URLs only")
    p.set_defaults(func=_cmd_library_fetch_phoenix)


def _add_simulate_parser(sub, command: _Command) -> None:
    """``simulate``: a training set into a Zarr store."""
    p = command(sub, "simulate", help="simulate a training set into a Zarr store")
    p.add_argument("--n", type=_positive_int, default=200000,
                   help="number of spectra (default 200000)")
    p.add_argument("--chunk", type=_positive_int, default=10000,
                   help="spectra per chunk/task (default 10000)")
    p.add_argument("--out", required=True, help="output Zarr directory")
    p.add_argument("--split", type=_fraction, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                   default=None, help="split fractions (default 0.75 0.15 0.10)")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing store")
    p.add_argument("--no-progress", action="store_true")
    _add_simulation_options(p)
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_simulate)


def _add_semi_empirical_parser(sub, command: _Command) -> None:
    """``semi-empirical``: a training store of SB2s and singles made of real spectra."""
    from .dataset.semi_empirical import DEFAULT_MAIN_SEQUENCE_TABLE
    from .simulate.config import DEFAULT_OUTPUT_GRID, OUTPUT_GRIDS

    p = command(sub, "semi-empirical",
                help="a training store of SB2s (and singles) made of real single-star spectra",
                description="Pair real single-star spectra (any format infer reads) with labels "
                            "(source_id join), move each star by an orbit, combine by light "
                            "ratio, bring the noise to the requested S/N, and write a store "
                            "that `sb2dask train` takes (docs/semi-empirical.md).")
    p.add_argument("spectra", nargs="+", help="files of real single-star spectra")
    p.add_argument("--labels", required=True,
                   help="label table (CSV/Parquet/FITS/ECSV): source_id, teff, logg, feh, "
                        "feh_err, vsini or vbroad, optional errors (GALAH/APOGEE names work)")
    p.add_argument("--out", required=True, help="output Zarr directory")
    p.add_argument("--n", type=_positive_int, default=20000, help="rows (default 20000)")
    p.add_argument("--chunk", type=_positive_int, default=5000,
                   help="rows per chunk/task (default 5000)")
    p.add_argument("--binary-fraction", type=_fraction, default=0.5,
                   help="fraction of SB2 rows, the rest single stars (default 0.5)")
    p.add_argument("--snr", type=_positive_float, nargs=2, metavar=("MIN", "MAX"),
                   default=(30.0, 350.0), help="requested continuum S/N range (default 30 350); "
                   "inputs below MIN are not used, and counted")
    p.add_argument("--k-sum", type=_non_negative_float, nargs=2, metavar=("MIN", "MAX"),
                   default=(10.0, 90.0), help="K1+K2 range [km/s] (default 10 90)")
    p.add_argument("--systemic-velocity", type=_number, nargs=2, metavar=("MIN", "MAX"),
                   default=(-300.0, 300.0), help="systemic velocity range [km/s] (default "
                   "-300 300, as the realistic recipe)")
    p.add_argument("--noise-exponent", type=_non_negative_float, nargs=2, default=(0.0, 0.5),
                   metavar=("MIN", "MAX"), help="alpha of sigma ~ flux^alpha (default 0 0.5)")
    p.add_argument("--noise-correlation", type=_non_negative_float, nargs=2, default=(0.0, 1.2),
                   metavar=("MIN", "MAX"), help="noise correlation length [pixels] (default 0 1.2)")
    p.add_argument("--gap-fraction", type=_fraction, default=0.05,
                   help="fraction of rows with a run of missing pixels (default 0.05)")
    p.add_argument("--feh-sigma", type=_non_negative_float, default=2.0,
                   help="a pair's [Fe/H] must agree within this many combined sigma (default 2)")
    p.add_argument("--ms-logg-tolerance", type=_non_negative_float, default=0.3,
                   help="[dex] distance from the dwarf sequence's logg for SB2 components "
                        "(default 0.3)")
    p.add_argument("--shared-stars", action="store_true",
                   help="every split draws from every star (default: disjoint stars per split)")
    p.add_argument("--input-noise", choices=["correlated", "white"], default="correlated",
                   help="how the inputs' errors propagate through resampling (default "
                        "correlated, as Gaia spectra)")
    p.add_argument("--velocity-label", choices=["vsini", "vbroad"], default="vsini",
                   help="label column stored as vsini (default vsini)")
    p.add_argument("--output-grid", choices=sorted(OUTPUT_GRIDS), default=DEFAULT_OUTPUT_GRID,
                   help=f"output pixels (default {DEFAULT_OUTPUT_GRID})")
    p.add_argument("--library", default="embedded",
                   help="library whose continuum fluxes give the light ratios (default embedded)")
    p.add_argument("--main-sequence-table", default=str(DEFAULT_MAIN_SEQUENCE_TABLE),
                   help="Pecaut & Mamajek dwarf table (Teff, logL, Msun)")
    p.add_argument("--seed", type=_non_negative_int, default=20261130)
    p.add_argument("--split", type=_fraction, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                   default=None, help="split fractions (default 0.75 0.15 0.10)")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing store")
    p.add_argument("--no-progress", action="store_true")
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_semi_empirical)


def _add_train_parser(sub, command: _Command) -> None:
    """``train``: the temperature, parameter and detector networks."""
    p = command(sub, "train", help="train the temperature, parameter and detector networks")
    p.add_argument("--store", required=True, action="append",
                   help="SB2 training set (Zarr: sb2dask simulate or semi-empirical); repeat to "
                        "train on several together (see --mix)")
    p.add_argument("--out", default="models", help="output directory for models and checkpoints")
    p.add_argument("--targets", nargs="*", default=["teff", "logg", "feh", "vsini"],
                   choices=["teff", "logg", "feh", "vsini"],
                   help="label networks to train (default all four); give none (--targets "
                        "alone) with --detector-store to train only the detector")
    p.add_argument("--detector-store", default=None, action="append",
                   help="store with singles and SB2s to train the SB2 detector on; repeat to "
                        "train on several together (see --detector-mix)")
    p.add_argument("--mix", type=_non_negative_float, nargs="+", default=None, metavar="F",
                   help="with several --store: the fraction of training rows from each, in "
                        "order (default: in proportion to their sizes); recorded in the "
                        "manifests")
    p.add_argument("--detector-mix", type=_non_negative_float, nargs="+", default=None,
                   metavar="F", help="the same for several --detector-store")
    p.add_argument("--ensemble", type=_positive_int, default=1,
                   help="members per target (default 1)")
    p.add_argument("--config", default=None, help="YAML file of TrainConfig fields")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--learning-rate", type=_positive_float, default=None)
    p.add_argument("--lr-schedule", choices=["plateau", "cosine", "none"], default=None)
    p.add_argument("--early-stopping", type=_positive_int, default=None)
    p.add_argument("--max-train", type=_positive_int, default=None)
    p.add_argument("--max-validation", type=_positive_int, default=None)
    p.add_argument("--validation-folds", type=_positive_int, default=None)
    p.add_argument("--temperature-model", default=None,
                   help="manifest of an already trained temperature model")
    p.add_argument("--seed", type=_non_negative_int, default=None)
    p.add_argument("--set", action="append", type=_target_setting, metavar="TARGET.FIELD=VALUE",
                   help="per-network override, e.g. --set teff.epochs=3 "
                        "--set p_binary.max_train=40000")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true")
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_train)


def _add_infer_parser(sub, command: _Command) -> None:
    """``infer``: parameters for catalogues of RVS spectra."""
    from .infer.config import PRECISIONS, REST_FRAME_MODES  # no torch, no Dask: --help is fast

    p = command(sub, "infer", help="predict parameters for catalogues of RVS spectra")
    p.add_argument("inputs", nargs="+", help="catalogue files (Gaia CSV/ECSV(.gz), VOTable, "
                                             "Parquet, FITS, Zarr)")
    p.add_argument("--out", required=True, help="output Parquet dataset (directory)")
    p.add_argument("--config", default=None,
                   help="YAML file of InferenceConfig fields (the options below override it)")
    p.add_argument("--models", default=None,
                   help="model directory, or a shipped set: 'students' (the default), three "
                        "distilled one-pass students as one calibrated mixture, validated on "
                        "real Gaia spectra, which also give light_fraction_faint and p_binary_err; "
                        "'fast', one student (a quarter faster end to end, for "
                        "DR4-scale runs); 'paper', the paper-recipe ensembles (stars at rest; "
                        "not for real spectra; docs/models.md)")
    p.add_argument("--partition-rows", type=_positive_int, default=None,
                   help="spectra per partition (default: sized from the worker memory limit)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="network arithmetic: fp32 (default, as evaluated) or bf16 (1.5-1.7x "
                        "faster end to end on CPUs with AVX512-BF16/AMX, and faster on GPUs; "
                        "see docs/inference.md)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="spectra per forward pass (default 256 on CPU, 2048 on GPU)")
    p.add_argument("--members", type=_positive_int, default=None,
                   help="ensemble members per network to use, or students of a student "
                        "ensemble (default: all; 1 is fastest and leaves the ensembles' per-epoch "
                        "_err columns and p_binary_err NaN)")
    p.add_argument("--rest-frame", choices=REST_FRAME_MODES, default=None,
                   help="measure and remove each spectrum's bulk radial velocity (rv_bulk) "
                        "before the networks: auto (default) as the models were trained, and "
                        "always for barycentric (Gaia DR4 epoch) spectra; on; off")
    p.add_argument("--fit", action="store_true", default=None,
                   help="also fit each spectrum with single- and two-star forward models: "
                        "component RVs, delta_bic and sb2_class (slow; docs/evidence.md)")
    p.add_argument("--fit-threshold", type=_fraction, default=None, metavar="P",
                   help="with --fit, fit only spectra with p_binary >= P (default 0: all)")
    p.add_argument("--fit-fast", action="store_true", default=None,
                   help="with --fit, the faster setting of the fits (about twice as fast; RVs "
                        "a little less precise; docs/evidence.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute everything, replacing what --out holds (default: continue "
                        "an earlier run with the same inputs and settings)")
    p.add_argument("--allow-unusable", action="store_true",
                   help="exit 0 even when most spectra are unusable (default: exit status 3, "
                        "with their count by quality flag)")
    p.add_argument("--no-progress", action="store_true")
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_infer)


def _add_mock_parser(sub, command: _Command) -> None:
    """``mock-catalogue``: a simulated epoch catalogue."""
    from .dataset.gaia_dr4 import FORMATS, STRUCTURES

    p = command(sub, "mock-catalogue", help="write a simulated epoch catalogue (bulk ECSV, or "
                "Gaia DR4 epoch spectra as DataLink delivers them)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layout", choices=["bulk", "dr4"], default="bulk",
                   help="bulk (default): Gaia bulk ECSV.gz files on the DR3 grid, stars at rest; "
                        "dr4: Gaia DR4 RVS epoch spectra (961-pixel grid, barycentric frame, "
                        "obs_time_rv, normalisation_method 0/3/4) in the archive's DataLink "
                        "structures and formats, under OUT/STRUCTURE/FORMAT/ (docs/dr4.md)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                   help="--layout dr4: file formats (default: all)")
    p.add_argument("--structures", nargs="+", choices=STRUCTURES, default=list(STRUCTURES),
                   help="--layout dr4: DATAMODEL_STANDARD (one row per pixel, one file per "
                        "source) and/or DATAMODEL_GAIA (arrays per row); default both")
    p.add_argument("--n-sources", type=_positive_int, default=1000,
                   help="number of sources (default 1000)")
    p.add_argument("--epochs", type=_positive_int, nargs=2, default=[1, 5],
                   metavar=("MIN", "MAX"), help="epochs per source (default 1 5)")
    p.add_argument("--files", type=_positive_int, default=4,
                   help="number of ECSV files (--layout dr4: DATAMODEL_GAIA files per format) "
                        "(default 4)")
    _add_simulation_options(p, seed=1, binary_fraction=0.5)
    p.set_defaults(func=_cmd_mock)


def _add_evaluate_parser(sub, command: _Command) -> None:
    """``evaluate``: the paper's tables and figures on the test split."""
    from .infer.config import REST_FRAME_MODES  # no torch, no Dask: --help is fast

    p = command(sub, "evaluate", help="the paper's Tables 4-5 and Figs. 3-6 on the test split, "
                                      "and detector and label quality per S/N bin")
    p.add_argument("--store", required=True, help="simulated SB2 store (its test split is used; "
                   "another pixel grid is resampled onto the models')")
    p.add_argument("--models", default=None,
                   help="model directory or shipped set ('students', the default; 'fast'; 'paper')")
    p.add_argument("--out", default="docs/evaluation")
    p.add_argument("--single-store", default=None, help="single-star store (Sect. 4.4 test)")
    p.add_argument("--detector-store", default=None,
                   help="mixed store for the detector (may be --store itself)")
    p.add_argument("--max-test", type=_positive_int, default=None)
    p.add_argument("--permutations", type=_positive_int, default=1000)
    p.add_argument("--rest-frame", choices=REST_FRAME_MODES, default="auto",
                   help="as for infer: auto follows the models' training frame; on removes each "
                        "spectrum's measured bulk velocity first (DR4 barycentric spectra)")
    p.set_defaults(func=_cmd_evaluate)


def _add_finetune_parser(sub, command: _Command) -> None:
    """``finetune``: a directory of students fine-tuned whole on other detector stores."""
    p = command(sub, "finetune", help="fine-tune a directory of students on detector stores "
                                      "(e.g. another S/N range) and recalibrate them; writes a "
                                      "new directory (docs/models.md)")
    p.add_argument("--models", default="students", help="student directory or preset (default "
                   "students); left as it is")
    p.add_argument("--stores", nargs="+", required=True, metavar="STORE",
                   help="detector stores (single stars and binaries): their train rows fit, "
                        "their validation rows calibrate; the classes are balanced per store")
    p.add_argument("--out", required=True, help="new model directory (must not exist)")
    p.add_argument("--epochs", type=_positive_int, default=2)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--distill-weight", type=float, default=1.0,
                   help="weight of the label means and widths kept near the untouched "
                        "student's (default 1)")
    p.add_argument("--truth-weight", type=float, default=1.0,
                   help="weight of the beta-NLL of the binaries' label truths (default 1)")
    p.add_argument("--margin", type=float, default=2.0,
                   help="leave out the pairs within this factor of the double_lined thresholds "
                        "(default 2; 0: none)")
    p.add_argument("--min-companion-signal", type=float, default=12.0,
                   help="leave out the double-lined pairs whose fainter star's light fraction "
                        "x S/N is below this (default 12; 0: none)")
    p.add_argument("--max-train", type=_positive_int, default=None,
                   help="at most this many training rows per store")
    p.add_argument("--max-validation", type=_positive_int, default=None,
                   help="at most this many validation rows per store")
    p.add_argument("--bridge-ca-ii", type=float, default=None, metavar="HALF_WIDTH",
                   help="make the students blind to the Ca II triplet's cores: the pixels "
                        "within this many Å of each line (in the students' frame) replaced by "
                        "a straight line before the network, in training and at inference "
                        "(recorded in the manifests; e.g. 1.0)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads")
    p.set_defaults(func=_cmd_finetune)


def _add_calibrate_parser(sub, command: _Command) -> None:
    """``calibrate``: the label uncertainties recalibrated on held-out spectra."""
    from .infer.config import REST_FRAME_MODES  # no torch, no Dask: --help is fast

    p = command(sub, "calibrate", help="recalibrate the label uncertainties of a model directory "
                                       "on held-out simulated SB2s (writes calibration.json)")
    p.add_argument("--models", required=True, help="model directory (written into)")
    p.add_argument("--store", required=True, help="simulated store of the recipe the models will "
                   "meet; never the store the calibration is then tested on")
    p.add_argument("--split", choices=["validation", "test", "train"], default="validation",
                   help="rows to calibrate on (default validation: the rows that never trained "
                        "the models; a fresh store made for calibration may use test)")
    p.add_argument("--max-n", type=_positive_int, default=None, help="at most this many rows")
    p.add_argument("--snr-edges", type=float, nargs="*", default=None, metavar="SNR",
                   help="fit one error model per S/N bin between these edges (default: one bin)")
    p.add_argument("--value-bins", type=_positive_int, default=4,
                   help="also fit one error model per bin of each label's predicted value, at "
                        "quantiles of the calibration rows (default 4; 1: no value bins)")
    p.add_argument("--predictions", default=None, metavar="NPZ",
                   help="cache of the uncalibrated predictions: written, and reused by a later "
                        "run on the same rows and weights (another binning in seconds)")
    p.add_argument("--rest-frame", choices=REST_FRAME_MODES, default="auto",
                   help="as for infer (default auto)")
    p.set_defaults(func=_cmd_calibrate)


def _add_real_sky_parser(sub, command: _Command) -> None:
    """``real-sky``: the real-sky validation report."""
    from .infer.config import REST_FRAME_MODES  # no torch, no Dask: --help is fast

    p = command(sub, "real-sky", help="the real-sky validation: real Gaia spectra at any shift, "
                                      "PHOENIX singles and SB2s rendered independently, noise")
    p.add_argument("--models", default=None,
                   help="model directory or shipped set ('students', the default; 'fast'; 'paper')")
    p.add_argument("--out", default="real-sky-report", help="report directory")
    p.add_argument("--gaia-dir", default="../shared/data/gaia_rvs",
                   help="real Gaia DR3 DataLink CSV spectra (default ../shared/data/gaia_rvs)")
    p.add_argument("--phoenix-dir", default="../shared/data/phoenix",
                   help="PHOENIX log-λ FITS files (default ../shared/data/phoenix)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--heldout-dir", default=None,
                      help="held-out real DataLink spectra (default: the three shipped in "
                           "sb2dask/data/real_sky, never used to tune anything)")
    held.add_argument("--no-heldout", action="store_true",
                      help="leave the held-out spectra out")
    p.add_argument("--no-twins", action="store_true",
                   help="leave out the controls: the PHOENIX cases made from the embedded grid "
                        "at the same labels (which failures are the library's, which the "
                        "detector's)")
    p.add_argument("--rest-frame", choices=REST_FRAME_MODES, default="auto",
                   help="as for infer (default auto)")
    p.add_argument("--fit", action="store_true",
                   help="also run the evidence fits (as infer --fit) and report their ΔBIC, "
                        "classes and sb2_class precision/recall")
    p.set_defaults(func=_cmd_real_sky)


def _add_compare_dpac_parser(sub, command: _Command) -> None:
    """``compare-dpac``: our per-transit results against DPAC's double-lined epoch parameters."""
    p = command(sub, "compare-dpac",
                help="agreement of our per-transit results with Gaia DR4's "
                     "rvs_epoch_parameters_double (RVs, Teff, v_broad; docs/inference.md)")
    p.add_argument("results", help="epoch table written by sb2dask infer (its --out)")
    p.add_argument("--dpac", nargs="+", required=True, metavar="FILE",
                   help="rvs_epoch_parameters_double file(s) from DataLink "
                        "(EPOCH_PARAMETERS_RVS_DOUBLE): CSV, ECSV, VOTable or FITS, gzip allowed")
    p.add_argument("--out", default="compare-dpac",
                   help="report directory: compare_dpac.md, compare_dpac.json, matched.parquet "
                        "(default compare-dpac)")
    p.add_argument("--columns", default=None, metavar="FILE",
                   help="YAML/JSON {canonical name: column} overriding the built-in names "
                        "(sb2dask.evaluate.dpac.DPAC_COLUMNS)")
    p.add_argument("--add-bary-corr", action="store_true",
                   help="add rad_vel_bary_corr to DPAC's RVs (for velocities not yet "
                        "barycentric; default: taken as barycentric, like DR4 epoch spectra)")
    p.set_defaults(func=_cmd_compare_dpac)


def _add_demo_parser(sub, command: _Command) -> None:
    """``demo``: the main job on the embedded defaults."""
    p = command(sub, "demo", help="the main job on the embedded defaults: mock catalogue "
                                   "(+ real spectra if present) -> shipped models -> Parquet")
    p.add_argument("--out", default="sb2dask-demo",
                   help="output directory (default: sb2dask-demo in the current directory)")
    p.add_argument("--n-sources", type=_positive_int, default=300,
                   help="sources of the mock catalogue (default 300)")
    p.add_argument("--models", default=None,
                   help="model directory or shipped set ('students', the default; 'fast'; 'paper')")
    p.add_argument("--no-progress", action="store_true")
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_demo)


def _add_figures_parser(sub, command: _Command) -> None:
    """``figures``: the paper's Figs. 1-2 as PNG."""
    p = command(sub, "figures", help="the paper's Figs. 1-2 from the simulator, as PNG")
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--index", type=_non_negative_int, default=None,
                   help="which simulated system to show (default: the first with both stars "
                        "clearly visible)")
    _add_simulation_options(p)
    p.set_defaults(func=_cmd_figures)


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``sb2dask``; returns the exit status (0 ok, 1 an expected error, 2 a wrong option,
    3 ``infer`` finished with most spectra unusable, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"sb2dask {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug or not isinstance(exc, expected_errors()):
            raise
        print(f"sb2dask {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_status", 1)


if __name__ == "__main__":
    sys.exit(main())
