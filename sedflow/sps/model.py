"""The batched PROVABGS-style SED model: theta (n, 12) + z (n,) -> spectra, photometry, properties.

L_lambda(theta) = M* exp(-tau_ISM) [ sum_old m_k SSP(a_k, Z_k) + exp(-tau_BC) sum_young m_k SSP(a_k, Z_k) ]

over the 43 populations of `sedflow.sps.history` (Hahn et al. 2022, Eqs. 1-6), with the
birth-cloud term on populations younger than ``t_esc``.

Everything that does not depend on theta is precomputed: the SSP spectra at the mid-age of
each full lookback bin (so full bins cost one matrix product per young/old group, with
linear interpolation in log Z), the filter kernels on a redshift grid, and the cosmology.
Only the bin that contains t_age(z) and the burst have a free age; they are interpolated
bilinearly in (log age, log Z) on the SSP grid. No Python loop runs over galaxies; batches
are processed in chunks of ``chunk_size`` rows to bound memory.

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
from sedflow.sps.dust import birth_cloud_optical_depth, ism_optical_depth
from sedflow.sps.history import N_BINS, LOOKBACK_EDGES, NMFBases, Populations, formed_mass_fraction, populations
from sedflow.sps.photometry import SDSS_FILTERS, Photometry
from sedflow.sps.ssp import SSPGrid, bc03_miles

__all__ = ["SEDModel", "PROPERTY_NAMES"]

PROPERTY_NAMES = ("logmstar_surv", "logsfr_100myr", "logsfr_1gyr", "logz_mw", "tage_mw")
LOGSFR_FLOOR = -10.0  # log10 SFR [Msun/yr] reported when no star formed within the window


def _axis_weights(x, nodes):
    """Lower node index and linear weight of x on increasing nodes, clamped at the ends."""
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
    w = np.clip((x - nodes[i]) / (nodes[i + 1] - nodes[i]), 0.0, 1.0)
    return i, w


class SEDModel:
    """PROVABGS "NMF + burst" SED model on a tabulated SSP grid.

    Parameters
    ----------
    ssp : `SSPGrid`; default `bc03_miles()`.
    bases : `NMFBases`; default `NMFBases.default()` (the project's own bases).
        ``NMFBases.from_provabgs_dir(path)`` loads PROVABGS's.
    t_esc : birth-cloud escape time [Gyr]; FSPS's default 0.01 (10 Myr), which PROVABGS used.
    prior : `Prior` whose support theta is checked against.
    filters, z_max, cosmology : passed to `Photometry`.
    chunk_size : rows processed at once.
    """

    def __init__(self, ssp: SSPGrid | None = None, bases: NMFBases | None = None, t_esc: float = 0.01,
                 prior: Prior | None = None, filters=SDSS_FILTERS, z_max: float = 0.45, cosmology=None,
                 chunk_size: int = 4096):
        self.ssp = ssp if ssp is not None else bc03_miles()
        self.bases = bases if bases is not None else NMFBases.default()
        self.prior = prior if prior is not None else Prior()
        self.t_esc = float(t_esc)
        self.chunk_size = int(chunk_size)
        self.phot = Photometry(self.ssp.wave, filters=filters, z_max=z_max, cosmology=cosmology)
        self.wave = self.ssp.wave
        self.band_names = self.phot.filter_names

        self._log_age = np.log10(self.ssp.ages / 1e9)            # grid ages in log10 Gyr
        self._log_z = np.log10(self.ssp.metallicities)
        # SSP spectra at the mid-age of each full lookback bin: (42, n_z, n_wave)
        mid = 0.5 * (LOOKBACK_EDGES[1:] + LOOKBACK_EDGES[:-1])
        ia, wa = _axis_weights(np.log10(mid), self._log_age)
        lum = self.ssp.lum
        bin_ssp = (1 - wa)[:, None, None] * lum[ia] + wa[:, None, None] * lum[ia + 1]
        self._young_bins = mid < self.t_esc
        self._young_ssp = bin_ssp[self._young_bins].reshape(-1, self.wave.size)
        self._old_ssp = bin_ssp[~self._young_bins].reshape(-1, self.wave.size)
        self._flat_ssp = lum.reshape(-1, self.wave.size)           # rows: age-major, then Z

    @classmethod
    def default(cls, **kwargs) -> "SEDModel":
        """BC03+MILES grid and the project's own NMF bases."""
        return cls(**kwargs)

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
        ia, wa = _axis_weights(np.log10(age_gyr), self._log_age)
        iz, wz = _axis_weights(np.log10(metallicity), self._log_z)
        return ((1 - wa) * ((1 - wz) * table[ia, iz] + wz * table[ia, iz + 1])
                + wa * ((1 - wz) * table[ia + 1, iz] + wz * table[ia + 1, iz + 1]))

    def _free_age_weights(self, mass, age, metallicity):
        """Sparse (n, n_age * n_z) weights of populations of any age: bilinear in (log age, log Z).

        mass, age, metallicity : (n, k) for k populations per galaxy.
        """
        n, k = mass.shape
        nz = self._log_z.size
        ia, wa = _axis_weights(np.log10(age), self._log_age)
        iz, wz = _axis_weights(np.log10(metallicity), self._log_z)
        corner = ia * nz + iz
        cols = np.stack([corner, corner + 1, corner + nz, corner + nz + 1], axis=-1)      # (n, k, 4)
        data = mass[..., None] * np.stack([(1 - wa) * (1 - wz), (1 - wa) * wz, wa * (1 - wz), wa * wz], axis=-1)
        rows = np.broadcast_to(np.arange(n)[:, None, None], cols.shape)
        return sparse.csr_matrix((data.ravel(), (rows.ravel(), cols.ravel())), shape=(n, self._flat_ssp.shape[0]))

    def _intrinsic(self, pops: Populations):
        """Unattenuated (young, old) spectra per unit formed mass, each (n, n_wave)."""
        n = pops.mass.shape[0]
        rows = np.arange(n)
        # Full bins: SSPs precomputed at the bin mid-ages; linear in log Z -> weights (n, 42, n_z).
        full = np.arange(N_BINS)[None, :] < pops.truncated_bin[:, None]
        m = np.where(full, pops.mass[:, :N_BINS], 0.0)[..., None]
        iz, wz = _axis_weights(np.log10(pops.metallicity[:, :N_BINS]), self._log_z)
        nodes = np.arange(self._log_z.size)
        W = m * ((iz[..., None] == nodes) * (1 - wz)[..., None] + (iz[..., None] + 1 == nodes) * wz[..., None])
        young = W[:, self._young_bins].reshape(n, -1) @ self._young_ssp
        old = W[:, ~self._young_bins].reshape(n, -1) @ self._old_ssp
        # Free-age populations: the bin holding t_age, and the burst.
        cols = np.stack([pops.truncated_bin, np.full(n, Populations.BURST)], axis=1)
        mass, age = pops.mass[rows[:, None], cols], pops.age[rows[:, None], cols]
        is_young = age < self.t_esc
        metallicity = pops.metallicity[rows[:, None], cols]
        old += self._free_age_weights(np.where(is_young, 0.0, mass), age, metallicity) @ self._flat_ssp
        if is_young.any():
            young += self._free_age_weights(np.where(is_young, mass, 0.0), age, metallicity) @ self._flat_ssp
        return young, old

    def _spectrum_chunk(self, theta, z):
        tage = self.phot.age_of_universe(z)
        young, old = self._intrinsic(populations(theta, tage, self.bases))
        att_ism = np.exp(-ism_optical_depth(self.wave, theta[:, 10], theta[:, 11]))
        att_bc = np.exp(-birth_cloud_optical_depth(self.wave, theta[:, 9]))
        return (10.0 ** theta[:, 0])[:, None] * att_ism * (old + att_bc * young)

    # ------------------------------------------------------------------ public API
    def spectrum(self, theta, z):
        """Rest-frame spectra: wavelength (n_wave,) [A] and L_lambda (n, n_wave) [Lsun/A]."""
        theta, z = self._inputs(theta, z)
        lum = np.empty((theta.shape[0], self.wave.size))
        for s in self._chunks(theta.shape[0]):
            lum[s] = self._spectrum_chunk(theta[s], z[s])
        return self.wave, lum

    def photometry(self, theta, z):
        """Noiseless fluxes (n, n_bands) in AB nanomaggies (SDSS u, g, r, i, z by default)."""
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
        tage = self.phot.age_of_universe(z)
        pops = populations(theta, tage, self.bases)
        mstar = 10.0 ** theta[:, 0]
        surv = np.sum(pops.mass * self._grid_interp(self.ssp.surviving_frac, pops.age, pops.metallicity), axis=1)
        out = {"logmstar_surv": theta[:, 0] + np.log10(surv)}
        for name, dt in (("logsfr_100myr", 0.1), ("logsfr_1gyr", 1.0)):
            sfr = mstar * formed_mass_fraction(theta, tage, self.bases, dt) / (dt * 1e9)
            with np.errstate(divide="ignore"):
                out[name] = np.maximum(np.log10(sfr), LOGSFR_FLOOR)
        out["logz_mw"] = np.log10(np.sum(pops.mass * pops.metallicity, axis=1))
        out["tage_mw"] = np.sum(pops.mass * pops.age, axis=1)
        return out
