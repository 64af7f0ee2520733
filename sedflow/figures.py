"""Best-fit SEDs and their figure, shared by the validation report and the main job.

`best_fit` picks, per galaxy, the posterior draw with the smallest chi^2 against the observed
fluxes; `plot_sed_fits` draws fitted spectra in observed lambda F_lambda [erg/s/cm^2] with the
photometry as nu F_nu = (c / lambda_eff) f_nu at the filters' effective wavelengths (speclite's),
so points and curves share one physical unit for any bands.
"""

from __future__ import annotations

import numpy as np

from sedflow.sps.photometry import AB_ZEROPOINT_FNU, C_ANGSTROM_S, LSUN_ERG_S

__all__ = ["best_fit", "plot_sed_fits"]


def best_fit(sed, theta, flux, flux_err, z):
    """chi^2 of the best posterior draw per galaxy: theta (n, k, 12) -> (chi2 (n,), best theta (n, 12)).
    ``z=None``: theta (n, k, 13), each draw at its own redshift (its last column; photo-z)."""
    n, k, d = theta.shape
    flat = theta.reshape(-1, d)
    if z is None:
        model = sed.photometry(flat[:, :-1], flat[:, -1]).reshape(n, k, -1)
    else:
        model = sed.photometry(flat, np.repeat(z, k)).reshape(n, k, -1)
    chi2 = np.nansum(((model - flux[:, None]) / flux_err[:, None]) ** 2, axis=2)     # missing bands: NaN, skipped
    best = np.argmin(chi2, axis=1)
    return chi2[np.arange(n), best], theta[np.arange(n), best]


def plot_sed_fits(ax, sed, z: float, flux, flux_err, fits) -> None:
    """One galaxy's photometry and fitted SEDs on ``ax``; ``fits``: (theta (12,), colour, label) each,
    drawn with its model photometry (open squares) and chi^2 in the legend. A theta of 13 (a photo-z
    fit) is drawn at its own redshift, its last entry, not at ``z``."""
    lam_eff = sed.phot.effective_wavelengths
    per_nanomaggy = C_ANGSTROM_S / lam_eff * AB_ZEROPOINT_FNU * 1e-9     # nu F_nu of 1 nanomaggy (3631e-9 Jy)
    for theta, colour, label in fits:
        theta = np.asarray(theta)
        zf = z if theta.size == 12 else float(theta[12])
        theta = theta[:12]
        dl = sed.phot.luminosity_distance_cm(np.array([zf]))[0]
        wave, lum = sed.spectrum(theta[None], zf)
        model = sed.photometry(theta[None], zf)[0]
        chi2 = np.nansum(((model - flux) / flux_err) ** 2)
        ax.loglog(wave * (1 + zf), wave * lum[0] * LSUN_ERG_S / (4 * np.pi * dl ** 2), color=colour, lw=0.8,
                  label=f"{label}, chi^2 {chi2:.1f}")
        ax.plot(lam_eff, model * per_nanomaggy, "s", mfc="none", color=colour, ms=5)
    ax.errorbar(lam_eff, flux * per_nanomaggy, flux_err * per_nanomaggy, fmt="o", color="C3",
                label="photometry (squares: the fits')")
    ax.set(xlabel="observed wavelength [A]", ylabel="lambda F_lambda [erg/s/cm^2]")
    ax.legend(fontsize=6)
