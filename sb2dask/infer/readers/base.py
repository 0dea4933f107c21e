"""What every catalogue reader returns: the spectrum schema, flags and errors, the Gaia RVS grid.

Every reader yields pandas DataFrame partitions with exactly the columns of
:data:`SPECTRUM_SCHEMA`, in that order, plus optional pass-through columns whose names start with
``true_`` (the truth our simulated stores carry). A reader never drops a spectrum it could read:
spectrum-level problems set bits of ``read_flags`` (:class:`ReadFlag`) and the row is kept.
File-level problems (an unreadable file, a malformed header, a missing column, a row with the
wrong number of fields, text where an identifier belongs) raise :class:`ReaderError`, whose
message names the file and, where there is one, the line (1-based, text files) or the row
(0-based, binary tables).

A format module only parses: it turns its file into columns (ids, flux arrays as
:class:`RaggedColumn`, the wavelength grid or grids, flags only it can see) and hands each row
range to :func:`spectra_partition`, the one place where arrays are fitted to their grids,
flagged and assembled. :func:`read_in_ranges` is the one read loop, and the text formats share
:func:`read_text_columns`.

Wavelengths
-----------
``wave`` is in Å in **air**, the convention of the whole package (``sb2dask.library``, the
simulated stores). Gaia RVS spectra are published on a **vacuum** grid in nm, 846-870 nm in steps
of 0.01 nm, 2401 pixels (Gaia DR3 documentation, datamodel section 20.12.1 ``rvs_mean_spectrum``).
The datamodel page does not name the medium, so it was checked on the three real DataLink spectra
in ``shared/data/gaia_rvs``: their Ca II triplet cores sit at the vacuum wavelengths (8500.36,
8544.44, 8664.52 Å) to within 0.07 Å and 2.4 Å (24 pixels) away from the air ones. Readers of
Gaia products therefore convert ``λ_air = vac_to_air(10 λ_vac[nm])`` (IAU standard, Morton 2000;
:func:`sb2dask.library.wavelength.vac_to_air`) and the grid they emit is :data:`RVS_WAVE`.

Gaia DR4 epoch spectra
----------------------
DR4 publishes RVS **epoch** spectra (``rvs_epoch_spectrum``; pre-release data model, see
``docs/dr4.md``) on a grid of their own, 961 pixels at ``846.0 + 0.025 i`` nm in vacuum, in the
solar barycentric frame (:data:`sb2dask.gaia.DR4_EPOCH_WAVE`), one spectrum per transit. Spectra
are recognised by content: wavelengths on that grid (or, in formats without a wavelength column,
961-pixel arrays) get the shared :data:`~sb2dask.gaia.DR4_EPOCH_WAVE` object and ``frame =
"barycentric"``; the DR3 grid gives ``"rest"``, any other ``"unknown"``. The per-transit columns
:data:`TRANSIT_COLUMNS` (``obs_time_rv``, ``normalisation_method``, ``combined_ccds``,
``deblended_ccds``) are passed on when a file has them, in any letter case.
:func:`spectra_partition` applies the DR4 rules in one place: a pixel whose ``flux_error`` is NaN
on the DR4 grid (every CCD masked) becomes a missing pixel; ``normalisation_method`` 0 (raw flux)
is divided by its continuum level (:func:`sb2dask.observe.preprocess.normalise_to_continuum`); 4
and unknown codes are kept as delivered and flagged.
"""

from __future__ import annotations

import enum
import gzip
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import yaml

from ...gaia import (
    DR4_EPOCH_WAVE,
    DR4_NORMALISATION_METHODS,
    FRAME_BARYCENTRIC,
    FRAME_REST,
    FRAME_UNKNOWN,
    RVS_N_PIX,
    RVS_WAVE,
    RVS_WAVE_START_NM,
    RVS_WAVE_STEP_NM,
    RVS_WAVE_VAC_NM,
    gaia_grid,
)
from ...labels import TRUE_PREFIX
from ...library.wavelength import vac_to_air
from ...observe.preprocess import normalise_to_continuum

__all__ = [
    "SchemaColumn", "SPECTRUM_SCHEMA", "SPECTRUM_COLUMNS", "SPECTRUM_META", "TRUE_PREFIX",
    "EPOCH_COLUMNS", "TRANSIT_COLUMNS", "find_column", "frame_of_grid", "transit_columns",
    "EcsvColumn", "EcsvHeader", "parse_ecsv_header", "PixelSpectra", "group_pixels",
    "pixel_partition", "gaia_grid", "grids_for_lengths", "match_grids",
    "text_layout", "text_integers", "text_numbers", "integer_ids", "pixel_table", "group_tables",
    "ReadFlag", "INFORMATIONAL_FLAGS", "ReaderError", "CatalogueFormat",
    "DEFAULT_PARTITION_ROWS",
    "RVS_N_PIX", "RVS_WAVE_START_NM", "RVS_WAVE_STEP_NM", "RVS_WAVE_VAC_NM", "RVS_WAVE",
    "meta_with", "build_partition", "object_column", "spectrum_flags", "duplicate_mask",
    "fit_rows", "fit_to_grids", "RaggedColumn", "duplicate_flags", "spectra_partition",
    "consecutive_ranges", "read_in_ranges", "parse_float_strings", "parse_int_strings",
    "wave_to_air_angstrom", "read_bytes", "read_head", "leading_comment_lines", "first_fields",
    "read_text_columns",
]

#: Rows per partition when the caller does not say (~90 MB of float32 flux and errors at 2401 px).
DEFAULT_PARTITION_ROWS = 5000
#: Input columns read as ``epoch_id``, first match wins (Gaia epoch products call it transit_id).
EPOCH_COLUMNS = ("epoch_id", "transit_id")
#: Per-transit scalar columns of Gaia DR4 epoch spectra passed on to the output when a file has
#: them: name -> (dtype, the value that stands for absent or null).
TRANSIT_COLUMNS: dict[str, tuple[str, float]] = {
    "obs_time_rv": ("float64", np.nan),
    "normalisation_method": ("int16", -1),
    "combined_ccds": ("int16", -1),
    "deblended_ccds": ("int16", -1),
}


@dataclass(frozen=True, slots=True)
class SchemaColumn:
    """One column of the spectrum schema: name, pandas dtype, meaning."""

    name: str
    dtype: str
    description: str


#: The columns every reader returns, in order. ``wave``, ``flux`` and ``flux_error`` hold one numpy
#: array per row; ``len(flux) == len(wave)`` holds for every row (see ``ReadFlag.WRONG_LENGTH``).
SPECTRUM_SCHEMA: tuple[SchemaColumn, ...] = (
    SchemaColumn("source_id", "int64", "Gaia source_id (simulated stores: the global row index)"),
    SchemaColumn("epoch_id", "int64", "transit/epoch identifier; -1 for mean spectra"),
    SchemaColumn("wave", "object", "float64 array, air wavelength [Å]; rows on one grid share one "
                 "array object"),
    SchemaColumn("flux", "object", "float32 array, normalised flux; NaN where the input was null"),
    SchemaColumn("flux_error", "object", "float32 array, 1-sigma flux uncertainty, or None when "
                 "the format has none"),
    # "str" is pandas' default string dtype: object in pandas 2, StringDtype in pandas 3
    SchemaColumn("file", "str", "the path the row was read from"),
    SchemaColumn("row", "int64", "0-based row of the spectrum in that file (DataLink CSV: the data "
                 "row of its first pixel)"),
    SchemaColumn("read_flags", "int32", "ReadFlag bits for problems found while reading"),
    SchemaColumn("obs_time_rv", "float64", "Gaia DR4 epoch spectra: time of the transit, "
                 "BJD(TCB) − 2455197.5 [d]; NaN when the input has none (mean spectra)"),
    SchemaColumn("normalisation_method", "int16", "Gaia DR4 epoch spectra: how DPAC normalised "
                 "the flux (sb2dask.gaia.DR4_NORMALISATION_METHODS); -1 when absent or null"),
    SchemaColumn("combined_ccds", "int16", "number of CCD spectra combined; -1 when absent"),
    SchemaColumn("deblended_ccds", "int16", "number of deblended CCD spectra combined; -1 when "
                 "absent"),
    SchemaColumn("frame", "str", "reference frame of the wavelengths, known from the grid: "
                 "'rest' (Gaia DR3 mean spectra), 'barycentric' (Gaia DR4 epoch spectra), "
                 "'unknown'"),
)
SPECTRUM_COLUMNS: tuple[str, ...] = tuple(c.name for c in SPECTRUM_SCHEMA)


