"""Gaia bulk ECSV files (``RvsMeanSpectrum_000000-003111.csv.gz``): one spectrum per row.

What was verified (Gaia DR3 documentation and public code that reads these files):

* Bulk files are gzip-compressed ECSV (DR3 documentation §13.2.5 "ECSV generation"): a YAML header
  on lines starting with ``# `` (``# %ECSV 1.0``, ``# ---``, ``# delimiter: ','``, ``# datatype:``
  with one entry per column: ``name``, ``datatype``, optional ``subtype``, ``unit``,
  ``description``, ``meta``), then a CSV column-name line, then one row per source.
* Vector columns are "encoded into Strings in JSON format, and added to the CSV surrounded by
  double quotes" (§13.2.5): ``"[0.98,1.01,...]"``, declared ``datatype: string`` with an ECSV
  ``subtype`` such as ``float32[null]`` (variable length, the form public Gaia bulk parsers
  expect) or ``float32[2401]``; both are accepted, and a declared length is checked.
* Masked array elements are JSON ``null`` (the ECSV convention astropy follows); the RVS
  pipeline also leaves NaN where a flux is missing, mostly at the spectrum edges (DR3
  documentation §11.2.4). ``null``, ``NaN``, empty elements and empty fields all read as NaN.
* Files are split by HEALPix level-8 index ``source_id >> 43``; the name's ``XXXXXX-YYYYYY`` is
  the inclusive index range.
* ``rvs_mean_spectrum`` columns (datamodel §20.12.1): ``solution_id``, ``source_id``, ``ra``,
  ``dec``, ``flux``, ``flux_error``, ``combined_transits``, ``combined_ccds``,
  ``deblended_ccds``; the grid is 846-870 nm step 0.01 nm, vacuum (see :mod:`.base`).

DR4 epoch spectra in the archive's array layout (``DATAMODEL_GAIA``; pre-release data model)
are read by the same code: one row per transit with ``transit_id`` (read as ``epoch_id``) and the
per-transit columns of :data:`.base.TRANSIT_COLUMNS`, arrays of 961 pixels on the DR4 grid. A
plain CSV of that layout (no ECSV header; arrays as ``"[...]"`` or ``"(...)"``) is read too.
Column names are matched in any letter case; columns the reader does not use are ignored.

What is assumed: without a ``wavelength`` array column a row's grid follows from its length
(2401: DR3 mean spectra; 961: DR4 epoch spectra; any other length is fitted to the declared
length's grid, else the DR3 one, and flagged); a ``wavelength`` array column is vacuum nm unless
its ECSV ``unit`` says otherwise; masked scalars are written empty or ``null``; the first
column-name line has no quoting beyond optional double quotes.

Parsing is vectorised with Arrow: the table is read with ``pyarrow.csv`` as strings, each array
column is stripped of its brackets, split on commas, flattened and cast to float32 in one call;
row lengths come from the list offsets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ...gaia import HEALPIX_LEVEL8_SHIFT
from .base import (
    DEFAULT_PARTITION_ROWS,
    EPOCH_COLUMNS,
    RVS_WAVE,
    TRANSIT_COLUMNS,
    TRUE_PREFIX,
    CatalogueFormat,
    EcsvColumn,
    EcsvHeader,
    RaggedColumn,
    ReaderError,
    ReadFlag,
    consecutive_ranges,
    duplicate_flags,
    find_column,
    first_fields,
    gaia_grid,
    grids_for_lengths,
    leading_comment_lines,
    match_grids,
    parse_ecsv_header,
    parse_float_strings,
    read_bytes,
    read_head,
    read_in_ranges,
    read_text_columns,
    spectra_partition,
    text_integers,
    text_layout,
    text_numbers,
)

__all__ = ["NAME", "FORMAT", "identify", "read", "passthrough", "EcsvColumn", "EcsvHeader",
           "parse_ecsv_header", "ParsedArrays", "parse_array_strings", "healpix_range",
           "HEALPIX_LEVEL8_SHIFT"]

NAME = "gaia_bulk_ecsv"
_FILE_RANGE = re.compile(r"_(\d+)-(\d+)\.[^/\\]*$")
_ARRAY_COLUMNS = ("flux", "flux_error")
_NULL_FIELD = pa.array(["", "null", "NULL"])
#: ECSV datatype -> numpy dtype of the scalar columns we pass through.
_ECSV_DTYPES = {"bool": "bool", "int8": "int8", "int16": "int16", "int32": "int32",
                "int64": "int64", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32",
                "uint64": "uint64", "float16": "float16", "float32": "float32",
                "float64": "float64", "string": "object"}


# ---------------------------------------------------------------------------------------------
# Array columns written as JSON text


@dataclass(frozen=True, slots=True)
class ParsedArrays:
    """Array fields parsed from text.

    Attributes
    ----------
    values : ndarray of float32
        All elements of all rows, concatenated; NaN where null or not a number.
    offsets : ndarray of int64, shape (n + 1,)
        Row i is ``values[offsets[i]:offsets[i + 1]]``.
    not_numeric : ndarray of bool, shape (n,)
        The row had text where a number belongs (or a field that is not an array at all).
    null_field : ndarray of bool, shape (n,)
        The whole field was null (empty, ``null``) or not an array; such rows have no elements.
    """

    values: np.ndarray
    offsets: np.ndarray
    not_numeric: np.ndarray
    null_field: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Number of elements of each row."""
        return np.diff(self.offsets)


