"""Physics invariants and input handling of the batched SED model (sedflow.sps.model)."""

import numpy as np
import pytest

from sedflow.sps.history import LOOKBACK_EDGES, Z_MIN, populations
from sedflow.sps.photometry import LSUN_ERG_S, MPC_CM, nanomaggies_to_mag


@pytest.fixture(scope="module")
def theta(prior):
    return prior.sample(400, seed=11)


@pytest.fixture(scope="module")
def zs():
    return np.random.default_rng(3).uniform(0.01, 0.2, 400)


def test_shapes_and_positivity(sed_model, theta, zs):
    flux = sed_model.photometry(theta, zs)
    assert flux.shape == (400, 5) and np.all(np.isfinite(flux)) and np.all(flux > 0)
    wave, lum = sed_model.spectrum(theta[:3], zs[:3])
    assert lum.shape == (3, wave.size) and np.all(lum >= 0)
    assert wave[0] <= 2000.0 * 1.01 and wave[-1] >= 11500


def test_batch_equals_rows_and_chunking(sed_model, theta, zs):
    """Vectorised: a batch gives the same numbers as one galaxy at a time, for any chunk size."""
    from sedflow import SEDModel

    batch = sed_model.photometry(theta[:20], zs[:20])
    rows = np.vstack([sed_model.photometry(theta[i:i + 1], zs[i]) for i in range(20)])
    np.testing.assert_allclose(batch, rows, rtol=1e-12)
    small = SEDModel(ssp=sed_model.ssp, bases=sed_model.bases, chunk_size=7)
    np.testing.assert_allclose(small.photometry(theta[:20], zs[:20]), batch, rtol=1e-12)


def test_mcmc_batches_equal_one_large_batch(sed_model, prior):
    """The small-batch path (MCMC walker batches: few rows, one z, scalar or per-row z) gives the
    numbers of one large mixed-z batch: 30 draws, a third with strong bursts, evaluated one by one,
    in batches of 1-7 rows and as 30 rows, against the same rows inside 1000 rows at many redshifts."""
    rng = np.random.default_rng(21)
    theta = prior.sample(1000, seed=21)
    burst = rng.uniform(size=1000) < 0.3
    theta[burst, 5] = rng.uniform(0.3, 1.0, burst.sum())
    z = rng.uniform(0.001, 0.2, 1000)
    rows = rng.choice(1000, 30, replace=False)
    z[rows] = 0.0837                                               # the MCMC galaxy's redshift
    big = sed_model.photometry(theta, z)[rows]
    one_by_one = np.vstack([sed_model.photometry(theta[i], 0.0837) for i in rows])
    batches = np.vstack([sed_model.photometry(theta[rows[a:b]], np.full(b - a, 0.0837))
                         for a, b in zip([0, 1, 3, 6, 13, 20], [1, 3, 6, 13, 20, 30])])
    for small in (one_by_one, batches, sed_model.photometry(theta[rows], 0.0837)):
        np.testing.assert_allclose(small, big, rtol=1e-12, atol=0)


def test_free_age_weights_are_scipys_canonical_csr(sed_model, prior):
    """`_free_age_weights` builds the CSR arrays itself; they must be the matrix scipy's COO
    constructor gives (sorted columns, repeated columns summed), so that the products agree
    exactly. Bursts at the truncated bin's age and metallicity force repeated columns."""
    from scipy import sparse

    m = sed_model
    n = 200
    rng = np.random.default_rng(4)
    mass = rng.uniform(0, 1, (n, 2))
    age = rng.uniform(0.005, 13.0, (n, 2))
    metallicity = 10 ** rng.uniform(np.log10(Z_MIN), -1.4, (n, 2))
    age[::3, 1], metallicity[::3, 1] = age[::3, 0], metallicity[::3, 0]          # the same 4 corners
    ours = m._free_age_weights(mass, age, metallicity)

    nz = m._log_z.size
    ia = np.clip(np.searchsorted(m._log_age, np.log10(age), side="right") - 1, 0, m._log_age.size - 2)
    iz = np.clip(np.searchsorted(m._log_z, np.log10(metallicity), side="right") - 1, 0, nz - 2)
    wa = np.clip((np.log10(age) - m._log_age[ia]) / (m._log_age[ia + 1] - m._log_age[ia]), 0, 1)
    wz = np.clip((np.log10(metallicity) - m._log_z[iz]) / (m._log_z[iz + 1] - m._log_z[iz]), 0, 1)
    corner = ia * nz + iz
    cols = np.stack([corner, corner + 1, corner + nz, corner + nz + 1], axis=-1)
    data = mass[..., None] * np.stack([(1 - wa) * (1 - wz), (1 - wa) * wz, wa * (1 - wz), wa * wz], axis=-1)
    rows = np.broadcast_to(np.arange(n)[:, None, None], cols.shape)
    ref = sparse.csr_matrix((data.ravel(), (rows.ravel(), cols.ravel())), shape=ours.shape)
    assert ref.nnz < 8 * n                                                       # duplicates were summed
    np.testing.assert_array_equal(ours.toarray(), ref.toarray())
    np.testing.assert_array_equal(ours @ m._flat_ssp, ref @ m._flat_ssp)


