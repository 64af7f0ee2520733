"""The posterior catalog of a HATS input, written as a HATS catalog (LINCC hats layout).

Each output partition goes to the pixel path of its input partition
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

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["input_layout", "partition_pixel", "pixel_path", "with_position_columns", "write_hats_metadata"]


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