def _bracketed(arr: pa.Array) -> np.ndarray:
    both = pc.and_(pc.starts_with(arr, "["), pc.ends_with(arr, "]"))
    # "(1.0, 2.0)": how some table writers put arrays in plain CSV
    paren = pc.and_(pc.starts_with(arr, "("), pc.ends_with(arr, ")"))
    return pc.fill_null(pc.or_(both, paren), False).to_numpy(zero_copy_only=False)


def _parse_array_chunk(arr: pa.Array) -> ParsedArrays:
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    bracketed = _bracketed(arr)
    if not bracketed.all():  # rare: white space around the brackets, a null field, or garbage
        arr = pc.utf8_trim_whitespace(arr)
        bracketed = _bracketed(arr)
    null_field = pc.is_in(arr, value_set=_NULL_FIELD).to_numpy(zero_copy_only=False)
    garbage = ~bracketed & ~null_field
    if not bracketed.all():
        arr = pc.if_else(pa.array(bracketed), arr, "[]")
    inner = pc.utf8_slice_codeunits(arr, 1, -1)
    lists = pc.split_pattern(inner, ",")
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    texts = lists.flatten()
    empty = pc.equal(inner, "").to_numpy(zero_copy_only=False)
    if empty.any():  # "[]" splits into one empty string: drop it so the row has no elements
        keep = np.ones(len(texts), bool)
        keep[offsets[:-1][empty]] = False
        texts = texts.filter(pa.array(keep))
        offsets = offsets - np.concatenate([[0], np.cumsum(empty)])
    values, bad = parse_float_strings(texts)
    not_numeric = garbage.copy()
    if bad.any():
        not_numeric[np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1] = True
    return ParsedArrays(values, offsets - offsets[0], not_numeric, null_field | garbage)


