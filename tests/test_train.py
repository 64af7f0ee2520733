"""Training with Ray Train (1 and 2 workers), resume from checkpoint, and the model artifact."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from sedflow.posterior import DEFAULT_ARCH, ArtifactError, default_model_path, load_model, x_names
from sedflow.sps.photometry import BANDS
from sedflow.prior import PARAM_NAMES
from sedflow.simulate import SimulationConfig, run_simulation
from sedflow.train import calibrate, calibration_moments, train


@pytest.fixture(scope="module")
def sims(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("train_sims")
    run_simulation(out, SimulationConfig(n=6000, shards=3, seed=1), progress=False)
    return out


@pytest.fixture(scope="module")
def trained(sims, tmp_path_factory):
    """Two workers (DDP) for 2 epochs, then the same command resumed to 4 epochs with one worker."""
    out = tmp_path_factory.mktemp("model")
    first = train(sims, out, workers=2, max_epochs=2, batch_size=256)
    second = train(sims, out, workers=1, max_epochs=4, batch_size=256)
    return out, first, second


def test_loss_decreases_and_resume_continues(trained):
    out, first, second = trained
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    assert [h["workers"] for h in first["history"]] == [2, 2]
    # the second run continued from the saved epoch 2 instead of starting over
    assert [h["epoch"] for h in second["history"]] == [1, 2, 3, 4]
    assert second["history"][:2] == first["history"]
    assert [h["workers"] for h in second["history"]][2:] == [1, 1]
    losses = [h["val_loss"] for h in second["history"]]
    assert losses[-1] < losses[0] - 0.3
    assert second["history"][-1]["train_loss"] < second["history"][0]["train_loss"]
    assert json.loads((out / "metrics.json").read_text()) == second["history"]


def test_artifact_round_trip(trained, sims):
    out, _, second = trained
    post = load_model(out)
    cfg = post.config
    assert cfg["format_version"] == 2 and cfg["architecture"]["name"] == DEFAULT_ARCH
    assert cfg["bands"] == list(BANDS) and cfg["filters"] == [f"sdss2010-{b}" for b in BANDS]
    assert cfg["sed_model"]["filters"] == cfg["filters"] and cfg["sed_model"]["z_range"] == [0.0, 0.2]
    assert cfg["training_data"]["rows"] == 6000 and len(cfg["training_data"]["manifest_sha256"]) == 64
    assert cfg["noise_model"]["kind"] == "sedflow.NoiseModel" and cfg["prior"]["names"] == list(PARAM_NAMES)
    assert cfg["training"]["best_epoch"] == second["best_epoch"]
    # the flow's coordinates: the probit map, standard normal under the prior (sedflow.prior)
    assert cfg["prior"]["unconstrained"] == "probit" and post.prior.unconstrained == "probit"
    np.testing.assert_allclose(post.u_std[1:], 1.0, atol=0.1)        # logM*'s is narrowed by the flux cuts
    with pytest.raises(ValueError, match="other data or seed"):     # not resumed in other coordinates
        train(sims, out, workers=1, max_epochs=5, batch_size=256, unconstrained="logit")
    t = pq.read_table(sorted(sims.glob("shard-*.parquet"))[0]).to_pandas().iloc[:4]
    x = t[list(x_names(BANDS))].to_numpy()
    theta = post.sample(x, 500, seed=3)
    assert theta.shape == (4, 500, 12)
    assert post.prior.in_support(theta.reshape(-1, 12)).all()
    np.testing.assert_array_equal(theta, post.sample(x, 500, seed=3))          # seeded
    assert not np.array_equal(theta, post.sample(x, 500, seed=4))
    lp = post.log_prob(t[list(PARAM_NAMES)].to_numpy(), x)
    assert lp.shape == (4,) and np.all(np.isfinite(lp))
    outside = t[list(PARAM_NAMES)].to_numpy().copy()
    outside[:, 0] = 13.0
    assert np.all(post.log_prob(outside, x) == -np.inf)
    with pytest.raises(ValueError, match="shape"):
        post.sample(x[:, :10], 10)
    bad = x.copy()
    bad[0, 6] = 0.0   # mag_err 0
    with pytest.raises(ValueError, match="mag_err"):
        post.sample(bad, 10)


def test_log_prob_is_a_normalised_density(trained):
    """Monte Carlo: E_q[1] over theta ~ q, via importance sampling from the prior, is ~1."""
    out, _, _ = trained
    post = load_model(out)
    x = np.array([18.5, 17.2, 16.6, 16.3, 16.1, 0.06, 0.021, 0.02, 0.021, 0.032, 0.08])
    theta = post.prior.sample(200000, seed=0)
    w = np.exp(post.log_prob(theta, x) - post.prior.log_prob(theta))
    assert w.mean() == pytest.approx(1.0, abs=0.15)


def test_tampered_and_incompatible_artifacts_are_refused(trained, tmp_path):
    out, _, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("ray_train"))
    load_model(copy)
    raw = bytearray((copy / "weights.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupted or was modified"):
        load_model(copy)
    shutil.copy(out / "weights.safetensors", copy / "weights.safetensors")
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "format_version": 3}))
    with pytest.raises(ArtifactError, match="format 3"):
        load_model(copy)
    (copy / "config.json").write_text(json.dumps({**cfg, "architecture": {**cfg["architecture"],
                                                  "kwargs": {**cfg["architecture"]["kwargs"], "hidden_features": [32, 32]}}}))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_model(copy)
    (copy / "config.json").write_text(json.dumps({**cfg, "bands": cfg["bands"][:4]}))
    with pytest.raises(ArtifactError, match="inconsistent"):
        load_model(copy)
    (copy / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        load_model(copy)
    with pytest.raises(ArtifactError, match="not a sedflow model"):
        load_model(tmp_path)


def test_log_magnitude_model_refuses_non_detections_and_missing_bands(trained):
    """A model with SEDflow's log-magnitude inputs has no way to take f <= 0 or a missing band:
    such rows are bad input (not sampled), flagged, never dropped."""
    import pandas as pd

    from sedflow.infer import infer_frame, load_models

    post, sed = load_models(trained[0])
    assert post.inputs.kind == "mag"
    flux = np.tile([40.0, 92.0, 130.0, 157.0, 177.0], (3, 1))
    flux[1, 0], flux[2, 1] = -2.0, np.nan
    frame = pd.DataFrame({"id": np.arange(3), "z": 0.05, **{f"flux_{b}": flux[:, j] for j, b in enumerate(BANDS)},
                          **{f"flux_err_{b}": 0.03 * np.abs(flux[:, j]) + 0.1 for j, b in enumerate(BANDS)}})
    t = infer_frame(frame, post, sed, n_samples=20, property_samples=5, seed=0).to_pandas()
    assert list(t["method"]) == ["anpe", "none", "none"] and list(t["flag_bad_input"]) == [False, True, True]
    assert list(t["flag_missing_bands"]) == [0, 0, 2]


def _check_plateau_rule(hist, lr, lr_patience, best=float("inf"), bad=0):
    """Every recorded lr follows ReduceLROnPlateau's rule (factor 1/2, threshold 0) on the recorded
    validation losses, from the given state; returns how often the lr was halved."""
    halvings = 0
    for h in hist:
        assert h["lr"] == pytest.approx(lr), h
        if h["val_loss"] < best:
            best, bad = h["val_loss"], 0
        else:
            bad += 1
        if bad > lr_patience:
            lr, bad, halvings = lr / 2, 0, halvings + 1
    return halvings


def test_lr_is_recorded_and_follows_the_plateau_rule(sims, tmp_path):
    """(trained with bfloat16 hidden layers: it learns, and the artifact records the precision)"""
    hist = train(sims, tmp_path / "m", workers=1, max_epochs=3, batch_size=512, lr=1e-3, lr_patience=1,
                 precision="bfloat16")["history"]
    _check_plateau_rule(hist, 1e-3, 1)
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert load_model(tmp_path / "m").config["training"]["precision"] == "bfloat16"


def _cosine_lr(lr, epoch, max_epochs):
    """CosineAnnealingLR's lr in (1-based) ``epoch``."""
    return lr * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / max_epochs))


