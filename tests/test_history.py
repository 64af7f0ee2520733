"""SFH/ZH bases and the 43 stellar populations (sedflow.sps.history)."""

import shutil

import numpy as np
import pytest

from conftest import shared_path
from sedflow.sps.history import (BIN_MID, LOOKBACK_EDGES, N_BINS, Z_MAX, Z_MIN, IntervalLocator, NMFBases,
                                 formed_mass_fraction, populations, split_populations)


def test_lookback_bins():
    assert LOOKBACK_EDGES.size == 43 and N_BINS == 42
    assert LOOKBACK_EDGES[0] == 0 and LOOKBACK_EDGES[-1] == 13.8
    np.testing.assert_allclose(LOOKBACK_EDGES[1], 10 ** (6.05 - 9))
    np.testing.assert_allclose(LOOKBACK_EDGES[-2], 10 ** (10.05 - 9))


def test_default_bases_are_valid():
    b = NMFBases.default()
    assert b.sfh.shape[0] == 4 and b.zh.shape[0] == 2
    assert np.all(b.sfh >= 0) and np.all(b.zh >= 0)
    # ordered young -> old by mass-weighted lookback time
    t = b.t_lookback
    mean_age = [np.trapezoid(s * t, t) / np.trapezoid(s, t) for s in b.sfh]
    assert np.all(np.diff(mean_age) > 0)


def test_default_bases_generator_is_reproducible(tmp_path):
    """The committed default bases are what the committed generator writes, to rtol 1e-9.

    Not byte for byte: the NMF's BLAS rounding depends on the CPU (11th significant digit seen
    to differ), while a changed generator (library, seed, settings) moves the bases by far more.
    """
    pytest.importorskip("sklearn")
    import runpy
    from importlib import resources

    src = resources.files("sedflow.sps") / "data"
    script = tmp_path / "make_default_bases.py"
    shutil.copy(src / "make_default_bases.py", script)
    runpy.run_path(str(script), run_name="__main__")
    committed = sorted(f.name for f in (src / "default_bases").iterdir())
    assert sorted(f.name for f in (tmp_path / "default_bases").iterdir()) == committed
    for name in committed:
        made, shipped = np.loadtxt(tmp_path / "default_bases" / name), np.loadtxt(src / "default_bases" / name)
        assert made.shape == shipped.shape, name
        np.testing.assert_allclose(made, shipped, rtol=1e-9, atol=1e-9 * np.abs(shipped).max(), err_msg=name)


def test_provabgs_loader_orientation():
    path = shared_path("provabgs")
    b = NMFBases.from_provabgs_dir(path)
    raw_sfh = np.loadtxt(path / "NMF_2basis_SFH_components_nowgt_lin_Nc4.txt")
    raw_t = np.loadtxt(path / "sfh_t_int.txt")
    assert np.all(np.diff(b.t_lookback) > 0)
    np.testing.assert_array_equal(b.t_lookback, raw_t[::-1])
    np.testing.assert_array_equal(b.sfh[0], raw_sfh[2, ::-1])
    np.testing.assert_array_equal(b.sfh[1], raw_sfh[0, ::-1])


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="sfh_t_int.txt"):
        NMFBases.from_provabgs_dir(tmp_path)
    np.savetxt(tmp_path / "sfh_t_int.txt", [3.0, 2.0, 1.0])
    np.savetxt(tmp_path / "NMF_2basis_SFH_components_nowgt_lin_Nc4.txt", np.ones((3, 3)))
    np.savetxt(tmp_path / "NMF_2basis_Z_components_nowgt_lin_Nc2.txt", np.ones((2, 3)))
    with pytest.raises(ValueError, match="4 SFH bases"):
        NMFBases.from_provabgs_dir(tmp_path)


def _constant_bases():
    t = np.linspace(0.0, 13.8, 50)
    return NMFBases(t_lookback=t, sfh=np.ones((4, 50)), zh=np.vstack([np.full(50, 0.01), np.zeros(50)]), source="flat")