def parse_array_strings(texts) -> ParsedArrays:
    """Parse ECSV/JSON array fields such as ``"[0.98,1.01,null,NaN]"`` in bulk.

    Parameters
    ----------
    texts : pyarrow string array, chunked array, or sequence of str/None
        One field per row, without the CSV quotes.

    Returns
    -------
    ParsedArrays
    """
    if isinstance(texts, pa.ChunkedArray):
        chunks = [c for c in texts.chunks if len(c)]
    elif isinstance(texts, pa.Array):
        chunks = [texts] if len(texts) else []
    else:
        chunks = [pa.array(list(texts), type=pa.string())]
        chunks = chunks if len(chunks[0]) else []
    if not chunks:
        return ParsedArrays(np.empty(0, np.float32), np.zeros(1, np.int64), np.zeros(0, bool),
                            np.zeros(0, bool))
    parts = [_parse_array_chunk(c) for c in chunks]
    if len(parts) == 1:
        return parts[0]
    shifts = np.cumsum([0] + [p.values.size for p in parts[:-1]])
    offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s
                                                       for p, s in zip(parts, shifts)])
    return ParsedArrays(np.concatenate([p.values for p in parts]), offsets,
                        np.concatenate([p.not_numeric for p in parts]),
                        np.concatenate([p.null_field for p in parts]))


# ---------------------------------------------------------------------------------------------
# Reading


