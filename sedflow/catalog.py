"""Catalog descriptions (``catalogs/*.yaml``) and reading a survey catalog into the standard form.

A new survey is a new YAML description, not new code. A description names the id, position
and redshift columns, the flux and flux-error columns with their units (a multi-band array
column with ``index``, an array column of exactly the bands, or one column per band with
``columns``), whether Galactic extinction is already applied, the survey's magnitude-error
floors, and quality cuts. See ``catalogs/nsa.yaml`` and ``catalogs/sdss_kcorrect.yaml``.

The standard form (a pandas DataFrame, one row per input row, same order, nothing dropped):

===================  ==========================================================
``id``               survey id (or the 0-based row number if the survey has none)
``ra``, ``dec``      degrees (when the survey has them)
``z``                redshift
``flux_{b}``         extinction-corrected flux [nanomaggies], b in the bands
``flux_err_{b}``     its 1-sigma error [nanomaggies] (floors added if the spec asks)
``flag_bad_input``   non-finite or non-positive flux, error or ivar; non-finite z
``flag_quality``     fails one of the description's quality cuts
===================  ==========================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["CatalogSpec", "read_catalog", "catalog_spec_dir", "kcorrect_sample_path", "MAG_ERR_PER_FRAC", "file_sha256"]

MAG_ERR_PER_FRAC = 2.5 / np.log(10)  # sigma_mag = 1.0857 sigma_flux / flux


def catalog_spec_dir() -> Path:
    """The repository's ``catalogs/`` directory (next to the ``sedflow`` package)."""
    return Path(__file__).resolve().parents[1] / "catalogs"


def kcorrect_sample_path() -> Path:
    """The 10,000-galaxy SDSS test sample shipped in the ``kcorrect`` wheel (kcorrect/data/test/)."""
    from sedflow._resources import distribution_file

    return distribution_file("kcorrect", "gst_tests_small.fits", "the example SDSS catalog", "kcorrect==5.1.9")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CatalogSpec:
    """A survey catalog description (see the module docstring and ``catalogs/*.yaml``)."""

    name: str
    bands: tuple
    flux: dict
    flux_error: dict
    redshift: str
    id: str | None = None
    ra: str | None = None
    dec: str | None = None
    description: str = ""
    extinction: dict | None = None
    mag_err_floor: dict | None = None
    floor_applied: bool = False
    cuts: dict = field(default_factory=dict)

    @classmethod
    def load(cls, spec) -> "CatalogSpec":
        """Load from a YAML path, or by name from the repository's ``catalogs/``."""
        import yaml

        path = Path(spec)
        if not path.suffix and not path.exists():
            path = catalog_spec_dir() / f"{spec}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in catalog_spec_dir().glob("*.yaml"))
            raise FileNotFoundError(f"catalog description {spec!r} not found (known: {known})")
        with open(path) as f:
            d = yaml.safe_load(f)
        required = ("name", "bands", "flux", "flux_error", "redshift")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{path}: catalog description lacks {missing}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        d["bands"] = tuple(d["bands"])
        d["cuts"] = d.get("cuts") or {}
        if d["flux"].get("units", "nanomaggies") != "nanomaggies":
            raise ValueError(f"{path}: only nanomaggies fluxes are supported, got {d['flux']['units']!r}")
        if d["flux_error"].get("kind", "ivar") not in ("ivar", "sigma"):
            raise ValueError(f"{path}: flux_error.kind must be 'ivar' or 'sigma'")
        return cls(**d)

    def required_columns(self) -> list[str]:
        cols = [self.redshift] + [c for c in (self.id, self.ra, self.dec) if c]
        for block in (self.flux, self.flux_error, self.extinction or {}):
            cols += block.get("columns", [block["column"]] if "column" in block else [])
        return cols


def _read_table(path: Path, columns: list[str]) -> dict:
    """Read ``columns`` of a FITS, CSV or Parquet file into numpy arrays (array columns 2-D)."""
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fits.gz", ".fz")):
        from astropy.table import Table

        t = Table.read(path, hdu=1, memmap=False)
        available, get = t.colnames, (lambda c: np.asarray(t[c]))
    elif name.endswith((".csv", ".csv.gz")):
        t = pd.read_csv(path)
        available, get = list(t.columns), (lambda c: t[c].to_numpy())
    elif name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        t = pq.read_table(path).to_pandas()
        available = list(t.columns)
        # list-valued (array) columns arrive as object arrays of arrays
        get = lambda c: np.stack(t[c].to_numpy()) if t[c].dtype == object and len(t) else t[c].to_numpy()
    else:
        raise ValueError(f"{path}: unsupported catalog format (FITS, CSV or Parquet)")
    missing = [c for c in dict.fromkeys(columns) if c not in available]
    if missing:
        raise ValueError(f"{path} lacks columns {missing} named by the catalog description")
    return {c: get(c) for c in dict.fromkeys(columns)}