def test_constant_sfh_puts_mass_in_proportion_to_bin_width(prior):
    theta = prior.sample(3, seed=0)
    theta[:, 5] = 0.0
    tage = np.array([13.8, 10.0, 0.5])
    pops = populations(theta, tage, _constant_bases())
    for row, ta in enumerate(tage):
        widths = np.diff(np.minimum(LOOKBACK_EDGES, ta))
        np.testing.assert_allclose(pops.mass[row, :N_BINS], widths / ta, rtol=1e-6, atol=1e-12)
        k = pops.truncated_bin[row]
        assert LOOKBACK_EDGES[k] < ta <= LOOKBACK_EDGES[k + 1]
        assert pops.age[row, k] == pytest.approx(0.5 * (LOOKBACK_EDGES[k] + ta))
    # ZH = gamma1 * 0.01, clipped to the MIST range
    np.testing.assert_allclose(pops.metallicity, np.clip(theta[:, 7:8] * 0.01, Z_MIN, Z_MAX) * np.ones((1, 43)))
    # constant SFR: fraction formed in the last dt is dt / t_age
    np.testing.assert_allclose(formed_mass_fraction(theta, tage, _constant_bases(), 0.1), 0.1 / np.minimum(tage, 13.8) * (tage > 0.1) + (tage <= 0.1), rtol=1e-6)


def test_burst_population(prior):
    theta = prior.sample(2, seed=0)
    theta[:, 5] = 0.3
    theta[:, 6] = [1.0, 12.0]
    pops = populations(theta, np.array([10.0, 10.0]), _constant_bases())
    np.testing.assert_allclose(pops.mass[:, -1], [0.3, 0.0])          # second burst is older than the universe
    np.testing.assert_allclose(pops.mass[:, :-1].sum(axis=1), [0.7, 1.0])
    np.testing.assert_allclose(pops.age[:, -1], [1.0, 12.0])


def test_split_populations_are_the_populations(prior):
    """The compact form used by `SEDModel.properties` holds the same populations as `populations`."""
    bases = NMFBases.default()
    theta = prior.sample(300, seed=4)
    tage = np.random.default_rng(4).uniform(0.005, 13.8, 300)
    theta[:100, 6] = np.clip(tage[:100] + np.random.default_rng(5).uniform(-0.3, 0.3, 100), 0.01, 13.27)
    pops, split = populations(theta, tage, bases), split_populations(theta, tage, bases)
    k = pops.truncated_bin
    np.testing.assert_array_equal(split.truncated_bin, k)
    full = np.arange(N_BINS) < k[:, None]
    np.testing.assert_allclose(split.full_mass, np.where(full, pops.mass[:, :N_BINS], 0.0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(split.full_metallicity[full], pops.metallicity[:, :N_BINS][full], rtol=1e-14)
    np.testing.assert_array_equal(np.broadcast_to(BIN_MID, full.shape)[full], pops.age[:, :N_BINS][full])
    cols = np.column_stack([k, np.full(300, N_BINS)])
    rows = np.arange(300)[:, None]
    np.testing.assert_allclose(split.free_mass, pops.mass[rows, cols], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(split.free_age, pops.age[rows, cols])
    np.testing.assert_allclose(split.free_metallicity, pops.metallicity[rows, cols], rtol=1e-14)
    np.testing.assert_allclose(split.weighted_sum(BIN_MID, split.free_age), np.sum(pops.mass * pops.age, axis=1),
                               rtol=1e-13)
    # several windows at once are the single windows side by side
    both = formed_mass_fraction(theta, tage, bases, [0.1, 1.0])
    np.testing.assert_allclose(both[:, 1], formed_mass_fraction(theta, tage, bases, 1.0), rtol=1e-14)


@pytest.mark.parametrize("nodes", [NMFBases.default().t_lookback, np.log10([1e-4, 4e-4, 4e-3, 8e-3, 0.02, 0.05, 0.1]),
                                   np.array([0.0, 1.0, 1.0 + 1e-9])])          # the last one falls back to the search
def test_interval_locator_is_searchsorted(nodes):
    locate = IntervalLocator(nodes)
    near = np.concatenate([nodes, np.nextafter(nodes, -np.inf), np.nextafter(nodes, np.inf)])
    x = np.concatenate([near, np.random.default_rng(0).uniform(nodes[0] - 1, nodes[-1] + 1, 10000)])
    expected = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
    np.testing.assert_array_equal(locate(x), expected)
    assert (locate.start is None) == (nodes.size == 3)
