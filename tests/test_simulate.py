"""Simulator: schema, cuts, determinism across worker counts, resume after interruption (real Ray)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from sedflow.noise import NoiseModel
from sedflow.prior import PARAM_NAMES, UNCONSTRAINED_NAMES
from sedflow.sps.photometry import BANDS
from sedflow.simulate import SimulationConfig, simulation_schema, run_simulation, shard_counts, shard_path, simulate_rows

CONFIG = SimulationConfig(n=600, shards=2, seed=7)


def shard_bytes(out, config):
    return [shard_path(out, k, config.shards).read_bytes() for k in range(config.shards)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_local):
    """The SED model built from the configuration (filters of the noise model, z range), as the CLI does."""
    out = tmp_path_factory.mktemp("sim_ref")
    summary = run_simulation(out, CONFIG, progress=False)
    return out, summary


def test_schema_and_contents(reference, prior):
    from sedflow.sps.model import SEDModel

    out, summary = reference
    manifest = json.loads((out / "_simulation.json").read_text())
    assert manifest["bands"] == list(BANDS) and manifest["config"]["filters"] == [f"sdss2010-{b}" for b in BANDS]
    sed_model = SEDModel.from_description(manifest["sed_model"])      # the model the shards were made with
    assert sed_model.z_range == (0.0, 0.2)
    assert manifest["sed_model"]["nebular"]["logu"] == -2.0 and sed_model.nebular is not None   # on by default
    assert summary["complete"] and summary["rows"] == 600
    table = pq.read_table(shard_path(out, 0, 2))
    assert table.schema.remove_metadata().equals(simulation_schema(BANDS).remove_metadata())
    names = table.column_names
    assert names[:12] == list(PARAM_NAMES) and names[12:23] == list(UNCONSTRAINED_NAMES) and names[23] == "z"
    for b in "ugriz":
        for q in ("flux_true", "flux", "flux_err", "mag", "mag_err"):
            assert f"{q}_{b}" in names
    assert names[-2:] == ["shard", "row"]
    d = table.to_pandas()
    assert len(d) == 300 and (d["shard"] == 0).all() and (d["row"] == np.arange(300)).all()
    theta = d[list(PARAM_NAMES)].to_numpy()
    assert prior.in_support(theta).all()
    np.testing.assert_allclose(prior.from_unconstrained(d[list(UNCONSTRAINED_NAMES)].to_numpy()), theta, atol=1e-9)
    # the stored noiseless flux is the SED model's; mags and their errors follow from the noisy flux
    np.testing.assert_allclose(d[[f"flux_true_{b}" for b in "ugriz"]].to_numpy(),
                               sed_model.photometry(theta, d["z"].to_numpy()), rtol=1e-10)
    np.testing.assert_allclose(d["mag_r"], 22.5 - 2.5 * np.log10(d["flux_r"]))
    np.testing.assert_allclose(d["mag_err_r"], 1.0857362 * d["flux_err_r"] / d["flux_r"], rtol=1e-6)
    assert ((d["z"] > 0) & (d["z"] <= 0.2)).all()


def test_cuts_are_counted(reference):
    out, summary = reference
    c = [shard_counts(shard_path(out, k, 2)) for k in range(2)]
    for cc in c:
        assert cc["drawn"] == cc["kept"] + cc["cut_sigma_nonpositive"] + cc["cut_flux_range"] + cc["unused"]
        assert cc["kept"] == 300
    assert summary["drawn"] == sum(cc["drawn"] for cc in c)
    assert summary["cut_flux_range"] > 0


def test_cuts_remove_exactly_the_rows_outside(sed_model, prior):
    """Redo one batch by hand with the same random stream and count the cuts independently."""
    noise = NoiseModel.default()
    cols, counts = simulate_rows(sed_model, noise, prior, 50, np.random.default_rng(3), batch=1024)
    lo, hi = noise.flux_range[:, 0], noise.flux_range[:, 1]
    flux = np.column_stack([cols[f"flux_{b}"] for b in "ugriz"])
    assert np.all((flux >= lo) & (flux <= hi))
    rng = np.random.default_rng(3)
    theta = prior.sample(1024, seed=rng)
    z = 0.2 - 0.2 * rng.uniform(size=1024)
    ft = sed_model.photometry(theta, z)
    sig, ok = noise.sample_mag_err(22.5 - 2.5 * np.log10(ft), rng)
    f = ft + sig * ft / 1.0857362 * rng.standard_normal(ft.shape)
    inside = np.all((f >= lo) & (f <= hi), axis=1)
    assert counts["drawn"] == 1024
    assert counts["cut_sigma_nonpositive"] == (~ok).sum()
    assert counts["cut_flux_range"] == (ok & ~inside).sum()
    np.testing.assert_allclose(cols["logmstar"], theta[ok & inside][:50, 0])


def test_stellar_only_simulation_from_the_cli(ray_local, tmp_path):
    """`sedflow simulate --no-nebular`: the manifest says so and the noiseless fluxes are the
    stellar-only model's, fainter than with nebular emission (never brighter)."""
    from sedflow.cli import main
    from sedflow.sps.model import SEDModel

    out = tmp_path / "stellar"
    assert main(["simulate", "--n", "200", "--shards", "1", "--seed", "3", "--out", str(out), "--no-nebular",
                 "--quiet"]) == 0
    manifest = json.loads((out / "_simulation.json").read_text())
    assert manifest["config"]["nebular_logu"] is None and "nebular" not in manifest["sed_model"]
    assert manifest["config"]["reported_errors"] == "observed"       # no envelope: errors from the observed flux
    d = pq.read_table(shard_path(out, 0, 1)).to_pandas()
    theta, z = d[list(PARAM_NAMES)].to_numpy(), d["z"].to_numpy()
    true = d[[f"flux_true_{b}" for b in BANDS]].to_numpy()
    np.testing.assert_allclose(true, SEDModel(z_max=0.2, nebular_logu=None).photometry(theta, z), rtol=1e-10)
    assert np.all(SEDModel(z_max=0.2).photometry(theta, z) >= true * (1 - 1e-12))


