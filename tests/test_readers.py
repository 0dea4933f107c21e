"""Tests of the catalogue readers (:mod:`sb2dask.infer.readers`).

Fixtures are generated in temporary directories by :mod:`reader_fixtures`; the three real Gaia
DataLink spectra and the RVS wavelength file in ``../shared/data/gaia_rvs`` are used when present.
Nothing here touches the network.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reader_fixtures import (
    BULK_NAME,
    DATALINK_HEADER,
    SMALL_WAVE,
    gzip_text,
    rewrite_gzip_text,
    source_ids,
    spectra_frame,
    write_datalink_csv,
    write_fits,
    write_parquet,
    write_zarr_store,
)
from sb2dask.dataset.gaia_ecsv import format_array_strings, write_bulk_ecsv
from sb2dask.infer.readers import (
    INFORMATIONAL_FLAGS,
    READERS,
    RVS_N_PIX,
    RVS_WAVE,
    RVS_WAVE_VAC_NM,
    SPECTRUM_COLUMNS,
    SPECTRUM_META,
    ReaderError,
    ReadFlag,
    fits_table,
    gaia_bulk_ecsv,
    gaia_datalink_csv,
    identify_format,
    parquet,
    read_catalogue,
    to_dask,
    zarr_store,
)
from sb2dask.infer.readers.base import SPECTRUM_SCHEMA, parse_float_strings
from sb2dask.infer.readers.gaia_bulk_ecsv import parse_array_strings
from sb2dask.library.wavelength import vac_to_air

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gaia_rvs"
REAL_FILES = {"HD176650.csv": 4268620287278693120, "KOI-001.csv": 2131314401800665344,
              "Kepler-93.csv": 2052747119115620352}
needs_real = pytest.mark.skipif(not REAL_DIR.is_dir(),
                                reason=f"real Gaia RVS files not found in {REAL_DIR}")
CA_II_AIR = (8498.02, 8542.09, 8662.14)
F = ReadFlag


def read_all(path, **kw) -> pd.DataFrame:
    parts = list(read_catalogue(path, **kw))
    return pd.concat(parts, ignore_index=True) if parts else SPECTRUM_META


def assert_schema(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> None:
    assert tuple(df.columns) == SPECTRUM_COLUMNS + extra
    for col in SPECTRUM_SCHEMA:
        assert df[col.name].dtype == pd.Series([], dtype=col.dtype).dtype, col.name
    for flux, wave in zip(df["flux"], df["wave"]):
        assert flux.dtype == np.float32 and wave.dtype == np.float64
        assert flux.shape == wave.shape


def flags_of(df: pd.DataFrame) -> list[ReadFlag]:
    return [ReadFlag(int(v)) for v in df["read_flags"]]


# ---------------------------------------------------------------------------------------------
# Schema, flags, errors, grid


def test_meta_has_the_schema_columns_and_dtypes():
    assert_schema(SPECTRUM_META)
    assert len(SPECTRUM_META) == 0


def test_flags_are_distinct_single_bits():
    values = [f.value for f in ReadFlag if f.value]
    assert all(v & (v - 1) == 0 for v in values)
    assert len(set(values)) == len(values)


def test_reader_error_names_file_and_line_and_survives_pickling():
    err = ReaderError("/data/x.csv.gz", "source_id 'abc' is not an integer", line=12)
    assert str(err) == "/data/x.csv.gz, line 12: source_id 'abc' is not an integer"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 12 and isinstance(again, ValueError)
    assert "row 3 (0-based)" in str(ReaderError("f.fits", "bad", row=3))


@needs_real
def test_rvs_grid_constant_matches_the_gaia_wavelength_file():
    wave_nm = fits.getdata(REAL_DIR / "gaia_rvs_wavelength.fits").astype(np.float64)
    assert wave_nm.size == RVS_N_PIX
    np.testing.assert_array_equal(RVS_WAVE_VAC_NM, wave_nm)
    np.testing.assert_allclose(RVS_WAVE, vac_to_air(wave_nm * 10.0))
    assert 8457 < RVS_WAVE[0] < 8460 and np.all(np.diff(RVS_WAVE) > 0)


def test_parse_float_strings_reads_every_null_and_number_spelling():
    texts = ["1.5", " -2e-3 ", "", "null", "NULL", "NaN", "nan", "inf", "-Infinity", "abc", None,
             "1.0.0"]
    values, bad = parse_float_strings(texts)
    expect = [1.5, -2e-3, np.nan, np.nan, np.nan, np.nan, np.nan, np.inf, -np.inf, np.nan,
              np.nan, np.nan]
    np.testing.assert_array_equal(values, np.array(expect, np.float32))
    assert bad.tolist() == [False] * 9 + [True, False, True]


# ---------------------------------------------------------------------------------------------
# Gaia DataLink CSV


@needs_real
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_datalink_files_parse_to_2401_pixel_spectra(name):
    path = REAL_DIR / name
    assert identify_format(path) == "gaia_datalink_csv"
    df = read_all(path)
    assert_schema(df)
    assert len(df) == 1
    row = df.iloc[0]
    assert row.source_id == REAL_FILES[name] and row.epoch_id == -1 and row.row == 0
    assert row.wave is RVS_WAVE and row.flux.size == RVS_N_PIX
    raw = pd.read_csv(path)
    np.testing.assert_array_equal(row.flux, raw["flux"].to_numpy(np.float32))
    np.testing.assert_array_equal(row.flux_error, raw["flux_error"].to_numpy(np.float32))
    has_null = raw["flux"].isna().any()
    assert ReadFlag(int(row.read_flags)) == (F.NULL_PIXELS if has_null else F.NONE)
    assert row.read_flags & ~INFORMATIONAL_FLAGS == 0  # a good spectrum with NaN edges


@needs_real
def test_real_spectrum_has_its_ca_triplet_at_air_wavelengths():
    # The reader converts Gaia's vacuum grid to air: the line cores must land on air values.
    row = read_all(REAL_DIR / "HD176650.csv").iloc[0]
    for air in CA_II_AIR:
        sel = np.abs(row.wave - air) < 4
        centre = row.wave[sel][np.nanargmin(row.flux[sel])]
        assert abs(centre - air) < 0.15, (air, centre)


def rvs_flux(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1, 0.02, RVS_N_PIX).astype(np.float32), \
        rng.uniform(0.01, 0.02, RVS_N_PIX).astype(np.float32)


def test_datalink_comments_nulls_text_inf_and_negative_flux_are_flagged(tmp_path):
    flux, err = rvs_flux()
    cells = [repr(float(v)) for v in flux]
    cells[0], cells[1] = "", "null"          # nulls
    cells[10] = "abc"                         # text where a number belongs
    cells[20] = "inf"
    cells[30] = "-0.5"
    path = write_datalink_csv(tmp_path / "s.csv", 42, cells, err,
                              comments=("# Gaia DR3 RVS mean spectrum", "# units: nm"))
    df = read_all(path)
    assert len(df) == 1
    row = df.iloc[0]
    assert flags_of(df)[0] == F.NULL_PIXELS | F.NOT_NUMERIC | F.NON_FINITE | F.NEGATIVE_FLUX
    assert np.isnan(row.flux[[0, 1, 10]]).all() and row.flux[20] == np.inf
    assert row.flux[30] == np.float32(-0.5) and row.flux[5] == flux[5]


def test_datalink_unsorted_pixels_are_sorted_and_flagged(tmp_path):
    flux, err = rvs_flux()
    order = np.random.default_rng(1).permutation(RVS_N_PIX)
    path = write_datalink_csv(tmp_path / "s.csv", 7, flux[order], err[order],
                              wave_nm=RVS_WAVE_VAC_NM[order])
    row = read_all(path).iloc[0]
    assert ReadFlag(int(row.read_flags)) == F.UNSORTED_WAVE
    assert row.wave is RVS_WAVE
    np.testing.assert_array_equal(row.flux, flux)
    np.testing.assert_array_equal(row.flux_error, err)


def test_datalink_missing_pixels_and_all_null(tmp_path):
    flux, err = rvs_flux()
    short = write_datalink_csv(tmp_path / "short.csv", 7, flux[:-3], err[:-3],
                               wave_nm=RVS_WAVE_VAC_NM[:-3])
    row = read_all(short).iloc[0]
    assert ReadFlag(int(row.read_flags)) == F.WRONG_LENGTH
    assert row.flux.size == row.wave.size == RVS_N_PIX - 3
    np.testing.assert_allclose(row.wave, RVS_WAVE[:-3])
    empty = write_datalink_csv(tmp_path / "null.csv", 8, np.full(RVS_N_PIX, np.nan))
    assert ReadFlag(int(read_all(empty).iloc[0].read_flags)) == F.ALL_NULL


def test_datalink_file_with_several_spectra_flags_a_repeated_source(tmp_path):
    path = tmp_path / "many.csv"
    for k, sid in enumerate((1, 2, 1)):
        write_datalink_csv(path, sid, *rvs_flux(k), append=k > 0)
    df = read_all(path)
    assert df["source_id"].tolist() == [1, 2, 1]
    assert df["row"].tolist() == [0, RVS_N_PIX, 2 * RVS_N_PIX]
    assert flags_of(df) == [F.DUPLICATE_ID, F.NONE, F.DUPLICATE_ID]


def test_datalink_transit_id_becomes_epoch_id(tmp_path):
    path = write_datalink_csv(tmp_path / "e.csv", 5, *rvs_flux(), transit_id=123456789)
    assert read_all(path).iloc[0].epoch_id == 123456789


def _datalink_lines(tmp_path):
    path = write_datalink_csv(tmp_path / "d.csv", 5, *rvs_flux(),
                              comments=("# comment",))
    return path, path.read_text().splitlines()


@pytest.mark.parametrize("case", ["text_source_id", "too_many_fields", "too_few_fields",
                                  "text_wavelength", "angstrom_wavelength"])
def test_datalink_file_errors_name_file_and_line(tmp_path, case):
    path, lines = _datalink_lines(tmp_path)
    k = 10  # 0-based index into lines -> 1-based line k + 1
    fields = lines[k].split(",")
    if case == "text_source_id":
        fields[0] = "12x4"
    elif case == "too_many_fields":
        fields.append("1")
    elif case == "too_few_fields":
        fields = fields[:-2]
    elif case == "text_wavelength":
        fields[4] = "846.x"
    else:
        fields[4] = "8460.8"
    lines[k] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReaderError) as info:
        read_all(path)
    assert info.value.path == str(path) and info.value.line == k + 1
    assert str(path) in str(info.value) and f"line {k + 1}" in str(info.value)


def test_datalink_empty_and_missing_column_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ReaderError, match="empty file"):
        list(gaia_datalink_csv.read(empty))
    bad = tmp_path / "noflux.csv"
    bad.write_text("source_id,wavelength,flux_error\n1,846.0,0.1\n")
    with pytest.raises(ReaderError, match=r"missing required column\(s\) \['flux'\]"):
        list(gaia_datalink_csv.read(bad))
    header_only = tmp_path / "header.csv"
    header_only.write_text(DATALINK_HEADER + "\n")
    assert list(gaia_datalink_csv.read(header_only)) == []


# ---------------------------------------------------------------------------------------------
# Gaia bulk ECSV


def bulk(tmp_path, df, name=BULK_NAME, **kw) -> Path:
    return write_bulk_ecsv(tmp_path / name, df, compresslevel=1, **kw)


def _edit_line(index_from_data: int, edit):
    def apply(text):
        lines = text.split("\n")
        first = next(i for i, line in enumerate(lines) if not line.startswith("#")) + 1
        lines[first + index_from_data] = edit(lines[first + index_from_data])
        return "\n".join(lines)
    return apply


def test_bulk_round_trip_with_truth_and_transit_ids(tmp_path):
    df = spectra_frame(7, truth=True)
    df["epoch_id"] = np.arange(7) + 1000
    df.loc[2, "flux"][5:9] = np.nan
    path = bulk(tmp_path, df)
    text = gzip.decompress(path.read_bytes()).decode()
    assert text.startswith("# %ECSV 1.0\n# ---\n# delimiter: ','\n# datatype:\n")
    assert "subtype: 'float32[null]'" in text and ',"[null,' not in text and "null,null" in text
    assert identify_format(path) == "gaia_bulk_ecsv"
    parts = list(read_catalogue(path, partition_rows=3))
    assert [len(p) for p in parts] == [3, 3, 1]
    out = pd.concat(parts, ignore_index=True)
    assert_schema(out, ("true_teff",))
    assert out["row"].tolist() == list(range(7))
    assert out["source_id"].tolist() == df["source_id"].tolist()
    assert out["epoch_id"].tolist() == df["epoch_id"].tolist()
    np.testing.assert_array_equal(np.stack(out["flux"]), np.stack(df["flux"]))
    np.testing.assert_array_equal(np.stack(out["flux_error"]), np.stack(df["flux_error"]))
    np.testing.assert_array_equal(out["true_teff"], df["true_teff"])
    assert all(w is RVS_WAVE for w in out["wave"])
    assert flags_of(out) == [F.NONE, F.NONE, F.NULL_PIXELS] + [F.NONE] * 4


def test_bulk_spectrum_level_problems_are_flagged_not_dropped(tmp_path):
    df = spectra_frame(7)
    df.loc[0, "flux"][:] = np.nan                    # all null
    df.loc[1, "flux"][100] = np.inf                  # non-finite
    df.loc[2, "flux"][200] = -0.3                    # negative flux
    df.loc[3, "flux_error"][7] = 0.0                 # bad error
    df.loc[5, "source_id"] = df.loc[4, "source_id"]  # duplicated id
    df.loc[6, "source_id"] = (5000 << 43) + 1        # HEALPix 5000 outside 0-3111
    out = read_all(bulk(tmp_path, df))
    assert len(out) == 7
    assert flags_of(out) == [F.ALL_NULL, F.NON_FINITE, F.NEGATIVE_FLUX,
                             F.BAD_FLUX_ERROR, F.DUPLICATE_ID, F.DUPLICATE_ID,
                             F.SOURCE_OUTSIDE_FILE_RANGE]


def test_bulk_wrong_lengths_are_padded_or_truncated_and_flagged(tmp_path):
    df = spectra_frame(4)
    long = np.append(df.loc[1, "flux"], [1.0, 1.0]).astype(np.float32)
    df.at[1, "flux"] = long
    df.at[2, "flux"] = df.loc[2, "flux"][:-5]
    df.at[3, "flux_error"] = None
    out = read_all(bulk(tmp_path, df))
    assert flags_of(out) == [F.NONE, F.WRONG_LENGTH, F.WRONG_LENGTH | F.NULL_PIXELS,
                             F.BAD_FLUX_ERROR]
    assert all(f.size == RVS_N_PIX for f in out["flux"])
    np.testing.assert_array_equal(out.loc[1, "flux"], long[:RVS_N_PIX])
    assert np.isnan(out.loc[2, "flux"][-5:]).all()
    assert np.isnan(out.loc[3, "flux_error"]).all()


def test_bulk_declared_length_is_checked(tmp_path):
    df = spectra_frame(2)
    df.at[1, "flux"] = df.loc[1, "flux"][:-1]
    out = read_all(bulk(tmp_path, df, array_length=RVS_N_PIX - 1))
    # row 0 matches the grid but not the declared length, row 1 the reverse
    assert flags_of(out) == [F.WRONG_LENGTH, F.WRONG_LENGTH | F.NULL_PIXELS]


def test_bulk_text_and_spellings_inside_arrays(tmp_path):
    df = spectra_frame(3)
    path = bulk(tmp_path, df)

    def spaced(line):  # ", " between array elements, the CSV delimiters untouched
        parts = line.split('"')
        return '"'.join(p.replace(",", ", ") if i % 2 else p for i, p in enumerate(parts))

    rewrite_gzip_text(path, _edit_line(1, lambda line: line.replace('"[', '"[abc,', 1)))
    rewrite_gzip_text(path, _edit_line(2, spaced))
    out = read_all(path)
    assert len(out) == 3
    assert flags_of(out)[1] == F.NOT_NUMERIC | F.WRONG_LENGTH | F.NULL_PIXELS
    assert np.isnan(out.loc[1, "flux"][0])
    np.testing.assert_array_equal(out.loc[1, "flux"][1:], df.loc[1, "flux"][:-1])
    assert flags_of(out)[2] == F.NONE
    np.testing.assert_array_equal(out.loc[2, "flux"], df.loc[2, "flux"])
    np.testing.assert_array_equal(out.loc[2, "flux_error"], df.loc[2, "flux_error"])


@pytest.mark.parametrize("case", ["text_source_id", "extra_field", "missing_field"])
def test_bulk_row_errors_name_file_and_line(tmp_path, case):
    path = bulk(tmp_path, spectra_frame(4))
    lines = gzip.decompress(path.read_bytes()).decode().split("\n")
    data0 = next(i for i, line in enumerate(lines) if not line.startswith("#")) + 1
    edit = {"text_source_id": lambda s: "12ab" + s[s.index(","):],
            "extra_field": lambda s: s + ",7",
            "missing_field": lambda s: s[:s.rindex(",")]}[case]
    rewrite_gzip_text(path, _edit_line(2, edit))
    with pytest.raises(ReaderError) as info:
        read_all(path)
    assert info.value.line == data0 + 2 + 1 and str(path) in str(info.value)


@pytest.mark.parametrize("case", ["truncated_gzip", "truncated_text", "empty_file", "empty_gzip",
                                  "bad_yaml", "no_datatype", "not_ecsv", "missing_flux",
                                  "names_differ"])
def test_bulk_file_errors_name_the_file(tmp_path, case):
    path = bulk(tmp_path, spectra_frame(3))
    text = gzip.decompress(path.read_bytes()).decode()
    if case == "truncated_gzip":
        path.write_bytes(path.read_bytes()[:-200])
    elif case == "truncated_text":  # cut inside the last row's quoted flux_error
        gzip_text(path, text[:text.rindex('"[') + 50])
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "empty_gzip":
        gzip_text(path, "")
    elif case == "bad_yaml":
        gzip_text(path, text.replace("#   datatype: int64", "#   datatype: [int64", 1))
    elif case == "no_datatype":
        gzip_text(path, text.replace("# datatype:", "# columns:", 1))
    elif case == "not_ecsv":
        gzip_text(path, text.replace("# %ECSV 1.0", "# hello", 1))
    elif case == "missing_flux":
        gzip_text(path, text.replace("name: flux\n", "name: fluxes\n", 1)
                  .replace("source_id,flux,", "source_id,fluxes,", 1))
    elif case == "names_differ":
        gzip_text(path, text.replace("source_id,flux,", "sourceid,flux,", 1))
    with pytest.raises(ReaderError) as info:
        list(gaia_bulk_ecsv.read(path))
    assert info.value.path == str(path)
    expected = {"truncated_gzip": "gzip", "truncated_text": "truncated",
                "empty_file": "empty file", "empty_gzip": "empty file",
                "bad_yaml": "malformed ECSV YAML", "no_datatype": "no 'datatype' list",
                "not_ecsv": "%ECSV", "missing_flux": "missing required column",
                "names_differ": "differ from the ECSV header"}[case]
    assert expected in str(info.value)
    if case == "bad_yaml":
        assert info.value.line is not None and info.value.line > 1


GAIA_STYLE_HEADER = """# %ECSV 1.0
# ---
# delimiter: ','
# datatype:
# - {name: solution_id, datatype: int64, description: Solution Identifier}
# - {name: source_id, datatype: int64, description: 'Unique source identifier (unique within a
#     particular Data Release)'}
# - {name: ra, datatype: float64, unit: deg, description: Right Ascension}
# - {name: dec, datatype: float64, unit: deg, description: Declination}
# - {name: flux, datatype: string, subtype: 'float32[2401]', description: 'Flux: normalised'}
# - {name: flux_error, datatype: string, subtype: 'float32[null]', description: Flux error}
# - {name: combined_transits, datatype: int16, description: Number of combined transits}
# - {name: combined_ccds, datatype: int16, description: Number of combined CCDs}
# - {name: deblended_ccds, datatype: int16, description: Number of deblended CCDs}
# meta: !!omap
# - {Gaia data release: DR3}
solution_id,source_id,ra,dec,flux,flux_error,combined_transits,combined_ccds,deblended_ccds
"""


@needs_real
def test_gaia_style_bulk_file_agrees_with_the_datalink_reader(tmp_path):
    # A hand-written bulk file in flow-style YAML with every rvs_mean_spectrum column, holding
    # the real spectra with their original decimal text: both readers must agree exactly.
    lines = []
    for name in sorted(REAL_FILES):
        raw = pd.read_csv(REAL_DIR / name, dtype=str, keep_default_na=False)
        arr = {c: "[" + ",".join(v or "null" for v in raw[c]) + "]" for c in ("flux", "flux_error")}
        r = raw.iloc[0]
        lines.append(f'{r.solution_id},{r.source_id},{r.ra},{r.dec},"{arr["flux"]}",'
                     f'"{arr["flux_error"]}",{r.combined_transits},{r.combined_ccds},'
                     f'{r.deblended_ccds}')
    path = gzip_text(tmp_path / "RvsMeanSpectrum_233370-485285.csv.gz",
                     GAIA_STYLE_HEADER + "\n".join(lines) + "\n")
    assert identify_format(path) == "gaia_bulk_ecsv"
    out = read_all(path)
    assert_schema(out)
    for k, name in enumerate(sorted(REAL_FILES)):
        ref = read_all(REAL_DIR / name).iloc[0]
        got = out.iloc[k]
        assert got.source_id == ref.source_id and got.read_flags == ref.read_flags
        np.testing.assert_array_equal(got.flux, ref.flux)
        np.testing.assert_array_equal(got.flux_error, ref.flux_error)
        assert got.wave is ref.wave is RVS_WAVE


def test_identify_tells_bulk_and_datalink_apart(tmp_path):
    b = bulk(tmp_path, spectra_frame(1))
    d = write_datalink_csv(tmp_path / "d.csv", 1, *rvs_flux())
    assert gaia_bulk_ecsv.identify(b) and not gaia_datalink_csv.identify(b)
    assert gaia_datalink_csv.identify(d) and not gaia_bulk_ecsv.identify(d)


def test_write_bulk_refuses_another_grid(tmp_path):
    with pytest.raises(ValueError, match="not on the Gaia RVS grid"):
        write_bulk_ecsv(tmp_path / BULK_NAME, spectra_frame(1, wave=SMALL_WAVE))


# Property-based tests of the array text parser and the bulk round trip

_element = st.one_of(st.none(), st.floats(width=32, allow_nan=False, allow_infinity=True))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(_element, max_size=12), min_size=1, max_size=6),
       sep=st.sampled_from([",", ", ", " , "]), null=st.sampled_from(["null", "NaN", "nan", ""]))
def test_parse_array_strings_inverts_any_json_like_spelling(rows, sep, null):
    def word(v):
        if v is None:
            return null
        return {np.inf: "Infinity", -np.inf: "-Infinity"}.get(v, repr(v))
    texts = ["[" + sep.join(word(v) for v in row) + "]" for row in rows]
    parsed = parse_array_strings(pa.array(texts))
    # "[]" holds no element, so a lone empty-spelled null reads as an empty array
    lengths = [0 if r == [None] and null == "" else len(r) for r in rows]
    assert parsed.lengths.tolist() == lengths
    expect = np.array([np.nan if v is None else v for r, n in zip(rows, lengths)
                       for v in r[:n]], np.float32)
    np.testing.assert_array_equal(parsed.values, expect)
    assert not parsed.not_numeric.any() and not parsed.null_field.any()


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(_element, max_size=12), max_size=6))
def test_format_then_parse_array_strings_round_trips(rows):
    values = np.array([np.nan if v is None else v for r in rows for v in r], np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    parsed = parse_array_strings(format_array_strings(values, offsets))
    np.testing.assert_array_equal(parsed.values, values)
    np.testing.assert_array_equal(parsed.offsets, offsets)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bulk_round_trip_property(tmp_path, data):
    n = data.draw(st.integers(1, 4))
    lengths = data.draw(st.lists(st.sampled_from([RVS_N_PIX, RVS_N_PIX, 1, 2399, 2405]),
                                 min_size=n, max_size=n))
    seed = data.draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    flux = []
    for k in lengths:
        f = rng.normal(1, 0.1, k).astype(np.float32)
        f[rng.random(k) < data.draw(st.sampled_from([0.0, 0.01, 0.5, 1.0]))] = np.nan
        flux.append(f)
    df = pd.DataFrame({"source_id": source_ids(n, seed=seed), "epoch_id": -1,
                       "flux": pd.Series(flux, dtype=object), "flux_error": None})
    out = read_all(bulk(tmp_path, df, name=f"x_{seed}.csv.gz"))
    assert len(out) == n and out["flux_error"].isna().all()
    for k, f, got, flag in zip(lengths, flux, out["flux"], flags_of(out)):
        m = min(k, RVS_N_PIX)
        np.testing.assert_array_equal(got[:m], f[:m])
        assert np.isnan(got[m:]).all()
        assert bool(flag & F.WRONG_LENGTH) == (k != RVS_N_PIX)
        assert bool(flag & F.ALL_NULL) == bool(np.isnan(got).all())


# ---------------------------------------------------------------------------------------------
# Parquet


@pytest.mark.parametrize("kw", [{}, {"fixed": True}, {"wave": "row"}, {"row_group_size": 2}])
def test_parquet_round_trip(tmp_path, kw):
    df = spectra_frame(5, wave=SMALL_WAVE, truth=True)
    path = write_parquet(tmp_path / "s.parquet", df, **kw)
    assert identify_format(path) == "parquet"
    out = read_all(path, partition_rows=3)
    assert_schema(out, ("true_teff",))
    assert out["source_id"].tolist() == df["source_id"].tolist()
    np.testing.assert_array_equal(np.stack(out["flux"]), np.stack(df["flux"]))
    np.testing.assert_array_equal(np.stack(out["flux_error"]), np.stack(df["flux_error"]))
    np.testing.assert_allclose(out["wave"].iloc[0], SMALL_WAVE)
    assert out["wave"].iloc[0] is out["wave"].iloc[1]
    assert (out["read_flags"] == 0).all()


def test_parquet_row_groups_become_partitions(tmp_path):
    path = write_parquet(tmp_path / "s.parquet", spectra_frame(7, wave=SMALL_WAVE),
                         row_group_size=3)
    assert parquet.row_ranges(path, 4) == [(0, 3), (3, 7)]
    assert parquet.row_ranges(path, 2) == [(0, 2), (2, 3), (3, 5), (5, 7)]
    assert parquet.row_ranges(path, 100) == [(0, 7)]


def test_parquet_default_grid_units_and_medium(tmp_path):
    df = spectra_frame(2)
    path = write_parquet(tmp_path / "g.parquet", df, wave="none")
    assert all(w is RVS_WAVE for w in read_all(path)["wave"])
    df = spectra_frame(2, wave=RVS_WAVE_VAC_NM)
    path = write_parquet(tmp_path / "nm.parquet", df, wave_unit="nm", wave_medium="vacuum")
    np.testing.assert_allclose(read_all(path)["wave"].iloc[0], RVS_WAVE, rtol=0, atol=1e-9)


def test_parquet_null_wrong_length_and_text_elements(tmp_path):
    table = pa.table({
        "SOURCE_ID": pa.array([1, 2, 3, 1], pa.int64()),
        "Flux": pa.array([None, [1.0, 2.0], None, [1.0, -2.0, 3.0]], pa.list_(pa.float32())),
    }).replace_schema_metadata({"sb2dask.wave": "[8500, 8501, 8502]"})
    pq.write_table(table, tmp_path / "p.parquet")
    out = read_all(tmp_path / "p.parquet")
    assert flags_of(out) == [F.ALL_NULL | F.DUPLICATE_ID, F.WRONG_LENGTH | F.NULL_PIXELS,
                             F.ALL_NULL, F.NEGATIVE_FLUX | F.DUPLICATE_ID]
    assert out["flux_error"].isna().all()
    text = pa.table({"source_id": [1], "flux": pa.array([["1", "x", "3"]])})
    pq.write_table(text.replace_schema_metadata({"sb2dask.wave": "[1, 2, 3]"}),
                   tmp_path / "t.parquet")
    row = read_all(tmp_path / "t.parquet").iloc[0]
    assert ReadFlag(int(row.read_flags)) == F.NOT_NUMERIC | F.NULL_PIXELS
    assert row.flux[0] == 1 and np.isnan(row.flux[1])


def test_parquet_errors_name_file_and_row(tmp_path):
    pq.write_table(pa.table({"source_id": ["1", "2", "x3"], "flux": [[1.0]] * 3}),
                   tmp_path / "t.parquet")
    with pytest.raises(ReaderError) as info:
        read_all(tmp_path / "t.parquet")
    assert info.value.row == 2 and "t.parquet" in str(info.value)
    pq.write_table(pa.table({"source_id": [1], "spectrum": [[1.0]]}), tmp_path / "m.parquet")
    with pytest.raises(ReaderError, match="missing required column"):
        read_all(tmp_path / "m.parquet")
    pq.write_table(pa.table({"source_id": pa.array([1, None]), "flux": [[1.0]] * 2}),
                   tmp_path / "n.parquet")
    with pytest.raises(ReaderError, match="source_id is null") as info:
        read_all(tmp_path / "n.parquet")
    assert info.value.row == 1


# ---------------------------------------------------------------------------------------------
# FITS


@pytest.mark.parametrize("wave", ["keywords", "extension", "column"])
@pytest.mark.parametrize("upper", [True, False])
def test_fits_round_trip_with_each_grid_description(tmp_path, wave, upper):
    df = spectra_frame(5, wave=SMALL_WAVE, truth=True)
    df["epoch_id"] = np.arange(5)
    path = write_fits(tmp_path / "s.fits", df, wave=wave, upper=upper)
    assert identify_format(path) == "fits_table"
    assert fits_table.row_ranges(path, 2) == [(0, 2), (2, 4), (4, 5)]
    out = read_all(path, partition_rows=2)
    assert_schema(out, ("true_teff",))
    assert out["epoch_id"].tolist() == list(range(5))
    np.testing.assert_array_equal(np.stack(out["flux"]), np.stack(df["flux"]))
    np.testing.assert_allclose(out["wave"].iloc[0], SMALL_WAVE, rtol=0, atol=1e-6)
    assert out["wave"].iloc[0] is out["wave"].iloc[1]
    np.testing.assert_array_equal(out["true_teff"], df["true_teff"])
    assert (out["read_flags"] == 0).all()


def test_fits_default_grid_and_flags(tmp_path):
    df = spectra_frame(4)
    df.loc[0, "flux"][3] = np.nan
    df.loc[1, "flux"][3] = -np.inf
    df.loc[3, "source_id"] = df.loc[2, "source_id"]
    out = read_all(write_fits(tmp_path / "d.fits", df, wave="none"))
    assert all(w is RVS_WAVE for w in out["wave"])
    assert flags_of(out) == [F.NULL_PIXELS, F.NON_FINITE | F.NEGATIVE_FLUX,
                             F.DUPLICATE_ID, F.DUPLICATE_ID]


@pytest.mark.filterwarnings("ignore:Error validating header")
def test_fits_errors_name_the_file(tmp_path):
    df = spectra_frame(3, wave=SMALL_WAVE)
    ids = fits.Column("SOURCE_ID", "5A", array=np.array(["1", "2", "x"]))
    path = tmp_path / "t.fits"
    table = fits.BinTableHDU.from_columns(
        [ids, fits.Column("FLUX", f"{SMALL_WAVE.size}E", array=np.stack(list(df["flux"])))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(ReaderError) as info:
        read_all(path)
    assert info.value.row == 2 and "'x'" in str(info.value)
    fits.HDUList([fits.PrimaryHDU(RVS_WAVE_VAC_NM)]).writeto(tmp_path / "img.fits")
    with pytest.raises(ReaderError, match="no binary table with a FLUX column"):
        read_all(tmp_path / "img.fits")
    whole = write_fits(tmp_path / "w.fits", df).read_bytes()
    (tmp_path / "cut.fits").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ReaderError, match="cut.fits"):
        read_all(tmp_path / "cut.fits")


# ---------------------------------------------------------------------------------------------
# Zarr stores


def test_zarr_store_rows_labels_and_chunk_partitions(tmp_path):
    path = write_zarr_store(tmp_path / "s.zarr", n=10, chunk=4, done=(0, 1, 2))
    assert identify_format(path) == "zarr_store"
    assert zarr_store.row_ranges(path, 5) == [(0, 4), (4, 8), (8, 10)]
    assert zarr_store.row_ranges(path, 8) == [(0, 8), (8, 10)]
    parts = list(read_catalogue(path, partition_rows=5))
    assert [len(p) for p in parts] == [4, 4, 2]
    out = pd.concat(parts, ignore_index=True)
    extra = ("true_flux_ratio", "true_is_binary", "true_teff_1", "true_teff_2")
    assert_schema(out, extra)
    assert out["source_id"].tolist() == list(range(10)) and (out["epoch_id"] == -1).all()
    assert (out["true_teff_1"] <= out["true_teff_2"]).all()
    assert out["true_is_binary"].dtype == bool and out["flux_error"].isna().all()
    assert out["wave"].iloc[0] is out["wave"].iloc[3]
    assert dict(zarr_store.passthrough(path)) == {k: out[k].dtype for k in extra}


def test_zarr_store_missing_chunk_marker_raises(tmp_path):
    path = write_zarr_store(tmp_path / "s.zarr", n=10, chunk=4, done=(0, 2))
    with pytest.raises(ReaderError, match="chunk 1 .rows 4-7.") as info:
        read_all(path)
    assert info.value.row == 4
    assert len(zarr_store.read_rows(path, 0, 4)) == 4


def test_zarr_store_source_id_label_and_identify(tmp_path):
    ids = np.array([5, 6, 7, 5, 8, 9], np.int64)
    path = write_zarr_store(tmp_path / "s.zarr", n=6, chunk=3, source_id_label=ids)
    out = read_all(path)
    assert out["source_id"].tolist() == ids.tolist() and "true_source_id" not in out
    assert flags_of(out) == [F.DUPLICATE_ID, F.NONE, F.NONE, F.DUPLICATE_ID, F.NONE, F.NONE]
    import zarr
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("flux", shape=(2, 2),
                                                                       dtype="f4")
    assert not zarr_store.identify(tmp_path / "plain.zarr")


# ---------------------------------------------------------------------------------------------
# Dispatch and Dask


def test_each_fixture_is_claimed_by_exactly_one_reader(tmp_path):
    df = spectra_frame(2, wave=SMALL_WAVE)
    files = {
        "gaia_bulk_ecsv": bulk(tmp_path, spectra_frame(2)),
        "gaia_datalink_csv": write_datalink_csv(tmp_path / "d.csv", 1, *rvs_flux()),
        "parquet": write_parquet(tmp_path / "p.parquet", df),
        "fits_table": write_fits(tmp_path / "f.fits", df),
        "zarr_store": write_zarr_store(tmp_path / "z.zarr"),
    }
    for name, path in files.items():
        claims = [fmt.name for fmt in READERS if fmt.identify(path)]
        assert claims == [name], (path, claims)


def test_unknown_file_raises_naming_it(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    with pytest.raises(ReaderError, match="notes.txt: no reader recognises"):
        identify_format(other)
    with pytest.raises(ReaderError, match="no such file"):
        identify_format(tmp_path / "missing.csv.gz")


def test_to_dask_over_two_bulk_files(tmp_path):
    a = bulk(tmp_path, spectra_frame(5, seed=1, truth=True))
    b = bulk(tmp_path, spectra_frame(3, seed=2, truth=True, healpix=(3112, 6000)),
             name="RvsMeanSpectrum_003112-006000.csv.gz")
    ddf = to_dask([a, b])
    assert ddf.npartitions == 2
    assert tuple(ddf.columns) == SPECTRUM_COLUMNS + ("true_teff",)
    with dask.config.set(scheduler="sync"):
        out = ddf.compute()
        parts = [ddf.get_partition(i).compute() for i in range(ddf.npartitions)]
    assert len(out) == 8 and [len(p) for p in parts] == [5, 3]
    for part in parts:
        pd.testing.assert_series_equal(part.dtypes, ddf.dtypes)
        assert isinstance(part["flux"].iloc[0], np.ndarray)
    assert out["file"].tolist() == [str(a)] * 5 + [str(b)] * 3
    assert (out["read_flags"] == 0).all()


def test_to_dask_splits_row_range_formats_and_checks_truth_columns(tmp_path):
    store = write_zarr_store(tmp_path / "s.zarr", n=10, chunk=4)
    ddf = to_dask(store, partition_rows=4)
    assert ddf.npartitions == 3
    with dask.config.set(scheduler="sync"):
        assert len(ddf.compute()) == 10
    b = bulk(tmp_path, spectra_frame(2))
    with pytest.raises(ReaderError, match="pass-through columns"):
        to_dask([store, b])
