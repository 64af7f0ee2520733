"""Ingest a survey catalog into partitioned Parquet in the standard input form.

``ingest_catalog`` reads a FITS, CSV or Parquet catalog through its description
(a shipped name or a YAML path, `sedflow.catalog.read_catalog`) and writes it, with an explicit pyarrow
schema (`standard_schema`), in one of two layouts that Dask (the inference stage) reads:

* **row partitions** (default; the only choice when the survey has no ra/dec):
  ``part-00000.parquet``, ``part-00001.parquet``, ... of ``partition_rows`` rows each, in input
  row order, each written to a temp file and renamed, plus ``_ingest.json`` (spec name, input
  file name and sha256, counts, schema). Read with::

      dask.dataframe.read_parquet(f"{out}/part-*.parquet")

* **HATS** (``healpix_order=K``, needs ra/dec): ``Norder=K/Dir=D/Npix=N.parquet`` under
  ``out/dataset/``, made by hats-import's catalog pipeline on a Dask client (a small local one
  unless one is given) with ``constant_healpix_order=K``, so every partition is at order K
  (hats-import's row thresholds do not apply). hats-import adds its spatial index column
  ``_healpix_29`` (int64, first column) and sorts each pixel by (``_healpix_29``, ``id``); it also
  writes ``hats.properties``, ``partition_info.csv``, ``point_map.fits``, ``skymap.fits`` and
  ``dataset/_metadata`` + ``dataset/_common_metadata``. ``lsdb.read_hats(out)`` opens it; with
  plain Dask (``_metadata``/``_common_metadata`` are skipped or used as Parquet metadata, and
  ``partitioning=None`` stops pyarrow adding the ``Norder``/``Dir`` directory names as columns)::

      dask.dataframe.read_parquet(f"{out}/dataset", dataset={"partitioning": None})

`read_ingested` does the right call for either layout.

Standard columns (`sedflow.catalog` defines them): ``id`` (int64, or string when the survey's
ids are strings), ``ra``, ``dec`` (float64, degrees, when the survey has them), ``z``,
``flux_{b}``, ``flux_err_{b}`` (float64, nanomaggies, extinction-corrected as the description
says), ``flag_bad_input``, ``flag_quality`` (bool).

Guarantees and refusals:

* **No row is dropped**: rows in == rows out, counted from the written Parquet footers (a
  mismatch raises ``RuntimeError``). Bad values (NaN/inf/non-positive flux, ivar <= 0, missing z)
  only set ``flag_bad_input``; a z outside the description's ``redshift_range`` (including a
  missing z) sets ``flag_quality``. The summary counts each reason.
* **Duplicated ids are refused**: a ``ValueError`` says how many ids occur more than once and
  shows a few with their row numbers. Every input row must appear in the output exactly once,
  and posteriors are joined back to the catalog by ``id``.
* The HATS layout refuses rows with non-finite ra/dec or |dec| > 90 (they have no pixel; use
  the row layout), and ids that are not integer or string are refused in both layouts.
* The output appears whole or not at all: everything is written into a hidden work directory
  beside ``out`` and renamed into place at the end. An existing non-empty ``out`` is refused
  unless ``overwrite=True`` and it holds an ``_ingest.json`` (a previous ingest).

Example::

    from sedflow.ingest import ingest_catalog, read_ingested
    s = ingest_catalog("nsa_v0_1_2.fits", "nsa", "nsa_hats", healpix_order=3)
    ddf = read_ingested("nsa_hats")          # a dask DataFrame with the standard columns
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sedflow import hats_io
from sedflow.catalog import CatalogSpec, normalise_ids, read_catalog, refuse_duplicate_ids
from sedflow.storage import file_sha256, write_row_partitions

__all__ = [
    "ingest_catalog",
    "standard_schema",
    "read_ingested",
    "DEFAULT_PARTITION_ROWS",
    "MANIFEST",
]

DEFAULT_PARTITION_ROWS = 100_000
MANIFEST = "_ingest.json"
_FORMAT = 1
_MAX_HEALPIX_ORDER = 29


def standard_schema(bands, id_type: pa.DataType = pa.int64(), positions: bool = True,
                    spec_name: str | None = None, filters=None) -> pa.Schema:
    """The explicit pyarrow schema of the standard input form (units in the field metadata; the
    bands and, when known, their filters as JSON in the schema metadata)."""
    fields = [pa.field("id", id_type, nullable=False, metadata={"description": "survey id"})]
    if positions:
        fields += [pa.field("ra", pa.float64(), metadata={"unit": "deg"}),
                   pa.field("dec", pa.float64(), metadata={"unit": "deg"})]
    fields.append(pa.field("z", pa.float64(), metadata={"description": "redshift"}))
    fields += [pa.field(f"flux_{b}", pa.float64(),
                        metadata={"unit": "nanomaggies", "description": "extinction-corrected flux"})
               for b in bands]
    fields += [pa.field(f"flux_err_{b}", pa.float64(),
                        metadata={"unit": "nanomaggies", "description": "1-sigma flux error"})
               for b in bands]
    fields += [
        pa.field("flag_bad_input", pa.bool_(), nullable=False,
                 metadata={"description": "non-finite or non-positive flux, error or ivar; non-finite z"}),
        pa.field("flag_quality", pa.bool_(), nullable=False,
                 metadata={"description": "fails a quality cut of the catalog description"}),
    ]
    meta = {"sedflow": "standard input catalog", "format": str(_FORMAT), "bands": ",".join(bands)}
    if filters:
        meta["filters"] = json.dumps(list(filters))
    if spec_name:
        meta["catalog_spec"] = spec_name
    return pa.schema(fields, metadata=meta)


# ----------------------------------------------------------------------------------------------
# checks on the standard frame
# ----------------------------------------------------------------------------------------------

def _to_table(frame: pd.DataFrame, schema: pa.Schema, ids: np.ndarray) -> pa.Table:
    arrays = []
    for f in schema:
        values = ids if f.name == "id" else frame[f.name].to_numpy()
        if pa.types.is_floating(f.type):
            values = np.asarray(values, dtype=np.float64)
        elif pa.types.is_boolean(f.type):
            values = np.asarray(values, dtype=bool)
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------

def _count_rows(files) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------

def ingest_catalog(input_path, spec, out_dir, partition_rows: int | None = None,
                   healpix_order: int | None = None, *, overwrite: bool = False, client=None,
                   workers: int = 2, tmp_dir=None, max_rows: int | None = None) -> dict:
    """Ingest ``input_path`` (FITS/CSV/Parquet) described by ``spec`` into ``out_dir``; returns a summary.

    Args:
        input_path: the survey catalog.
        spec: a `CatalogSpec`, a shipped description's name (`sedflow.catalog.shipped_specs`) or a YAML path.
        out_dir: output directory (must not exist or be empty; see ``overwrite``).
        partition_rows: rows per ``part-NNNNN.parquet`` (row layout; default 100,000).
        healpix_order: write the HATS layout at this HEALPix order instead (needs ra/dec).
        overwrite: replace an ``out_dir`` that holds a previous ingest (``_ingest.json``).
        client: a ``dask.distributed.Client`` for hats-import (default: a local one, ``workers``
            threads, closed afterwards). A remote cluster must see ``out_dir``'s filesystem.
        tmp_dir: where the hidden work directory goes (default: beside ``out_dir``).
        max_rows: ingest only the first ``max_rows`` rows (trials); recorded in the summary.

    Returns:
        dict with ``rows_in``, ``rows_out``, ``flagged`` (rows by reason, as `read_catalog`
        counts them), ``flag_bad_input``, ``flag_quality``, ``partitions``, ``layout``,
        ``seconds`` and more; the same record is saved as ``out_dir/_ingest.json``.
    """
    t_start = time.perf_counter()
    spec = CatalogSpec.load(spec)
    input_path, out_dir = Path(input_path), Path(out_dir)
    if max_rows is not None and (not isinstance(max_rows, (int, np.integer)) or max_rows < 0):
        raise ValueError(f"max_rows must be a non-negative integer, got {max_rows!r}")
    if partition_rows is not None and healpix_order is not None:
        raise ValueError("give partition_rows (row layout) or healpix_order (HATS layout), not both")
    has_positions = bool(spec.ra and spec.dec)
    if healpix_order is not None:
        if not has_positions:
            raise ValueError(f"the HATS layout (healpix_order) needs ra/dec, and the description "
                             f"{spec.name!r} names none: use partition_rows")
        if not isinstance(healpix_order, (int, np.integer)) or not 0 <= healpix_order <= _MAX_HEALPIX_ORDER:
            raise ValueError(f"healpix_order must be an integer in 0..{_MAX_HEALPIX_ORDER}, got {healpix_order!r}")
        healpix_order = int(healpix_order)
        if client is None and not (isinstance(workers, (int, np.integer)) and workers >= 1):
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    else:
        partition_rows = DEFAULT_PARTITION_ROWS if partition_rows is None else partition_rows
        if not isinstance(partition_rows, (int, np.integer)) or partition_rows < 1:
            raise ValueError(f"partition_rows must be a positive integer, got {partition_rows!r}")
        partition_rows = int(partition_rows)
    _check_out_dir(out_dir, overwrite)

    # read + standard form (flags only, nothing dropped)
    t0 = time.perf_counter()
    frame, counts = read_catalog(input_path, spec, max_rows=max_rows)
    rows_in = int(counts["rows"])
    if len(frame) != rows_in:  # read_catalog's own contract
        raise RuntimeError(f"read_catalog returned {len(frame)} rows for {rows_in} input rows")
    ids, id_type = normalise_ids(frame["id"])
    refuse_duplicate_ids(ids)
    if healpix_order is not None:
        if rows_in == 0:
            raise ValueError(f"{input_path} has no rows (after max_rows): a HATS catalog needs at least one "
                             f"pixel; use the row layout (partition_rows) for an empty catalog")
        ra, dec = frame["ra"].to_numpy(), frame["dec"].to_numpy()
        bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90))
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(f"{rows.size} rows have no valid ra/dec (e.g. rows {rows[:5].tolist()}) and "
                             f"no HEALPix pixel: the HATS layout cannot hold them without dropping them; "
                             f"use the row layout (partition_rows)")
    schema = standard_schema(spec.bands, id_type, has_positions, spec.name, spec.filters)
    table = _to_table(frame, schema, ids)
    del frame
    sha = file_sha256(input_path)
    t_read = time.perf_counter() - t0

    # write into a hidden work directory, verify, rename into place
    t0 = time.perf_counter()
    parent = Path(tmp_dir) if tmp_dir else out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.sedflow-ingest-", dir=parent))
    try:
        if healpix_order is None:
            staged = work / "out"
            files = write_row_partitions(table, staged, partition_rows)
            rows_out = _count_rows(staged / f for f in files)
            layout, partitions = "partition_rows", len(files)
        else:
            staged = hats_io.import_catalog(table, work, hats_io.artifact_name(out_dir), healpix_order, client, workers,
                                            spec.name)
            hats_files = hats_io.pixel_files(staged)
            rows_out = _count_rows(hats_files)
            orders = {int(p.parts[-3].split("=")[1]) for p in hats_files}
            if orders - {healpix_order}:
                raise RuntimeError(f"hats-import wrote orders {sorted(orders)}, asked for {healpix_order}")
            files = [str(p.relative_to(staged)) for p in hats_files]
            layout, partitions = "hats", len(files)
        if rows_out != rows_in:
            raise RuntimeError(f"ingest wrote {rows_out} rows for {rows_in} input rows")
        t_write = time.perf_counter() - t0
        flagged = {k: int(v) for k, v in counts.items() if k not in ("rows", "flag_bad_input", "flag_quality")}
        summary = {
            "format": _FORMAT,
            "spec": spec.name,
            "has_redshift": bool(spec.redshift),
            "bands": list(spec.bands),
            "filters": list(spec.filters),
            "input": {"name": input_path.name, "sha256": sha, "bytes": input_path.stat().st_size},
            "max_rows": max_rows,
            "layout": layout,
            "partition_rows": partition_rows,
            "healpix_order": healpix_order,
            "rows_in": rows_in,
            "rows_out": int(rows_out),
            "flag_bad_input": int(counts["flag_bad_input"]),
            "flag_quality": int(counts["flag_quality"]),
            "flagged": flagged,
            "partitions": partitions,
            "files": files,
            "id_type": str(id_type),
            "schema": [{"name": f.name, "type": str(f.type),
                        **({"unit": f.metadata[b"unit"].decode()} if f.metadata and b"unit" in f.metadata else {})}
                       for f in schema],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds_read": round(t_read, 3),
            "seconds_write": round(t_write, 3),
        }
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
        (staged / MANIFEST).write_text(json.dumps(summary, indent=1) + "\n")
        _move_into_place(staged, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["out"] = str(out_dir)
    return summary


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{out_dir} exists and is not empty (overwrite=True / --overwrite replaces "
                             f"a previous ingest)")
        if not (out_dir / MANIFEST).is_file():
            raise ValueError(f"{out_dir} is not empty and holds no {MANIFEST}: not replacing it")


def _move_into_place(staged: Path, out_dir: Path) -> None:
    old = None
    if out_dir.is_dir() and any(out_dir.iterdir()):  # overwrite (checked before)
        old = out_dir.with_name(f".{out_dir.name}.sedflow-old-{os.getpid()}")
        os.replace(out_dir, old)
    elif out_dir.is_dir():
        out_dir.rmdir()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_ingested(out_dir, columns=None, **kwargs):
    """Open an ingested catalog (either layout) as a ``dask.dataframe.DataFrame``.

    Row layout: ``dd.read_parquet(f"{out}/part-*.parquet")``, partitions in input row order.
    HATS layout: ``dd.read_parquet(f"{out}/dataset", dataset={"partitioning": None})``, one
    partition per HEALPix pixel, with hats-import's extra ``_healpix_29`` column first.
    """
    import dask.dataframe as dd

    out_dir = Path(out_dir)
    if (out_dir / "hats.properties").is_file():
        kwargs.setdefault("dataset", {"partitioning": None})
        return dd.read_parquet(str(out_dir / "dataset"), columns=columns, **kwargs)
    if not any(out_dir.glob("part-*.parquet")):
        raise FileNotFoundError(f"{out_dir} holds neither part-*.parquet nor a HATS catalog")
    return dd.read_parquet(str(out_dir / "part-*.parquet"), columns=columns, **kwargs)