def test_cosine_schedule_anneals_over_max_epochs(sims, tmp_path):
    """(with fresh noise every epoch: the option is recorded, and a run is not resumed without it)"""
    hist = train(sims, tmp_path / "m", workers=1, max_epochs=3, batch_size=512, lr=1e-3,
                 lr_schedule="cosine", renoise=True)["history"]
    assert [h["lr"] for h in hist] == pytest.approx([1e-3, 7.5e-4, 2.5e-4])
    assert load_model(tmp_path / "m").config["training"]["renoise"] is True
    assert np.isfinite([h["val_loss"] for h in hist]).all()
    with pytest.raises(ValueError, match="other data or seed"):
        train(sims, tmp_path / "m", workers=1, max_epochs=4, batch_size=512, lr_schedule="cosine")
    # a cosine schedule's length is part of the run: a longer one is refused, not silently kept at 3
    with pytest.raises(ValueError, match="max_epochs 3 [(]now 4[)]"):
        train(sims, tmp_path / "m", workers=1, max_epochs=4, batch_size=512, lr=1e-3, lr_schedule="cosine",
              renoise=True)


def test_renoised_observations_follow_the_simulation(sed_model, prior):
    """Each epoch's new noise draw (`renoise`) is distributed as the simulation's own: the same feature
    means (paired, within 4 standard errors) and spreads, every row inside the simulation's cuts, new
    values for (nearly) every row, reproducible from the generator."""
    from sedflow.noise import NoiseModel
    from sedflow.posterior import InputLayout
    from sedflow.simulate import simulate_rows
    from sedflow.train import renoise, renoised_features

    noise = NoiseModel.default()
    settings = {"noise_model": noise.to_dict(), "reported_errors": "observed", "noise_envelope": (0.5, 20.0),
                "min_detected": 3}
    cols, _ = simulate_rows(sed_model, noise, prior, 4000, np.random.default_rng(2), z_max=0.2,
                            noise_envelope=(0.5, 20.0), min_detected=3)
    flux_true, flux, err = (np.column_stack([cols[f"{k}_{b}"] for b in BANDS]) for k in ("flux_true", "flux", "flux_err"))
    new_flux, new_err = renoise(flux_true, flux, err, settings, np.random.default_rng(5))
    again = renoise(flux_true, flux, err, settings, np.random.default_rng(5))
    np.testing.assert_array_equal(new_flux, again[0])
    assert np.mean(new_flux[:, 2] != flux[:, 2]) > 0.98        # the rest rarely pass the cuts: their own draw
    lo, hi = noise.flux_range[:, 0], noise.flux_range[:, 1]
    assert np.all(((new_flux >= lo) & (new_flux <= hi)).sum(axis=1) >= 3) and np.all(new_flux <= hi)
    layout = InputLayout(BANDS, "asinh", tuple(1.042 * noise.faint_flux_error()))
    stored = layout.features(layout.observables(flux, err, cols["z"]))
    new = renoised_features(flux_true, flux, err, cols["z"], settings, layout, 0.0, np.random.default_rng(5))
    for j in range(2 * len(BANDS)):                     # asinh mags and their errors
        d = new[:, j] - stored[:, j]
        assert abs(d.mean()) < 4 * d.std() / np.sqrt(len(d)), layout.names[j]
        assert new[:, j].std() == pytest.approx(stored[:, j].std(), rel=0.03), layout.names[j]


