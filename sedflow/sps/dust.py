"""Dust attenuation of the PROVABGS model: FSPS ``dust_type=4`` (Kriek & Conroy 2013).

Diffuse ISM, applied to all stars (Hahn et al. 2022, Eq. 6; FSPS ``attn_curve``)::

    tau_ISM(lam) = tau_ism * (k_Cal(lam) + D(lam)) / 4.05 * (lam / 5500)**n_dust
    D(lam) = E_b (lam * 350)**2 / ((lam**2 - 2175**2)**2 + (lam * 350)**2),
    E_b = 0.85 - 1.9 n_dust                    (Kriek & Conroy 2013, Eq. 3)

with k_Cal the Calzetti et al. (2000, Eq. 4) starburst curve, R_V = 4.05, set to 0 where
it turns negative (as FSPS does). Birth clouds (Charlot & Fall 2000), applied to stars
younger than t_esc only::

    tau_BC(lam) = tau_bc * (lam / 5500)**-1

Attenuation is exp(-tau). Wavelengths are rest-frame Angstrom.
"""

from __future__ import annotations

import numpy as np

__all__ = ["calzetti_k", "ism_optical_depth", "birth_cloud_optical_depth", "DustCurves"]


def calzetti_k(wave) -> np.ndarray:
    """Calzetti et al. (2000) k(lambda) with R_V = 4.05, clipped at 0 (FSPS convention)."""
    x = 1e4 / np.asarray(wave, dtype=float)  # inverse microns
    blue = 2.659 * (-2.156 + 1.509 * x - 0.198 * x**2 + 0.011 * x**3) + 4.05
    red = 2.659 * (-1.857 + 1.040 * x) + 4.05
    return np.maximum(np.where(wave > 6300.0, red, blue), 0.0)


class DustCurves:
    """The dust optical depths on a fixed wavelength grid, with every factor that depends on the
    wavelength only (Calzetti curve, Drude bump, log(lam / 5500), 5500 / lam) computed once.

    The module functions `ism_optical_depth` and `birth_cloud_optical_depth` are the same
    computation on a grid passed per call; `SEDModel` keeps one of these for its grid.
    """

    def __init__(self, wave):
        self.wave = wave = np.asarray(wave, dtype=float)
        self.calzetti = calzetti_k(wave)
        self.drude = (wave * 350.0) ** 2 / ((wave**2 - 2175.0**2) ** 2 + (wave * 350.0) ** 2)  # D / E_b
        self.log_ratio = np.log(wave / 5500.0)
        self.inverse_ratio = 5500.0 / wave

    def ism_optical_depth(self, tau_ism, n_dust) -> np.ndarray:
        """tau_ISM(lambda), shape (n, n_wave) for tau_ism, n_dust of shape (n,)."""
        tau_ism = np.asarray(tau_ism, dtype=float)[:, None]
        n_dust = np.asarray(n_dust, dtype=float)[:, None]
        curve = self.calzetti + (0.85 - 1.9 * n_dust) * self.drude
        curve = np.multiply(tau_ism / 4.05, curve, out=curve)
        power = np.exp(np.multiply(n_dust, self.log_ratio))           # (lam / 5500)**n_dust
        return np.multiply(curve, power, out=curve)

    def birth_cloud_optical_depth(self, tau_bc) -> np.ndarray:
        """tau_BC(lambda) = tau_bc (lambda / 5500)^-1, shape (n, n_wave)."""
        return np.asarray(tau_bc, dtype=float)[:, None] * self.inverse_ratio[None, :]


def ism_optical_depth(wave, tau_ism, n_dust) -> np.ndarray:
    """tau_ISM(lambda), shape (n, n_wave) for tau_ism, n_dust of shape (n,)."""
    return DustCurves(wave).ism_optical_depth(tau_ism, n_dust)


def birth_cloud_optical_depth(wave, tau_bc) -> np.ndarray:
    """tau_BC(lambda) = tau_bc (lambda / 5500)^-1, shape (n, n_wave)."""
    return DustCurves(wave).birth_cloud_optical_depth(tau_bc)
