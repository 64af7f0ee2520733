"""The shipped default model: it loads, and it is calibrated on fresh simulations (so a broken
model cannot ship). Full validation (1,000 sims x 10,000 draws) is `sedflow validate`."""

import numpy as np
import pytest

from sedflow.diagnostics import calibration_report
from sedflow.noise import NoiseModel
from sedflow.catalog import CatalogSpec, shipped_specs
from sedflow.posterior import DEFAULT_MODEL, default_model_path, load_model, model_path, shipped_models
from sedflow.prior import PARAM_NAMES
from sedflow.validate import held_out_simulations


@pytest.fixture(scope="module")
def post():
    return load_model()


def test_shipped_artifact(post):
    cfg = post.config
    assert default_model_path().is_dir()
    assert sum((default_model_path() / f).stat().st_size for f in ("weights.safetensors", "config.json")) < 20e6
    assert cfg["architecture"]["name"] == "realnvp"
    assert cfg["training_data"]["rows"] >= 1_000_000
    # made for real catalogs: asinh inputs with missing-band flags, trained with band masks, on
    # a broad noise envelope, non-detections and 0 < z <= 0.6
    assert post.inputs.kind == "asinh" and cfg["missing_fraction"] > 0
    sim = cfg["simulation"]
    assert sim["z_max"] == 0.6 and sim["min_detected"] == 3 and sim["noise_envelope"][1] >= 5
    assert cfg["noise_model"] == NoiseModel.default().to_dict()
    # trained on errors reported as catalogs report them (sedflow.simulate.simulate_rows), not on
    # the convention that gives the noise draw away
    assert cfg["simulation"]["reported_errors"] == "observed"


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


def test_shipped_model_is_calibrated_on_fresh_simulations(post):
    """200 held-out simulations drawn exactly as the training set (fresh seed), 1,000 draws each."""
    sims = held_out_simulations(post, post.sed_model(), 200, seed=20261126)
    truths, x = sims["theta"], sims["x"]
    samples = post.sample(x, 1000, seed=1)
    report = calibration_report(samples, truths, names=list(PARAM_NAMES))
    worst = min(p["sbc_ks_pvalue"] for p in report["parameters"].values())
    dev = max(p["max_pp_deviation"] for p in report["parameters"].values())
    print(f"\nshipped model, 200 sims: min SBC KS p = {worst:.3g}, max p-p deviation = {dev:.3f}")
    assert worst > 1e-3, report["parameters"]
    assert dev < 0.15
    # and it is informative: the stellar-mass posterior is much narrower than the prior
    assert np.median(samples[:, :, 0].std(axis=1)) < 0.5 * (5.5 / np.sqrt(12))
