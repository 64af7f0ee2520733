import warnings

import numpy as np
import pytest
from scipy import stats

from sedflow.prior import PARAM_NAMES, UNCONSTRAINED_MAPS, Prior, PriorWithRedshift, prior_from_dict


def test_names_and_shapes(prior):
    assert prior.names == PARAM_NAMES
    theta = prior.sample(1000, seed=0)
    assert theta.shape == (1000, 12) and theta.dtype == np.float64
    assert prior.in_support(theta).all()
    np.testing.assert_allclose(theta[:, 1:5].sum(axis=1), 1.0, atol=1e-12)


def test_sample_is_deterministic(prior):
    np.testing.assert_array_equal(prior.sample(10, seed=3), prior.sample(10, seed=3))
    assert not np.array_equal(prior.sample(10, seed=3), prior.sample(10, seed=4))


def test_marginals_follow_the_paper_priors(prior):
    theta = prior.sample(20000, seed=1)
    # flat Dirichlet(1,1,1,1): each beta ~ Beta(1, 3)
    for k in range(1, 5):
        assert stats.kstest(theta[:, k], stats.beta(1, 3).cdf).pvalue > 1e-3
    assert stats.kstest(theta[:, 0], stats.uniform(7, 5.5).cdf).pvalue > 1e-3
    assert stats.kstest(np.log10(theta[:, 7]), stats.uniform(np.log10(4.5e-5), np.log10(1.5e-2 / 4.5e-5)).cdf).pvalue > 1e-3
    assert stats.kstest(theta[:, 11], stats.uniform(-2, 3).cdf).pvalue > 1e-3


def test_unconstrained_round_trip_and_logistic(prior):
    theta = prior.sample(5000, seed=2)
    u = prior.to_unconstrained(theta)
    assert u.shape == (5000, 11) and np.all(np.isfinite(u))
    np.testing.assert_allclose(prior.from_unconstrained(u), theta, rtol=1e-9, atol=1e-12)
    # under the prior every unconstrained coordinate is standard logistic
    for j in range(11):
        assert stats.kstest(u[:, j], stats.logistic.cdf).pvalue > 1e-3, j


def test_probit_coordinates_are_standard_normal_under_the_prior():
    """The probit map: u ~ N(0, 1) per coordinate under the prior (the flow's base), and it is the
    logit map's box coordinate sent through the normal quantile instead."""
    probit, logit = Prior(unconstrained="probit"), Prior()
    theta = probit.sample(5000, seed=2)
    u = probit.to_unconstrained(theta)
    np.testing.assert_allclose(probit.from_unconstrained(u), theta, rtol=1e-9, atol=1e-12)
    for j in range(11):
        assert stats.kstest(u[:, j], stats.norm.cdf).pvalue > 1e-3, j
    np.testing.assert_allclose(stats.norm.cdf(u), stats.logistic.cdf(logit.to_unconstrained(theta)), atol=1e-12)
    np.testing.assert_array_equal(probit.sample(10, seed=3), logit.sample(10, seed=3))   # the same theta prior


@pytest.mark.parametrize("kind", UNCONSTRAINED_MAPS)
def test_whole_real_line_maps_inside_prior(kind):
    prior = Prior(unconstrained=kind)
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.normal(scale=30, size=(2000, 11)), np.full((1, 11), 700.0), np.full((1, 11), -700.0)])
    theta = prior.from_unconstrained(u)
    assert np.all(np.isfinite(theta))
    assert prior.in_support(theta).all()


@pytest.mark.parametrize("kind", UNCONSTRAINED_MAPS)
def test_log_jacobian_matches_densities(kind):
    """log p(theta) = log p_u(u) + log|du/dtheta|, and the Jacobian matches finite differences."""
    prior = Prior(unconstrained=kind)
    theta = prior.sample(200, seed=5)
    u = prior.to_unconstrained(theta)
    np.testing.assert_allclose(prior.log_prob(theta),
                               prior.log_prob_unconstrained(u) + prior.log_abs_det_jacobian(theta), rtol=1e-8)
    free = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]  # beta4 is implied

    def u_of(x):
        th = theta[i].copy()
        th[free] = x
        th[4] = 1 - th[1:4].sum()
        return prior.to_unconstrained(th[None])[0]

    for i in range(5):
        x0 = theta[i, free]
        jac = np.empty((11, 11))
        for k in range(11):
            h = 1e-7 * max(abs(x0[k]), 1e-3)
            xp, xm = x0.copy(), x0.copy()
            xp[k] += h
            xm[k] -= h
            jac[:, k] = (u_of(xp) - u_of(xm)) / (2 * h)
        assert np.log(abs(np.linalg.det(jac))) == pytest.approx(prior.log_abs_det_jacobian(theta[i:i + 1])[0], abs=1e-4)


@pytest.mark.parametrize("kind", UNCONSTRAINED_MAPS)
def test_log_jacobian_finite_on_the_simplex_faces(kind):
    """beta1 = 1 (the other betas 0) is in the support: the Dirichlet part of the Jacobian is the
    constant 6 there too, so log|du/dtheta| is finite and computed without a divide-by-zero."""
    prior = Prior(unconstrained=kind)
    theta = prior.sample(2, seed=1)
    theta[0, 1:5] = [1.0, 0.0, 0.0, 0.0]
    assert prior.in_support(theta).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lj = prior.log_abs_det_jacobian(theta)
    assert np.all(np.isfinite(lj))


