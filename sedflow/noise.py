"""Empirical photometric noise model (Hahn & Melchior 2022, Sec. 3.2).

Per band, the median mu(m) and standard deviation s(m) of the observed magnitude
uncertainty in bins of magnitude of a reference catalog, linearly interpolated (clamped
at the ends). A simulated galaxy of noiseless magnitude m gets sigma_m ~ N(mu(m), s(m));
draws with sigma_m <= 0 are invalid (the paper drops those simulations). Optional
per-band magnitude-error floors are then added in quadrature (NSA's are 0.05 mag in u,
0.02 in g, r, i and 0.03 in z). Flux noise n ~ N(0, sigma_f) with
sigma_f = sigma_m f / 1.0857.

The model also records the reference catalog's extinction-corrected flux range per band,
which the simulator uses to drop simulations outside the data (the paper's cut), and where
it came from (file name, sha256, description, rows used and excluded).

Example
-------
>>> noise = NoiseModel.default()
>>> sigma, ok = noise.sample_mag_err(np.array([[20.0, 18.5, 17.8, 17.4, 17.1]]), rng=0)
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

from sedflow.catalog import MAG_ERR_PER_FRAC, CatalogSpec, read_catalog
from sedflow.sps.photometry import nanomaggies_to_mag
from sedflow.storage import file_sha256, write_json

__all__ = ["NoiseModel", "fit_noise_model", "compare_with_catalog", "NSA_MAG_ERR_FLOOR"]

NSA_MAG_ERR_FLOOR = {"u": 0.05, "g": 0.02, "r": 0.02, "i": 0.02, "z": 0.03}
_FORMAT = 1


class NoiseModel:
    """sigma_mag(m) per band: bin centres, median, standard deviation, floors, flux range.

    Parameters
    ----------
    bands : band names, in flux-column order.
    filters : each band's filter (speclite name or response file), as the catalog described it;
        simulations with this noise model use them. None for models fitted before filters were
        recorded: SDSS ugriz (``sdss2010-*``) if the bands are u, g, r, i, z.
    mag_centres, median, std : per band, 1-D arrays of equal length (the fitted bins).
    floors : per band magnitude-error floor added in quadrature (0 = none).
    flux_range : per band (min, max) extinction-corrected flux [nanomaggies] of the
        reference catalog.
    source : provenance dict.
    """

    def __init__(self, bands, mag_centres, median, std, floors=None, flux_range=None, source=None, filters=None):
        self.bands = tuple(bands)
        self.filters = tuple(filters) if filters else None
        if self.filters is not None and len(self.filters) != len(self.bands):
            raise ValueError(f"noise model: {len(self.filters)} filters for {len(self.bands)} bands")
        self.mag_centres = [np.asarray(c, dtype=float) for c in mag_centres]
        self.median = [np.asarray(m, dtype=float) for m in median]
        self.std = [np.asarray(s, dtype=float) for s in std]
        floors = floors or {}
        self.floors = np.array([float(floors.get(b, 0.0)) for b in self.bands])
        self.flux_range = np.array([flux_range[b] for b in self.bands], dtype=float) if flux_range else None
        self.source = dict(source or {})
        for b, c, m, s in zip(self.bands, self.mag_centres, self.median, self.std):
            if not (c.size >= 2 and c.shape == m.shape == s.shape and np.all(np.diff(c) > 0)):
                raise ValueError(f"noise model band {b}: need >= 2 increasing bins with matching median/std")

    # ------------------------------------------------------------------ evaluation
    def mu_s(self, mag) -> tuple[np.ndarray, np.ndarray]:
        """Median and scatter of sigma_mag at magnitudes mag (n, n_bands), clamped at the bin range."""
        mag = np.asarray(mag, dtype=float)
        mu = np.column_stack([np.interp(mag[:, j], c, m) for j, (c, m) in enumerate(zip(self.mag_centres, self.median))])
        s = np.column_stack([np.interp(mag[:, j], c, v) for j, (c, v) in enumerate(zip(self.mag_centres, self.std))])
        return mu, s

    def sample_mag_err(self, mag, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw sigma_mag for noiseless magnitudes mag (n, n_bands).

        Returns (sigma_mag with floors added, valid) where valid[i] is False if any band's
        raw draw was <= 0 (such simulations are dropped).
        """
        rng = np.random.default_rng(rng)
        mu, s = self.mu_s(mag)
        raw = rng.normal(mu, s)
        valid = np.all(raw > 0, axis=1)
        return np.sqrt(raw**2 + self.floors**2), valid

    def faint_mag_err(self) -> np.ndarray:
        """Per band, the median sigma_mag (floors included) at the faintest fitted magnitude bin."""
        mu, _ = self.mu_s(np.array([[c[-1] for c in self.mag_centres]]))
        return np.sqrt(mu[0] ** 2 + self.floors**2)

    def faint_flux_error(self) -> np.ndarray:
        """Per band, the median 1-sigma flux error [nanomaggies] at the faintest fitted magnitude bin
        (floors included): the sky-noise level of the catalog, which sets asinh magnitudes' softening."""
        mag = np.array([c[-1] for c in self.mag_centres])
        return self.faint_mag_err() * 10.0 ** (-0.4 * (mag - 22.5)) / MAG_ERR_PER_FRAC

    def sky_limited_flux(self) -> np.ndarray:
        """Per band, the flux [nanomaggies] of the faintest fitted magnitude bin: below it a simulated
        galaxy's flux error stops scaling with its flux and stays at the sky-limited floor
        (`sedflow.simulate.observe`: floor = faint_flux_error x sigma_mag / faint_mag_err, which is
        sigma_mag x this flux / 1.0857)."""
        return MAG_ERR_PER_FRAC * self.faint_flux_error() / self.faint_mag_err()

    def sigma_threshold(self, mag, k: float = 3.0) -> np.ndarray:
        """mu + k s with the floors added: catalog sigma above it is outside the noise model."""
        mu, s = self.mu_s(mag)
        return np.sqrt((mu + k * s) ** 2 + self.floors**2)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "kind": "sedflow.NoiseModel",
            "bands": list(self.bands),
            **({"filters": list(self.filters)} if self.filters else {}),
            "bins": {b: {"mag": c.tolist(), "median": m.tolist(), "std": s.tolist()}
                     for b, c, m, s in zip(self.bands, self.mag_centres, self.median, self.std)},
            "mag_err_floor": dict(zip(self.bands, self.floors.tolist())),
            "flux_range": None if self.flux_range is None else dict(zip(self.bands, self.flux_range.tolist())),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseModel":
        if d.get("kind") != "sedflow.NoiseModel":
            raise ValueError("not a sedflow noise model file")
        if d.get("format") != _FORMAT:
            raise ValueError(f"noise model format {d.get('format')} is not supported (this sedflow reads {_FORMAT})")
        bands = d["bands"]
        bins = d["bins"]
        return cls(bands, [bins[b]["mag"] for b in bands], [bins[b]["median"] for b in bands],
                   [bins[b]["std"] for b in bands], floors=d.get("mag_err_floor"),
                   flux_range=d.get("flux_range"), source=d.get("source"), filters=d.get("filters"))

    @property
    def band_filters(self) -> tuple:
        """The filters simulations with this model use (`filters`, or SDSS for old ugriz models)."""
        if self.filters:
            return self.filters
        from sedflow.sps.photometry import BANDS, SDSS_FILTERS

        if self.bands == BANDS:
            return SDSS_FILTERS
        raise ValueError(f"the noise model for bands {list(self.bands)} records no filters: refit it with "
                         "`sedflow noise fit` (the catalog description names them) or pass --filters")

    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "NoiseModel":
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON noise model ({e})") from e
        return cls.from_dict(d)

    @classmethod
    def default(cls) -> "NoiseModel":
        """The shipped model: SDSS MODELFLUX errors of the kcorrect sample with NSA's floors."""
        return cls.load(resources.files("sedflow") / "data" / "noise_sdss_nsa_floors.json")

    def __eq__(self, other):
        return isinstance(other, NoiseModel) and self.to_dict() == other.to_dict()