def test_one_dex_of_mass_is_minus_2p5_mag(sed_model, theta, zs):
    t = theta[theta[:, 0] < 11.5]
    z = zs[theta[:, 0] < 11.5]
    heavier = t.copy()
    heavier[:, 0] += 1.0
    dm = nanomaggies_to_mag(sed_model.photometry(heavier, z)) - nanomaggies_to_mag(sed_model.photometry(t, z))
    np.testing.assert_allclose(dm, -2.5, atol=1e-9)


def test_more_ism_dust_never_brightens(sed_model, theta, zs):
    flux = [sed_model.photometry(np.column_stack([theta[:, :10], np.full(400, tau), theta[:, 11]]), zs)
            for tau in (0.0, 0.5, 1.5, 3.0)]
    for a, b in zip(flux, flux[1:]):
        assert np.all(b <= a * (1 + 1e-12))
    assert np.all(flux[-1] < flux[0])  # and it does dim every band
    # the attenuation curve itself is non-negative for the whole n_dust prior range
    from sedflow.sps.dust import ism_optical_depth
    assert np.all(ism_optical_depth(sed_model.wave, np.ones(61), np.linspace(-2, 1, 61)) >= 0)


def test_birth_clouds_only_dim_young_light(sed_model, theta, zs):
    t = theta.copy()
    t[:, 9] = 0.0
    clear = sed_model.photometry(t, zs)
    t[:, 9] = 3.0
    dusty = sed_model.photometry(t, zs)
    assert np.all(dusty <= clear * (1 + 1e-12))
    # u band loses more than z band (young light is blue, tau_BC ~ 1/lambda)
    lost = 1 - dusty / clear
    assert np.median(lost[:, 0]) > np.median(lost[:, 4])


def test_flux_falls_with_redshift(sed_model, theta):
    grid = np.array([0.01, 0.02, 0.05, 0.1, 0.15, 0.2])
    # The model's one discontinuity in z: a burst older than the universe at z does not
    # happen (its mass returns to the NMF part, which is younger and brighter). Keep draws
    # whose burst happens at every z of the grid or at none.
    tage = sed_model.phot.age_of_universe(grid)
    same = (theta[:, 6] < tage.min()) | (theta[:, 6] >= tage.max())
    assert same.sum() > 300
    flux = np.stack([sed_model.photometry(theta[same], z) for z in grid])  # (nz, n, 5)
    assert np.all(np.diff(flux, axis=0) < 0)


def test_photometry_matches_speclite(sed_model, theta, zs):
    """The tabulated filter kernels reproduce speclite's own AB maggies of the redshifted spectrum."""
    import speclite.filters

    filters = speclite.filters.load_filters(*sed_model.band_names)
    wave, lum = sed_model.spectrum(theta[:10], zs[:10])
    ours = sed_model.photometry(theta[:10], zs[:10])
    dl = sed_model.phot.cosmology.luminosity_distance(zs[:10]).to_value("Mpc") * MPC_CM
    for i in range(10):
        flam = lum[i] * LSUN_ERG_S / (4 * np.pi * dl[i] ** 2 * (1 + zs[i]))
        ref = filters.get_ab_maggies(flam, wave * (1 + zs[i]))
        ref = np.array([ref[name][0] for name in ref.colnames]) * 1e9
        np.testing.assert_allclose(ours[i], ref, rtol=2e-3)