def test_the_cli_reports_the_noise_sigma_when_given_an_envelope(ray_local, tmp_path):
    """With --noise-envelope, `sedflow simulate` reports each error as the noise's own sigma (the
    convention whose likelihood is the catalog's, `test_with_the_noise_envelope_true_errors_...`)
    unless told otherwise."""
    from sedflow.cli import main

    common = ["--n", "100", "--shards", "1", "--seed", "3", "--noise-envelope", "0.5", "20", "--quiet"]
    for extra, expected in (([], "true"), (["--reported-errors", "observed"], "observed")):
        out = tmp_path / expected
        assert main(["simulate", *common, "--out", str(out), *extra]) == 0
        assert json.loads((out / "_simulation.json").read_text())["config"]["reported_errors"] == expected
    same = [pq.read_table(shard_path(tmp_path / c, 0, 1)).to_pandas() for c in ("true", "observed")]
    np.testing.assert_array_equal(same[0]["flux_u"], same[1]["flux_u"])        # the same draws, other errors
    assert not np.allclose(same[0]["flux_err_u"], same[1]["flux_err_u"])


def test_identical_files_whatever_the_number_of_workers(reference, tmp_path):
    out, _ = reference
    one = tmp_path / "one_worker"
    run_simulation(one, CONFIG, workers=1, progress=False)
    assert shard_bytes(one, CONFIG) == shard_bytes(out, CONFIG)


def test_interrupted_run_resumes_to_the_same_rows(reference, tmp_path):
    out, _ = reference
    part = tmp_path / "part"
    s1 = run_simulation(part, CONFIG, workers=1, stop_after=1, progress=False)
    assert s1["shards_complete"] == 1 and not s1["complete"]
    (part / ".shard-00001-of-00002.parquet.tmp999").write_bytes(b"half-written")   # a killed writer's leftover
    s2 = run_simulation(part, CONFIG, progress=False)
    assert s2["complete"] and s2["shards_skipped"] == 1 and s2["shards_written_now"] == 1
    assert shard_bytes(part, CONFIG) == shard_bytes(out, CONFIG)
    assert not list(part.glob(".shard-*"))


