"""SSP grids: the BC03+MILES reader, resampling (flux conservation, photometric accuracy),
the cache, and the Ray fan-out of the FSPS path."""

import numpy as np
import pytest

from sedflow.sps.ssp import SSPGrid, bc03_miles, fsps_grid, read_bc03_miles


@pytest.fixture(scope="module")
def native():
    return read_bc03_miles()


def test_native_bc03_grid(native):
    assert native.lum.shape == (220, 7, 13216)
    assert native.ages[0] == pytest.approx(1e5) and native.ages[-1] == pytest.approx(2e10)
    np.testing.assert_allclose(native.metallicities, [1e-4, 4e-4, 4e-3, 8e-3, 0.02, 0.05, 0.1])
    assert np.all((native.surviving_frac > 0.3) & (native.surviving_frac <= 1))
    # a 10 Gyr solar SSP has M/L_V of a few (Lsun/A per Msun formed ~ 1e-4..1e-3 at 5500 A)
    i, j = np.searchsorted(native.ages, 1e10), 4
    lum5500 = np.interp(5500, native.wave, native.lum[i, j])
    assert 1e-5 < lum5500 < 1e-3


def test_resample_conserves_flux(native):
    grid = native.resample((2000, 12000), 300)
    assert grid.wave.size == int(np.ceil(np.log(6) * 300))
    sel = (native.wave >= 2000) & (native.wave <= 12000)
    for i, j in [(10, 0), (120, 4), (210, 6)]:
        full = np.trapezoid(native.lum[i, j, sel], native.wave[sel])
        edges = np.exp(np.linspace(np.log(2000), np.log(12000), grid.wave.size + 1))
        coarse = np.sum(grid.lum[i, j] * np.diff(edges))
        assert coarse == pytest.approx(full, rel=2e-3)


def test_resampling_costs_under_a_hundredth_of_a_mag(native, sed_model):
    """Broadband magnitudes of SSPs on the R=300 grid vs the native BC03 resolution."""
    import speclite.filters

    filters = speclite.filters.load_filters(*sed_model.band_names)
    coarse = sed_model.ssp
    for z in (0.01, 0.1, 0.2):
        for i in (20, 100, 150, 200):
            for j in (0, 4, 6):
                a = filters.get_ab_magnitudes(native.lum[i, j], native.wave * (1 + z))
                b = filters.get_ab_magnitudes(coarse.lum[i, j], coarse.wave * (1 + z))
                d = np.array([a[c][0] - b[c][0] for c in a.colnames])
                assert np.all(np.abs(d) < 0.01), (z, i, j, d)


def test_cache_round_trip_and_recovery(tmp_path, monkeypatch):
    monkeypatch.setenv("SEDFLOW_CACHE", str(tmp_path))
    g1 = bc03_miles(resolution=100)
    files = list(tmp_path.glob("bc03_miles_*R100.npz"))
    assert len(files) == 1
    g2 = bc03_miles(resolution=100)
    np.testing.assert_array_equal(g1.lum, g2.lum)
    files[0].write_bytes(b"truncated")       # a corrupted cache entry is rebuilt, not trusted
    g3 = bc03_miles(resolution=100)
    np.testing.assert_array_equal(g1.lum, g3.lum)
    assert SSPGrid.load(files[0]).source == g1.source


def test_grid_validation():
    good = dict(wave=np.array([1.0, 2.0]), ages=np.array([1.0, 2.0, 3.0]), metallicities=np.array([0.01]),
                lum=np.ones((3, 1, 2)), surviving_frac=np.ones((3, 1)), source="t")
    SSPGrid(**good)
    with pytest.raises(ValueError, match="match"):
        SSPGrid(**{**good, "lum": np.ones((2, 1, 2))})
    with pytest.raises(ValueError, match="increasing"):
        SSPGrid(**{**good, "ages": np.array([3.0, 2.0, 1.0])})
    with pytest.raises(ValueError, match="finite"):
        SSPGrid(**{**good, "lum": np.full((3, 1, 2), np.nan)})


def test_fsps_needs_sps_home(monkeypatch):
    monkeypatch.delenv("SPS_HOME", raising=False)
    with pytest.raises(RuntimeError, match="SPS_HOME"):
        fsps_grid()


def test_fsps_path_fans_out_over_metallicities_with_ray(ray_local):
    """The FSPS builder with a stand-in per-metallicity function (FSPS data cannot be had here):
    one Ray task per metallicity, results assembled in metallicity order and resampled."""

    def bc03_slice(logzsol, imf_type):
        from sedflow.sps.ssp import read_bc03_miles

        g = read_bc03_miles()
        j = int(np.argmin(np.abs(np.log10(g.metallicities) - (logzsol + np.log10(0.02)))))
        return {"wave": g.wave, "ages": np.concatenate([[0.0], g.ages]),
                "lum": np.concatenate([g.lum[:1, j], g.lum[:, j]]),
                "surviving_frac": np.concatenate([[1.0], g.surviving_frac[:, j]]),
                "libraries": ["bc03", "miles"]}

    zs = [0.02, 1e-4, 4e-3]
    grid = fsps_grid(metallicities=zs, z_solar=0.02, ssp_fn=bc03_slice, resolution=100)
    ref = read_bc03_miles().resample(resolution=100)
    np.testing.assert_allclose(grid.metallicities, sorted(zs))
    np.testing.assert_allclose(grid.lum, ref.lum[:, [0, 2, 4]], rtol=1e-12)
    assert grid.source.startswith("FSPS (bc03+miles")
