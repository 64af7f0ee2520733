"""HATS catalogs in and out, with the LINCC libraries (hats, hats-import): the one home of HATS code.

Input: `import_catalog` runs hats-import's catalog pipeline on an ingested table (`sedflow.ingest`
with ``healpix_order``). Output: the posterior catalog of a HATS input is a HATS catalog. Each output partition goes to the pixel path of its input partition
(``dataset/Norder=k/Dir=d/Npix=n.parquet``, `hats.io.pixel_catalog_file`). The pixel is found
from the partition's own ``_healpix_29`` values (`partition_pixel`), not from Dask's partition
number, so it does not depend on the order in which Dask lists the input files. The output rows
carry ``_healpix_29``, ``ra`` and ``dec`` ahead of the posterior columns (`with_position_columns`),
in the input's row order (sorted by ``_healpix_29``). When every partition is written,
`write_hats_metadata` writes ``dataset/_metadata``, ``dataset/_common_metadata``,
``partition_info.csv`` and ``hats.properties`` with the ``hats`` library, so that
``lsdb.read_hats(out)`` opens the result.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["import_catalog", "artifact_name", "pixel_files", "input_layout", "partition_pixel", "pixel_path",
           "with_position_columns", "write_hats_metadata"]

HATS_INPUT_CHUNK_ROWS = 250_000  # rows per intermediate file handed to hats-import (one mapping task each)


def artifact_name(out_dir: Path) -> str:
    """hats-import's catalog name (letters, digits, ``._-`` only); used as the HATS catalog_name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", out_dir.name) or "catalog"


def import_catalog(table: pa.Table, work: Path, out_name: str, healpix_order: int, client, workers: int,
                   spec_name: str) -> Path:
    """Run hats-import's catalog pipeline on ``table`` at a constant HEALPix order (every pixel at
    ``healpix_order``; row thresholds unused); returns the catalog directory in ``work``."""
    from sedflow.storage import write_row_partitions

    from hats_import.catalog.arguments import ImportArguments
    from hats_import.catalog.file_readers import ParquetPyarrowReader
    from hats_import.pipeline import pipeline_with_client

    inputs = work / "input"
    inputs.mkdir()
    files = [inputs / n for n in write_row_partitions(table, inputs, HATS_INPUT_CHUNK_ROWS)]
    schema_file = inputs / "_schema.parquet"  # carries the explicit schema (and its metadata) through
    pq.write_table(table.schema.empty_table(), schema_file)
    args = ImportArguments(
        output_path=str(work / "stage"),
        output_artifact_name=out_name,
        input_file_list=[str(f) for f in files],
        file_reader=ParquetPyarrowReader(),
        catalog_type="object",
        ra_column="ra",
        dec_column="dec",
        sort_columns="id",
        constant_healpix_order=healpix_order,  # every pixel at this order; thresholds unused
        use_schema_file=str(schema_file),
        expected_total_rows=table.num_rows,
        tmp_dir=str(work / "hats_tmp"),
        dask_tmp=str(work / "dask"),
        resume=False,
        progress_bar=False,
        addl_hats_properties={"obs_title": f"sedflow standard input ({spec_name})"},
    )
    if client is not None:
        pipeline_with_client(args, client)
    else:
        import dask
        from dask.distributed import Client

        from sedflow.dask_utils import local_cluster

        # threads, not processes: starts in ~0.1 s, and hats-import's tasks pass files, not data.
        # temporary-directory: else dask leaves dask-scratch-space/ lock files in the system temp dir
        with dask.config.set({"temporary-directory": str(work / "dask")}), \
                local_cluster(workers, processes=False, local_directory=str(work / "dask")) as cluster, \
                Client(cluster) as own:
            pipeline_with_client(args, own)
    return work / "stage" / out_name


