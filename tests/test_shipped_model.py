"""The shipped default model: it loads, and it is calibrated on fresh simulations (so a broken
model cannot ship). Full validation (1,000 sims x 10,000 draws) is `sedflow validate`."""

import numpy as np
import pytest

from sedflow.diagnostics import calibration_report
from sedflow.noise import NoiseModel
from sedflow.catalog import CatalogSpec, shipped_specs
from sedflow.posterior import DEFAULT_MODEL, default_model_path, load_model, model_path, shipped_models
from sedflow.validate import held_out_simulations


@pytest.fixture(scope="module")
def post():
    return load_model()


def test_shipped_artifact(post):
    cfg = post.config
    assert default_model_path().is_dir()
    assert sum((default_model_path() / f).stat().st_size for f in ("weights.safetensors", "config.json")) < 20e6
    assert cfg["architecture"]["name"] == "realnvp_deep"
    assert cfg["training_data"]["rows"] >= 1_000_000
    # made for real catalogs: asinh inputs with missing-band flags, trained with band masks, on
    # a broad noise envelope, non-detections and 0 < z <= 0.6
    assert post.inputs.kind == "asinh" and cfg["missing_fraction"] > 0
    sim = cfg["simulation"]
    assert sim["z_max"] == 0.6 and sim["min_detected"] == 3 and sim["noise_envelope"][1] >= 5
    assert cfg["noise_model"] == NoiseModel.default().to_dict()
    # trained on errors reported as the noise's own sigma: with the noise envelope the simulations'
    # likelihood is then the catalog's, a Gaussian of sigma = flux_err (sedflow.simulate.simulate_rows)
    assert cfg["simulation"]["reported_errors"] == "true"
    # and on a new noise draw of every row each epoch (sedflow.train.renoise), not one draw for all
    assert cfg["training"]["renoise"] is True
    x = post.inputs.observables(np.full((2, 5), 10.0), np.ones((2, 5)), [0.1, 0.2])
    assert post.sample(x, 3, seed=0).shape == (2, 3, 12)
    with pytest.raises(ValueError, match="n .draws per galaxy"):
        post.sample(x, 0)


def test_shipped_data_is_found_by_name():
    """Models and catalog descriptions live inside the package (a wheel carries them)."""
    assert DEFAULT_MODEL in shipped_models() and model_path(DEFAULT_MODEL) == default_model_path()
    assert load_model(DEFAULT_MODEL).config["weights_sha256"] == load_model().config["weights_sha256"]
    assert {"nsa", "sdss_kcorrect"} <= set(shipped_specs())
    for name in shipped_specs():
        assert CatalogSpec.load(name).bands


def test_shipped_config_holds_no_path_of_the_training_machine():
    def strings(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    for name in shipped_models():
        config = load_model(name).config
        absolute = [s for s in strings(config) if s.startswith(("/", "~")) or ":\\" in s]
        assert not absolute, (name, absolute)


@pytest.mark.parametrize("name", ["sdss", "photoz"])
def test_shipped_model_is_calibrated_on_fresh_simulations(name):
    """200 held-out simulations drawn exactly as the training set (fresh seed), 1,000 draws each;
    the photo-z model's include z."""
    post = load_model(name)
    sims = held_out_simulations(post, post.sed_model(), 200, seed=20261126)
    truths, x = sims["theta"], sims["x"]
    samples = post.sample(x, 1000, seed=1)
    report = calibration_report(samples, truths, names=list(post.names))
    worst = min(p["sbc_ks_pvalue"] for p in report["parameters"].values())
    dev = max(p["max_pp_deviation"] for p in report["parameters"].values())
    print(f"\nshipped model {name}, 200 sims: min SBC KS p = {worst:.3g}, max p-p deviation = {dev:.3f}")
    assert worst > 1e-3, report["parameters"]
    assert dev < 0.15
    # and it is informative: the stellar-mass posterior is much narrower than the prior; without a
    # redshift less so, as is z's own (measured 0.86 dex and 0.124: prior draws of all 12 parameters
    # make SEDs in which z, mass and dust trade off; real SDSS galaxies get z widths of ~0.06)
    mass_std, z_std = np.median(samples[:, :, 0].std(axis=1)), np.median(samples[:, :, -1].std(axis=1))
    print(f"median posterior std: logM* {mass_std:.3f}" + (f", z {z_std:.3f}" if post.infers_redshift else ""))
    assert mass_std < (0.65 if post.infers_redshift else 0.5) * (5.5 / np.sqrt(12))
    if post.infers_redshift:            # the prior's std: 0.6 / sqrt(12) = 0.17
        assert z_std < 0.8 * (0.6 / np.sqrt(12))
