"""`sedflow validate` end to end at toy sizes: every section of the report is produced and
its numbers are consistent (the metric code itself is tested on known answers in
test_diagnostics.py)."""

import json
import shutil

import numpy as np
import pytest
from astropy.table import Table

from conftest import shared_path
from sedflow.posterior import default_model_path, load_model
from sedflow.prior import PARAM_NAMES
from sedflow.sps.model import PROPERTY_NAMES
from sedflow.validate import held_out_simulations, repeated_calibration, truth_draw, validate


@pytest.fixture(scope="module")
def nsa60(tmp_path_factory):
    """The first 60 NSA rows, as a small real catalog for the report's real-data section."""
    path = tmp_path_factory.mktemp("nsa") / "nsa60.fits"
    nsa = Table.read(shared_path("nsa_lcs", "nsa_v0_1_2_lcs_subset.fits"), hdu=1)[:60]
    nsa[["NSAID", "RA", "DEC", "Z", "NMGY", "NMGY_IVAR", "EXTINCTION"]].write(path)
    return path


def test_validate_writes_every_section(tmp_path, ray_local, nsa60):
    out = tmp_path / "report"
    m = validate(out, n_test=60, n_samples=200, n_mcmc=2, catalog=nsa60, reference="zeus",
                 mcmc_options={"n_walkers": 24, "n_steps": 60, "burn_in": 20}, repeat_sets=2)
    assert {"calibration", "calibration_repeated", "mcmc", "real_data"} <= set(m)
    assert m["calibration_repeated"]["pooled"]["n"] == 120
    assert "## Calibration on more held-out sets" in (out / "report.md").read_text()
    assert set(m["calibration"]["parameters"]) == set(PARAM_NAMES)
    # a calibrated posterior passes the SBC test (12 KS p > 0.01) ~89% of the time, but on 60
    # galaxies its p-p deviation is ~0.11 (0.83 / sqrt(60)), never below the 0.05 threshold
    null = m["calibration"]["calibrated_pass_rates"]
    assert null["n_replicates"] == 200 and null["sets"]["all"]["sbc"] > 0.75
    assert null["sets"]["all"]["pp"] == 0 and null["every"] == 0
    assert "every test at once 0%" in (out / "report.md").read_text()
    truths = m["calibration"]["truths"]
    assert truths["n_reference"] == 600 and set(truths["parameters"]) == set(PARAM_NAMES)
    assert "| truths KS p | width / prior |" in (out / "report.md").read_text()
    assert set(m["calibration"]["derived"]["parameters"]) == set(PROPERTY_NAMES)
    assert set(m["calibration_repeated"]["derived"]["pooled"]["parameters"]) == set(PROPERTY_NAMES)
    assert "### Derived properties" in (out / "report.md").read_text()
    mc = m["mcmc"]
    assert mc["n"] == 2 and len(mc["galaxies"]) == 2
    offsets = np.array(list(mc["median_abs_offset_over_sigma"].values()))
    assert offsets.shape == (12,) and np.all(np.isfinite(offsets)) and np.all(offsets >= 0)
    halves = np.array(list(mc["median_reference_noise_over_sigma"].values()))
    assert halves.shape == (12,) and np.all(np.isfinite(halves)) and np.all(halves >= 0)
    assert "two halves (in iterations)" in (out / "report.md").read_text()
    # 60 steps cannot pass the convergence rule (50 x tau): the report must say so, not hide it
    assert mc["converged"] == 0 and all(g["seconds"] > 0 for g in mc["galaxies"])
    for name in ("pp.png", "sbc_ranks.png", "tarp.png", "anpe_vs_mcmc.png", "real_chi2.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text())["mcmc"]["n"] == 2


def test_validate_reuses_mcmc_chains_across_models_and_reruns(tmp_path, ray_local, nsa60):
    """The chains depend on the galaxy and sampler settings only: a second report (any model) on
    the same galaxies reads them back instead of rerunning zeus; other settings rerun it."""
    opts = {"n_walkers": 24, "n_steps": 40, "burn_in": 10}
    chains = tmp_path / "chains"
    first = validate(tmp_path / "a", n_test=20, n_samples=100, n_mcmc=2, catalog=nsa60, reference="zeus",
                     mcmc_options=opts, mcmc_dir=chains)["mcmc"]
    files = sorted(chains.glob("galaxy-*.parquet"))
    assert [f.name for f in files] == ["galaxy-0000.parquet", "galaxy-0001.parquet"]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = validate(tmp_path / "b", n_test=20, n_samples=100, n_mcmc=2, catalog=nsa60, reference="zeus",
                     mcmc_options=opts, mcmc_dir=chains)["mcmc"]
    assert [f.stat().st_mtime_ns for f in files] == stamps            # read, not rerun
    assert again["galaxies"] == first["galaxies"]
    # the simulator likelihood's chains are files of their own beside them, and another posterior;
    # the shipped model's simulator likelihood is the catalog's (errors reported as the noise's own
    # sigma), so this runs its weights as a model trained on errors from the observed flux
    observed = tmp_path / "observed_model"
    observed.mkdir()
    config = load_model().config
    config["simulation"] = {**config["simulation"], "reported_errors": "observed"}
    (observed / "config.json").write_text(json.dumps(config))
    shutil.copy(default_model_path() / "weights.safetensors", observed)
    sim = validate(tmp_path / "s", model_path=observed, n_test=20, n_samples=100, n_mcmc=2, catalog=nsa60,
                   reference="zeus", mcmc_options=opts, mcmc_dir=chains, likelihood="simulator")["mcmc"]
    assert sim["likelihood"] == "simulator" and [f.stat().st_mtime_ns for f in files] == stamps
    assert sorted(f.name for f in chains.glob("galaxy-*-simulator-likelihood.parquet")) == [
        "galaxy-0000-simulator-likelihood.parquet", "galaxy-0001-simulator-likelihood.parquet"]
    assert sim["median_abs_offset_over_sigma"] != first["median_abs_offset_over_sigma"]
    assert "simulations' likelihood" in (tmp_path / "s" / "report.md").read_text()
    other = validate(tmp_path / "c", n_test=20, n_samples=100, n_mcmc=2, catalog=nsa60, reference="zeus",
                     mcmc_options={**opts, "n_steps": 44}, mcmc_dir=chains)["mcmc"]
    assert [f.stat().st_mtime_ns for f in files] != stamps            # other settings: rerun
    assert [g["seconds"] for g in other["galaxies"]] != [g["seconds"] for g in first["galaxies"]]
    # a damaged chain file is run again, not trusted and not fatal; the good one is still read
    stamp0 = files[0].stat().st_mtime_ns
    files[1].write_bytes(b"not parquet")
    validate(tmp_path / "d", n_test=20, n_samples=100, n_mcmc=2, catalog=nsa60, reference="zeus",
             mcmc_options={**opts, "n_steps": 44}, mcmc_dir=chains)
    assert files[1].read_bytes()[:4] == b"PAR1" and files[0].stat().st_mtime_ns == stamp0


def test_nautilus_reference_converges_and_picks_hard_galaxies(tmp_path, ray_local, nsa60):
    """The nautilus reference reports its convergence and noise, and a fifth of the compared
    galaxies have a non-detection or a missing band when the model takes them."""
    m = validate(tmp_path / "n", n_test=200, n_samples=200, n_mcmc=5, catalog=nsa60, reference="nautilus",
                 mcmc_options={"n_live": 100, "n_eff": 300})["mcmc"]
    assert m["reference"] == "nautilus" and m["n"] == 5 and m["n_hard"] >= 1
    assert m["converged"] == 5 and all(g["n_eff"] >= 0.95 * 300 for g in m["galaxies"])
    noise = np.array(list(m["median_reference_noise_over_sigma"].values()))
    assert np.allclose(noise, noise[0]) and 0 < noise[0] < 0.1         # sqrt(pi/2 / n_eff)


def test_importance_reference_reports_its_sample_size_and_reuses_its_runs(tmp_path, ray_local, nsa60):
    """The importance-sampling reference (the default) runs with a proposal fitted to each galaxy's flow draws
    (stored in the run's request), reports its effective sample sizes and their noise, and a
    second report with the same model reads the runs back."""
    from sedflow.mcmc import read_samples

    opts = {"n_eff": 200, "max_draws": 300_000, "batch": 20_000}
    chains = tmp_path / "chains"
    m = validate(tmp_path / "i", n_test=200, n_samples=500, n_mcmc=2, catalog=nsa60, mcmc_options=opts,
                 mcmc_dir=chains)["mcmc"]
    assert m["reference"] == "importance" and m["n"] == 2
    assert m["min_n_eff"] == min(g["n_eff"] for g in m["galaxies"]) > 0
    assert m["converged"] == sum(g["n_eff"] >= 200 for g in m["galaxies"])
    noise = np.array(list(m["median_reference_noise_over_sigma"].values()))
    assert np.all((noise > 0) & (noise < 1))
    assert "smallest effective sample size" in (tmp_path / "i" / "report.md").read_text()
    files = sorted(chains.glob("galaxy-*.parquet"))
    samples, meta = read_samples(files[0])
    assert meta["sampler"] == "importance" and len(meta["request"]["options"]["proposal"]["mean"]) == 11
    assert samples.shape == (20_000, 12)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = validate(tmp_path / "j", n_test=200, n_samples=500, n_mcmc=2, catalog=nsa60, reference="importance",
                     mcmc_options=opts, mcmc_dir=chains)["mcmc"]
    assert [f.stat().st_mtime_ns for f in files] == stamps and again["galaxies"] == m["galaxies"]


def test_simulator_likelihood_needs_simulations_with_sky_limited_observed_errors():
    """The reference's simulator likelihood comes from the model's own noise model and settings, and is
    refused for simulations whose errors do not follow it."""
    from sedflow.noise import NoiseModel
    from sedflow.validate import reference_sky_flux

    shipped = load_model().config
    config = {**shipped, "simulation": {**shipped["simulation"], "reported_errors": "observed"}}
    np.testing.assert_allclose(reference_sky_flux(config), NoiseModel.default().sky_limited_flux())
    for change in ({"min_detected": None}, {"reported_errors": "true"}):
        with pytest.raises(ValueError, match="simulator likelihood"):
            reference_sky_flux({**config, "simulation": {**config["simulation"], **change}})


def test_reference_galaxies_take_a_fifth_hard_ones():
    from sedflow.validate import reference_galaxies

    flux = np.ones((100, 5))
    flux[[3, 40, 41, 42, 60, 70, 80, 90, 95, 99], 0] = -0.1        # non-detections
    flux[[50, 51], 2] = np.nan                                     # missing bands
    picked = reference_galaxies({"flux": flux}, 20)
    assert len(picked) == 20 == len(set(picked.tolist()))
    assert np.sum(~np.all(flux[picked] > 0, axis=1)) == 4          # 20 // 5
    assert list(picked[:3]) == [0, 1, 2]                           # otherwise the first ones
    plain = reference_galaxies({"flux": np.ones((30, 5))}, 10)      # none to take: the first 10
    assert plain.tolist() == list(range(10))
    with pytest.raises(ValueError, match="held-out"):
        reference_galaxies({"flux": flux}, 101)


def test_repeated_calibration_pools_independent_sets_and_sees_a_small_bias():
    """Each set is a fresh draw; pooled over the sets the test sees a bias of 0.3 posterior sigma in
    logM* (mean rank ~0.12 low), and the untouched parameters keep their ranks."""
    from sedflow.posterior import load_model

    post = load_model("sdss", "float32")
    sed = post.sed_model()
    honest = repeated_calibration(post, sed, n=150, sets=3, n_samples=200, seed=4)
    seeds = [s["seed"] for s in honest["sets"]]
    assert len(set(seeds)) == 3 and honest["pooled"]["n"] == 450
    first = held_out_simulations(post, sed, 150, seeds[0])["theta"]
    second = held_out_simulations(post, sed, 150, seeds[1])["theta"]
    assert not np.allclose(first, second)
    ranks = {k: v["mean_rank"] for k, v in honest["pooled"]["parameters"].items()}
    assert all(abs(r - 0.5) < 0.06 for r in ranks.values()), ranks
    # each set's lowest parameter with its own truths' test against one reference draw of them
    from scipy.stats import ks_2samp

    reference = held_out_simulations(post, sed, 10 * 150, int(np.random.SeedSequence([4, 0]).generate_state(1)[0]))
    j = list(post.names).index(honest["sets"][0]["lowest_parameter"])
    assert honest["sets"][0]["truths_ks_pvalue"] == pytest.approx(
        ks_2samp(first[:, j], reference["theta"][:, j], method="asymp").pvalue)
    assert all(0 <= s["truths_ks_pvalue"] <= 1 for s in honest["sets"] + honest["derived"]["sets"])

    sample = post.sample

    def biased(x, n, seed=None, **kw):          # every draw of logM* 0.3 posterior sigma too high
        s = sample(x, n, seed=seed, **kw)
        s[:, :, 0] += 0.3 * s[:, :, 0].std(axis=1, keepdims=True)
        s[:, :, 0] = np.clip(s[:, :, 0], *post.config["prior"]["logmstar"])     # still inside the prior
        return s

    post.sample = biased
    shifted = repeated_calibration(post, sed, n=150, sets=3, n_samples=200, seed=4)
    pooled = shifted["pooled"]["parameters"]
    assert pooled["logmstar"]["mean_rank"] < ranks["logmstar"] - 0.08
    assert pooled["logmstar"]["ks_pvalue"] < 0.01
    assert {k: v["mean_rank"] for k, v in pooled.items() if k != "logmstar"} == \
        {k: v for k, v in ranks.items() if k != "logmstar"}
    # the surviving mass is formed mass x a surviving fraction: the logM* bias carries into it, and
    # into no derived property that does not scale with the mass (metallicity, age)
    derived = {k: v["mean_rank"] for k, v in honest["derived"]["pooled"]["parameters"].items()}
    assert all(abs(r - 0.5) < 0.06 for r in derived.values()), derived
    shifted_derived = shifted["derived"]["pooled"]["parameters"]
    assert shifted_derived["logmstar_surv"]["mean_rank"] < derived["logmstar_surv"] - 0.08
    assert shifted_derived["logz_mw"]["mean_rank"] == derived["logz_mw"]
    assert shifted_derived["tage_mw"]["mean_rank"] == derived["tage_mw"]


def test_truth_draw_tells_an_unusual_set_of_truths_and_how_much_the_data_narrow_the_prior():
    """A set drawn as the simulator draws passes the truths' KS test; the same size of set with only
    its lower half of beta3 does not. Against the prior, logM* posteriors are narrow, the SFH
    weights' nearly the prior (the data barely constrain them: their SBC ranks follow the truths)."""
    post = load_model("sdss", "float32")
    sed = post.sed_model()
    sims = held_out_simulations(post, sed, 400, 11)
    samples = post.sample(sims["x"], 200, seed=11)
    fair = truth_draw(post, sed, sims["theta"], samples, seed=11)
    assert fair["n_reference"] == 4000
    p = {k: v["truths_ks_pvalue"] for k, v in fair["parameters"].items()}
    assert min(p.values()) > 1e-3, p
    width = {k: v["width_over_prior"] for k, v in fair["parameters"].items()}
    assert width["logmstar"] < 0.4 and all(0.8 < width[b] < 1.1 for b in ("beta2", "beta3", "beta4")), width

    big = held_out_simulations(post, sed, 800, 12)
    low = big["theta"][big["theta"][:, 3] < np.median(big["theta"][:, 3])][:400]
    skewed = truth_draw(post, sed, low, samples, seed=11)["parameters"]
    assert skewed["beta3"]["truths_ks_pvalue"] < 1e-6
    assert skewed["logmstar"]["truths_ks_pvalue"] > 1e-3