def test_shipped_model_lr_schedule_followed_the_rule():
    """The shipped model's recorded history obeys the lr schedule it records (MODEL_CARD.md):
    cosine annealing over max_epochs, or the plateau rule (a run begun at a constant lr and
    resumed with the schedule, epochs without a recorded lr first, has the schedule take over
    from that run's best epoch)."""
    cfg = json.loads((default_model_path() / "config.json").read_text())
    hist, training = cfg["metrics"], cfg["training"]
    if training["lr_schedule"].startswith("CosineAnnealingLR"):
        assert [h["lr"] for h in hist] == pytest.approx(
            [_cosine_lr(training["lr"], h["epoch"], training["max_epochs"]) for h in hist])
        assert len(hist) == training["epochs"] and hist[-1]["lr"] < 0.01 * training["lr"]
        return
    before = [h for h in hist if "lr" not in h]
    scheduled = hist[len(before):]
    assert scheduled and all("lr" in h for h in scheduled) and training["lr_patience"] > 0
    best, bad = float("inf"), 0
    if before:
        best_h = min(before, key=lambda h: h["val_loss"])
        best, bad = best_h["val_loss"], before[-1]["epoch"] - best_h["epoch"]
    halvings = _check_plateau_rule(scheduled, training["lr"], training["lr_patience"], best=best, bad=bad)
    assert halvings >= 1