def test_sfh_integrates_to_formed_mass(sed_model, theta, zs):
    tage = sed_model.phot.age_of_universe(zs)
    pops = populations(theta, tage, sed_model.bases)
    np.testing.assert_allclose(pops.mass.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(pops.mass >= 0)
    # nothing forms before the big bang: bins beyond t_age are empty, ages stay below t_age
    beyond = LOOKBACK_EDGES[None, :-1] >= tage[:, None]
    assert np.all(pops.mass[:, :-1][beyond] == 0)
    assert np.all(pops.age[:, :-1] <= tage[:, None])


def test_burst_of_everything_is_the_ssp_at_tburst(sed_model, prior):
    """f_burst = 1 puts all mass into one SSP of age t_burst and metallicity ZH(t_burst)."""
    ssp = sed_model.ssp
    ia = np.searchsorted(ssp.ages, 2e9)
    tburst = ssp.ages[ia] / 1e9            # a grid age, so no interpolation in age
    z1 = sed_model.bases.zh_at(np.array([tburst]))[:, 0]
    k = int(np.argmax(z1))
    target_z = 0.02                        # BC03's solar node
    theta = prior.sample(1, seed=0)
    theta[0, 5], theta[0, 6] = 1.0, tburst
    theta[0, 7:9] = 4.5e-5
    theta[0, 7 + k] = (target_z - 4.5e-5 * z1[1 - k]) / z1[k]   # ZH(t_burst) = 0.02 exactly
    theta[0, 9:11] = 0.0                   # no dust
    assert prior.in_support(theta).all()
    _, lum = sed_model.spectrum(theta, 0.05)
    iz = np.searchsorted(ssp.metallicities, target_z)
    expected = 10 ** theta[0, 0] * ssp.lum[ia, iz]
    np.testing.assert_allclose(lum[0], expected, rtol=1e-9)


def test_burst_older_than_universe_is_no_burst(sed_model, theta):
    z = 0.1
    tage = sed_model.phot.age_of_universe(np.array([z]))[0]
    late = theta[:50].copy()
    late[:, 5] = 0.8
    late[:, 6] = np.random.default_rng(0).uniform(tage + 0.01, 13.27, 50)
    none = late.copy()
    none[:, 5] = 0.0
    np.testing.assert_allclose(sed_model.photometry(late, z), sed_model.photometry(none, z), rtol=1e-12)
    np.testing.assert_allclose(sed_model.properties(late, z)["logmstar_surv"],
                               sed_model.properties(none, z)["logmstar_surv"], rtol=1e-12)


def test_properties(sed_model, theta, zs):
    props = sed_model.properties(theta, zs)
    assert set(props) == {"logmstar_surv", "logsfr_100myr", "logsfr_1gyr", "logz_mw", "tage_mw"}
    for v in props.values():
        assert v.shape == (400,) and np.all(np.isfinite(v))
    # surviving mass lies between the smallest and largest surviving fraction of the SSP grid
    frac = 10 ** (props["logmstar_surv"] - theta[:, 0])
    assert np.all(frac <= 1) and np.all(frac >= sed_model.ssp.surviving_frac.min())
    assert np.all(frac < 0.9) and np.median(frac) < 0.7  # galaxies older than ~100 Myr lose >10%
    tage = sed_model.phot.age_of_universe(zs)
    assert np.all(props["tage_mw"] > 0) and np.all(props["tage_mw"] < tage)
    assert np.all(props["logz_mw"] >= np.log10(4.49e-5) - 1e-9) and np.all(props["logz_mw"] <= np.log10(4.49e-2) + 1e-9)
    # an SFR averaged over the whole history equals formed mass / age
    t = theta[:5].copy()
    t[:, 5] = 0.0
    from sedflow.sps.history import formed_mass_fraction
    np.testing.assert_allclose(formed_mass_fraction(t, np.full(5, 13.0), sed_model.bases, 13.0), 1.0)
    # a recent burst raises the 100 Myr SFR by exactly f_burst M* / 100 Myr
    b = theta[:5].copy()
    b[:, 5], b[:, 6] = 0.5, 0.05
    nb = b.copy()
    nb[:, 5] = 0.0
    sfr = lambda th: 10 ** sed_model.properties(th, 0.1)["logsfr_100myr"]
    np.testing.assert_allclose(sfr(b), 0.5 * sfr(nb) + 0.5 * 10 ** b[:, 0] / 1e8, rtol=1e-9)


def _reference_properties(model, theta, z):
    """`SEDModel.properties` straight from the definitions, vectorised over all 43 populations:
    NMF mass per bin from the cumulative basis integrals at the truncated edges, ZH evaluated at
    every population's age, and scipy's bilinear interpolation of the surviving-mass table."""
    from scipy.interpolate import RegularGridInterpolator

    from sedflow.sps.history import Z_MAX, Z_MIN

    bases, ssp = model.bases, model.ssp
    betas, fburst, tburst, gamma = theta[:, 1:5], theta[:, 5], theta[:, 6], theta[:, 7:9]
    tage = model.phot.age_of_universe(z)
    edges = np.minimum(LOOKBACK_EDGES[None, :], tage[:, None])                     # (n, 43)
    cum = bases.cumulative_sfh(edges)                                              # (4, n, 43)
    nmf = np.einsum("nk,knm->nm", betas, np.diff(cum, axis=2)) / np.einsum("nk,kn->n", betas, cum[:, :, -1])[:, None]
    fb = np.where(tburst < tage, fburst, 0.0)
    mass = np.column_stack([(1 - fb)[:, None] * nmf, fb])
    age = np.column_stack([0.5 * (edges[:, 1:] + edges[:, :-1]), tburst])
    metallicity = np.clip(np.einsum("nk,knm->nm", gamma, bases.zh_at(age)), Z_MIN, Z_MAX)
    log_age, log_z = np.log10(ssp.ages / 1e9), np.log10(ssp.metallicities)
    surviving = RegularGridInterpolator((log_age, log_z), ssp.surviving_frac)
    points = np.stack([np.clip(np.log10(np.maximum(age, 1e-12)), log_age[0], log_age[-1]),
                       np.clip(np.log10(metallicity), log_z[0], log_z[-1])], axis=-1)
    out = {"logmstar_surv": theta[:, 0] + np.log10(np.sum(mass * surviving(points), axis=1)),
           "logz_mw": np.log10(np.sum(mass * metallicity, axis=1)), "tage_mw": np.sum(mass * age, axis=1)}
    for name, dt in (("logsfr_100myr", 0.1), ("logsfr_1gyr", 1.0)):
        formed = bases.cumulative_sfh(np.minimum(dt, tage))                        # (4, n)
        frac = (1 - fb) * np.einsum("nk,kn->n", betas, formed) / np.einsum("nk,kn->n", betas, cum[:, :, -1])
        frac += np.where(tburst < dt, fb, 0.0)
        out[name] = np.maximum(theta[:, 0] + np.log10(frac / (dt * 1e9)), -10.0)
    return out


def test_properties_match_reference(sed_model, prior):
    """Regression guard for the fast `properties`: prior draws (z up to 0.45, so several
    truncated bins) and draws with strong bursts just younger and just older than the universe."""
    rng = np.random.default_rng(5)
    theta = prior.sample(300, seed=5)
    z = rng.uniform(0.001, 0.2, 300)
    z[:50] = rng.uniform(0.2, 0.45, 50)
    tage = sed_model.phot.age_of_universe(z)
    burst = slice(100, 200)
    theta[burst, 5] = rng.uniform(0.3, 1.0, 100)
    theta[burst, 6] = np.clip(tage[burst] + rng.uniform(-0.5, 0.5, 100), 0.01, 13.27)
    theta[200:220, 6] = rng.uniform(0.01, 0.2, 20)                  # recent bursts: inside both SFR windows
    assert 30 < np.sum(theta[burst, 6] < tage[burst]) < 70
    ours, ref = sed_model.properties(theta, z), _reference_properties(sed_model, theta, z)
    assert set(ours) == set(ref)
    for name in ref:
        np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=1e-9, err_msg=name)
    # the chunk size does not change the numbers (up to BLAS rounding)
    from sedflow.sps import model as model_module
    chunk = model_module.PROPERTY_CHUNK
    try:
        model_module.PROPERTY_CHUNK = 7
        small = sed_model.properties(theta, z)
    finally:
        model_module.PROPERTY_CHUNK = chunk
    for name in ref:
        np.testing.assert_allclose(small[name], ours[name], rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("mutate, match", [
    (lambda t, z: (t[:, :11], z), "shape"),
    (lambda t, z: (np.where(np.arange(12) == 3, np.nan, t), z), "NaN/inf"),
    (lambda t, z: (np.where(np.arange(12) == 0, 13.0, t), z), "outside the prior"),
    (lambda t, z: (t, -0.1), "redshift"),
    (lambda t, z: (t, 0.0), "redshift"),
    (lambda t, z: (t, np.nan), "redshift"),
    (lambda t, z: (t, np.full(3, 0.1)), "shape"),
])
def test_bad_input_raises(sed_model, theta, mutate, match):
    t, z = mutate(theta[:4].copy(), 0.1)
    with pytest.raises(ValueError, match=match):
        sed_model.photometry(t, z)
