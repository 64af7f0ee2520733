"""Broadband photometry of rest-frame spectra through any filters, in AB nanomaggies.

For a rest-frame L_lambda [Lsun/A] at redshift z, the observed flux density is
f_lambda(lam (1+z)) = L_lambda(lam) / (4 pi d_L^2 (1+z)). The AB maggies of a
photon-counting response R(lam_obs) (speclite's convention, Fukugita et al. 1996) are::

    maggies = int f_lambda lam_obs R dlam_obs / int (3631 Jy) c / lam_obs R dlam_obs
            = (1+z) / (4 pi d_L^2) int L_lambda(lam) lam R(lam (1+z)) dlam / norm

so for a fixed rest-frame wavelength grid the whole operation is a matrix (n_wave x n_bands)
that depends on z only. `Photometry` tabulates it on a redshift grid once and
interpolates linearly in z; d_L comes from astropy's Planck13 (as PROVABGS), also
tabulated. Magnitudes: m = 22.5 - 2.5 log10(nanomaggies).

Filters are speclite names (``sdss2010-r``, ``lsst2023-y``, ``galex-nuv``, ``decam2014-g``,
``wise2010-W1``, ...) or paths to a two-column text file (wavelength [A], response), loaded
by `load_filter`. `rest_frame_range` gives the rest-frame wavelengths a set of filters needs
over a redshift range; filters that reach where the stellar-only model lacks the physics
(dust emission dominates beyond a few microns rest: WISE W3/W4) are refused.
"""

from __future__ import annotations

import numpy as np

from sedflow.sps.ssp import pixel_edges

__all__ = ["BANDS", "SDSS_FILTERS", "Photometry", "load_filter", "filter_support", "rest_frame_range",
           "MAX_REST_EFFECTIVE_WAVELENGTH", "nanomaggies_to_mag", "mag_to_nanomaggies"]

BANDS = ("u", "g", "r", "i", "z")                 # the SDSS bands of the shipped model
SDSS_FILTERS = tuple(f"sdss2010-{b}" for b in BANDS)
# The model is stellar light only. Beyond a few microns rest, dust emission (PAHs at 3.3 um, hot
# small grains) takes over in star-forming galaxies, so a filter whose effective wavelength lies
# further than this in the rest frame is refused: WISE W1/W2 (3.4/4.6 um) pass at any z >= 0, as
# PROVABGS fits them with stellar models; W3/W4 (12/22 um) do not.
MAX_REST_EFFECTIVE_WAVELENGTH = 50_000.0   # Angstrom
_SUPPORT_FRACTION = 1e-3                   # a response below this fraction of its peak is no support
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


def load_filter(name):
    """A speclite ``FilterResponse`` from a speclite name or a two-column file (wavelength [A], response)."""
    import speclite.filters
    from pathlib import Path

    name = str(name)
    path = Path(name).expanduser()
    if path.is_file():
        try:
            data = np.loadtxt(path, dtype=float, comments="#", ndmin=2)
        except ValueError as e:
            raise ValueError(f"filter file {path}: not two numeric columns ({e})") from None
        if data.shape[1] != 2 or data.shape[0] < 3:
            raise ValueError(f"filter file {path}: need >= 3 rows of (wavelength [A], response)")
        wave, resp = data[:, 0], np.clip(data[:, 1], 0.0, None)
        if not np.all(np.diff(wave) > 0):
            raise ValueError(f"filter file {path}: wavelengths must increase")
        # speclite wants the response to vanish at both ends
        step = np.diff(wave)
        wave = np.concatenate([[wave[0] - step[0]], wave, [wave[-1] + step[-1]]])
        resp = np.concatenate([[0.0], resp, [0.0]])
        band = "".join(c if c.isalnum() else "_" for c in path.stem) or "band"
        return speclite.filters.FilterResponse(wavelength=wave, response=resp,
                                               meta={"group_name": "file", "band_name": band})
    try:
        return speclite.filters.load_filter(name)
    except ValueError as e:
        raise ValueError(f"unknown filter {name!r}: not a file, and speclite says: {e}") from None