def meta_with(passthrough: Mapping[str, np.dtype] | None = None) -> pd.DataFrame:
    """An empty DataFrame of the spectrum schema plus pass-through columns, for Dask ``meta``.

    Parameters
    ----------
    passthrough : mapping of str to numpy dtype, optional
        ``true_*`` column names and dtypes, appended in the order given.
    """
    cols = {c.name: pd.Series([], dtype=c.dtype) for c in SPECTRUM_SCHEMA}
    for name, dtype in (passthrough or {}).items():
        cols[name] = pd.Series([], dtype=dtype)
    return pd.DataFrame(cols)


#: Empty DataFrame with the schema's dtypes, for ``meta=`` in Dask.
SPECTRUM_META = meta_with()


class ReadFlag(enum.IntFlag):
    """Spectrum-level problems found while reading; the row is kept and these bits are set.

    The bits of :data:`INFORMATIONAL_FLAGS` (``NULL_PIXELS``, ``NEGATIVE_FLUX``,
    ``UNSORTED_WAVE``) describe spectra that are still usable once NaN pixels are masked and the
    grid sorted; the others mark spectra a pipeline should normally skip.
    """

    NONE = 0
    #: Every flux pixel is NaN (null, NaN or unparseable in the input, or the whole array null).
    ALL_NULL = 1 << 0
    #: Some (not all) flux pixels are NaN: null or NaN in the input, unparseable text, or (Gaia
    #: DR4 epoch grid) a NaN flux_error, which DR4 gives where every CCD was masked.
    NULL_PIXELS = 1 << 1
    #: The input array length differed from the header's declared length or from the wavelength
    #: grid; flux (and flux_error) were truncated or NaN-padded to ``len(wave)``.
    WRONG_LENGTH = 1 << 2
    #: Text where a number belongs in an array element (or a whole array field that is not an
    #: array); those pixels are NaN.
    NOT_NUMERIC = 1 << 3
    #: ±inf in flux or flux_error (kept as read).
    NON_FINITE = 1 << 4
    #: Some flux pixel is negative.
    NEGATIVE_FLUX = 1 << 5
    #: Some flux_error is zero or negative, or null where the flux is not.
    BAD_FLUX_ERROR = 1 << 6
    #: The same (source_id, epoch_id) appears more than once in the file; every occurrence is
    #: flagged.
    DUPLICATE_ID = 1 << 7
    #: Gaia bulk file: the source's HEALPix level-8 index ``source_id >> 43`` lies outside the
    #: ``XXXXXX-YYYYYY`` range in the file name.
    SOURCE_OUTSIDE_FILE_RANGE = 1 << 8
    #: The input wavelengths were not strictly increasing (DataLink CSV pixels are sorted by
    #: wavelength; a duplicated wavelength stays).
    UNSORTED_WAVE = 1 << 9
    #: Gaia DR4 ``normalisation_method`` 0 (a double-lined transit delivered on its raw flux
    #: scale): flux and flux_error were divided by the continuum level that preprocessing checks
    #: and the training spectra have (:func:`sb2dask.observe.preprocess.normalise_to_continuum`).
    RENORMALISED = 1 << 10
    #: The flux is on no normalised scale and was kept as delivered: ``normalisation_method`` 4
    #: (negative median, poor quality), or 0 without a measurable continuum level (no positive
    #: continuum-region median).
    NOT_NORMALISED = 1 << 11
    #: ``normalisation_method`` is null or a code outside
    #: :data:`sb2dask.gaia.DR4_NORMALISATION_METHODS`; the flux was kept as delivered.
    UNKNOWN_NORMALISATION = 1 << 12


#: Bits that describe a usable spectrum (NaN pixels to mask, negative noise, a sorted grid, a
#: raw-flux transit brought to the normalised scale): ``read_flags & ~INFORMATIONAL_FLAGS == 0``
#: means nothing was wrong with the row.
INFORMATIONAL_FLAGS = (ReadFlag.NULL_PIXELS | ReadFlag.NEGATIVE_FLUX | ReadFlag.UNSORTED_WAVE
                       | ReadFlag.RENORMALISED)


def _rebuild_reader_error(path, message, line, row):
    return ReaderError(path, message, line=line, row=row)


class ReaderError(ValueError):
    """A file cannot be read; the message names the file and, where relevant, the line or row.

    Parameters
    ----------
    path : str or Path
        The file (or store) being read.
    message : str
        What was found and what was expected.
    line : int, optional
        1-based line number in a text file (after decompression).
    row : int, optional
        0-based row in a binary table or array store.
    """

    def __init__(self, path: str | Path, message: str, *, line: int | None = None,
                 row: int | None = None) -> None:
        self.path = str(path)
        self.message = message
        self.line = line
        self.row = row
        where = (f", line {line}" if line is not None else "") + \
                (f", row {row} (0-based)" if row is not None else "")
        super().__init__(f"{self.path}{where}: {message}")

    def __reduce__(self):  # Dask ships errors between processes; keep line/row through pickling
        return _rebuild_reader_error, (self.path, self.message, self.line, self.row)


@dataclass(frozen=True, slots=True)
class CatalogueFormat:
    """One catalogue format: how to recognise it and how to read it.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"gaia_bulk_ecsv"``.
    identify : callable ``(path) -> bool``
        Cheap test on the name and first bytes; never raises.
    read : callable ``(path, *, partition_rows) -> Iterator[DataFrame]``
        Every spectrum of the file, in file order, in partitions of at most ``partition_rows``.
    passthrough : callable ``(path) -> dict[str, numpy.dtype]``
        The ``true_*`` columns the file will yield and their dtypes, read from headers only.
    row_ranges : callable ``(path, partition_rows) -> list[(start, stop)]``, optional
        Row ranges covering the file, for formats whose row count is cheap to know.
    read_rows : callable ``(path, start, stop) -> DataFrame``, optional
        The spectra of rows ``start..stop-1``; present exactly when ``row_ranges`` is.
    """

    name: str
    identify: Callable[[Path], bool]
    read: Callable[..., Iterator[pd.DataFrame]]
    passthrough: Callable[[Path], dict[str, np.dtype]]
    row_ranges: Callable[[Path, int], list[tuple[int, int]]] | None = None
    read_rows: Callable[[Path, int, int], pd.DataFrame] | None = None

    @property
    def splittable(self) -> bool:
        """True when a file can be split into row ranges read independently."""
        return self.row_ranges is not None


# ---------------------------------------------------------------------------------------------
# Building partitions