def fit_noise_model(catalog, spec, floors=None, bin_width: float = 0.25, min_count: int = 10):
    """Fit a `NoiseModel` to a catalog read with a `CatalogSpec` (name or path).

    Every band of the description is fitted, and its filters are recorded. Rows flagged
    ``flag_bad_input`` by `read_catalog` (non-finite or non-positive flux,
    ivar <= 0, NaN) are excluded and counted; bins with fewer than ``min_count`` galaxies
    are dropped. The fit uses the survey's errors as reported (no floors added);
    ``floors`` (band -> mag; default: the description's ``mag_err_floor``) are stored in
    the model and added when sampling.

    Returns (model, report) where report counts rows used and excluded.
    """
    spec = CatalogSpec.load(spec)
    bands = spec.bands
    frame, counts = read_catalog(catalog, spec, apply_floors=False)
    if floors is None and spec.mag_err_floor and not spec.floor_applied:
        floors = dict(spec.mag_err_floor)
    good = ~frame["flag_bad_input"].to_numpy()
    if good.sum() < 2 * min_count:
        raise ValueError(f"{catalog}: only {good.sum()} usable rows (need >= {2 * min_count})")
    flux = frame[[f"flux_{b}" for b in bands]].to_numpy()[good]
    sigma = frame[[f"flux_err_{b}" for b in bands]].to_numpy()[good]
    mag = nanomaggies_to_mag(flux)
    mag_err = MAG_ERR_PER_FRAC * sigma / flux

    centres, medians, stds = [], [], []
    for j, b in enumerate(bands):
        lo = np.floor(mag[:, j].min() / bin_width) * bin_width
        hi = np.ceil(mag[:, j].max() / bin_width) * bin_width
        edges = np.arange(lo, hi + bin_width / 2, bin_width)
        idx = np.digitize(mag[:, j], edges) - 1
        c, m, s = [], [], []
        for k in range(edges.size - 1):
            e = mag_err[idx == k, j]
            if e.size >= min_count:
                c.append(0.5 * (edges[k] + edges[k + 1]))
                m.append(np.median(e))
                s.append(np.std(e))
        if len(c) < 2:
            raise ValueError(f"band {b}: fewer than 2 magnitude bins with >= {min_count} galaxies")
        centres.append(c), medians.append(m), stds.append(s)
    flux_range = {b: [float(flux[:, j].min()), float(flux[:, j].max())] for j, b in enumerate(bands)}
    catalog = Path(catalog)
    source = {"catalog": catalog.name, "sha256": file_sha256(catalog), "spec": spec.name,
              "rows": counts["rows"], "rows_used": int(good.sum()), "rows_excluded": int((~good).sum()),
              "excluded_by_reason": {k: v for k, v in counts.items() if k not in ("rows", "flag_quality")},
              "bin_width_mag": bin_width, "min_count": min_count,
              "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    model = NoiseModel(bands, centres, medians, stds, floors=floors, flux_range=flux_range, source=source,
                       filters=spec.filters)
    return model, source


def compare_with_catalog(model: NoiseModel, catalog, spec) -> dict:
    """Per band: observed vs modelled sigma_mag for a catalog's usable rows.

    Returns {band: {n, observed_median, model_median (of mu(m) with floors), median_ratio
    (median of observed / modelled), frac_above_mu_3s}}.
    """
    spec = CatalogSpec.load(spec)
    frame, _ = read_catalog(catalog, spec)
    good = ~frame["flag_bad_input"].to_numpy()
    flux = frame[[f"flux_{b}" for b in model.bands]].to_numpy()[good]
    sigma = frame[[f"flux_err_{b}" for b in model.bands]].to_numpy()[good]
    mag, obs = nanomaggies_to_mag(flux), MAG_ERR_PER_FRAC * sigma / flux
    mu, _ = model.mu_s(mag)
    pred = np.sqrt(mu**2 + model.floors**2)
    above = obs > model.sigma_threshold(mag)
    return {b: {"n": int(good.sum()), "observed_median": float(np.median(obs[:, j])),
                "model_median": float(np.median(pred[:, j])),
                "median_ratio": float(np.median(obs[:, j] / pred[:, j])),
                "frac_above_mu_3s": float(above[:, j].mean())}
            for j, b in enumerate(model.bands)}
