"""Broadband photometry of rest-frame spectra: SDSS ugriz AB nanomaggies.

For a rest-frame L_lambda [Lsun/A] at redshift z, the observed flux density is
f_lambda(lam (1+z)) = L_lambda(lam) / (4 pi d_L^2 (1+z)). The AB maggies of a
photon-counting response R(lam_obs) (speclite's convention, Fukugita et al. 1996) are::

    maggies = int f_lambda lam_obs R dlam_obs / int (3631 Jy) c / lam_obs R dlam_obs
            = (1+z) / (4 pi d_L^2) int L_lambda(lam) lam R(lam (1+z)) dlam / norm

so for a fixed rest-frame wavelength grid the whole operation is a matrix (n_wave x 5)
that depends on z only. `Photometry` tabulates it on a redshift grid once and
interpolates linearly in z; d_L comes from astropy's Planck13 (as PROVABGS), also
tabulated. Magnitudes: m = 22.5 - 2.5 log10(nanomaggies).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BANDS", "SDSS_FILTERS", "Photometry", "nanomaggies_to_mag", "mag_to_nanomaggies"]

BANDS = ("u", "g", "r", "i", "z")
SDSS_FILTERS = tuple(f"sdss2010-{b}" for b in BANDS)
LSUN_ERG_S = 3.828e33          # IAU 2015 nominal solar luminosity [erg/s]
MPC_CM = 3.0856775814913673e24
C_ANGSTROM_S = 2.99792458e18
AB_ZEROPOINT_FNU = 3631e-23    # erg/s/cm^2/Hz


def nanomaggies_to_mag(flux) -> np.ndarray:
    """AB magnitude of fluxes in nanomaggies (NaN for non-positive flux)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 22.5 - 2.5 * np.log10(flux), np.nan)


def mag_to_nanomaggies(mag) -> np.ndarray:
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - 22.5))


