"""A small numpy evaluator of the PROVABGS FSPS emulator (burst-free NMF model).

PROVABGS (Hahn et al. 2022, arXiv:2202.01809) emulates its FSPS "NMF" SED model with
Speculator networks (Alsing et al. 2020, arXiv:1911.11778): one network per rest-frame
wavelength chunk (2000-3600, 3600-5500, 5500-7410, 7410-60000 A) maps the 9 inputs

    [s1, s2, s3, gamma1, gamma2, tau_bc, tau_ism, n_dust, t_age / Gyr]

(s_k: the stick-breaking form of the Dirichlet SFH coefficients, as ``provabgs.models.NMF._emu_nmf``)
to PCA coefficients of ln L_lambda [Lsun/A per Msun formed]. This module re-implements that
forward pass, batched over galaxies, for fidelity tests and benchmarks only; sedflow's own
model is `sedflow.sps.model.SEDModel`. It covers the burst-free part of the model (f_burst
and t_burst are ignored).

The weights (``nmf.v0.1.seed0_99.w*.npz``, converted from PROVABGS's pickles) are
MIT-licensed PROVABGS files that live outside this repository; point `PROVABGSEmulator.from_dir`
at the directory that holds them (they are read with ``allow_pickle=False``).

Example
-------
>>> emu = PROVABGSEmulator.from_dir("../shared/data/provabgs", wave_range=(2000, 12000))
>>> lum = emu.spectrum(theta, tage)                  # (n, emu.wave.size) Lsun/A
>>> flux = emu.photometry(theta, z)                  # (n, 5) SDSS ugriz nanomaggies
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["PROVABGSEmulator"]

FILE_GLOB = "nmf.v0.1.seed0_99.w*.npz"
_N_HIDDEN = 8  # W0..W7 hidden layers, W8 linear output
_KEYS = ("alphas", "betas", "param_shift", "param_scale", "pca_shift", "pca_scale",
         "spectrum_shift", "spectrum_scale", "pca_basis", "wave")


class PROVABGSEmulator:
    """Speculator networks of the PROVABGS NMF emulator, one per wavelength chunk.

    Parameters
    ----------
    chunks : list of dicts with the npz arrays (``W0..W8, b0..b8`` and `_KEYS`), in
        increasing wavelength order.
    dtype : floating type of the network pass (the stored weights are float32).
    source : provenance string.
    """

    def __init__(self, chunks, dtype=np.float32, source=""):
        self.dtype = np.dtype(dtype)
        self.source = source
        self._chunks = []
        last = -np.inf
        for c in chunks:
            wave = np.asarray(c["wave"], dtype=float)
            keep = wave > last               # drop any overlap with the previous chunk
            if not keep.any():
                continue
            if not np.all(np.diff(wave[keep]) > 0):
                raise ValueError("emulator wavelengths within a chunk must be increasing")
            self._chunks.append(self._prepare(c, keep))
            last = wave[keep][-1]
        if not self._chunks:
            raise ValueError("no emulator wavelengths left")
        self.wave = np.concatenate([c["wave"] for c in self._chunks])

    def _prepare(self, c, keep):
        dt = self.dtype
        out = {"W": [np.asarray(c[f"W{i}"], dtype=dt) for i in range(_N_HIDDEN + 1)],
               "b": [np.asarray(c[f"b{i}"], dtype=dt) for i in range(_N_HIDDEN + 1)],
               "alphas": np.asarray(c["alphas"], dtype=dt), "betas": np.asarray(c["betas"], dtype=dt),
               "half_alphas": (0.5 * np.asarray(c["alphas"], dtype=float)).astype(dt),
               "act_offset": (0.5 * (1 + np.asarray(c["betas"], dtype=float))).astype(dt),
               "act_slope": (0.5 * (1 - np.asarray(c["betas"], dtype=float))).astype(dt),
               "param_shift": np.asarray(c["param_shift"], dtype=dt),
               "param_scale": np.asarray(c["param_scale"], dtype=dt),
               "pca_shift": np.asarray(c["pca_shift"], dtype=dt),
               "pca_scale": np.asarray(c["pca_scale"], dtype=dt),
               "wave": np.asarray(c["wave"], dtype=float)[keep]}
        # fold the PCA de-normalisation and the spectrum scaling into one affine map of h:
        # ((h*s_p + m_p) @ B) * s_s + m_s  =  h @ (s_p[:,None] * B * s_s) + (m_p @ B) * s_s + m_s
        basis = np.asarray(c["pca_basis"], dtype=float)[:, keep]
        s_s = np.asarray(c["spectrum_scale"], dtype=float)[keep]
        m_s = np.asarray(c["spectrum_shift"], dtype=float)[keep]
        out["pca_basis"] = basis
        out["spectrum_scale"], out["spectrum_shift"] = s_s, m_s
        out["out_matrix"] = (np.asarray(c["pca_scale"], dtype=float)[:, None] * basis * s_s).astype(dt)
        out["out_offset"] = ((np.asarray(c["pca_shift"], dtype=float) @ basis) * s_s + m_s).astype(dt)
        out["raw"] = c
        return out

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(cls, path, wave_range=None, dtype=np.float32) -> "PROVABGSEmulator":
        """Load the four ``nmf.v0.1.seed0_99.w<lo>_<hi>.*.npz`` files from ``path``.

        ``wave_range=(lo, hi)`` keeps only output wavelengths in [lo, hi] A (chunks outside
        it are not evaluated at all).
        """
        path = Path(path)
        files = list(path.glob(FILE_GLOB))
        if not files:
            raise FileNotFoundError(f"no PROVABGS emulator files {FILE_GLOB} in {path}")

        def lower_wave(f):
            m = re.search(r"\.w(\d+)_(\d+)\.", f.name)
            if m is None:
                raise ValueError(f"cannot read the wavelength chunk from {f.name}")
            return int(m.group(1))

        chunks = []
        for f in sorted(files, key=lower_wave):
            with np.load(f, allow_pickle=False) as d:
                missing = [k for k in (*_KEYS, *(f"W{i}" for i in range(_N_HIDDEN + 1)),
                                       *(f"b{i}" for i in range(_N_HIDDEN + 1))) if k not in d.files]
                if missing:
                    raise ValueError(f"{f}: missing arrays {missing}")
                chunks.append({k: d[k] for k in d.files})
        emu = cls(chunks, dtype=dtype, source=str(path))
        return emu.restrict(*wave_range) if wave_range is not None else emu

    def restrict(self, wave_min, wave_max) -> "PROVABGSEmulator":
        """A copy that only evaluates output wavelengths in [wave_min, wave_max] A."""
        chunks = []
        for c in self._chunks:
            raw = dict(c["raw"])
            sel = (c["wave"] >= wave_min) & (c["wave"] <= wave_max)
            if not sel.any():
                continue
            full = np.asarray(raw["wave"], dtype=float)
            idx = np.flatnonzero(np.isin(full, c["wave"][sel]))
            for k in ("wave", "spectrum_shift", "spectrum_scale"):
                raw[k] = np.asarray(raw[k])[idx]
            raw["pca_basis"] = np.asarray(raw["pca_basis"])[:, idx]
            chunks.append(raw)
        return type(self)(chunks, dtype=self.dtype,
                          source=f"{self.source}; {wave_min:g}-{wave_max:g} A")

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def inputs(theta, tage) -> np.ndarray:
        """The 9 network inputs (n, 9) from sedflow's theta (n, 12) and t_age (n,) [Gyr]."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        tage = np.broadcast_to(np.asarray(tage, dtype=float), (theta.shape[0],))
        b1, b2, b3 = theta[:, 1], theta[:, 2], theta[:, 3]
        s1 = np.clip(1.0 - b1, 1e-8, None)                  # as provabgs: (1 - tt[0]).clip(1e-8)
        s2 = 1.0 - b2 / s1
        s3 = 1.0 - b3 / (s1 * s2)
        return np.column_stack([s1, s2, s3, theta[:, 7], theta[:, 8], theta[:, 9], theta[:, 10],
                                theta[:, 11], tage])

    def _forward(self, c, x):
        h = (x - c["param_shift"]) / c["param_scale"]
        for i in range(_N_HIDDEN):
            a = h @ c["W"][i]
            a += c["b"][i]
            # (beta + (1 - beta) sigmoid(alpha a)) a  with  sigmoid(x) = (1 + tanh(x / 2)) / 2,
            # in place (scipy's expit is ~10x slower than tanh in float32)
            h = np.multiply(c["half_alphas"][i], a)
            np.tanh(h, out=h)
            h *= c["act_slope"][i]
            h += c["act_offset"][i]
            h *= a
        h = h @ c["W"][_N_HIDDEN] + c["b"][_N_HIDDEN]
        return h @ c["out_matrix"] + c["out_offset"]

    def _log_spectrum(self, theta, tage) -> np.ndarray:
        x = self.inputs(theta, tage).astype(self.dtype)
        return np.concatenate([self._forward(c, x) for c in self._chunks], axis=1)

    def log_spectrum(self, theta, tage) -> np.ndarray:
        """ln L_lambda [Lsun/A per Msun formed] on `wave`, shape (n, n_wave), float64."""
        return self._log_spectrum(theta, tage).astype(float, copy=False)

    def spectrum(self, theta, tage) -> np.ndarray:
        """L_lambda [Lsun/A] of galaxies with formed mass 10**theta[:, 0], shape (n, n_wave)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        return np.exp(self.log_spectrum(theta, tage) + np.log(10.0) * theta[:, :1])

    def photometry(self, theta, z, phot=None, chunk_size=512) -> np.ndarray:
        """Noiseless fluxes (n, n_bands) [nanomaggies] at redshifts z through a
        `sedflow.sps.photometry.Photometry` on `wave` (default: SDSS ugriz, z_max=0.45,
        built once and cached). t_age comes from the Photometry's cosmology (Planck13)."""
        if phot is None:
            phot = getattr(self, "_phot", None)
            if phot is None:
                from sedflow.sps.photometry import Photometry
                phot = self._phot = Photometry(self.wave, z_max=0.45)
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        z = phot.check_redshift(z, theta.shape[0])
        out = np.empty((theta.shape[0], len(phot.filter_names)))
        order = np.argsort(z, kind="stable")  # chunks of similar z share Photometry's z nodes
        for s in range(0, theta.shape[0], chunk_size):
            sl = order[s:s + chunk_size]
            # per-Msun spectra in the network's dtype; fluxes are linear in the formed mass
            lum = np.exp(self._log_spectrum(theta[sl], phot.age_of_universe(z[sl])))
            out[sl] = phot.nanomaggies(lum, z[sl])
        return out * 10.0 ** theta[:, :1]