def pixel_files(cat_dir: Path) -> list[Path]:
    """The pixel files of a HATS catalog directory, sorted."""
    return sorted((cat_dir / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet"))




def input_layout(catalog_dir) -> dict:
    """Partition pixels ``{(order, pixel)}`` and the ra/dec/spatial-index column names of a HATS catalog."""
    import hats

    cat = hats.read_hats(catalog_dir)
    info = cat.catalog_info
    return {"pixels": frozenset((p.order, p.pixel) for p in cat.get_healpix_pixels()),
            "ra": info.ra_column, "dec": info.dec_column, "healpix": info.healpix_column or "_healpix_29",
            "healpix_order": info.healpix_order or 29}


def partition_pixel(spatial_index: np.ndarray, pixels, spatial_index_order: int = 29) -> tuple[int, int]:
    """The one partition pixel ``(order, pixel)`` of ``pixels`` that holds every row of a partition.

    ``spatial_index`` are the rows' ``_healpix_29`` values (nested, so the rows of one pixel are a
    contiguous range and the extremes decide). Raises ``ValueError`` when the rows are not all in
    one of ``pixels``.
    """
    from hats.pixel_math.spatial_index import spatial_index_to_healpix

    lo, hi = int(np.min(spatial_index)), int(np.max(spatial_index))
    for order in sorted({o for o, _ in pixels}):
        p_lo, p_hi = (int(p) for p in spatial_index_to_healpix([lo, hi], target_order=order,
                                                                spatial_index_order=spatial_index_order))
        if (order, p_lo) in pixels:
            if p_hi != p_lo:
                raise ValueError(f"a partition spans pixels {p_lo} and {p_hi} at order {order}: "
                                 f"not one HATS partition")
            return order, p_lo
    raise ValueError("the rows of a partition lie in no partition pixel of the input catalog")


def pixel_path(out_dir, order: int, pixel: int) -> Path:
    """``out_dir/dataset/Norder=k/Dir=d/Npix=n.parquet``."""
    from hats.io import pixel_catalog_file
    from hats.pixel_math import HealpixPixel

    return Path(pixel_catalog_file(out_dir, HealpixPixel(order, pixel)).path)


def with_position_columns(table: pa.Table, frame: pd.DataFrame, layout: dict) -> pa.Table:
    """``table`` with the input's spatial index, ra and dec columns (in that order) first."""
    fields = [pa.field(layout["healpix"], pa.int64()),
              pa.field(layout["ra"], pa.float64(), metadata={"unit": "deg"}),
              pa.field(layout["dec"], pa.float64(), metadata={"unit": "deg"})]
    for i, f in enumerate(fields):
        table = table.add_column(i, f, pa.array(frame[f.name].to_numpy(), type=f.type))
    return table


def write_hats_metadata(out_dir, pixels, layout: dict, rows: int, max_rows: int, **properties) -> None:
    """Write the HATS metadata of ``out_dir`` once every pixel file of ``pixels`` is in place.

    ``dataset/_metadata`` + ``_common_metadata`` (`hats.io.write_parquet_metadata`; its row count
    must equal ``rows``), ``partition_info.csv`` (`hats.catalog.PartitionInfo`) and
    ``hats.properties`` (`hats.catalog.TableProperties`, an object catalog with the input's
    ra/dec columns); ``properties`` are extra keys for ``hats.properties``.
    """
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io import write_parquet_metadata
    from hats.pixel_math import HealpixPixel

    out_dir = Path(out_dir)
    written = write_parquet_metadata(out_dir)
    if written != rows:
        raise RuntimeError(f"{out_dir}/dataset holds {written} rows, expected {rows}")
    info = PartitionInfo.from_healpix([HealpixPixel(o, p) for o, p in pixels])
    info.write_to_file(catalog_path=out_dir)
    props = TableProperties.new_provenance_dict(out_dir, builder=f"sedflow v{version('sedflow')}", **properties)
    TableProperties(
        catalog_name=out_dir.name, catalog_type="object", total_rows=rows,
        ra_column=layout["ra"], dec_column=layout["dec"], healpix_column=layout["healpix"],
        healpix_order=layout["healpix_order"], hats_order=info.get_highest_order(), hats_max_rows=max_rows,
        moc_sky_fraction=f"{info.calculate_fractional_coverage():0.5f}", **props,
    ).to_properties_file(out_dir)