def _bands_block(cols: dict, block: dict, nbands: int, what: str) -> np.ndarray:
    """(n, nbands) float64 array from an array column (+index) or per-band columns."""
    if "columns" in block:
        arr = np.column_stack([np.asarray(cols[c], dtype=float) for c in block["columns"]])
    else:
        arr = np.asarray(cols[block["column"]], dtype=float)
        if arr.ndim == 1:
            arr = arr[:, None]
        if "index" in block:
            arr = arr[:, block["index"]]
    if arr.shape[1] != nbands:
        raise ValueError(f"{what}: got {arr.shape[1]} bands, the description lists {nbands}")
    return arr


def read_catalog(path, spec: CatalogSpec, apply_floors: bool = True) -> tuple[pd.DataFrame, dict]:
    """Read a catalog into the standard form; returns (frame, counts of flagged rows by reason).

    ``apply_floors``: add the description's magnitude-error floors in quadrature when the
    survey has not (``floor_applied: false``); the noise-model fit reads raw errors instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} not found")
    cols = _read_table(path, spec.required_columns())
    nb = len(spec.bands)
    flux = _bands_block(cols, spec.flux, nb, "flux")
    err_raw = _bands_block(cols, spec.flux_error, nb, "flux_error")
    n = flux.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        bad_err = ~np.isfinite(err_raw) | (err_raw <= 0)
        sigma = np.where(bad_err, np.nan, err_raw)
        if spec.flux_error.get("kind", "ivar") == "ivar":
            sigma = 1.0 / np.sqrt(sigma)
        if spec.extinction and not spec.extinction.get("applied", False):
            a = _bands_block(cols, spec.extinction, nb, "extinction")
            factor = 10.0 ** (0.4 * np.where(np.isfinite(a), a, np.nan))
            flux, sigma = flux * factor, sigma * factor
        if apply_floors and spec.mag_err_floor and not spec.floor_applied:
            floor = np.array([spec.mag_err_floor[b] for b in spec.bands]) / MAG_ERR_PER_FRAC
            sigma = np.sqrt(sigma**2 + (floor * flux) ** 2)
    z = np.asarray(cols[spec.redshift], dtype=float)

    bad_flux = ~np.isfinite(flux) | (flux <= 0)
    counts = {
        "rows": int(n),
        "nonfinite_or_nonpositive_flux": int(bad_flux.any(axis=1).sum()),
        "bad_flux_error": int(bad_err.any(axis=1).sum()),
        "nonfinite_redshift": int((~np.isfinite(z)).sum()),
    }
    flag_bad = bad_flux.any(axis=1) | bad_err.any(axis=1) | ~np.isfinite(z) | ~np.isfinite(sigma).all(axis=1)
    flag_quality = np.zeros(n, dtype=bool)
    if "redshift_range" in spec.cuts:
        lo, hi = spec.cuts["redshift_range"]
        with np.errstate(invalid="ignore"):
            cut = ~((z > lo) & (z <= hi))
        counts["cut_redshift_range"] = int(cut.sum())
        flag_quality |= cut
    counts["flag_bad_input"] = int(flag_bad.sum())
    counts["flag_quality"] = int(flag_quality.sum())

    ids = np.asarray(cols[spec.id]) if spec.id else np.arange(n, dtype=np.int64)
    if ids.dtype.kind in "iu":
        ids = ids.astype(np.int64)          # native byte order (FITS columns are big-endian)
    out = {"id": ids}
    if spec.ra and spec.dec:
        out["ra"] = np.asarray(cols[spec.ra], dtype=float)
        out["dec"] = np.asarray(cols[spec.dec], dtype=float)
    out["z"] = z
    for i, b in enumerate(spec.bands):
        out[f"flux_{b}"] = flux[:, i]
    for i, b in enumerate(spec.bands):
        out[f"flux_err_{b}"] = sigma[:, i]
    out["flag_bad_input"] = flag_bad
    out["flag_quality"] = flag_quality
    frame = pd.DataFrame(out)
    if frame["id"].dtype.kind in "SU":
        frame["id"] = frame["id"].astype(str).str.strip()
    return frame, counts