def test_killed_process_then_rerun(reference, tmp_path):
    """Kill `sedflow simulate` (and its local Ray) hard mid-run; the rerun completes the same rows."""
    out, _ = reference
    target = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sedflow.cli", "simulate", "--n", "600", "--shards", "2", "--seed", "7",
           "--out", str(target), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not shard_path(target, 0, 2).exists() and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (target / "_summary.json").exists() or shard_path(target, 1, 2).exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shard_bytes(target, CONFIG) == shard_bytes(out, CONFIG)


def test_reported_errors_do_not_give_away_the_noise_draw(sed_model, prior):
    """The flow sees mag_err; it must not tell the noise realisation f_true / f_obs. Reported from the
    observed flux (default), mag_err is the drawn sigma_mag, unrelated to the draw; reported from the
    noiseless flux ("true", the first simulations' convention) it predicts the draw almost exactly
    in the floor-dominated bands. Both conventions draw the same noise."""
    noise = NoiseModel.default()
    obs, _ = simulate_rows(sed_model, noise, prior, 6000, np.random.default_rng(5))
    true, _ = simulate_rows(sed_model, noise, prior, 6000, np.random.default_rng(5), reported_errors="true")
    np.testing.assert_array_equal(obs["flux_r"], true["flux_r"])

    def leak(cols, b):
        draw = cols[f"flux_true_{b}"] / cols[f"flux_{b}"]
        bright = cols[f"mag_{b}"] < np.percentile(cols[f"mag_{b}"], 30)
        return abs(np.corrcoef(cols[f"mag_err_{b}"][bright], draw[bright])[0, 1])

    for b in "griz":
        assert leak(obs, b) < 0.1, b
        assert leak(true, b) > 0.8, b
    # observed convention: the reported relative error is sigma_mag itself
    np.testing.assert_allclose(obs["mag_err_r"], 1.0857362 * obs["flux_err_r"] / obs["flux_r"], rtol=1e-6)
    with pytest.raises(ValueError, match="reported_errors"):
        simulate_rows(sed_model, noise, prior, 10, 0, reported_errors="model")


def test_with_the_noise_envelope_true_errors_are_the_catalog_likelihoods(sed_model, prior):
    """The shipped settings (envelope, faint-end cut): errors reported as the noise's own sigma make
    Eq. 1 of Hahn & Melchior (2022), a Gaussian of sigma = flux_err, the noise the flux was drawn
    with (pulls N(0, 1), up to the flux-range cut); reported from the observed flux they do not (the
    noise there scales with f_true, not with the reported f_obs: heavy tails where S/N is low)."""
    noise = NoiseModel.default()

    def pulls(convention):
        cols, _ = simulate_rows(sed_model, noise, prior, 6000, np.random.default_rng(5), reported_errors=convention,
                                noise_envelope=(0.5, 20.0), min_detected=3)
        return np.array([(cols[f"flux_{b}"] - cols[f"flux_true_{b}"]) / cols[f"flux_err_{b}"] for b in noise.bands])

    true, observed = pulls("true"), pulls("observed")
    np.testing.assert_allclose(true.std(axis=1), 1.0, atol=0.05)
    assert np.all(np.mean(np.abs(true) > 3, axis=1) < 0.006)             # N(0, 1): 0.27%
    assert observed.std(axis=1).max() > 2 and np.mean(np.abs(observed[0]) > 3) > 0.02


def test_other_configuration_in_same_directory_is_refused(reference, sed_model):
    out, _ = reference
    with pytest.raises(ValueError, match="other settings"):
        run_simulation(out, SimulationConfig(n=600, shards=2, seed=8), model=sed_model, progress=False)


@pytest.mark.parametrize("config, match", [
    (SimulationConfig(n=0, shards=1), "shards"),
    (SimulationConfig(n=10, shards=20), "shards"),
    (SimulationConfig(n=10, shards=1, z_max=0.9), "z_max"),
    (SimulationConfig(n=10, shards=1, reported_errors="exact"), "reported_errors"),
])
def test_bad_configuration(tmp_path, sed_model, config, match):
    with pytest.raises(ValueError, match=match):
        run_simulation(tmp_path, config, model=sed_model, progress=False)