def object_column(items: Sequence) -> np.ndarray:
    """A 1-d object array holding ``items`` as they are (numpy would stack equal-length arrays)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: a grid shared by many rows must not be changed through one of them."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.setflags(write=False)
    return view


def frame_of_grid(wave: np.ndarray) -> str:
    """The reference frame a grid object stands for: ``"rest"`` for :data:`RVS_WAVE` (DR3 mean
    spectra), ``"barycentric"`` for :data:`~sb2dask.gaia.DR4_EPOCH_WAVE` (DR4 epoch spectra),
    ``"unknown"`` for any other array (readers map the Gaia grids to those shared objects)."""
    if wave is RVS_WAVE:
        return FRAME_REST
    if wave is DR4_EPOCH_WAVE:
        return FRAME_BARYCENTRIC
    return FRAME_UNKNOWN


def _row_frames(wave, n: int) -> np.ndarray:
    """``frame_of_grid`` of every row (object array of str, shape (n,))."""
    if isinstance(wave, np.ndarray) and wave.dtype != object:
        return np.full(n, frame_of_grid(wave), dtype=object)
    return np.array([frame_of_grid(w) for w in wave], dtype=object)


def transit_columns(transit: Mapping[str, np.ndarray] | None, n: int) -> dict[str, np.ndarray]:
    """The :data:`TRANSIT_COLUMNS` of ``n`` rows in their schema dtypes.

    Parameters
    ----------
    transit : mapping of str to array_like (n,), optional
        The columns a file had, as numbers with NaN for null; absent ones get their default
        (NaN or -1), as do null entries of integer columns.
    """
    out = {}
    for name, (dtype, missing) in TRANSIT_COLUMNS.items():
        values = None if transit is None else transit.get(name)
        if values is None:
            out[name] = np.full(n, missing, dtype=dtype)
            continue
        values = np.asarray(values, dtype=np.float64)
        out[name] = np.where(np.isfinite(values), values, missing).astype(dtype)
    return out


def build_partition(*, source_id, epoch_id, wave, flux, flux_error, file: str | Path, row,
                    read_flags, passthrough: Mapping[str, np.ndarray] | None = None,
                    transit: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Assemble one partition in the schema's column order and dtypes.

    Parameters
    ----------
    source_id, epoch_id, row : array_like of int, shape (n,)
    wave : ndarray (n_pix,) or sequence of n ndarrays
        One grid shared by every row (stored as the same object in each row), or one per row;
        the ``frame`` column follows from it (:func:`frame_of_grid`).
    flux : ndarray (n, n_pix) or sequence of n float32 ndarrays
    flux_error : like ``flux``, or None when the format has none
    file : str or Path
    read_flags : array_like of int, shape (n,)
    passthrough : mapping of str to ndarray (n,), optional
        ``true_*`` columns, appended in the order given.
    transit : mapping of str to ndarray (n,), optional
        Any of :data:`TRANSIT_COLUMNS` (numbers, NaN for null; :func:`transit_columns`).
    """
    n = len(source_id)
    frames = _row_frames(wave, n)
    if isinstance(wave, np.ndarray) and wave.dtype != object:
        waves = object_column([_read_only(wave)] * n)
    else:
        shared: dict[int, np.ndarray] = {}
        waves = object_column([shared.setdefault(id(w), _read_only(w)) for w in wave])
    errors = object_column([None] * n) if flux_error is None else object_column(list(flux_error))
    path = str(file)
    cols = {
        "source_id": np.asarray(source_id, dtype=np.int64),
        "epoch_id": np.asarray(epoch_id, dtype=np.int64),
        "wave": waves,
        "flux": object_column(list(flux)),  # rows of a 2-d array are views, not copies
        "flux_error": errors,
        "file": pd.Series([path] * n, dtype="str"),
        "row": np.asarray(row, dtype=np.int64),
        "read_flags": np.asarray(read_flags, dtype=np.int32),
        **transit_columns(transit, n),
        "frame": pd.Series(frames, dtype="str"),
    }
    for name, values in (passthrough or {}).items():
        cols[name] = np.asarray(values)
    return pd.DataFrame(cols, index=pd.RangeIndex(n))


def spectrum_flags(flux, flux_error=None) -> np.ndarray:
    """Pixel-level :class:`ReadFlag` bits of spectra: nulls, infinities, negative flux, bad errors.

    Parameters
    ----------
    flux : ndarray (n, n_pix) or sequence of n 1-d arrays
    flux_error : like ``flux`` or None

    Returns
    -------
    ndarray of int32, shape (n,)
    """
    if isinstance(flux, np.ndarray) and flux.ndim == 2 and (
            flux_error is None or (isinstance(flux_error, np.ndarray) and flux_error.ndim == 2)):
        return _flags_2d(flux, flux_error)
    errs = [None] * len(flux) if flux_error is None else list(flux_error)
    out = np.zeros(len(flux), dtype=np.int32)
    for i, (f, e) in enumerate(zip(flux, errs)):
        out[i] = _flags_2d(np.asarray(f)[None, :],
                           None if e is None else np.asarray(e)[None, :])[0]
    return out


def _flags_2d(flux: np.ndarray, err: np.ndarray | None) -> np.ndarray:
    nan = np.isnan(flux)
    n_nan = nan.sum(axis=1)
    flags = np.zeros(flux.shape[0], dtype=np.int32)
    flags |= np.where(n_nan == flux.shape[1], ReadFlag.ALL_NULL, 0).astype(np.int32)
    flags |= np.where((n_nan > 0) & (n_nan < flux.shape[1]), ReadFlag.NULL_PIXELS, 0
                      ).astype(np.int32)
    inf = np.isinf(flux).any(axis=1)
    with np.errstate(invalid="ignore"):
        flags |= np.where((flux < 0).any(axis=1), ReadFlag.NEGATIVE_FLUX, 0).astype(np.int32)
        if err is not None and err.shape == flux.shape:
            inf |= np.isinf(err).any(axis=1)
            bad = (err <= 0) | (np.isnan(err) & ~nan)
            flags |= np.where(bad.any(axis=1), ReadFlag.BAD_FLUX_ERROR, 0).astype(np.int32)
    flags |= np.where(inf, ReadFlag.NON_FINITE, 0).astype(np.int32)
    return flags


def duplicate_mask(source_id: np.ndarray, epoch_id: np.ndarray) -> np.ndarray:
    """True for every occurrence of a (source_id, epoch_id) pair that appears more than once."""
    keys = pd.DataFrame({"s": np.asarray(source_id), "e": np.asarray(epoch_id)})
    return keys.duplicated(keep=False).to_numpy()