def filter_support(f) -> tuple[float, float]:
    """Observed wavelengths [A] where a filter's response exceeds 1e-3 of its peak (speclite
    curves are often tabulated, as zeros, far beyond the band: lsst2023-u runs to 10,990 A)."""
    w, r = np.asarray(f.wavelength, dtype=float), np.asarray(f.response, dtype=float)
    on = np.flatnonzero(r > _SUPPORT_FRACTION * r.max())
    return float(w[max(on[0] - 1, 0)]), float(w[min(on[-1] + 1, w.size - 1)])


def rest_frame_range(filters, z_min: float, z_max: float) -> tuple[float, float]:
    """Rest-frame wavelengths [A] that ``filters`` sample for z_min <= z <= z_max; ValueError if a
    filter's effective wavelength reaches beyond `MAX_REST_EFFECTIVE_WAVELENGTH` rest (dust emission)."""
    loaded = [f if hasattr(f, "response") else load_filter(f) for f in filters]
    if not 0 <= z_min < z_max:
        raise ValueError(f"need 0 <= z_min < z_max, got {z_min}, {z_max}")
    for f in loaded:
        lam_eff = float(f.effective_wavelength.to_value("Angstrom"))
        if lam_eff / (1 + z_min) > MAX_REST_EFFECTIVE_WAVELENGTH:
            raise ValueError(f"filter {f.name} (effective wavelength {lam_eff / 1e4:.1f} um) samples "
                             f"{lam_eff / (1 + z_min) / 1e4:.1f} um rest at z = {z_min:g}, where dust emission, "
                             f"which this stellar-only model lacks, dominates (limit "
                             f"{MAX_REST_EFFECTIVE_WAVELENGTH / 1e4:g} um rest)")
    lo = min(filter_support(f)[0] for f in loaded) / (1 + z_max)
    hi = max(filter_support(f)[1] for f in loaded) / (1 + z_min)
    return lo, hi


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

    def __init__(self, wave, filters=SDSS_FILTERS, z_max=0.45, dz=5e-4, cosmology=None, z_min: float = 0.0):
        from astropy.cosmology import Planck13

        self.wave = np.asarray(wave, dtype=float)
        self.filter_names = tuple(str(f) for f in filters)
        self.filters = [load_filter(f) for f in self.filter_names]
        self.cosmology = cosmology or Planck13
        lo, hi = rest_frame_range(self.filters, z_min, z_max)
        if hi > self.wave[-1]:
            raise ValueError(f"the filters reach {hi:.0f} A rest at z = {z_min:g}, beyond the grid's red end "
                             f"{self.wave[-1]:.0f} A")
        if lo < self.wave[0]:
            supported = lo * (1 + z_max) / self.wave[0] - 1.0
            raise ValueError(f"z_max={z_max} needs rest-frame coverage to {lo:.0f} A; "
                             f"the grid starts at {self.wave[0]:.0f} A (supports z <= {supported:.3f})")
        self.z_max, self.z_min = float(z_max), float(z_min)
        self.z_grid = np.arange(0.0, z_max + dz, dz)
        self.z_grid[-1] = max(self.z_grid[-1], z_max)

        # dlam of each rest-frame pixel (grids from SSPGrid.resample are pixel means)
        dlam = np.diff(pixel_edges(self.wave))
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

    @property
    def effective_wavelengths(self) -> np.ndarray:
        """Each filter's effective (observed) wavelength [A] (speclite's definition)."""
        return np.array([f.effective_wavelength.to_value("Angstrom") for f in self.filters])

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
        bad = ~np.isfinite(z) | (z <= 0) | (z < self.z_min) | (z > self.z_max)
        if bad.any():      # below z_min the red filters would reach past the rest-frame grid
            raise ValueError(f"{bad.sum()} redshifts are NaN/inf or outside ({self.z_min:g}, {self.z_max}] "
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