def test_log_prob_normalised_and_outside_is_minus_inf(prior):
    theta = prior.sample(3, seed=0)
    lp = prior.log_prob(theta)
    volume = 5.5 * 1 * 13.26 * 3 * 3 * 3 / 6.0  # box widths, Dirichlet simplex volume 1/6
    glo, ghi = 4.5e-5, 1.5e-2
    expected = -np.log(volume) - np.log(theta[:, 7] * np.log(ghi / glo)) - np.log(theta[:, 8] * np.log(ghi / glo))
    np.testing.assert_allclose(lp, expected)
    bad = theta.copy()
    bad[0, 0] = 13.0
    bad[1, 1] += 0.1  # betas no longer sum to one
    bad[2, 7] = np.nan
    assert np.all(prior.log_prob(bad) == -np.inf)
    assert not prior.in_support(bad).any()


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 11)), "shape"),
    (np.zeros((2, 3, 12)), "shape"),
])
def test_bad_shapes_raise(prior, bad, match):
    with pytest.raises(ValueError, match=match):
        prior.to_unconstrained(bad)


def test_outside_prior_raises_naming_rows(prior):
    theta = prior.sample(4, seed=0)
    theta[2, 10] = -1.0
    theta[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 of 4 .*rows \[2, 3\].*NaN/inf"):
        prior.to_unconstrained(theta)
    with pytest.raises(ValueError, match="NaN"):
        prior.from_unconstrained(np.full((1, 11), np.nan))


def test_dict_round_trip():
    p = Prior(logmstar=(8, 12))
    assert Prior.from_dict(p.to_dict()) == p
    assert p != Prior()
    assert "unconstrained" not in p.to_dict()           # the logit: what descriptions without the key mean
    q = Prior(unconstrained="probit")
    back = prior_from_dict(PriorWithRedshift(q, (0.0, 0.6)).to_dict())
    assert back.unconstrained == "probit" and back.sed_prior.unconstrained == "probit"
    assert q == Prior()                                   # equality is the distribution over theta
    theta = back.sample(2000, seed=1)
    u = back.to_unconstrained(theta)
    assert stats.kstest(u[:, -1], stats.norm.cdf).pvalue > 1e-3          # z's coordinate is probit too
    np.testing.assert_allclose(back.log_prob_unconstrained(u) + back.log_abs_det_jacobian(theta),
                               back.log_prob(theta), rtol=1e-8)
    with pytest.raises(ValueError, match="unconstrained"):
        Prior(unconstrained="tanh")
    with pytest.raises(ValueError):
        Prior(tau_bc=(3, 0))


def test_unit_cube_transform_draws_the_prior(prior):
    """`from_unit_cube` (the nested sampler's prior transform) maps uniform draws to the prior:
    every physical marginal matches prior draws (two-sample KS), inside the support."""
    s = np.random.default_rng(5).uniform(size=(20000, 11))
    theta = prior.from_unit_cube(s)
    assert prior.in_support(theta).all()
    ref = prior.sample(20000, seed=6)
    for j in range(12):
        assert stats.ks_2samp(theta[:, j], ref[:, j]).pvalue > 1e-3, PARAM_NAMES[j]
    # and it is the unconstrained map at logit(s)
    np.testing.assert_allclose(prior.from_unit_cube(s[:50]), prior.from_unconstrained(np.log(s[:50] / (1 - s[:50]))),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        prior.from_unit_cube(s[:, :5])


@pytest.mark.parametrize("make", [Prior, lambda: PriorWithRedshift(Prior(), (0.0, 0.6))])
def test_to_unit_cube_inverts_from_unit_cube(make):
    """`to_unit_cube` is the inverse of the prior transform (the importance reference sets its box
    in these coordinates from posterior draws), and prior draws land uniform in the cube."""
    p = make()
    s = np.random.default_rng(7).uniform(size=(2000, p.ndim_unconstrained))
    np.testing.assert_allclose(p.to_unit_cube(p.from_unit_cube(s)), s, rtol=0, atol=1e-9)
    back = p.to_unit_cube(p.sample(20000, seed=8))
    for k in range(p.ndim_unconstrained):
        assert stats.kstest(back[:, k], "uniform").pvalue > 1e-3, k
    with pytest.raises(ValueError):
        p.to_unit_cube(np.full((1, p.ndim), np.nan))


@pytest.mark.parametrize("make", [lambda: Prior(unconstrained="probit"), lambda: Prior(unconstrained="logit"),
                                  lambda: PriorWithRedshift(Prior(unconstrained="probit"), (0.0, 0.6))])
def test_torch_map_matches_numpy_and_has_finite_gradients(make):
    """from_unconstrained_torch (training losses on theta) is from_unconstrained, differentiable everywhere,
    also far out in the tails where the box coordinates reach their bounds."""
    torch = pytest.importorskip("torch")
    p = make()
    u = p.to_unconstrained(p.sample(3000, seed=2))
    np.testing.assert_allclose(p.from_unconstrained_torch(torch.tensor(u)).numpy(), p.from_unconstrained(u),
                               rtol=1e-12, atol=1e-12)
    far = torch.tensor(np.vstack([u[:5], np.full((2, u.shape[1]), 40.0), np.full((2, u.shape[1]), -40.0)]),
                       requires_grad=True)
    theta = p.from_unconstrained_torch(far)
    assert torch.isfinite(theta).all() and np.all(p.in_support(theta.detach().numpy()))
    theta.sum().backward()
    assert torch.isfinite(far.grad).all()