def fit_rows(values: np.ndarray, offsets: np.ndarray, n_pix: int,
             null_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows (concatenated values + offsets) as an (n, n_pix) matrix.

    Rows longer than ``n_pix`` are truncated, shorter ones NaN-padded; null rows are all NaN.

    Parameters
    ----------
    values : ndarray of float32, all rows' elements concatenated
    offsets : ndarray of int, shape (n + 1,); row i is ``values[offsets[i]:offsets[i+1]]``
    n_pix : int
    null_rows : ndarray of bool (n,), optional
        Rows whose whole field was null: all NaN and not counted as wrong length.

    Returns
    -------
    matrix : ndarray of float32, shape (n, n_pix)
    wrong_length : ndarray of bool, shape (n,)
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    null_rows = np.zeros(n, bool) if null_rows is None else np.asarray(null_rows, bool)
    wrong = (lengths != n_pix) & ~null_rows
    if n and not wrong.any() and not null_rows.any():
        return values[offsets[0]:offsets[-1]].reshape(n, n_pix), wrong  # common case: a view
    out = np.full((n, n_pix), np.nan, dtype=np.float32)
    good = np.flatnonzero(~wrong & ~null_rows)
    if good.size:
        idx = offsets[good][:, None] + np.arange(n_pix)
        out[good] = values[idx]
    for i in np.flatnonzero(wrong):
        k = min(lengths[i], n_pix)
        out[i, :k] = values[offsets[i]:offsets[i] + k]
    return out, wrong


def fit_to_grids(values: np.ndarray, offsets: np.ndarray, lengths, null_rows=None):
    """Like :func:`fit_rows` with one target length per row (rows on different grids).

    Returns
    -------
    rows : ndarray (n, n_pix) when every target length is equal, else a list of n arrays
    wrong_length : ndarray of bool, shape (n,)
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0 or (lengths == lengths[0]).all():
        return fit_rows(values, offsets, int(lengths[0]) if lengths.size else 0, null_rows)
    null_rows = np.zeros(len(lengths), bool) if null_rows is None else np.asarray(null_rows)
    rows, wrong = [], np.zeros(len(lengths), bool)
    for i, k in enumerate(lengths):
        m, w = fit_rows(values, offsets[i:i + 2], int(k), null_rows[i:i + 1])
        rows.append(m[0])
        wrong[i] = w[0]
    return rows, wrong


# ---------------------------------------------------------------------------------------------
# The core every reader shares: columnar spectra -> one partition, and the read loop


@dataclass(frozen=True, slots=True)
class RaggedColumn:
    """An array column of ``n`` rows held columnar: all rows' elements in one array.

    Attributes
    ----------
    values : ndarray of float32
        Every row's elements, concatenated.
    offsets : ndarray of int64, shape (n + 1,)
        Row i is ``values[offsets[i]:offsets[i + 1]]``; they need not start at 0, so the
        offsets of some rows of a column (:meth:`rows`) index the same ``values``.
    null_rows : ndarray of bool (n,), optional
        Rows whose whole field was null: all NaN, and not counted as of the wrong length.
    not_numeric : ndarray of bool (n,), optional
        Rows that had text where a number belongs (their ``ReadFlag.NOT_NUMERIC``).
    """

    values: np.ndarray
    offsets: np.ndarray
    null_rows: np.ndarray | None = None
    not_numeric: np.ndarray | None = None

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> RaggedColumn:
        """The rows of an ``(n, n_pix)`` matrix (a view when the matrix is C-contiguous)."""
        n, n_pix = matrix.shape
        return cls(matrix.reshape(-1), np.arange(n + 1, dtype=np.int64) * n_pix)

    def rows(self, start: int, stop: int) -> RaggedColumn:
        """Rows ``start..stop-1``, sharing :attr:`values`."""
        def part(a):
            return None if a is None else a[start:stop]

        return RaggedColumn(self.values, self.offsets[start:stop + 1], part(self.null_rows),
                            part(self.not_numeric))


def duplicate_flags(source_id: np.ndarray, epoch_id: np.ndarray) -> np.ndarray:
    """``ReadFlag.DUPLICATE_ID`` (int32, shape (n,)) on every occurrence of a (source_id,
    epoch_id) pair that appears more than once, 0 elsewhere; pass a whole file's ids."""
    return np.where(duplicate_mask(source_id, epoch_id), ReadFlag.DUPLICATE_ID, 0
                    ).astype(np.int32)


def spectra_partition(*, source_id, epoch_id, row, wave, flux: RaggedColumn,
                      flux_error: RaggedColumn | None, file: str | Path, read_flags=None,
                      passthrough: Mapping[str, np.ndarray] | None = None,
                      transit: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One partition from spectra held columnar: the core of every reader.

    Each row's flux (and flux_error) is fitted to the length of its grid (truncated or
    NaN-padded: ``WRONG_LENGTH``); ``NOT_NUMERIC`` comes from the columns, ``UNSORTED_WAVE``
    from the grid(s); the Gaia DR4 rules apply (:func:`_dr4_rules`: masked pixels, the
    ``normalisation_method`` codes); the pixel-level bits come from :func:`spectrum_flags`, all
    on top of the ``read_flags`` the format found itself; :func:`build_partition` assembles the
    rows.

    Parameters
    ----------
    source_id, epoch_id, row : array_like of int, shape (n,)
    wave : ndarray (n_pix,) or sequence of n 1-d ndarrays
        Air wavelengths [Å]: one grid shared by every row, or one per row.
    flux : RaggedColumn of n rows
    flux_error : RaggedColumn of n rows, or None when the format has none
    file : str or Path
    read_flags : array_like of int, shape (n,), optional
        :class:`ReadFlag` bits found by the format (duplicated ids, a source outside the file's
        range, a declared array length, unsorted input pixels, ...).
    passthrough : mapping of str to ndarray (n,), optional
        ``true_*`` columns, appended in the order given.
    transit : mapping of str to ndarray (n,), optional
        Any of :data:`TRANSIT_COLUMNS` the file has (numbers, NaN for null).
    """
    n = len(row)
    flags = np.zeros(n, np.int32) if read_flags is None else np.array(read_flags, np.int32)
    if isinstance(wave, np.ndarray) and wave.dtype != object:
        lengths = np.full(n, wave.size)
        if np.any(np.diff(wave) <= 0):
            flags |= np.int32(ReadFlag.UNSORTED_WAVE)
    else:
        seen: dict[int, tuple[int, bool]] = {}  # rows share grid objects: test each once
        for w in wave:
            if id(w) not in seen:
                seen[id(w)] = (w.size, bool(np.any(np.diff(w) <= 0)))
        lengths = [seen[id(w)][0] for w in wave]
        flags |= np.where([seen[id(w)][1] for w in wave], ReadFlag.UNSORTED_WAVE, 0
                          ).astype(np.int32)
    columns = [c for c in (flux, flux_error) if c is not None]
    fitted = [fit_to_grids(c.values, c.offsets, lengths, c.null_rows) for c in columns]
    for c, (_, wrong) in zip(columns, fitted):
        flags |= np.where(wrong, ReadFlag.WRONG_LENGTH, 0).astype(np.int32)
        if c.not_numeric is not None:
            flags |= np.where(c.not_numeric, ReadFlag.NOT_NUMERIC, 0).astype(np.int32)
    flux_rows = fitted[0][0]
    error_rows = fitted[1][0] if flux_error is not None else None
    flux_rows, error_rows = _dr4_rules(wave, flux_rows, error_rows, transit, flags)
    flags |= spectrum_flags(flux_rows, error_rows)
    return build_partition(source_id=source_id, epoch_id=epoch_id, wave=wave, flux=flux_rows,
                           flux_error=error_rows, file=file, row=row, read_flags=flags,
                           passthrough=passthrough, transit=transit)


def _dr4_rules(wave, flux, error, transit, flags: np.ndarray):
    """The Gaia DR4 epoch-spectrum conventions, applied to fitted rows (``flags`` updated in
    place; new arrays where something changes, the input is never written to).

    * On the DR4 grid a NaN ``flux_error`` marks a pixel where every CCD was masked: its flux
      becomes NaN too (a missing pixel, ``NULL_PIXELS``), not a bad error.
    * ``normalisation_method`` 0: flux and flux_error divided by the continuum level
      (``RENORMALISED``; ``NOT_NORMALISED`` when no positive level can be measured); 4:
      ``NOT_NORMALISED``; null or any code outside
      :data:`~sb2dask.gaia.DR4_NORMALISATION_METHODS`: ``UNKNOWN_NORMALISATION``. Every row is
      kept.

    Returns
    -------
    flux, flux_error : like the input (an (n, n_pix) matrix or a list of rows)
    """
    n = len(flags)
    shared = isinstance(wave, np.ndarray) and wave.dtype != object
    matrix = isinstance(flux, np.ndarray) and flux.ndim == 2
    dr4 = np.flatnonzero(_row_frames(wave, n) == FRAME_BARYCENTRIC)
    if error is not None and dr4.size:
        if matrix:
            masked = np.isnan(error[dr4]) & ~np.isnan(flux[dr4])
            if masked.any():
                flux = np.array(flux)  # a copy: the rows may view a read-only buffer
                flux[dr4] = np.where(masked, np.nan, flux[dr4])
        else:
            flux = list(flux)
            for i in dr4:
                masked = np.isnan(error[i]) & ~np.isnan(flux[i])
                if masked.any():
                    flux[i] = np.where(masked, np.float32(np.nan), flux[i])
    method = None if transit is None else transit.get("normalisation_method")
    if method is None:
        return flux, error
    method = np.asarray(method, dtype=np.float64)
    known = np.isin(method, list(DR4_NORMALISATION_METHODS))
    flags |= np.where(known, 0, ReadFlag.UNKNOWN_NORMALISATION).astype(np.int32)
    flags |= np.where(method == 4, ReadFlag.NOT_NORMALISED, 0).astype(np.int32)
    raw = np.flatnonzero(method == 0)
    if raw.size == 0:
        return flux, error
    flux = np.array(flux) if matrix else list(flux)
    error = None if error is None else (np.array(error) if matrix else list(error))
    if shared and matrix:
        f, e, level = normalise_to_continuum(wave, flux[raw],
                                             None if error is None else error[raw])
        flux[raw] = f
        if error is not None:
            error[raw] = e
    else:
        level = np.empty(raw.size)
        for k, i in enumerate(raw):
            w = wave if shared else wave[i]
            f, e, lv = normalise_to_continuum(w, flux[i][None, :], None if error is None
                                              else error[i][None, :])
            flux[i], level[k] = f[0], lv[0]
            if error is not None:
                error[i] = e[0]
    ok = np.isfinite(level)
    flags[raw[ok]] |= np.int32(ReadFlag.RENORMALISED)
    flags[raw[~ok]] |= np.int32(ReadFlag.NOT_NORMALISED)
    return flux, error


def consecutive_ranges(n: int, partition_rows: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``partition_rows`` rows covering rows ``0..n-1``."""
    return [(a, min(n, a + partition_rows)) for a in range(0, n, partition_rows)]


def read_in_ranges(partition_rows: int, open_file: Callable[[], object],
                   row_ranges: Callable[[object, int], list[tuple[int, int]]],
                   read_rows: Callable[[object, int, int], pd.DataFrame]
                   ) -> Iterator[pd.DataFrame]:
    """The read loop of every reader: one partition per row range, in file order.

    Nothing is read before the first partition is asked for.

    Parameters
    ----------
    partition_rows : int
        Positive; passed to ``row_ranges``.
    open_file : callable ``() -> handle``
        Opens (or parses) the file once; formats that re-open it per range return the path.
    row_ranges : callable ``(handle, partition_rows) -> list[(start, stop)]``
    read_rows : callable ``(handle, start, stop) -> DataFrame``
    """
    if partition_rows < 1:
        raise ValueError(f"partition_rows must be positive, got {partition_rows}")
    handle = open_file()
    for start, stop in row_ranges(handle, partition_rows):
        yield read_rows(handle, start, stop)


def find_column(names, *wanted: str) -> str | None:
    """The name among ``names`` that equals one of ``wanted`` ignoring letter case (the first
    of ``wanted`` that is there wins), or None. Data models in prerelease spell columns in
    either case (``SOURCE_ID``, ``source_id``); readers look every column up through this."""
    lower: dict[str, str] = {}
    for name in names:
        lower.setdefault(str(name).lower(), str(name))
    for w in wanted:
        if w.lower() in lower:
            return lower[w.lower()]
    return None


def grids_for_lengths(lengths, default: np.ndarray = RVS_WAVE):
    """Gaia grids of array rows in formats without a wavelength column, known by length.

    Rows of 2401 pixels are on the DR3 grid (:data:`RVS_WAVE`), rows of 961 on the DR4 epoch
    grid; any other length is fitted (and flagged ``WRONG_LENGTH``) to ``default``.

    Returns
    -------
    ndarray (one grid shared by all rows) or list of n grids (shared objects)
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    grids, rows = {}, []
    for k in np.unique(lengths):
        match = gaia_grid(n_pix=int(k))
        grids[int(k)] = default if match is None else match[0]
    if len({id(g) for g in grids.values()}) <= 1:
        return next(iter(grids.values()), default)
    rows = [grids[int(k)] for k in lengths]
    return rows


def match_grids(path, values: np.ndarray, offsets: np.ndarray, unit: str | None = "nm",
                medium: str | None = "vacuum") -> tuple[object, np.ndarray]:
    """Per-row wavelength arrays as air grids [Å]: rows on a Gaia grid get its shared object.

    Parameters
    ----------
    path : str or Path
        For error messages.
    values, offsets : the rows, concatenated, and their offsets (like :class:`RaggedColumn`)
    unit, medium : of the input wavelengths (Gaia: nm, vacuum; None: Å, air)

    Returns
    -------
    grids : ndarray (one grid shared by all rows) or list of n grids; equal rows share objects
    unsorted : ndarray of bool (n,), rows whose wavelengths are not increasing
    """
    n = len(offsets) - 1
    shared: dict[bytes, np.ndarray] = {}
    rows, unsorted = [], np.zeros(n, bool)
    for i in range(n):
        w = np.asarray(values[offsets[i]:offsets[i + 1]], dtype=np.float64)
        key = w.tobytes()
        if key not in shared:
            in_nm = wave_to_air_angstrom(w, unit, "air", path=path) / 10.0  # units only
            match = gaia_grid(in_nm) if str(medium).lower() in ("vac", "vacuum") else None
            shared[key] = match[0] if match else wave_to_air_angstrom(w, unit, medium,
                                                                      path=path)
        rows.append(shared[key])
        unsorted[i] = np.any(np.diff(w) <= 0)
    if len(shared) == 1 and n:
        return rows[0], unsorted
    return rows, unsorted


@dataclass(frozen=True, slots=True)
class PixelSpectra:
    """Spectra grouped from a one-row-per-pixel table (the Gaia DataLink layout).

    Attributes
    ----------
    path : Path
    source_id, epoch_id : ndarray of int64 (n,)
    row : ndarray of int64 (n,), the data row of each spectrum's first pixel
    wave : list of n air grids [Å]; the Gaia grids' shared objects for spectra on them
    flux, flux_error : RaggedColumn of n rows (flux_error None when the file has none)
    flags : ndarray of int32 (n,), unsorted input, wrong length, duplicates
    transit : dict of str to ndarray (n,), the :data:`TRANSIT_COLUMNS` the file has
    """

    path: Path
    source_id: np.ndarray
    epoch_id: np.ndarray
    row: np.ndarray
    wave: list
    flux: RaggedColumn
    flux_error: RaggedColumn | None
    flags: np.ndarray
    transit: dict


def group_pixels(path: str | Path, *, source_id: np.ndarray, epoch_id: np.ndarray,
                 wave_nm: np.ndarray, flux: np.ndarray, flux_error: np.ndarray | None = None,
                 not_numeric: np.ndarray | None = None,
                 transit: Mapping[str, np.ndarray] | None = None,
                 row: np.ndarray | None = None) -> PixelSpectra:
    """Group the pixels of a one-row-per-pixel table into spectra, sorted by wavelength.

    Consecutive pixels sharing (``source_id``, ``epoch_id``) form one spectrum (so a file may
    hold several; a pair repeated in a later block is flagged ``DUPLICATE_ID``). Pixels are
    sorted by wavelength (``UNSORTED_WAVE`` records that the input was not); a spectrum on a
    Gaia grid (DR3 mean, DR4 epoch; :func:`sb2dask.gaia.gaia_grid`) gets its shared air grid,
    any other its own, flagged ``WRONG_LENGTH`` unless it has 2401 or 961 pixels.

    Parameters
    ----------
    path : str or Path
    source_id, epoch_id : ndarray of int64 (n_pix_total,)
    wave_nm : ndarray of float64 (n_pix_total,), vacuum wavelengths [nm]
    flux, flux_error : ndarray of float32 (n_pix_total,)
    not_numeric : ndarray of bool (n_pix_total,), optional
        Pixels whose text was not a number.
    transit : mapping of str to ndarray (n_pix_total,), optional
        Per-pixel values of :data:`TRANSIT_COLUMNS`; each spectrum takes its first pixel's.
    row : ndarray of int64 (n_pix_total,), optional
        The data row of each pixel (default 0, 1, ...).
    """
    path = Path(path)
    n = len(source_id)
    row = np.arange(n, dtype=np.int64) if row is None else np.asarray(row, np.int64)
    starts = np.flatnonzero(np.r_[n > 0, (source_id[1:] != source_id[:-1])
                                  | (epoch_id[1:] != epoch_id[:-1])])
    bounds = np.r_[starts, n]
    order, waves, flags = np.arange(n), [], np.zeros(len(starts), np.int32)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        w = wave_nm[a:b]
        if np.any(np.diff(w) <= 0):  # sorted by wavelength; equal ones keep the file order
            order[a:b] = a + np.argsort(w, kind="stable")
            w = wave_nm[order[a:b]]
            flags[i] |= ReadFlag.UNSORTED_WAVE
        match = gaia_grid(w)
        if match is not None:
            waves.append(match[0])
        else:
            waves.append(wave_to_air_angstrom(w, "nm", "vacuum", path=path))
            if gaia_grid(n_pix=w.size) is None:
                flags[i] |= ReadFlag.WRONG_LENGTH
    flags |= duplicate_flags(source_id[starts], epoch_id[starts])
    text = np.zeros(n, bool) if not_numeric is None else np.asarray(not_numeric, bool)
    not_numeric = np.logical_or.reduceat(text, starts) if n else np.zeros(0, bool)
    return PixelSpectra(path, source_id[starts], epoch_id[starts], row[starts], waves,
                        RaggedColumn(flux[order], bounds, not_numeric=not_numeric),
                        None if flux_error is None else RaggedColumn(flux_error[order], bounds),
                        flags, {k: np.asarray(v)[starts] for k, v in (transit or {}).items()})


def pixel_partition(s: PixelSpectra, a: int, b: int) -> pd.DataFrame:
    """Spectra ``a..b-1`` of grouped pixels as one partition (:func:`spectra_partition`)."""
    return spectra_partition(
        source_id=s.source_id[a:b], epoch_id=s.epoch_id[a:b], wave=s.wave[a:b],
        flux=s.flux.rows(a, b), flux_error=None if s.flux_error is None else
        s.flux_error.rows(a, b), file=s.path, row=s.row[a:b], read_flags=s.flags[a:b],
        transit={k: v[a:b] for k, v in s.transit.items()})


# ---------------------------------------------------------------------------------------------
# ECSV headers (the Gaia archive's ECSV, bulk and DataLink)

_SUBTYPE = re.compile(r"^\s*(\w+)\s*\[\s*(null|\d+)\s*\]\s*$")


@dataclass(frozen=True, slots=True)
class EcsvColumn:
    """One entry of an ECSV header's ``datatype`` list."""

    name: str
    datatype: str
    subtype: str | None = None
    unit: str | None = None
    description: str | None = None

    @property
    def element_type(self) -> str | None:
        """Element type of an array column (``"float32"`` for ``float32[null]``), else None."""
        m = _SUBTYPE.match(self.subtype or "")
        return m.group(1) if m else None

    @property
    def declared_length(self) -> int | None:
        """Declared array length (``float32[2401]`` -> 2401); None if variable or not an array."""
        m = _SUBTYPE.match(self.subtype or "")
        return int(m.group(2)) if m and m.group(2) != "null" else None


@dataclass(frozen=True, slots=True)
class EcsvHeader:
    """A parsed ECSV header: columns, delimiter, table meta, and how many ``#`` lines it took."""

    columns: tuple[EcsvColumn, ...]
    delimiter: str = ","
    meta: Mapping = field(default_factory=dict)
    n_lines: int = 0

    def column(self, name: str) -> EcsvColumn | None:
        """The column called ``name``, or None."""
        return next((c for c in self.columns if c.name == name), None)


def parse_ecsv_header(path: str | Path, lines: list[str]) -> EcsvHeader:
    """Parse the ``#`` lines at the top of an ECSV file.

    Parameters
    ----------
    path : str or Path
        For error messages.
    lines : list of str
        The header lines, each starting with ``#``, first line ``# %ECSV <version>``.

    Raises
    ------
    ReaderError
        Not an ECSV header, malformed YAML, or no ``datatype`` list; names the line.
    """
    if not lines or not re.match(r"#\s*%ECSV\s+\d", lines[0]):
        raise ReaderError(path, "expected an ECSV header starting '# %ECSV 1.0'", line=1)
    body = []
    for i, line in enumerate(lines[1:], start=2):
        if line.startswith("# "):
            body.append(line[2:])
        elif line.rstrip() == "#":
            body.append("")
        else:
            raise ReaderError(path, f"ECSV header lines must start with '# ', got {line[:40]!r}",
                              line=i)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load("\n".join(body), Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ReaderError(path, f"malformed ECSV YAML header: {problem} (where the YAML parser "
                          "stopped; the fault may be a line above)",
                          line=None if mark is None else mark.line + 2) from exc
    entries = doc.get("datatype") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ReaderError(path, "malformed ECSV header: no 'datatype' list of columns")
    columns = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) \
                or not isinstance(e.get("datatype"), str):
            raise ReaderError(path, f"malformed ECSV header: datatype entry {k + 1} needs a "
                              f"'name' and a 'datatype', got {e!r}")
        columns.append(EcsvColumn(e["name"], e["datatype"], e.get("subtype"), e.get("unit"),
                                  e.get("description")))
    delimiter = doc.get("delimiter", " ")
    if delimiter not in (",", " "):
        raise ReaderError(path, f"ECSV delimiter must be ',' or ' ', got {delimiter!r}")
    return EcsvHeader(tuple(columns), delimiter, doc.get("meta") or {}, len(lines))


# ---------------------------------------------------------------------------------------------
# Numbers written as text

_NUMBER = r"(?i)^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|nan|inf|infinity)$"
_NULL_TEXT = ("null", "NULL")


def _with_validity(arr: pa.Array, valid: np.ndarray) -> pa.Array:
    """``arr`` with its validity bitmap replaced by ``valid`` (no copy of the string data)."""
    bits = np.concatenate([np.zeros(arr.offset, bool), valid]) if arr.offset else valid
    bitmap = pa.py_buffer(np.packbits(bits, bitorder="little"))
    return pa.Array.from_buffers(arr.type, len(arr), [bitmap, *arr.buffers()[1:]],
                                 offset=arr.offset)


def _nullish(texts: pa.Array, spellings=("null",)) -> np.ndarray:
    """True where a text is null, empty, or one of ``spellings``."""
    out = pc.equal(pc.binary_length(texts), 0)
    for word in spellings:
        out = pc.or_(out, pc.equal(texts, word))
    return pc.fill_null(out, True).to_numpy(zero_copy_only=False)


def parse_float_strings(texts, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Numbers written as text, parsed in bulk (Arrow's vectorised cast, not one float at a time).

    ``""``, ``null``, ``NULL`` and Arrow nulls become NaN; ``NaN``, ``inf``, ``Infinity`` (any
    case, signed) are parsed; surrounding white space is ignored. Any other text becomes NaN and
    is reported. The common case (clean numbers and ``null``) costs one cast; white space and
    bad text are only looked for when that cast fails.

    Parameters
    ----------
    texts : pyarrow string array, chunked array, or sequence of str/None
    dtype : numpy float dtype
        Of the result; float32 for fluxes, float64 for wavelengths.

    Returns
    -------
    values : ndarray of ``dtype``, shape (n,)
    not_numeric : ndarray of bool, shape (n,), True where the text was not a number
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    elif not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.string())
    dtype = np.dtype(dtype)
    target = pa.from_numpy_dtype(dtype)
    bad = np.zeros(len(texts), bool)
    if len(texts) == 0:
        return np.empty(0, dtype), bad
    try:
        values = pc.cast(_with_validity(texts, ~_nullish(texts)), target)
    except pa.ArrowInvalid:
        texts = pc.utf8_trim_whitespace(texts)
        nullish = _nullish(texts, _NULL_TEXT)
        try:
            values = pc.cast(_with_validity(texts, ~nullish), target)
        except pa.ArrowInvalid:
            bad = ~pc.fill_null(pc.match_substring_regex(texts, _NUMBER), False).to_numpy(
                zero_copy_only=False) & ~nullish
            try:
                values = pc.cast(_with_validity(texts, ~(nullish | bad)), target)
            except pa.ArrowInvalid:  # a spelling the regex admits but Arrow does not
                out = np.full(len(texts), np.nan, dtype)
                for i, t in enumerate(texts.to_pylist()):
                    if nullish[i]:
                        continue
                    try:
                        out[i] = float(t)
                    except (TypeError, ValueError):
                        bad[i] = True
                return out, bad
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False), bad


def parse_int_strings(texts) -> tuple[np.ndarray, int | None]:
    """Integers written as text, in bulk.

    Returns
    -------
    values : ndarray of int64 (zeros when a text is not an integer)
    first_bad : int or None
        Index of the first text that is not an int64 (empty, text, or out of range).
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    try:
        return pc.cast(texts, pa.int64()).to_numpy(zero_copy_only=False), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.fill_null(pc.match_substring_regex(texts, r"^[+-]?\d{1,19}$"), False)
    ok = ok.to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(ok & (pc.binary_length(texts).to_numpy(zero_copy_only=False) >= 19)):
        ok[i] = -2 ** 63 <= int(texts[i].as_py()) < 2 ** 63  # 19 digits may overflow int64
    return np.zeros(len(texts), np.int64), int(np.flatnonzero(~ok)[0])


def text_integers(path, table: pa.Table, name: str, first_line: int) -> np.ndarray:
    """A text column of a CSV table holding integers, as int64; anything else is an error
    naming the file's line (``first_line`` is the line of data row 0)."""
    values, bad = parse_int_strings(table[name])
    if bad is not None:
        raise ReaderError(path, f"{name} {table[name][bad].as_py()!r} is not an integer",
                          line=first_line + bad)
    return values


def text_numbers(path, table: pa.Table, name: str, first_line: int, dtype=np.float64
                 ) -> np.ndarray:
    """A text column of a CSV table holding numbers (null or empty → NaN); text that is not a
    number is an error naming the file's line."""
    values, bad = parse_float_strings(table[name], dtype=dtype)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ReaderError(path, f"{name} {table[name][i].as_py()!r} is not a number",
                          line=first_line + i)
    return values


# ---------------------------------------------------------------------------------------------
# Wavelength units and media

def wave_to_air_angstrom(wave, unit: str | None, medium: str | None, *, path, where: str = ""
                         ) -> np.ndarray:
    """Wavelengths in any length unit and medium, as air wavelengths [Å] (float64).

    Parameters
    ----------
    wave : array_like
    unit : str or None
        An astropy unit string (``"nm"``, ``"Angstrom"``, ``"AA"``, ``"um"``...); None means Å.
    medium : {"air", "vacuum", "vac", None}
        None means air, the package convention.
    path : str or Path
        For error messages.
    where : str
        Where the unit/medium came from, for error messages.
    """
    import astropy.units as u

    wave = np.asarray(wave, dtype=np.float64)
    if unit not in (None, ""):
        try:
            factor = u.Unit(unit).to(u.AA)
        except (ValueError, u.UnitConversionError, TypeError) as exc:
            raise ReaderError(path, f"{where}wavelength unit {unit!r} is not a length unit "
                              f"({exc})") from exc
        wave = wave * factor
    med = (medium or "air").strip().lower()
    if med in ("vac", "vacuum"):
        return vac_to_air(wave)
    if med != "air":
        raise ReaderError(path, f"{where}wavelength medium {medium!r}: expected 'air' or 'vacuum'")
    return wave


# ---------------------------------------------------------------------------------------------
# Files

_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """The whole file, gunzipped if it starts with the gzip magic bytes.

    Raises
    ------
    ReaderError
        The file is missing, or the gzip stream is truncated or corrupt.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReaderError(path, f"cannot read the file ({exc})") from exc
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ReaderError(path, f"truncated or corrupt gzip stream ({exc})") from exc


def read_head(path: str | Path, n_bytes: int = 1 << 16) -> bytes:
    """Up to ``n_bytes`` of the (gunzipped) start of a file; b"" if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(n_bytes)
    except OSError:
        return b""
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:  # a decompressobj tolerates the cut-off stream a partial read gives
        return zlib.decompressobj(wbits=31).decompress(raw, n_bytes)
    except zlib.error:
        return b""


def leading_comment_lines(buf: bytes) -> tuple[list[str], int]:
    """Lines at the start of ``buf`` that begin with ``#`` and the byte offset just after them."""
    lines, pos = [], 0
    while buf.startswith(b"#", pos):
        end = buf.find(b"\n", pos)
        end = len(buf) if end < 0 else end
        lines.append(buf[pos:end].rstrip(b"\r").decode("utf-8", errors="replace"))
        pos = end + 1
    return lines, min(pos, len(buf))


def first_fields(buf: bytes, start: int) -> list[str]:
    """The comma-separated fields of the line starting at ``start`` (quotes stripped)."""
    end = buf.find(b"\n", start)
    line = buf[start:end if end >= 0 else len(buf)].decode("utf-8", errors="replace").strip()
    return [f.strip().strip('"').strip() for f in re.split(r",", line)] if line else []


def read_text_columns(path: str | Path, data, names: Sequence[str], *, lines_before: int,
                      delimiter: str = ",", check_utf8: bool = True,
                      block_size: int | None = None, what: str = "CSV") -> pa.Table:
    """Every column of a CSV text as non-null strings, parsed in bulk by Arrow (the text readers'
    common step; numbers are parsed afterwards, column by column).

    Parameters
    ----------
    path : str or Path
        For error messages.
    data : pyarrow.Buffer or bytes
        The text from the column-name line on.
    names : sequence of str
        The column names (those of the first line).
    lines_before : int
        Lines of the file before the column-name line, so that errors name the file's lines.
    delimiter, check_utf8, block_size
        Passed to ``pyarrow.csv`` (``block_size`` None: Arrow's default).
    what : str
        What the text is, for the malformed-text message.

    Raises
    ------
    ReaderError
        Malformed text, or a row with the wrong number of fields (naming its line).
    """
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    read_options = pv.ReadOptions(use_threads=False) if block_size is None else \
        pv.ReadOptions(use_threads=False, block_size=block_size)
    try:
        table = pv.read_csv(
            data, read_options=read_options,
            parse_options=pv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pv.ConvertOptions(
                column_types={n: pa.string() for n in names}, null_values=[],
                check_utf8=check_utf8, strings_can_be_null=False,
                quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise ReaderError(path, f"malformed {what} ({exc})") from exc
    if invalid:
        r = invalid[0]
        raise ReaderError(path, f"expected {r.expected_columns} fields, found {r.actual_columns}",
                          line=None if r.number is None else lines_before + r.number)
    return table


def _data_fields(buf: bytes, start: int, delimiter: str) -> list[str]:
    """The fields of the line starting at ``start`` (CSV quoting honoured; a line cut off by a
    short head keeps its partial last field)."""
    import csv

    end = buf.find(b"\n", start)
    line = buf[start:end if end >= 0 else len(buf)].decode("utf-8", errors="replace")
    if delimiter == " ":
        return line.split()
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=False), [])
    except csv.Error:
        return line.split(delimiter)


def text_layout(head: bytes) -> tuple[str, EcsvHeader | None] | None:
    """Which text layout the start of a CSV/ECSV file has: ``"pixels"`` (one row per pixel,
    scalar ``wavelength`` and ``flux``: the DataLink layout), ``"arrays"`` (one spectrum per row,
    ``flux`` an array: the Gaia bulk and ``DATAMODEL_GAIA`` layout) or None (neither), with the
    parsed ECSV header if there is one. One decision for both text readers, so their
    ``identify`` tests are disjoint. Column names are matched in any letter case."""
    lines, pos = leading_comment_lines(head)
    header = None
    if lines and re.match(r"#\s*%ECSV", lines[0]):
        try:
            header = parse_ecsv_header("<head>", lines)
        except ReaderError:
            return None
        if pos >= len(head):  # the header runs past the head: decide from it alone
            names = [c.name for c in header.columns]
        else:
            names = _data_fields(head, pos, header.delimiter)
        flux = find_column(names, "flux")
        col = header.column(flux) if flux else None
        if col is None:
            return None
        if col.element_type is not None:
            return "arrays", header
        return ("pixels", header) if find_column(names, "wavelength") else None
    names = first_fields(head, pos)
    flux = find_column(names, "flux")
    if flux is None or find_column(names, "source_id") is None:
        return None
    nl = head.find(b"\n", pos)
    first = _data_fields(head, nl + 1, ",") if nl >= 0 else []
    k = names.index(flux)
    if not lines and k < len(first) and first[k].strip()[:1] in ("[", "("):
        return "arrays", None
    return ("pixels", None) if find_column(names, "wavelength") else None


# ---------------------------------------------------------------------------------------------
# Per-pixel tables whose identifiers may be table metadata (ECSV meta, VOTable PARAMs, FITS
# header keywords): the archive's DATAMODEL_STANDARD layout outside CSV


def integer_ids(path: str | Path, values, name: str, first_row: int = 0) -> np.ndarray:
    """An identifier column as int64: integers as they are, text holding integers parsed;
    anything else (text, null) is an error naming the row."""
    values = np.ma.filled(values, 0) if np.ma.isMaskedArray(values) and not np.ma.getmaskarray(
        values).any() else values
    if np.ma.isMaskedArray(values):
        bad = int(np.flatnonzero(np.ma.getmaskarray(values))[0])
        raise ReaderError(path, f"{name} is null", row=first_row + bad)
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind in "SUO":
        parsed, bad = parse_int_strings(pa.array([str(v).strip() for v in values], pa.string()))
        if bad is not None:
            raise ReaderError(path, f"{name} {values[bad]!r} is not an integer",
                              row=first_row + bad)
        return parsed
    raise ReaderError(path, f"column {name!r} holds {values.dtype}; expected integers")


def _numbers(values) -> np.ndarray:
    """A numeric column as float64 with NaN for masked entries."""
    if np.ma.isMaskedArray(values):
        return np.ma.filled(values.astype(np.float64), np.nan)
    return np.asarray(values, dtype=np.float64)


def pixel_table(path: str | Path, columns: Mapping[str, np.ndarray],
                scalars: Mapping[str, object], *, wave_unit: str | None, where: str,
                first_row: int = 0) -> dict[str, np.ndarray]:
    """The pixels of one per-pixel table, with identifiers from a column or else the table's
    metadata (a spectrum per table).

    Parameters
    ----------
    path : str or Path
    columns : mapping of name to ndarray (n,)
        The table's columns (names in any case; masked arrays allowed): ``wavelength`` (or
        ``wave``), ``flux``, optional ``flux_error``, ``source_id``, ``transit_id``/``epoch_id``
        and :data:`TRANSIT_COLUMNS`.
    scalars : mapping of name to value
        Table-level values under the same names (VOTable PARAMs, ECSV meta, FITS keywords).
    wave_unit : str or None
        Unit of the wavelength column (None: nm, Gaia's).
    where : str
        Which table, for error messages (e.g. ``"HDU 2 ('SPECTRUM')"``).
    first_row : int
        The file-wide row number of the table's first row.

    Returns
    -------
    dict with ``source_id``, ``epoch_id`` (int64), ``wave_nm`` (float64, vacuum nm as far as the
    unit goes), ``flux``, optionally ``flux_error`` (float32) and every TRANSIT_COLUMNS name
    (float64, NaN where the table has no value)
    """
    n = len(columns[find_column(columns, "flux")])

    def scalar_or(field, wanted, default, kind):
        col = find_column(columns, *wanted)
        if col is not None:
            values = columns[col]
            return integer_ids(path, values, col, first_row) if kind is int else \
                _numbers(values)
        key = find_column(scalars, *wanted)
        value = None if key is None else scalars[key]
        if value is None or (isinstance(value, str) and not value.strip()):
            if default is None:
                raise ReaderError(path, f"{where}: no {field} column and no {field} in its "
                                  "metadata")
            value = default
        try:
            value = int(str(value).strip()) if kind is int else float(value)
        except (TypeError, ValueError):
            raise ReaderError(path, f"{where}: {field} = {value!r} in the metadata is not "
                              f"{'an integer' if kind is int else 'a number'}") from None
        return np.full(n, value, np.int64 if kind is int else np.float64)

    wave_col = find_column(columns, "wavelength", "wave")
    wave = _numbers(columns[wave_col])
    # units converted, the medium kept: Gaia's grids are matched in vacuum nm
    wave_nm = wave_to_air_angstrom(wave, wave_unit or "nm", "air", path=path,
                                   where=f"{where}: ") / 10.0
    out = {"source_id": scalar_or("source_id", ("source_id",), None, int),
           "epoch_id": scalar_or("transit_id", EPOCH_COLUMNS, -1, int),
           "wave_nm": wave_nm,
           "flux": _numbers(columns[find_column(columns, "flux")]).astype(np.float32)}
    err = find_column(columns, "flux_error")
    if err is not None:
        out["flux_error"] = _numbers(columns[err]).astype(np.float32)
    for name in TRANSIT_COLUMNS:
        out[name] = scalar_or(name, (name,), np.nan, float)
    return out


def group_tables(path: str | Path, tables: Sequence[Mapping[str, np.ndarray]]) -> PixelSpectra:
    """The pixels of a file's per-pixel tables (:func:`pixel_table`), grouped into spectra."""
    if not tables:
        raise ReaderError(path, "no table with wavelength and flux columns")
    with_err = ["flux_error" in t for t in tables]
    if any(with_err) and not all(with_err):
        raise ReaderError(path, "some per-pixel tables have flux_error and others not")
    cat = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    transit = {k: cat[k] for k in TRANSIT_COLUMNS if not np.isnan(cat[k]).all()}
    return group_pixels(path, source_id=cat["source_id"], epoch_id=cat["epoch_id"],
                        wave_nm=cat["wave_nm"], flux=cat["flux"],
                        flux_error=cat.get("flux_error"), transit=transit)
