"""Catalog descriptions and reading a survey catalog into the standard form.

A new survey is a new YAML description, not new code. A description names the bands and each
band's filter (a speclite name or a response file), the id, position and redshift columns, the
flux and flux-error columns with their units (nanomaggies, nJy, uJy, mJy, Jy or AB magnitudes
with magnitude errors; errors as 1-sigma or inverse variance; a multi-band array column with
``index``, an array column of exactly the bands, or one column per band with ``columns``),
Galactic extinction (per-band magnitudes or transmissions, an E(B-V) column turned into each
band's extinction by `extinction_coefficients`, or already applied), the survey's
magnitude-error floors, and quality cuts. The shipped descriptions live in the package (``sedflow/catalogs/``,
`shipped_specs` lists them) and load by name (``nsa``, ``sdss_kcorrect``); any YAML path works too.

`read_catalog` reads a file; `standard_form` turns columns already in memory (from a file, a
DataFrame or arrays, as `sedflow.fit` passes them) into the standard form, the same way.

The standard form (a pandas DataFrame, one row per input row, same order, nothing dropped):

===================  ==========================================================
``id``               survey id (or the 0-based row number if the survey has none)
``ra``, ``dec``      degrees (when the survey has them)
``z``                redshift (NaN for a description with ``redshift: null``: a photometric catalog,
                     for photo-z models)
``flux_{b}``         extinction-corrected flux [nanomaggies], b in the description's bands
``flux_err_{b}``     its 1-sigma error [nanomaggies] (floors added if the spec asks)
``flag_bad_input``   non-finite or non-positive flux, error or ivar; non-finite z (when the catalog
                     has redshifts)
``flag_quality``     fails one of the description's quality cuts
===================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["CatalogSpec", "read_catalog", "read_columns", "frame_columns", "unmasked", "standard_form", "shipped_specs",
           "catalog_spec_dir", "kcorrect_sample_path", "normalise_ids", "refuse_duplicate_ids", "to_nanomaggies",
           "extinction_coefficients",
           "FLUX_UNITS", "MAG_ERR_PER_FRAC"]

MAG_ERR_PER_FRAC = 2.5 / np.log(10)  # sigma_mag = 1.0857 sigma_flux / flux
# Flux units a description may use, as astropy units (None: AB magnitudes). The standard form is
# nanomaggies: 1 nmgy = 3631e-9 Jy, and AB magnitudes are m = 22.5 - 2.5 log10(nmgy) (the maggy
# convention of SDSS and speclite; astropy's ABmag zero point, 3630.8 Jy, differs by 6e-5).
FLUX_UNITS = {"nanomaggies": "nmgy", "nmgy": "nmgy", "maggies": "mgy", "nJy": "nJy", "uJy": "uJy",
              "mJy": "mJy", "Jy": "Jy", "mag": None, "ABmag": None}
VALID_MAG = (0.0, 50.0)  # galaxy magnitudes outside this (99, -99, -9999 sentinels) are no measurement


def extinction_coefficients(filters, r_v: float = 3.1) -> np.ndarray:
    """A_b / E(B-V) per filter: the Milky Way extinction curve of Gordon et al. (2023; ``G23`` of the
    dust_extinction package) at R_V = ``r_v``, averaged over each band for a flat-f_nu source in the
    small-extinction limit (photon-counting weights R(lam) / lam). SDSS ugriz: 4.89, 3.81, 2.71, 2.04,
    1.54 (Schlegel et al. 1998, Table 6: 5.16, 3.79, 2.75, 2.09, 1.48)."""
    import astropy.units as u
    from dust_extinction.parameter_averages import G23

    from sedflow.sps.photometry import load_filter

    curve = G23(Rv=r_v)
    out = []
    for name in filters:
        f = load_filter(name)
        lam, resp = np.asarray(f.wavelength, dtype=float), np.asarray(f.response, dtype=float)
        inside = (1e4 / lam >= curve.x_range[0]) & (1e4 / lam <= curve.x_range[1])
        a = np.zeros_like(lam)                       # beyond the curve's 0.09-32 um: no extinction
        a[inside] = r_v * curve(lam[inside] * u.AA)
        weight = resp / lam
        out.append(np.trapezoid(weight * a, lam) / np.trapezoid(weight, lam))
    return np.array(out)


def to_nanomaggies(values, units: str, errors=None, error_kind: str = "sigma"):
    """Fluxes in ``units`` (a `FLUX_UNITS` name) and their errors (1-sigma, or ivar in the squared
    flux unit) -> (flux, sigma) in nanomaggies, through astropy units; errors may be None.

    Magnitudes: flux = 10^(-0.4 (m - 22.5)), sigma = flux sigma_m / 1.0857; NaN where m is not
    finite or outside `VALID_MAG` (sentinels). A non-positive error or ivar gives NaN sigma.
    """
    import astropy.units as u

    values = np.asarray(values, dtype=float)
    err = None if errors is None else np.asarray(errors, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if err is not None:
            err = np.where(np.isfinite(err) & (err > 0), err, np.nan)
            if error_kind == "ivar":
                err = 1.0 / np.sqrt(err)
        unit = FLUX_UNITS[units]
        if unit is None:
            mags = np.where(np.isfinite(values) & (values > VALID_MAG[0]) & (values < VALID_MAG[1]), values, np.nan)
            flux = (mags * u.mag(u.maggy)).to_value(u.nanomaggy)
            return flux, None if err is None else flux * err / MAG_ERR_PER_FRAC
        factor = (1.0 * u.Unit(unit)).to_value(u.nanomaggy, equivalencies=u.zero_point_flux(3631 * u.Jy))
        return values * factor, None if err is None else err * factor


def catalog_spec_dir() -> Path:
    """The shipped catalog descriptions: ``sedflow/catalogs/`` inside the installed package."""
    from importlib import resources

    return Path(str(resources.files("sedflow") / "catalogs"))


def shipped_specs() -> list[str]:
    """Names of the shipped catalog descriptions (``CatalogSpec.load(name)``)."""
    return sorted(p.stem for p in catalog_spec_dir().glob("*.yaml"))


def kcorrect_sample_path() -> Path:
    """The 10,000-galaxy SDSS test sample shipped in the ``kcorrect`` wheel (kcorrect/data/test/)."""
    from sedflow._resources import distribution_file

    return distribution_file("kcorrect", "gst_tests_small.fits", "the example SDSS catalog", "kcorrect==5.1.9")


@dataclass(frozen=True)
class CatalogSpec:
    """A survey catalog description (see the module docstring and the shipped ``sedflow/catalogs/*.yaml``)."""

    name: str
    bands: tuple
    flux: dict
    flux_error: dict
    redshift: str | None          # None: no redshifts (photo-z models infer them)
    id: str | None = None
    ra: str | None = None
    dec: str | None = None
    description: str = ""
    filters: tuple = ()
    extinction: dict | None = None
    mag_err_floor: dict | None = None
    floor_applied: bool = False
    cuts: dict = field(default_factory=dict)

    @classmethod
    def load(cls, spec) -> "CatalogSpec":
        """Load from a YAML path, or by name (`shipped_specs`); anything else raises ValueError."""
        import yaml

        if isinstance(spec, cls):
            return spec
        path = Path(spec)
        if not path.suffix and not path.exists():
            path = catalog_spec_dir() / f"{spec}.yaml"
        if not path.is_file():
            raise ValueError(f"catalog description {str(spec)!r} not found: give a YAML path or one of the "
                             f"shipped names {shipped_specs()}")
        try:
            with open(path) as f:
                d = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not a valid YAML catalog description ({e})".replace("\n", " ")) from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a catalog description is a YAML mapping, got {type(d).__name__}")
        required = ("name", "bands", "flux", "flux_error", "redshift")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{path}: catalog description lacks {missing}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        try:
            return cls.from_dict(d, where=path)
        except (TypeError, AttributeError, KeyError) as e:      # a key of the wrong shape
            raise ValueError(f"{path}: malformed catalog description ({type(e).__name__}: {e})") from None

    @classmethod
    def from_dict(cls, d: dict, where="catalog description") -> "CatalogSpec":
        """Build and check a description from its mapping; every problem is a ValueError naming it."""
        d = dict(d)
        d["bands"] = tuple(str(b) for b in d["bands"])
        nb = len(d["bands"])
        if nb < 1 or len(set(d["bands"])) != nb:
            raise ValueError(f"{where}: bands must be distinct names, got {list(d['bands'])}")
        filters = d.get("filters")
        if not filters:
            raise ValueError(f"{where}: name each band's filter (filters: a list in band order, or band: "
                             "filter), a speclite name such as sdss2010-r or lsst2023-y, or a response file")
        if isinstance(filters, dict):
            missing = [b for b in d["bands"] if b not in filters]
            if missing:
                raise ValueError(f"{where}: filters lacks bands {missing}")
            filters = [filters[b] for b in d["bands"]]
        if len(filters) != nb:
            raise ValueError(f"{where}: {len(filters)} filters for {nb} bands {list(d['bands'])}")
        from sedflow.sps.photometry import load_filter

        for f in filters:
            load_filter(f)                                   # ValueError naming an unknown filter
        d["filters"] = tuple(str(f) for f in filters)
        d["cuts"] = d.get("cuts") or {}
        if d["redshift"] is None and "redshift_range" in d["cuts"]:
            raise ValueError(f"{where}: a redshift_range cut needs a redshift column (redshift is null)")
        units = d["flux"].get("units", "nanomaggies")
        if units not in FLUX_UNITS:
            raise ValueError(f"{where}: flux units {units!r} unknown; use one of {sorted(FLUX_UNITS)}")
        kind = d["flux_error"].get("kind", "ivar")
        if kind not in ("ivar", "sigma"):
            raise ValueError(f"{where}: flux_error.kind must be 'ivar' or 'sigma', got {kind!r}")
        if FLUX_UNITS[units] is None and kind != "sigma":
            raise ValueError(f"{where}: magnitudes need magnitude errors (flux_error.kind: sigma)")
        blocks = [("flux", d["flux"]), ("flux_error", d["flux_error"])]
        if d.get("extinction"):
            blocks.append(("extinction", d["extinction"]))
            kind_ext = d["extinction"].get("kind", "mag")
            if kind_ext not in ("mag", "transmission", "ebv"):
                raise ValueError(f"{where}: extinction.kind must be 'mag', 'transmission' or 'ebv'")
            if kind_ext == "ebv":
                blocks.pop()                                  # one E(B-V) column, not one per band
                extinction_coefficients(d["filters"], d["extinction"].get("r_v", 3.1))
        for what, block in blocks:
            n = len(block["columns"]) if "columns" in block else len(block.get("index", [])) or None
            if n is not None and n != nb:
                raise ValueError(f"{where}: {what} names {n} columns/indices for {nb} bands {list(d['bands'])}")
            if "columns" not in block and "column" not in block:
                raise ValueError(f"{where}: {what} needs column (+ index) or columns")
        unknown_floor = set(d.get("mag_err_floor") or {}) - set(d["bands"])
        if unknown_floor:
            raise ValueError(f"{where}: mag_err_floor names bands {sorted(unknown_floor)} not in {list(d['bands'])}")
        return cls(**d)

    def required_columns(self) -> list[str]:
        cols = [c for c in (self.redshift, self.id, self.ra, self.dec) if c]
        ext = self.extinction if self.extinction and not self.extinction.get("applied", False) else {}
        for block in (self.flux, self.flux_error, ext):
            cols += block.get("columns", [block["column"]] if "column" in block else [])
        return cols


def _table_columns(available, get, columns: list[str], where) -> dict:
    missing = [c for c in dict.fromkeys(columns) if c not in available]
    if missing:
        raise ValueError(f"{where} lacks columns {missing} named by the catalog description "
                         f"(it has {list(available)[:20]})")
    return {c: get(c) for c in dict.fromkeys(columns)}


def unmasked(values) -> np.ndarray:
    """A column as a plain numpy array; masked entries (`numpy.ma`, astropy ``MaskedColumn``: a FITS
    TNULL, a blank) become NaN, i.e. no measurement (an integer column turns float for it), or None
    in a text column (an id: `normalise_ids` refuses it rather than take the fill value)."""
    if not np.ma.is_masked(values):
        return np.asarray(values)
    data = np.ma.asarray(values)
    if data.dtype.kind in "iubfc":
        return np.ma.filled(data.astype(float), np.nan)
    out = data.data.astype(object)
    out[np.ma.getmaskarray(data)] = None
    return out


def _array_rows(values: np.ndarray, column, where) -> np.ndarray:
    """An object column of per-row arrays (list-valued, e.g. NSA's NMGY from Parquet) as a 2-D float
    array; a null row (None, NaN) is a row of NaN (no measurement). Rows of another length raise."""
    try:
        return np.stack(values)                     # the common case, in one pass
    except ValueError:                              # null rows, or rows of different lengths
        pass
    lengths = {np.size(v) for v in values if v is not None and np.ndim(v) == 1}
    if len(lengths) != 1:
        raise ValueError(f"{where}: column {column!r} holds arrays of different lengths {sorted(lengths)}")
    width = lengths.pop()
    out = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        if v is not None and np.ndim(v) == 1:
            out[i] = np.asarray(v, dtype=float)
    return out


def frame_columns(frame: pd.DataFrame, columns: list[str], where="the DataFrame") -> dict:
    """``columns`` of a pandas DataFrame as numpy arrays; array (list-valued) columns become 2-D,
    nulls NaN (pandas' nullable dtypes included)."""
    def get(c):
        col = frame[c]
        if col.dtype.kind in "fiu" and isinstance(col.dtype, pd.api.extensions.ExtensionDtype) and col.isna().any():
            return col.to_numpy(dtype=float, na_value=np.nan)
        values = col.to_numpy()
        if values.dtype == object and any(np.ndim(v) == 1 for v in values if v is not None):
            return _array_rows(values, c, where)
        return values

    return _table_columns(list(frame.columns), get, columns, where)


def read_columns(path, spec: "CatalogSpec", max_rows: int | None = None) -> dict:
    """The columns a description names, read from a FITS, CSV or Parquet file (first ``max_rows``).

    A file that cannot be read as its format raises a one-line ValueError saying so.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"catalog {path} is a folder: give one FITS, CSV or Parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} not found")
    columns = spec.required_columns()
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fits.gz", ".fz")):
        fmt = "FITS"
    elif name.endswith((".csv", ".csv.gz")):
        fmt = "CSV"
    elif name.endswith((".parquet", ".pq")):
        fmt = "Parquet"
    else:
        raise ValueError(f"{path}: unsupported catalog format (FITS, CSV or Parquet, by file name)")
    try:
        if fmt == "FITS":
            from astropy.io import fits
            from astropy.table import Table

            with fits.open(path, memmap=False) as hdul:
                if len(hdul) < 2 or not isinstance(hdul[1], (fits.BinTableHDU, fits.TableHDU)):
                    raise ValueError("its first extension (HDU 1) is not a table")
                t = Table.read(hdul[1], format="fits")
            frame = None
        elif fmt == "CSV":
            frame = pd.read_csv(path, nrows=max_rows)
        else:
            import pyarrow.parquet as pq

            frame = pq.read_table(path).to_pandas()
    except Exception as e:  # astropy, pandas and pyarrow each raise their own kinds
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot be read as a {fmt} catalog ({reason})") from None
    if frame is None:
        cols = _table_columns(t.colnames, lambda c: unmasked(t[c]), columns, path)
    else:
        cols = frame_columns(frame, columns, path)
    if max_rows is not None:
        cols = {c: v[:max_rows] for c, v in cols.items()}
    return cols


def _bands_block(cols: dict, block: dict, nbands: int, what: str) -> np.ndarray:
    """(n, nbands) float64 array from an array column (+index) or per-band columns."""
    if "columns" in block:
        arr = np.column_stack([np.asarray(cols[c], dtype=float) for c in block["columns"]])
    else:
        arr = np.asarray(cols[block["column"]], dtype=float)
        if len(arr) == 0:                          # no rows: an empty catalog is valid (and has no width)
            return np.empty((0, nbands))
        if arr.ndim == 1:
            arr = arr[:, None]
        if "index" in block:
            if max(block["index"]) >= arr.shape[1]:
                raise ValueError(f"{what}: column {block['column']!r} holds {arr.shape[1]} values per row, "
                                 f"the description takes elements {block['index']}")
            arr = arr[:, block["index"]]
    if arr.shape[1] != nbands:
        source = block.get("columns") or repr(block["column"])
        raise ValueError(f"{what} ({source}): got {arr.shape[1]} bands, the description lists {nbands}")
    return arr


def read_catalog(path, spec: CatalogSpec, apply_floors: bool = True,
                 max_rows: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a catalog file into the standard form; returns (frame, counts of flagged rows by reason).

    ``apply_floors``: add the description's magnitude-error floors in quadrature when the
    survey has not (``floor_applied: false``); the noise-model fit reads raw errors instead.
    ``max_rows``: only the first rows (for trials).
    """
    return standard_form(read_columns(path, spec, max_rows), spec, apply_floors)


def standard_form(cols: dict, spec: CatalogSpec, apply_floors: bool = True) -> tuple[pd.DataFrame, dict]:
    """The standard form of columns already in memory (``{column name: array}``, as `read_columns`
    returns them); see `read_catalog`. Nothing is dropped: bad values only set flags."""
    nb = len(spec.bands)
    flux = _bands_block(cols, spec.flux, nb, "flux")
    err_raw = _bands_block(cols, spec.flux_error, nb, "flux_error")
    n = flux.shape[0]
    bad_err = ~np.isfinite(err_raw) | (err_raw <= 0)
    flux, sigma = to_nanomaggies(flux, spec.flux.get("units", "nanomaggies"), err_raw,
                                 spec.flux_error.get("kind", "ivar"))
    with np.errstate(divide="ignore", invalid="ignore"):
        if spec.extinction and not spec.extinction.get("applied", False):
            ext = spec.extinction
            if ext.get("kind", "mag") == "ebv":        # A_b = R_b E(B-V), R_b from the filters (G23)
                ebv = np.asarray(cols[ext["column"]], dtype=float) * float(ext.get("ebv_scale", 1.0))
                a = ebv[:, None] * extinction_coefficients(spec.filters, ext.get("r_v", 3.1))[None, :]
            else:
                a = _bands_block(cols, ext, nb, "extinction")
            if ext.get("kind", "mag") == "transmission":     # e.g. Legacy Surveys MW_TRANSMISSION
                factor = 1.0 / np.where(np.isfinite(a) & (a > 0), a, np.nan)
            else:
                factor = 10.0 ** (0.4 * np.where(np.isfinite(a), a, np.nan))
            flux, sigma = flux * factor, sigma * factor
        if apply_floors and spec.mag_err_floor and not spec.floor_applied:
            floor = np.array([spec.mag_err_floor.get(b, 0.0) for b in spec.bands]) / MAG_ERR_PER_FRAC
            sigma = np.sqrt(sigma**2 + (floor * flux) ** 2)
    z = np.asarray(cols[spec.redshift], dtype=float) if spec.redshift else np.full(n, np.nan)

    bad_flux = ~np.isfinite(flux) | (flux <= 0)
    counts = {
        "rows": int(n),
        "nonfinite_or_nonpositive_flux": int(bad_flux.any(axis=1).sum()),
        "bad_flux_error": int(bad_err.any(axis=1).sum()),
    }
    flag_bad = bad_flux.any(axis=1) | bad_err.any(axis=1) | ~np.isfinite(sigma).all(axis=1)
    if spec.redshift:
        counts["nonfinite_redshift"] = int((~np.isfinite(z)).sum())
        flag_bad |= ~np.isfinite(z)
    flag_quality = np.zeros(n, dtype=bool)
    if spec.redshift and "redshift_range" in spec.cuts:       # no redshifts: nothing to cut on
        lo, hi = spec.cuts["redshift_range"]
        with np.errstate(invalid="ignore"):
            cut = ~((z > lo) & (z <= hi))
        counts["cut_redshift_range"] = int(cut.sum())
        flag_quality |= cut
    counts["flag_bad_input"] = int(flag_bad.sum())
    counts["flag_quality"] = int(flag_quality.sum())

    ids = np.asarray(cols[spec.id]) if spec.id else np.arange(n, dtype=np.int64)
    if ids.dtype.kind in "iu":              # native byte order (FITS columns are big-endian); the range
        ids = ids.astype(ids.dtype.newbyteorder("="))      # of unsigned ids is `normalise_ids`' to check
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


def normalise_ids(ids: pd.Series) -> tuple[np.ndarray, pa.DataType]:
    """Native int64 ids (FITS gives big-endian ints) or strings; anything else is refused."""
    values = ids.to_numpy()
    if values.dtype.kind in "iu":
        if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
            raise ValueError("ids exceed the int64 range")
        return values.astype(np.int64), pa.int64()
    if values.dtype.kind == "f":
        ok = np.isfinite(values) & (values == np.round(values))
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise ValueError(f"{bad.size} ids are not integers (e.g. rows {bad[:5].tolist()}: "
                             f"{values[bad[:5]].tolist()})")
        return values.astype(np.int64), pa.int64()
    if pd.api.types.is_string_dtype(ids.dtype) or values.dtype.kind in "OSU":
        as_str = ids.astype(str)
        missing = ids.isna().to_numpy() | (as_str.str.strip() == "").to_numpy()    # FITS writes a null text as blanks
        if missing.any():
            bad = np.flatnonzero(missing)
            raise ValueError(f"{bad.size} ids are missing (e.g. rows {bad[:5].tolist()})")
        return as_str.to_numpy(dtype=object), pa.string()
    raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}")


def refuse_duplicate_ids(ids: np.ndarray) -> None:
    """ValueError showing a few duplicated ids with their rows: posteriors join back by id."""
    s = pd.Series(ids)
    dup = s.duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    groups = s[dup].groupby(s[dup], sort=False).groups
    examples = "; ".join(f"id {k!r} at rows {list(v)[:4]}" for k, v in list(groups.items())[:5])
    raise ValueError(f"duplicated ids: {len(groups)} ids occur more than once ({int(dup.sum())} rows), "
                     f"e.g. {examples}. Every input row must map to one output row by id: fix the "
                     f"catalog or give the description no id column (row numbers are then used)")