def test_bad_training_requests(sims, tmp_path):
    with pytest.raises(ValueError, match="unknown architecture"):
        train(sims, tmp_path / "m", arch="transformer")
    with pytest.raises(FileNotFoundError, match="no simulation shards"):
        train(tmp_path, tmp_path / "m")
    with pytest.raises(ValueError, match="never finite"):
        train(sims, tmp_path / "diverged", workers=1, max_epochs=2, batch_size=512, lr=1e3)
    with pytest.raises(ValueError, match="lr_patience"):
        train(sims, tmp_path / "m", lr_patience=-1)
    with pytest.raises(ValueError, match="lr_schedule"):
        train(sims, tmp_path / "m", lr_schedule="step")
    with pytest.raises(ValueError, match="unconstrained"):
        train(sims, tmp_path / "m", unconstrained="tanh")
    with pytest.raises(ValueError, match="precision must be"):
        train(sims, tmp_path / "m", precision="float16")
    with pytest.raises(ValueError, match="bfloat16 training needs a realnvp"):
        train(sims, tmp_path / "m", arch="coupling", precision="bfloat16")


def test_every_architecture_builds_samples_and_scores():
    """Each `--arch` gives a flow over the 11 unconstrained coordinates with finite log densities."""
    import torch

    from sedflow.posterior import ARCHITECTURES, build_estimator

    for arch in ARCHITECTURES:
        net = build_estimator(arch, n_x=13)                   # e.g. six bands: 6 mags, 6 errors, z
        with torch.no_grad():
            cond = torch.zeros(2, 13)
            draws = net.sample((4,), condition=cond)
            assert draws.shape == (4, 2, 11), arch
            assert torch.isfinite(net.log_prob(draws, cond)).all(), arch


def test_photoz_training_infers_redshift(sims, tmp_path):
    """--infer-redshift: theta gains z (uniform prior on the simulated range), x loses it; the flow's
    density over (theta, z) is normalised, and a run of the other kind is not resumed into its --out."""
    out = tmp_path / "pz"
    train(sims, out, workers=1, max_epochs=2, batch_size=256, infer_redshift=True)
    post = load_model(out)
    assert post.kind == "photoz" and post.names == tuple(PARAM_NAMES) + ("z",)
    assert post.x_names == tuple(x_names(BANDS)[:-1]) and post.prior.z_range == (0.0, 0.2)
    assert post.config["theta_names"][-1] == "z" and "z_range" not in post.config["ood"]
    t = pq.read_table(sorted(sims.glob("shard-*.parquet"))[0]).to_pandas().iloc[:3]
    x = t[list(post.x_names)].to_numpy()
    theta = post.sample(x, 400, seed=1)
    assert theta.shape == (3, 400, 13) and np.all((theta[..., -1] > 0) & (theta[..., -1] <= 0.2))
    # importance estimate of the integral of q(theta, z | x) over the prior box: ~1
    draws = post.prior.sample(100000, seed=4)
    w = np.exp(post.log_prob(draws, x[0]) - post.prior.log_prob(draws))
    assert w.mean() == pytest.approx(1.0, abs=0.2)
    with pytest.raises(ValueError, match="other data or seed"):
        train(sims, out, workers=1, max_epochs=3, batch_size=256)       # a spec-z run into a photo-z --out
    # the calibration fine-tune ranks z with the SED parameters (PriorWithRedshift's torch map)
    s = calibrate(out, sims, tmp_path / "pz_cal", steps=4, batch_size=256, rank_rows=32, draws=16,
                  progress=False)
    assert len(s["moments"]["z"]) == 6 and load_model(tmp_path / "pz_cal").kind == "photoz"