class Photometry:
    """Fluxes through a set of speclite filters for spectra on a fixed rest-frame grid.

    Parameters
    ----------
    wave : (n_wave,) rest-frame wavelength grid [A] of the spectra that will be passed in.
    filters : speclite filter names (default SDSS ugriz, ``sdss2010-*``).
    z_max : largest supported redshift; the filters' blue edge must stay on the grid.
    dz : spacing of the tabulated redshift grid (linear interpolation in between).
    cosmology : astropy cosmology (default Planck13, as PROVABGS).
    """

    def __init__(self, wave, filters=SDSS_FILTERS, z_max=0.45, dz=5e-4, cosmology=None):
        import speclite.filters
        from astropy.cosmology import Planck13

        self.wave = np.asarray(wave, dtype=float)
        self.filter_names = tuple(filters)
        self.filters = speclite.filters.load_filters(*self.filter_names)
        self.cosmology = cosmology or Planck13
        lo = min(f.wavelength[0] for f in self.filters)
        hi = max(f.wavelength[-1] for f in self.filters)
        if hi > self.wave[-1]:
            raise ValueError(f"the filters reach {hi:.0f} A, beyond the grid's red end {self.wave[-1]:.0f} A")
        supported = lo / self.wave[0] - 1.0
        if z_max > supported:
            raise ValueError(f"z_max={z_max} needs rest-frame coverage to {lo / (1 + z_max):.0f} A; "
                             f"the grid starts at {self.wave[0]:.0f} A (supports z <= {supported:.3f})")
        self.z_max = float(z_max)
        self.z_grid = np.arange(0.0, z_max + dz, dz)
        self.z_grid[-1] = max(self.z_grid[-1], z_max)

        # dlam of each rest-frame pixel (grids from SSPGrid.resample are pixel means)
        edges = np.concatenate([[self.wave[0] ** 2 / self.wave[1]], self.wave, [self.wave[-1] ** 2 / self.wave[-2]]])
        dlam = np.sqrt(edges[2:] * edges[1:-1]) - np.sqrt(edges[1:-1] * edges[:-2])
        # photon-counting AB normalisation per filter: int 3631Jy c/lam^2 lam R dlam
        norm = np.array([np.trapezoid(AB_ZEROPOINT_FNU * C_ANGSTROM_S / f.wavelength * f.response, f.wavelength)
                         for f in self.filters])
        # kernel[k, l, b] = (1+z_k) lam_l R_b(lam_l (1+z_k)) dlam_l / norm_b  [per erg/s/A/cm^2 units below]
        lam_obs = self.wave[None, :] * (1.0 + self.z_grid[:, None])
        resp = np.stack([f(lam_obs) for f in self.filters], axis=-1)              # (nz, nw, nb)
        self._kernel = ((1.0 + self.z_grid)[:, None, None] * (self.wave * dlam)[None, :, None]
                        * resp / norm[None, None, :])
        # distance modulus factor: nanomaggies = 1e9 * maggies, L in Lsun/A -> erg/s/A
        zfine = np.linspace(1e-4, z_max * 1.001 + 1e-3, 4000)
        self._zfine = zfine
        self._dl_cm = self.cosmology.luminosity_distance(zfine).to_value("Mpc") * MPC_CM
        self._dl_over_z = self._dl_cm / zfine
        self._z_index = np.arange(self.z_grid.size, dtype=float)
        self._tage_gyr = self.cosmology.age(zfine).to_value("Gyr")

    def age_of_universe(self, z) -> np.ndarray:
        """t_age(z) [Gyr] (tabulated cosmology)."""
        return np.interp(z, self._zfine, self._tage_gyr)

    def luminosity_distance_cm(self, z) -> np.ndarray:
        # d_L is smooth; interpolate d_L / z (~ c/H0 at z -> 0) to keep relative accuracy at small z
        return z * np.interp(z, self._zfine, self._dl_over_z)

    def check_redshift(self, z, n: int) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        if z.ndim == 0:
            z = np.full(n, float(z))
        if z.shape != (n,):
            raise ValueError(f"z must be a scalar or have shape ({n},), got {z.shape}")
        bad = ~np.isfinite(z) | (z <= 0) | (z > self.z_max)
        if bad.any():
            raise ValueError(f"{bad.sum()} redshifts are NaN/inf or outside (0, {self.z_max}] "
                             f"(rows {np.flatnonzero(bad)[:10].tolist()}); fluxes diverge as z -> 0")
        return z

    def nanomaggies(self, lum: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Fluxes (n, n_bands) [nanomaggies] of rest-frame spectra lum (n, n_wave) [Lsun/A] at z (n,)."""
        pos = np.interp(z, self.z_grid, self._z_index)
        k = np.minimum(pos.astype(int), self.z_grid.size - 2)
        w = (pos - k)[:, None]
        if k.size and (k == k[0]).all():      # one node (an MCMC batch at one z): no grouping
            node = k[0]
            flux = (1 - w) * (lum @ self._kernel[node]) + w * (lum @ self._kernel[node + 1])
        else:
            # Group galaxies by redshift node so each group is two small matrix products
            # (a loop over the <= len(z_grid) nodes present, never over galaxies).
            flux = np.empty((lum.shape[0], self._kernel.shape[2]))
            order = np.argsort(k, kind="stable")
            sorted_k = k[order]
            starts = np.flatnonzero(np.concatenate([[True], sorted_k[1:] != sorted_k[:-1]]))
            for a, b in zip(starts, np.append(starts[1:], order.size)):
                idx = order[a:b]
                node = k[idx[0]]
                part = lum[idx]
                flux[idx] = (1 - w[idx]) * (part @ self._kernel[node]) + w[idx] * (part @ self._kernel[node + 1])
        dl = self.luminosity_distance_cm(z)
        return flux * (1e9 * LSUN_ERG_S / (4 * np.pi * dl**2))[:, None]
