"""Ingest: no row dropped, exact flags, duplicate ids refused, row and HATS layouts read by Dask and LSDB."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from conftest import shared_path
from sedflow.catalog import CatalogSpec, read_catalog
from sedflow.ingest import MANIFEST, ingest_catalog, read_ingested, standard_schema

BANDS = ("u", "g", "r", "i", "z")
N = 200
# row -> what is wrong with it
BAD = {0: "nan flux", 1: "inf flux", 2: "negative flux", 3: "ivar 0", 4: "missing z", 5: "z = 0.5"}


def write_catalog(tmp_path, ids=None, n=N, seed=0):
    """A FITS catalog (array columns, not dereddened) with one row of each kind of bad value + its description."""
    rng = np.random.default_rng(seed)
    flux = 10 ** rng.uniform(0.5, 3, (n, 5))
    ivar = 1 / (0.05 * flux) ** 2
    z = rng.uniform(0.01, 0.19, n)
    flux[0, 1] = np.nan
    flux[1, 2] = np.inf
    flux[2, 3] = -4.0
    ivar[3, 4] = 0.0
    z[4] = np.nan
    z[5] = 0.5
    t = Table({
        "OBJID": np.arange(n, dtype=">i4") + 1000 if ids is None else ids,
        "RA": rng.uniform(0, 360, n),
        "DEC": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),  # uniform on the sphere
        "ZSPEC": z, "FLUX": flux, "FLUX_IVAR": ivar, "EXT": np.full((n, 5), 0.1),
    })
    path = tmp_path / "toy.fits"
    t.write(path, overwrite=True)
    spec = tmp_path / "toy.yaml"
    spec.write_text(json.dumps({  # JSON is YAML
        "name": "toy", "id": "OBJID", "ra": "RA", "dec": "DEC", "redshift": "ZSPEC", "bands": list(BANDS),
        "filters": [f"sdss2010-{b}" for b in BANDS],
        "flux": {"column": "FLUX", "units": "nanomaggies"},
        "flux_error": {"column": "FLUX_IVAR", "kind": "ivar"},
        "extinction": {"column": "EXT", "applied": False},
        "cuts": {"redshift_range": [0.0, 0.2]},
    }))
    return path, spec, t


EXPECTED = {"nonfinite_or_nonpositive_flux": 3, "bad_flux_error": 1, "nonfinite_redshift": 1,
            "cut_redshift_range": 2}


def check_rows(df, t):
    """Every input row once, with its values (dereddened by 10**(0.4*0.1)) and the right flags."""
    assert len(df) == N and df["id"].is_unique
    df = df.set_index("id").loc[np.asarray(t["OBJID"]).astype(np.int64)]
    col = lambda c: df[c].to_numpy(dtype=float, na_value=np.nan)  # also for LSDB's pyarrow dtypes
    factor = 10 ** (0.4 * 0.1)
    np.testing.assert_allclose(np.column_stack([col(f"flux_{b}") for b in BANDS]), np.asarray(t["FLUX"]) * factor)
    np.testing.assert_allclose(col("z"), np.asarray(t["ZSPEC"]))
    np.testing.assert_allclose(col("ra"), np.asarray(t["RA"]))
    np.testing.assert_allclose(col("flux_err_r"), np.asarray(t["FLUX_IVAR"])[:, 2] ** -0.5 * factor)
    bad = df["flag_bad_input"].to_numpy(dtype=bool)
    quality = df["flag_quality"].to_numpy(dtype=bool)
    assert np.flatnonzero(bad).tolist() == [0, 1, 2, 3, 4]
    assert np.flatnonzero(quality).tolist() == [4, 5]
    assert col("flux_i")[2] == pytest.approx(-4.0 * factor)   # kept, not clipped
    assert np.isnan(col("flux_g")[0]) and np.isinf(col("flux_r")[1]) and np.isnan(col("z")[4])
    assert col("z")[5] == 0.5


def test_row_layout_keeps_every_row_and_flags(tmp_path):
    path, spec, t = write_catalog(tmp_path)
    out = tmp_path / "rows"
    s = ingest_catalog(path, spec, out, partition_rows=64)
    assert s["rows_in"] == s["rows_out"] == N
    assert s["flagged"] == EXPECTED and s["flag_bad_input"] == 5 and s["flag_quality"] == 2
    assert s["layout"] == "partition_rows" and s["partitions"] == 4
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert files == [f"part-{k:05d}.parquet" for k in range(4)]
    assert [pq.read_metadata(out / f).num_rows for f in files] == [64, 64, 64, 8]
    assert not list(out.glob(".*")), "temp files left behind"
    assert not list(tmp_path.glob(".rows.sedflow-ingest-*")), "work directory left behind"
    # explicit schema, in input row order
    schema = pq.read_schema(out / files[0])
    assert schema.equals(standard_schema(BANDS, spec_name="toy"))
    assert schema.field("flux_u").metadata[b"unit"] == b"nanomaggies"
    df = pd.concat([pq.read_table(out / f).to_pandas() for f in files], ignore_index=True)
    assert (df["id"].to_numpy() == np.arange(N) + 1000).all()
    check_rows(df, t)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["spec"] == "toy" and manifest["input"]["name"] == "toy.fits"
    assert len(manifest["input"]["sha256"]) == 64 and manifest["rows_out"] == N
    assert [c["name"] for c in manifest["schema"]][:4] == ["id", "ra", "dec", "z"]
    # dask reads it
    ddf = read_ingested(out)
    assert ddf.npartitions == 4
    check_rows(ddf.compute().reset_index(drop=True), t)
    import dask.dataframe as dd

    assert len(dd.read_parquet(str(out / "part-*.parquet"))) == N


def test_existing_output_refused_unless_overwrite(tmp_path):
    path, spec, _ = write_catalog(tmp_path)
    out = tmp_path / "rows"
    ingest_catalog(path, spec, out)
    with pytest.raises(ValueError, match="not empty"):
        ingest_catalog(path, spec, out)
    s = ingest_catalog(path, spec, out, partition_rows=150, overwrite=True)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert s["rows_out"] == N
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not replacing"):
        ingest_catalog(path, spec, other, overwrite=True)
    assert (other / "keep.txt").exists()


def test_duplicated_ids_refused(tmp_path):
    ids = np.arange(N) + 1000
    ids[[10, 20, 30]] = ids[0]
    ids[50] = ids[40]
    path, spec, _ = write_catalog(tmp_path, ids=ids)
    with pytest.raises(ValueError, match=r"duplicated ids: 2 ids occur more than once \(6 rows\).*id 1000 at rows \[0, 10, 20, 30\]"):
        ingest_catalog(path, spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_string_ids_and_csv(tmp_path):
    rng = np.random.default_rng(1)
    n = 30
    cols = {"name": [f"J{k:04d}" for k in range(n)], "zz": rng.uniform(0.02, 0.1, n)}
    for b in BANDS:
        cols[f"f_{b}"] = rng.uniform(10, 100, n)
        cols[f"e_{b}"] = rng.uniform(0.5, 1, n)
    path = tmp_path / "cat.csv"
    pd.DataFrame(cols).to_csv(path, index=False)
    spec = CatalogSpec(name="csvtoy", bands=BANDS, id="name", redshift="zz",
                       flux={"columns": [f"f_{b}" for b in BANDS]},
                       flux_error={"columns": [f"e_{b}" for b in BANDS], "kind": "sigma"})
    s = ingest_catalog(path, spec, tmp_path / "out")
    assert s["id_type"] == "string" and s["rows_out"] == n and s["partitions"] == 1
    table = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert table.schema.field("id").type == "string" and "ra" not in table.schema.names
    assert table["id"].to_pylist() == cols["name"]
    with pytest.raises(ValueError, match="needs ra/dec"):
        ingest_catalog(path, spec, tmp_path / "hats", healpix_order=1)
    # empty cells: a missing flux is a missing band of that row; a missing id is refused (no row
    # may be lost or renamed)
    frame = pd.DataFrame(cols)
    frame.loc[3, "f_g"] = np.nan
    frame.to_csv(path, index=False)
    ingest_catalog(path, spec, tmp_path / "gaps")
    out = read_ingested(tmp_path / "gaps").compute()
    assert len(out) == n and np.isnan(out["flux_g"].iloc[3]) and np.isfinite(out["flux_g"].drop(index=3)).all()
    frame.loc[5, "name"] = None
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"1 ids are missing \(e.g. rows \[5\]\)"):
        ingest_catalog(path, spec, tmp_path / "noid")
    t = Table.from_pandas(frame)                 # FITS: the null id is blank, not an id
    t.write(tmp_path / "cat.fits")
    with pytest.raises(ValueError, match=r"1 ids are missing \(e.g. rows \[5\]\)"):
        ingest_catalog(tmp_path / "cat.fits", spec, tmp_path / "noid")


def test_hats_layout_opens_with_lsdb_and_dask(tmp_path):
    lsdb = pytest.importorskip("lsdb")
    path, spec, t = write_catalog(tmp_path)
    out = tmp_path / "hats"
    s = ingest_catalog(path, spec, out, healpix_order=1)
    assert s["layout"] == "hats" and s["rows_in"] == s["rows_out"] == N
    assert s["flagged"] == EXPECTED and s["flag_bad_input"] == 5 and s["flag_quality"] == 2
    files = sorted(out.glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    assert files and len(files) == s["partitions"] > 30  # 200 points over the sky, 48 pixels
    assert {p.parts[-3] for p in files} == {"Norder=1"}
    assert (out / MANIFEST).is_file() and (out / "hats.properties").is_file()
    assert not list(tmp_path.glob(".hats.sedflow-ingest-*")), "work directory left behind"

    cat = lsdb.read_hats(out)
    assert cat.hc_structure.catalog_info.total_rows == N
    df = cat.compute()
    assert len(df) == N and set(df["id"]) == set(np.arange(N) + 1000)
    assert {"ra", "dec", "z", "flag_bad_input", "flag_quality"} | {f"flux_err_{b}" for b in BANDS} <= set(df.columns)
    check_rows(pd.DataFrame(df).reset_index(drop=True), t)

    import dask.dataframe as dd

    ddf = dd.read_parquet(str(out / "dataset"), dataset={"partitioning": None})
    assert ddf.npartitions == len(files)
    got = ddf.compute()
    assert list(got.columns) == ["_healpix_29"] + standard_schema(BANDS).names
    assert got["id"].dtype == np.int64 and got["flag_quality"].dtype == bool
    check_rows(got.reset_index(drop=True), t)
    assert len(read_ingested(out)) == N


def test_hats_refuses_rows_without_position(tmp_path):
    path, spec, t = write_catalog(tmp_path)
    t["RA"][7] = np.nan
    t.write(path, overwrite=True)
    with pytest.raises(ValueError, match="1 rows have no valid ra/dec"):
        ingest_catalog(path, spec, tmp_path / "hats", healpix_order=1)
    assert ingest_catalog(path, spec, tmp_path / "rows")["rows_out"] == N  # the row layout keeps it


def test_nsa_subset_both_layouts(tmp_path):
    path = shared_path("nsa_lcs", "nsa_v0_1_2_lcs_subset.fits")
    spec = CatalogSpec.load("nsa")
    frame, counts = read_catalog(path, spec)
    rows = ingest_catalog(path, spec, tmp_path / "rows", partition_rows=1000)
    hats = ingest_catalog(path, spec, tmp_path / "hats", healpix_order=3)
    for s in (rows, hats):
        assert s["rows_in"] == s["rows_out"] == 3418
        assert s["flag_bad_input"] == counts["flag_bad_input"] and s["flag_quality"] == counts["flag_quality"]
        assert s["flagged"] == {k: v for k, v in counts.items() if k not in ("rows", "flag_bad_input", "flag_quality")}
    assert rows["partitions"] == 4
    for out in ("rows", "hats"):
        got = read_ingested(tmp_path / out).compute().set_index("id").sort_index()
        want = frame.assign(id=frame["id"].astype(np.int64)).set_index("id").sort_index()
        assert got.index.equals(want.index)
        pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)


def test_cli_handler(tmp_path, capsys):
    from sedflow.cli import build_parser, main

    path, spec, _ = write_catalog(tmp_path)
    assert main(["ingest", str(path), "--spec", str(spec), "--out", str(tmp_path / "o"), "--partition-rows", "100"]) == 0
    out = capsys.readouterr().out
    assert "200 rows in, 200 out, 2 partitions" in out and "flag_bad_input: 5" in out
    assert main(["ingest", str(path), "--spec", str(spec), "--out", str(tmp_path / "o")]) == 2  # exists
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one layout or the other
        build_parser().parse_args(["ingest", str(path), "--spec", "x", "--out", "o", "--partition-rows", "5",
                                   "--healpix-order", "2"])


def test_unreadable_and_mismatched_catalogs_give_one_line_and_exit_2(tmp_path, capsys):
    """The command line's answer to a file that is no catalog, or not the described one."""
    from sedflow.cli import main

    path, spec, _ = write_catalog(tmp_path, n=10)
    (tmp_path / "garbage.fits").write_text("not a FITS file at all")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 and nothing else")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    Table.read(path)[["OBJID", "ZSPEC"]].write(tmp_path / "few_columns.fits")
    cases = {"garbage.fits": "cannot be read as a FITS catalog", "garbage.parquet": "cannot be read as a Parquet",
             "other.csv": "lacks columns", "few_columns.fits": "lacks columns",
             "missing.fits": "not found", "a_folder": "is a folder"}
    (tmp_path / "a_folder").mkdir()
    for name, message in cases.items():
        assert main(["ingest", str(tmp_path / name), "--spec", str(spec), "--out", str(tmp_path / f"o_{name}")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sedflow ingest: error:") and message in err[0], (name, err)
    assert main(["ingest", str(path), "--spec", "no_such_survey", "--out", str(tmp_path / "o")]) == 2
    assert "shipped names" in capsys.readouterr().err


def test_empty_catalog_gives_an_empty_valid_output(tmp_path):
    """0 rows in: an ingested catalog and a posterior catalog of 0 rows with the full schemas."""
    from sedflow.infer import output_schema, run_inference

    path, spec, _ = write_catalog(tmp_path, n=10)
    Table.read(path)[:0].write(tmp_path / "empty.fits")
    s = ingest_catalog(tmp_path / "empty.fits", spec, tmp_path / "in")
    assert s["rows_in"] == s["rows_out"] == 0
    assert read_ingested(tmp_path / "in").compute().empty
    summary = run_inference(tmp_path / "in", tmp_path / "out", n_samples=10, workers=1, progress=False)
    assert summary["galaxies"] == 0
    t = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert t.num_rows == 0 and t.schema.names == output_schema().names
    with pytest.raises(ValueError, match="no rows.*row layout"):       # HATS has no empty pixel to write
        ingest_catalog(tmp_path / "empty.fits", spec, tmp_path / "hats", healpix_order=1)
    with pytest.raises(ValueError, match="workers"):
        ingest_catalog(path, spec, tmp_path / "hats", healpix_order=1, workers=0)
    assert not (tmp_path / "hats").exists()


def test_garbage_file_on_the_command_line_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "garbage.fits").write_text("22 bytes of plain text")
    r = subprocess.run([sys.executable, "-m", "sedflow.cli", "ingest", "--spec", "nsa", str(tmp_path / "garbage.fits"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