def test_calibration_moments_vanish_for_a_calibrated_posterior(trained, sims):
    """Truths drawn from the flow itself are calibrated by construction: every rank moment is ~0 (a
    few standard errors of 3,000 rows). Truths shifted up, or spread wider than the posterior, give
    the location or the spread moments their sign; the moments carry gradients to the flow."""
    import torch

    post = load_model(trained[0], precision="float32")
    t = pq.read_table(sorted(sims.glob("shard-*.parquet"))[0]).to_pandas().iloc[:3000]
    x = post._x_tensor(t[list(post.x_names)].to_numpy())
    mean, std = (torch.tensor(a, dtype=torch.float32) for a in (post.u_mean, post.u_std))

    def to_theta(v):
        return post.prior.from_unconstrained_torch(v * std + mean)

    torch.manual_seed(0)
    with torch.no_grad():
        own = post.net.sample((1,), condition=x)[0]           # one draw per galaxy: a calibrated "truth"
        spread = 2 * own - post.net.sample((1,), condition=x)[0]           # sqrt(5) x wider than q
        calibrated = calibration_moments(post.net, own, x, to_theta)
        shifted = calibration_moments(post.net, own + 2.0, x, to_theta)
        wide = calibration_moments(post.net, spread, x, to_theta)
    assert calibrated.shape == (12, 6)
    assert np.abs(calibrated.numpy()).max() < 0.03            # SE of a location moment ~0.005
    increasing = [PARAM_NAMES.index(p) for p in ("logmstar", "beta1", "fburst", "tau_ism", "n_dust")]
    assert np.all(shifted[increasing, 0].numpy() > 0.2)       # truths above the posterior: high ranks
    assert np.all(wide[:, 3].numpy() > 0.03)                  # truths outside it: ranks far from 1/2
    m = calibration_moments(post.net, own[:64], x[:64], to_theta, draws=16)
    (m ** 2).sum().backward()
    grads = [p.grad for p in post.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_calibrate_fine_tunes_into_a_new_artifact(trained, sims, tmp_path):
    """sedflow calibrate: a loadable artifact recording the fine-tune over its base model, new weights,
    a validation loss close to the base's; bad requests are refused."""
    base = load_model(trained[0])
    s = calibrate(trained[0], sims, tmp_path / "cal", steps=20, batch_size=256, rank_rows=64, draws=16,
                  progress=False)
    post = load_model(tmp_path / "cal")
    rec = post.config["calibration"]
    assert rec["steps"] == 20 and rec["base_model"] == base.config["weights_sha256"]
    assert post.config["weights_sha256"] != base.config["weights_sha256"]
    assert set(rec["moments"]) == set(PARAM_NAMES) and np.isfinite(s["val_loss_after"])
    assert abs(s["val_loss_after"] - s["val_loss_before"]) < 0.5
    assert post.config["standardization"] == base.config["standardization"] and post.names == base.names
    with pytest.raises(ValueError, match="steps >= 1"):
        calibrate(trained[0], sims, tmp_path / "bad", steps=0)
    with pytest.raises(ValueError, match="other simulations"):
        calibrate("sdss", sims, tmp_path / "bad")