def healpix_range(path: str | Path) -> tuple[int, int] | None:
    """The inclusive HEALPix level-8 range ``XXXXXX-YYYYYY`` in a bulk file's name, or None."""
    m = _FILE_RANGE.search(Path(path).name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def identify(path: str | Path) -> bool:
    """True for a (gzipped) CSV/ECSV text file with one spectrum per row: an ECSV header that
    declares ``flux`` an array, or a plain CSV whose first ``flux`` field is ``[...]``."""
    path = Path(path)
    if not path.is_file():
        return False
    layout = text_layout(read_head(path))
    return layout is not None and layout[0] == "arrays"


@dataclass(frozen=True, slots=True)
class _BulkFile:
    path: Path
    header: EcsvHeader
    table: pa.Table  # every column as text
    first_line: int  # 1-based line of data row 0
    source_id: np.ndarray
    epoch_id: np.ndarray
    flags: np.ndarray  # file-level flags per row (duplicates, HEALPix range)
    passthrough: dict
    columns: dict  # "source_id", "flux", "flux_error", "wavelength" -> the file's name or None
    transit: dict  # TRANSIT_COLUMNS the file has, float64 with NaN for null


def _header_of(path: Path, buf: bytes) -> tuple[EcsvHeader, int]:
    """The ECSV header, or for a plain CSV (no ``#`` lines at all) one made from its
    column-name line (``flux``, ``flux_error`` and ``wavelength`` as variable-length arrays, the
    rest as text)."""
    if re.match(rb"\s*\Z", buf[:4096]) and len(buf) <= 4096:
        raise ReaderError(path, "empty file")
    lines, pos = leading_comment_lines(buf)
    if lines:  # comment lines make a header, and the only header read here is ECSV's
        return parse_ecsv_header(path, lines), pos
    names = first_fields(buf, pos)
    if not names or find_column(names, "flux") is None:
        raise ReaderError(path, "expected an ECSV header starting '# %ECSV 1.0' or a CSV "
                          "column-name line with a flux column", line=len(lines) + 1)
    arrays = {find_column(names, a) for a in _ARRAY_COLUMNS + ("wavelength",)}
    cols = tuple(EcsvColumn(n, "string", "float32[null]" if n in arrays else None)
                 for n in names)
    return EcsvHeader(cols, ",", {}, len(lines)), pos


def _read_text_table(path: Path) -> tuple[EcsvHeader, pa.Table, int]:
    buf = read_bytes(path)
    header, pos = _header_of(path, buf)
    end = len(buf)
    while end > pos and buf[end - 1] in b" \t\r\n":
        end -= 1
    names = [c.name for c in header.columns]
    header_line = header.n_lines + 1
    if end <= pos:
        raise ReaderError(path, "no column-name line after the ECSV header", line=header_line)
    last = buf.rfind(b"\n", pos, end) + 1
    if buf.count(b'"', last, end) % 2:  # an odd number of quotes: cut inside a quoted array
        raise ReaderError(path, "the last line ends inside a quoted field: the file is truncated",
                          line=buf.count(b"\n", 0, end) + 1)
    found = first_fields(buf, pos) if header.delimiter == "," else \
        buf[pos:buf.find(b"\n", pos)].decode("utf-8", "replace").split()
    if found != names:
        raise ReaderError(path, f"column names {found} differ from the ECSV header's {names}",
                          line=header_line)
    # No UTF-8 check: the fields are numbers, and the number parser rejects bad bytes.
    table = read_text_columns(path, pa.py_buffer(buf).slice(pos, end - pos), names,
                              lines_before=header.n_lines, delimiter=header.delimiter,
                              check_utf8=False, block_size=1 << 24, what="CSV body")
    return header, table, header_line + 1


def _scalar_column(path, table, col: EcsvColumn, first_line) -> np.ndarray:
    dtype = _ECSV_DTYPES.get(col.datatype)
    if dtype is None or col.subtype:
        raise ReaderError(path, f"pass-through column {col.name!r} has datatype {col.datatype!r}"
                          f"{' subtype ' + repr(col.subtype) if col.subtype else ''}; expected a "
                          f"scalar of {sorted(_ECSV_DTYPES)}")
    texts = table[col.name]
    if dtype == "object":
        return np.asarray(texts.to_pylist(), dtype=object)
    if dtype == "bool":
        low = pc.utf8_lower(texts).to_numpy(zero_copy_only=False)
        ok = np.isin(low, ["true", "false", "1", "0"])
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ReaderError(path, f"{col.name} {texts[bad].as_py()!r} is not a boolean",
                              line=first_line + bad)
        return np.isin(low, ["true", "1"])
    if dtype.startswith("float"):
        return text_numbers(path, table, col.name, first_line, np.float32).astype(dtype)
    return text_integers(path, table, col.name, first_line).astype(dtype)


def _open(path: str | Path) -> _BulkFile:
    path = Path(path)
    header, table, first_line = _read_text_table(path)
    names = table.column_names
    cols = {k: find_column(names, k) for k in ("source_id", "flux", "flux_error", "wavelength")}
    missing = [c for c in ("source_id", "flux") if cols[c] is None]
    if missing:
        raise ReaderError(path, f"missing required column(s) {missing}; found "
                          f"{table.column_names}", line=header.n_lines + 1)
    for key in _ARRAY_COLUMNS + ("wavelength",):
        col = header.column(cols[key]) if cols[key] else None
        if col is not None and (col.datatype != "string" or col.element_type is None
                                or not col.element_type.startswith("float")):
            raise ReaderError(path, f"column {col.name!r} is declared datatype="
                              f"{col.datatype!r} subtype={col.subtype!r}; expected datatype "
                              f"'string' with an array subtype such as 'float32[null]'")
    source_id = text_integers(path, table, cols["source_id"], first_line)
    epoch_name = find_column(names, *EPOCH_COLUMNS)
    epoch_id = text_integers(path, table, epoch_name, first_line) if epoch_name else \
        np.full(len(source_id), -1, np.int64)
    transit = {k: text_numbers(path, table, find_column(names, k), first_line)
               for k in TRANSIT_COLUMNS if find_column(names, k)}
    flags = duplicate_flags(source_id, epoch_id)
    rng = healpix_range(path)
    if rng is not None:
        hp = source_id >> HEALPIX_LEVEL8_SHIFT
        flags |= np.where((hp < rng[0]) | (hp > rng[1]), ReadFlag.SOURCE_OUTSIDE_FILE_RANGE, 0)
    extra = {c.name: _scalar_column(path, table, c, first_line)
             for c in header.columns if c.name.startswith(TRUE_PREFIX)}
    return _BulkFile(path, header, table, first_line, source_id, epoch_id,
                     flags.astype(np.int32), extra, cols, transit)


def _array(f: _BulkFile, key: str, start: int, stop: int):
    """(rows of one array column or None, rows whose length differs from the declared one)."""
    name = f.columns[key]
    if name is None:
        return None, np.zeros(stop - start, bool)
    parsed = parse_array_strings(f.table[name].slice(start, stop - start))
    declared = f.header.column(name).declared_length
    wrong = np.zeros(stop - start, bool) if declared is None else \
        (parsed.lengths != declared) & ~parsed.null_field
    return RaggedColumn(parsed.values, parsed.offsets, parsed.null_field,
                        parsed.not_numeric), wrong


def _grids(f: _BulkFile, flux: RaggedColumn, start: int, stop: int):
    """The rows' air grids [Å]: from a ``wavelength`` array column, else by array length."""
    name = f.columns["wavelength"]
    if name is None:
        declared = f.header.column(f.columns["flux"]).declared_length
        default = gaia_grid(n_pix=declared) if declared else None
        lengths = np.where(flux.null_rows, declared or 0, np.diff(flux.offsets)) \
            if flux.null_rows is not None else np.diff(flux.offsets)
        return grids_for_lengths(lengths, RVS_WAVE if default is None else default[0])
    # rows normally repeat one wavelength text: parse each distinct text once
    coded = f.table[name].slice(start, stop - start).combine_chunks().dictionary_encode()
    waves = parse_array_strings(coded.dictionary)
    index = coded.indices.to_numpy(zero_copy_only=False)
    bad = (waves.null_field | waves.not_numeric)[index]
    if bad.any():
        raise ReaderError(f.path, f"{name} is null or not numeric",
                          line=f.first_line + start + int(np.flatnonzero(bad)[0]))
    unit = f.header.column(name).unit or "nm"
    grids, _ = match_grids(f.path, waves.values, waves.offsets, unit, "vacuum")
    return grids if isinstance(grids, np.ndarray) else [grids[i] for i in index]


def _partition(f: _BulkFile, start: int, stop: int) -> pd.DataFrame:
    flux, wrong = _array(f, "flux", start, stop)
    err, wrong_e = _array(f, "flux_error", start, stop)
    flags = f.flags[start:stop] | np.where(wrong | wrong_e, ReadFlag.WRONG_LENGTH, 0
                                           ).astype(np.int32)
    return spectra_partition(
        source_id=f.source_id[start:stop], epoch_id=f.epoch_id[start:stop],
        wave=_grids(f, flux, start, stop), flux=flux, flux_error=err, file=f.path,
        row=np.arange(start, stop), read_flags=flags,
        passthrough={k: v[start:stop] for k, v in f.passthrough.items()},
        transit={k: v[start:stop] for k, v in f.transit.items()})


def read(path: str | Path, *, partition_rows: int = DEFAULT_PARTITION_ROWS
         ) -> Iterator[pd.DataFrame]:
    """Spectra of a Gaia bulk ECSV file, in partitions of at most ``partition_rows`` rows.

    The whole file is read and checked (ids, duplicates, field counts) before the first
    partition is yielded; arrays are parsed one partition at a time.

    Raises
    ------
    ReaderError
        Unreadable or truncated gzip, empty file, malformed ECSV header, missing ``source_id`` or
        ``flux``, a row with the wrong number of fields, a non-integer id.
    """
    return read_in_ranges(partition_rows, lambda: _open(path),
                          lambda f, k: consecutive_ranges(f.table.num_rows, k), _partition)


def passthrough(path: str | Path) -> dict[str, np.dtype]:
    """The ``true_*`` columns a bulk file yields and their dtypes, from its header."""
    path = Path(path)
    head = read_head(path, 1 << 20)
    lines, pos = leading_comment_lines(head)
    if pos >= len(head):  # the header is longer than the head we peeked at
        head = read_bytes(path)
    header, _ = _header_of(path, head)
    return {c.name: np.dtype(_ECSV_DTYPES.get(c.datatype, "object")) for c in header.columns
            if c.name.startswith(TRUE_PREFIX)}


FORMAT = CatalogueFormat(NAME, identify, read, passthrough)
