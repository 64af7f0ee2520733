"""Train the amortized posterior with Ray Train (Hahn & Melchior 2022, Sec. 2.1, 3.3).

``train(data_dir, out_dir)`` reads the simulator's Parquet shards, fixes a 90/10
train/validation split by seed (per row, independent of the number of workers), computes
the standardisation and out-of-distribution thresholds on the training rows (streaming, one
shard at a time), then runs a Ray Train ``TorchTrainer`` (DDP over gloo, CPU workers; local
Ray when no address is given). Each worker reads only its own rows (row index modulo the
number of workers), shard by shard, so the data never has to fit one worker.

Adam, lr 5e-4, batch 2048 by default, the lr halved whenever the validation loss has not improved
for ``lr_patience`` (5) epochs (torch's ReduceLROnPlateau; 0 keeps it constant), or, with
``lr_schedule="cosine"``, annealed from lr to 0 over ``max_epochs`` (Loshchilov & Hutter 2017,
arXiv:1608.03983; torch's CosineAnnealingLR: a fixed budget ends converged); the loss is the
negative log density of the standardised unconstrained parameters; early stopping when the
validation loss has not improved for ``patience`` (20) epochs, keeping the best epoch. A checkpoint
is reported to Ray Train every epoch; rerunning the same command resumes from the last one (Ray
Train restores the run from ``OUT/ray_train``); a rerun with other data, seed, architecture, lr,
batch size, schedule or precision into the same ``OUT`` is refused (a plateau run may be extended
with a larger ``max_epochs``, a cosine one may not: its length is its schedule). Per-epoch metrics
are printed and written to ``OUT/metrics.json``; the artifact (`sedflow.posterior.save_model`) goes
to ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sedflow.ood import fit_thresholds
from sedflow.posterior import (MIN_VALID_BANDS, ARCHITECTURES, BUILDERS, DEFAULT_ARCH, InputLayout, build_estimator,
                               save_model)
from sedflow.prior import PARAM_NAMES, Prior, PriorWithRedshift, prior_from_dict
from sedflow.sps.photometry import BANDS, SDSS_FILTERS

__all__ = ["train", "calibrate", "calibration_moments", "training_data", "simulation_bands", "input_layout",
           "training_prior", "renoise_settings", "renoise", "renoised_features", "INPUTS", "LR_SCHEDULES"]

INPUTS = ("mag", "asinh")
LR_SCHEDULES = ("plateau", "cosine")
ASINH_SOFTENING_PER_SIGMA = 1.042   # Lupton et al. (1999): the softening that minimises the error at low S/N


def input_layout(manifest: dict, kind: str, redshift: bool = True) -> InputLayout:
    """The x layout for a simulation manifest: log mags, or asinh mags softened at 1.042 x the noise
    model's faint-end flux error per band (Lupton, Gunn & Szalay 1999); without z for a photo-z model."""
    bands = simulation_bands(manifest)[0]
    if kind == "mag":
        return InputLayout(bands, redshift=redshift)
    from sedflow.noise import NoiseModel

    noise = NoiseModel.from_dict(manifest["noise_model"])
    return InputLayout(bands, "asinh", tuple(ASINH_SOFTENING_PER_SIGMA * noise.faint_flux_error()), redshift)


def training_prior(manifest: dict, infer_redshift: bool, unconstrained: str = "probit") -> Prior | PriorWithRedshift:
    """The prior the simulations were drawn from, mapped to the flow's coordinates by ``unconstrained``
    (`sedflow.prior`); for a photo-z model with the simulated redshift range's uniform z
    (`simulate_rows` draws z uniformly on (z_min, z_max])."""
    prior = (Prior.from_dict(manifest["prior"]) if manifest.get("prior") else Prior()).with_unconstrained(unconstrained)
    if not infer_redshift:
        return prior
    sim = manifest.get("config") or {}
    return PriorWithRedshift(prior, (sim.get("z_min", 0.0), sim.get("z_max", 0.2)))


def mask_bands(flux: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Training augmentation for missing bands: a copy of ``flux`` in which ``fraction`` of the rows
    lose 1 or 2 random bands (set NaN), always keeping `MIN_VALID_BANDS`."""
    n, nb = flux.shape
    lose = np.minimum(rng.integers(1, 3, n), max(nb - MIN_VALID_BANDS, 0)) * (rng.uniform(size=n) < fraction)
    rank = np.argsort(np.argsort(rng.uniform(size=(n, nb)), axis=1), axis=1)    # a random order of the bands
    out = flux.copy()
    out[rank < lose[:, None]] = np.nan
    return out


def simulation_bands(manifest: dict) -> tuple[tuple, tuple]:
    """(bands, filters) of a simulation manifest (older manifests: SDSS ugriz)."""
    bands = tuple(manifest.get("bands") or BANDS)
    filters = tuple((manifest.get("config") or {}).get("filters") or (manifest.get("sed_model") or {}).get("filters")
                    or SDSS_FILTERS)
    return bands, filters


# ---------------------------------------------------------------------- data
def training_data(data_dir) -> tuple[list[Path], dict, dict]:
    """Shard paths, the simulation manifest and a fingerprint (rows + sha256 of the shard manifest;
    the directory by its name only, so an artifact carries no path of the machine it was trained on)."""
    import pyarrow.parquet as pq

    data_dir = Path(data_dir)
    shards = sorted(data_dir.glob("shard-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no simulation shards (shard-*.parquet) in {data_dir}")
    manifest_path = data_dir / "_simulation.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    listing = []
    bands = simulation_bands(manifest)[0]
    columns = list(PARAM_NAMES) + [f"flux_{b}" for b in bands] + [f"flux_err_{b}" for b in bands] + ["z"]
    for p in shards:
        md = pq.read_metadata(p)
        missing = [c for c in columns if c not in md.schema.names]
        if missing:
            raise ValueError(f"{p} lacks columns {missing}: not a sedflow simulation shard")
        listing.append({"file": p.name, "rows": md.num_rows, "bytes": p.stat().st_size})
    digest = hashlib.sha256(json.dumps({"manifest": manifest, "shards": listing}, sort_keys=True).encode()).hexdigest()
    return shards, manifest, {"rows": sum(s["rows"] for s in listing), "shards": len(listing),
                              "manifest_sha256": digest, "directory_name": data_dir.resolve().name}


def _read_shard(path, k: int, seed: int, val_fraction: float, layout: InputLayout, missing_fraction: float = 0.0,
                prior: dict | None = None):
    """(u, x features, is_validation) of one shard; the split and the band masks depend on (seed, shard) only.
    u is the training prior's (``prior``, `Prior.to_dict`) unconstrained map of the shard's theta; for a
    photo-z prior (`PriorWithRedshift`) with the redshift's coordinate last."""
    import pyarrow.parquet as pq

    prior = prior_from_dict(prior) if prior else Prior()
    fc, ec = [f"flux_{b}" for b in layout.bands], [f"flux_err_{b}" for b in layout.bands]
    t = pq.read_table(path, columns=list(PARAM_NAMES) + fc + ec + ["z"])
    theta = np.column_stack([t.column(c).to_numpy() for c in PARAM_NAMES])
    flux = np.column_stack([t.column(c).to_numpy() for c in fc])
    if missing_fraction:
        flux = mask_bands(flux, missing_fraction, np.random.default_rng([seed, k, 1]))
    z = t.column("z").to_numpy()
    x = layout.observables(flux, np.column_stack([t.column(c).to_numpy() for c in ec]), z)
    u = prior.to_unconstrained(np.column_stack([theta, z]) if isinstance(prior, PriorWithRedshift) else theta)
    val = np.random.default_rng([seed, k]).uniform(size=len(u)) < val_fraction
    return u, layout.features(x), val


RENOISE_TRIES = 30   # redraws of a row's noise before it keeps the simulation's own observation


def renoise_settings(manifest: dict) -> dict:
    """What `renoised_features` needs from a simulation manifest: its noise model and observation settings
    (`sedflow.simulate.observe`); a clear error for simulations that do not record them."""
    sim = manifest.get("config") or {}
    if not manifest.get("noise_model") or not sim:
        raise ValueError("re-drawing the noise needs the simulation's noise model and settings "
                         "(_simulation.json with noise_model and config); these simulations lack them")
    return {"noise_model": manifest["noise_model"], "reported_errors": sim.get("reported_errors", "observed"),
            "noise_envelope": sim.get("noise_envelope"), "min_detected": sim.get("min_detected")}


def _read_observations(path, layout: InputLayout) -> tuple:
    """(flux_true, flux, flux_err, z) of one shard: the noiseless fluxes and the simulation's own observation."""
    import pyarrow.parquet as pq

    cols = {kind: [f"{kind}_{b}" for b in layout.bands] for kind in ("flux_true", "flux", "flux_err")}
    t = pq.read_table(path, columns=[c for v in cols.values() for c in v] + ["z"])
    return (*(np.column_stack([t.column(c).to_numpy() for c in v]) for v in cols.values()), t.column("z").to_numpy())


def renoise(flux_true, flux, flux_err, settings: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """A new noisy observation (flux, flux_err) of each row's noiseless fluxes, drawn as the simulation
    drew its own (`sedflow.simulate.observe`: the same noise model, envelope and cuts; ``settings`` from
    `renoise_settings`).

    A row whose new draw fails the simulation's cuts is drawn again (up to RENOISE_TRIES times, then it
    keeps the simulation's observation ``flux, flux_err``, which passed them): each row's observation is
    then distributed as x | theta, passing the cuts, and the rows as the simulation's, so the training
    pairs follow the simulation's p(theta, x) (a row dropped on a failed draw would thin the rows whose
    theta often fails, and a row kept with one would be outside the simulation's support).
    """
    from sedflow.noise import NoiseModel
    from sedflow.simulate import observe

    noise = NoiseModel.from_dict(settings["noise_model"])
    new_flux, new_err = flux.copy(), flux_err.copy()
    todo = np.arange(len(flux_true))
    for _ in range(RENOISE_TRIES):
        f, e, ok_sigma, in_range = observe(flux_true[todo], noise, rng, settings["reported_errors"],
                                           settings["noise_envelope"], settings["min_detected"])
        passed = ok_sigma & in_range
        new_flux[todo[passed]], new_err[todo[passed]] = f[passed], e[passed]
        todo = todo[~passed]
        if not todo.size:
            break
    return new_flux, new_err


def renoised_features(flux_true, flux, flux_err, z, settings: dict, layout: InputLayout, missing_fraction: float,
                      rng) -> np.ndarray:
    """Features (`InputLayout.features`) of a new observation of each row (`renoise`) with new band masks
    (`mask_bands`): fresh noise every epoch, so the flow cannot learn the training set's noise draws."""
    new_flux, new_err = renoise(flux_true, flux, flux_err, settings, rng)
    if missing_fraction:
        new_flux = mask_bands(new_flux, missing_fraction, rng)
    return layout.features(layout.observables(new_flux, new_err, z))


RENOISE_CHUNK = 131_072   # rows per step: temporaries of a few MB stay in the heap and in cache


def _renoised_inputs(observations, cfg: dict, layout: InputLayout, x_mean, x_std, rng) -> np.ndarray:
    """The worker's standardised float32 training inputs with fresh noise (`renoised_features`), in chunks."""
    n = len(observations[0])
    out = np.empty((n, len(layout.names)), np.float32)
    for start in range(0, n, RENOISE_CHUNK):
        rows = slice(start, start + RENOISE_CHUNK)
        out[rows] = layout.standardise(renoised_features(*(a[rows] for a in observations), cfg["renoise"], layout,
                                                         cfg["missing_fraction"], rng), x_mean, x_std)
    return out


def _statistics(shards, seed: int, val_fraction: float, layout: InputLayout, missing_fraction: float = 0.0,
                prior: dict | None = None, sample_rows: int = 200_000) -> dict:
    """Standardisation and OOD thresholds from the training rows, one shard in memory at a time
    (the x moments over the bands present: missing ones are NaN)."""
    n, su, su2, sx, sx2, nx = 0, 0.0, 0.0, 0.0, 0.0, 0
    keep = []
    total = 0
    for k, p in enumerate(shards):
        u, x, val = _read_shard(p, k, seed, val_fraction, layout, missing_fraction, prior)
        u, x = u[~val], x[~val]
        n += len(u)
        su, su2 = su + u.sum(0), su2 + (u**2).sum(0)
        sx, sx2, nx = sx + np.nansum(x, 0), sx2 + np.nansum(x**2, 0), nx + np.isfinite(x).sum(0)
        keep.append(x)
        total += len(x)
        if total > 4 * sample_rows:   # bounded memory: thin what is kept
            keep = [np.concatenate(keep)[::2]]
            total = len(keep[0])
    sub = np.concatenate(keep)
    x_mean, x_std = sx / nx, np.sqrt(np.maximum(sx2 / nx - (sx / nx) ** 2, 0.0))
    x_std[x_std < 1e-6] = 1.0          # a constant feature (e.g. missing flags never set) is only centred
    u_mean, u_std = su / n, np.sqrt(np.maximum(su2 / n - (su / n) ** 2, 1e-24))
    return {
        "rows_train": int(n),
        "standardization": {"x_mean": x_mean.tolist(), "x_std": x_std.tolist(),
                            "u_mean": u_mean.tolist(), "u_std": u_std.tolist()},
        "ood": fit_thresholds(sub, x_mean, x_std, layout),
    }


# ---------------------------------------------------------------------- the worker loop
def _nll_module(net):
    import torch

    class NegLogProb(torch.nn.Module):
        """Wraps the estimator so DDP sees a forward() (and syncs its gradients)."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, u, x):
            return -self.net.log_prob(u[None], x)[0]

    return NegLogProb(net)


def _train_loop(cfg: dict) -> None:
    import torch
    import torch.distributed as dist
    import ray.train
    import ray.train.torch

    from sedflow.flows import sampling_precision

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg["threads_per_worker"])
    torch.manual_seed(cfg["seed"])
    std = cfg["standardization"]
    layout = InputLayout.from_dict(cfg["x_layout"], cfg["bands"])
    x_mean, x_std = np.array(std["x_mean"]), np.array(std["x_std"])
    u_mean, u_std = np.array(std["u_mean"]), np.array(std["u_std"])

    # this worker's rows: global row index % world == rank
    parts, offset, observations = {"train": [], "val": []}, 0, []
    for k, p in enumerate(cfg["shards"]):
        u, x, val = _read_shard(p, k, cfg["seed"], cfg["val_fraction"], layout, cfg["missing_fraction"],
                                cfg["prior"])
        mine = (offset + np.arange(len(u))) % world == rank
        offset += len(u)
        for name, sel in (("train", mine & ~val), ("val", mine & val)):
            parts[name].append((((u[sel] - u_mean) / u_std).astype(np.float32),
                                layout.standardise(x[sel], x_mean, x_std).astype(np.float32)))
        if cfg["renoise"]:
            observations.append(tuple(a[mine & ~val] for a in _read_observations(p, layout)))
    data = {k: tuple(torch.from_numpy(np.concatenate(a)) for a in zip(*v)) for k, v in parts.items()}
    if cfg["renoise"]:
        observations = tuple(np.concatenate(a) for a in zip(*observations))

    net = build_estimator(cfg["arch_kwargs"], n_x=len(layout.names), n_theta=len(u_mean))
    # the buffers (coupling masks, base distribution) are constants: no broadcast before every step
    model = ray.train.torch.prepare_model(_nll_module(net), parallel_strategy="ddp" if world > 1 else None,
                                          parallel_strategy_kwargs={"broadcast_buffers": False})
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    # plateau: lr x 1/2 after lr_patience epochs without a better validation loss (0: constant lr);
    # cosine: lr -> 0 over max_epochs
    if cfg["lr_schedule"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["max_epochs"])
    else:
        sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=cfg["lr_patience"],
                                                            threshold=0.0) if cfg["lr_patience"] else None)
    state = {"epoch": 0, "best_val": float("inf"), "best_epoch": 0, "history": [], "best_net": None}
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", weights_only=True)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["optimizer"])
        state = {k: saved[k] for k in state}
        if sched is not None and "scheduler" in saved:
            sched.load_state_dict(saved["scheduler"])
        elif sched is not None and cfg["lr_schedule"] == "plateau":
            # a run begun at a constant lr: the schedule starts from its best epoch
            sched.best, sched.num_bad_epochs = state["best_val"], state["epoch"] - state["best_epoch"]

    def all_reduce(values, op):
        t = torch.tensor(values, dtype=torch.float64)
        if world > 1:
            dist.all_reduce(t, op=op)
        return t.tolist()

    batch = max(1, cfg["batch_size"] // world)
    u_tr, x_tr = data["train"]
    n_batches = int(all_reduce([len(u_tr) // batch], dist.ReduceOp.MIN if world > 1 else None)[0])
    if n_batches < 1:
        raise ValueError(f"batch size {cfg['batch_size']} exceeds the training rows per worker ({len(u_tr)})")
    # "bfloat16": the hidden layers in the sampler's bfloat16 arithmetic (first layer and affine maps float32)
    with sampling_precision(net, cfg["precision"]):
        while state["epoch"] < cfg["max_epochs"] and state["epoch"] - state["best_epoch"] < cfg["patience"]:
            epoch = state["epoch"] + 1
            t0 = time.perf_counter()
            model.train()
            if cfg["renoise"]:      # a new noise draw (and band masks) for every training row; validation keeps its own
                x_tr = torch.from_numpy(_renoised_inputs(observations, cfg, layout, x_mean, x_std,
                                                         np.random.default_rng([cfg["seed"], epoch, rank, 1])))
            order = torch.from_numpy(np.random.default_rng([cfg["seed"], epoch, rank]).permutation(len(u_tr)))
            total = 0.0
            for b in range(n_batches):
                idx = order[b * batch:(b + 1) * batch]
                loss = model(u_tr[idx], x_tr[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            model.eval()
            with torch.no_grad():
                u_va, x_va = data["val"]
                val_sum = float(sum(model(u_va[i:i + 65536], x_va[i:i + 65536]).sum().item()
                                    for i in range(0, len(u_va), 65536)))
            train_loss, val_sum, val_n = all_reduce([total / n_batches, val_sum, len(u_va)], dist.ReduceOp.SUM
                                                    if world > 1 else None)
            metrics = {"epoch": epoch, "train_loss": train_loss / world, "val_loss": val_sum / max(val_n, 1),
                       "epoch_seconds": time.perf_counter() - t0, "workers": world, "lr": opt.param_groups[0]["lr"]}
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(metrics["val_loss"])
            elif sched is not None:
                sched.step()
            state["epoch"] = epoch
            state["history"].append(metrics)
            if metrics["val_loss"] < state["best_val"]:
                state["best_val"], state["best_epoch"] = metrics["val_loss"], epoch
                state["best_net"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            metrics = {**metrics, "best_epoch": state["best_epoch"], "best_val_loss": state["best_val"]}
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    saved = {"net": net.state_dict(), "optimizer": opt.state_dict(), **state}
                    if sched is not None:
                        saved["scheduler"] = sched.state_dict()
                    torch.save(saved, Path(tmp) / "state.pt")
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                    print(f"[sedflow train] epoch {epoch:4d}  train {metrics['train_loss']:.4f}  "
                          f"val {metrics['val_loss']:.4f}  best {state['best_val']:.4f} (epoch {state['best_epoch']})  "
                          f"lr {metrics['lr']:.2g}  "
                          f"{metrics['epoch_seconds']:.1f} s", flush=True)
                ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------------- driver
def train(data_dir, out_dir, arch: str = DEFAULT_ARCH, workers: int = 1, batch_size: int = 2048,
          max_epochs: int = 500, lr: float = 5e-4, patience: int = 20, seed: int = 0,
          val_fraction: float = 0.1, address: str | None = None, lr_patience: int = 5, lr_schedule: str = "plateau",
          inputs: str = "mag",
          missing_fraction: float | None = None, infer_redshift: bool = False, unconstrained: str = "probit",
          renoise: bool = False, precision: str = "float32") -> dict:
    """Train a posterior on the shards in ``data_dir``; write the artifact to ``out_dir``.

    ``inputs``: the x layout (`sedflow.posterior.InputLayout`): ``"mag"`` (SEDflow's log magnitudes)
    or ``"asinh"`` (asinh magnitudes softened from the noise model, with missing-band flags: models
    that take non-detections and galaxies with missing bands). ``missing_fraction``: share of the
    training rows that lose 1-2 random bands (asinh only; default 0.2, 0 with 3 bands or fewer). The
    masks are drawn once per row (seeded by the split seed and shard), not anew each epoch (with ``renoise``: anew).
    ``infer_redshift``: a photo-z model, q(theta, z | photometry) with z's prior uniform on the
    simulated range (`training_prior`); the artifact records it in its prior, and x has no z.
    ``unconstrained``: the map of the prior's box coordinates to R the flow works in (`sedflow.prior`):
    ``"probit"`` (default: standard normal under the prior, like the flow's base) or ``"logit"``
    (the shipped ``photoz`` and older models).
    ``renoise``: every epoch, a new noise draw and new band masks for each training row from its
    noiseless fluxes (`renoised_features`), instead of the simulation's one draw for all epochs.
    ``precision``: ``"float32"`` or ``"bfloat16"``, the arithmetic of the couplings' hidden layers
    in training (`sedflow.flows.sampling_precision`; the sampler's bfloat16 arithmetic, first layer
    float32-accurate, affine maps float32, weights and Adam float32; ~1.1-1.6x the training steps/s
    on a CPU with AMX; realnvp* architectures only).

    Returns a summary (epochs, best epoch, losses, wall time, parameters, artifact path).
    """
    import ray
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from sedflow.ray_utils import ray_session

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    if workers < 1 or batch_size < 1 or max_epochs < 1:
        raise ValueError("workers, batch_size and max_epochs must be >= 1")
    if lr_patience < 0:
        raise ValueError(f"lr_patience must be >= 0 (0: constant lr), got {lr_patience}")
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
    if precision == "bfloat16" and ARCHITECTURES[arch].get("model") != "sedflow_realnvp":
        raise ValueError("bfloat16 training needs a realnvp (context-cached coupling) architecture")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    shards, manifest, fingerprint = training_data(data_dir)
    bands, filters = simulation_bands(manifest)
    if missing_fraction is None:   # band masks need bands to spare: a galaxy keeps MIN_VALID_BANDS
        missing_fraction = 0.2 if inputs == "asinh" and len(bands) > MIN_VALID_BANDS else 0.0
    if missing_fraction and inputs != "asinh":
        raise ValueError("missing bands need inputs='asinh' (the log-magnitude layout has no missing flags)")
    layout = input_layout(manifest, inputs, redshift=not infer_redshift)
    prior = training_prior(manifest, infer_redshift, unconstrained)      # Prior checks the map's name
    if layout.kind == "mag" and (manifest.get("config") or {}).get("min_detected") is not None:
        raise ValueError("these simulations reach non-detections (min_detected), which log magnitudes cannot "
                         "hold: train with inputs='asinh' (--inputs asinh)")
    if missing_fraction and len(bands) <= MIN_VALID_BANDS:
        raise ValueError(f"{len(bands)} bands leave none to mask (a galaxy keeps at least {MIN_VALID_BANDS})")
    noise_settings = renoise_settings(manifest) if renoise else None
    if renoise:
        import pyarrow.parquet as pq

        lacking = [c for c in (f"flux_true_{b}" for b in bands) if c not in pq.read_schema(shards[0]).names]
        if lacking:
            raise ValueError(f"re-drawing the noise needs the noiseless fluxes; {shards[0]} lacks {lacking}")
    t0 = time.perf_counter()
    stats_path = out / "training_statistics.json"
    # what a resumed run must share with the one it continues: the checkpoint's optimiser and lr schedule
    # carry them (a cosine schedule's length included; a plateau run may be extended with more epochs)
    recipe = {"arch": arch, "lr": lr, "batch_size": batch_size, "lr_schedule": lr_schedule, "precision": precision,
              **({"max_epochs": max_epochs} if lr_schedule == "cosine" else {})}
    if stats_path.exists():   # a resumed run must keep the standardisation of the original
        stats = json.loads(stats_path.read_text())
        if (stats["fingerprint"] != fingerprint or stats["seed"] != seed
                or stats.get("x_layout", {"kind": "mag"})["kind"] != layout.kind
                or stats.get("missing_fraction", 0.0) != missing_fraction
                or stats.get("x_layout", {}).get("redshift", True) != layout.redshift
                or stats.get("prior", {}) != prior.to_dict() or stats.get("renoise", False) != renoise):
            raise ValueError(f"{out} holds a run on other data or seed; use a new --out")
        changed = {k: (v, recipe[k]) for k, v in stats.get("recipe", {}).items() if recipe.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds a run begun with other optimisation settings "
                             + ", ".join(f"{k} {old} (now {new})" for k, (old, new) in changed.items())
                             + "; resume with the same ones or use a new --out")
    else:
        stats = {**_statistics(shards, seed, val_fraction, layout, missing_fraction, prior.to_dict()),
                 "fingerprint": fingerprint, "seed": seed, "x_layout": layout.to_dict(),
                 "missing_fraction": missing_fraction, "prior": prior.to_dict(), "renoise": renoise,
                 "recipe": recipe}
        stats_path.write_text(json.dumps({k: v for k, v in stats.items() if k != "ood"}))

    with ray_session(address):
        cpus = int(ray.cluster_resources().get("CPU", 1))
        cfg = {"shards": [str(p.resolve()) for p in shards], "seed": seed, "val_fraction": val_fraction,
               "bands": list(bands), "x_layout": layout.to_dict(), "missing_fraction": missing_fraction,
               "prior": prior.to_dict(), "renoise": noise_settings,
               "standardization": stats["standardization"], "arch_kwargs": ARCHITECTURES[arch],
               "batch_size": batch_size, "lr": lr, "max_epochs": max_epochs, "patience": patience,
               "lr_patience": lr_patience, "lr_schedule": lr_schedule, "precision": precision,
               "threads_per_worker": max(1, cpus // workers)}
        trainer = TorchTrainer(
            _train_loop, train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                         resources_per_worker={"CPU": max(1, min(cpus // workers, cpus))}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name=f"sedflow-{arch}", storage_path=str(out / "ray_train"),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=True)

    if state["best_net"] is None:
        raise ValueError(f"the validation loss was never finite in {state['epoch']} epochs (training diverged); "
                         f"lower --lr (was {lr:g}) and use a new --out")
    if "ood" not in stats:   # resumed run: the thresholds are recomputed, not cached
        stats["ood"] = _statistics(shards, seed, val_fraction, layout, missing_fraction, prior.to_dict())["ood"]
    net = build_estimator(ARCHITECTURES[arch], n_x=len(layout.names), n_theta=prior.ndim_unconstrained)
    net.load_state_dict(state["best_net"])
    n_params = sum(p.numel() for p in net.parameters())
    history = state["history"]
    (out / "metrics.json").write_text(json.dumps(history, indent=1))
    config = {
        "architecture": {"name": arch, "kwargs": ARCHITECTURES[arch], "parameters": n_params,
                         "builder": BUILDERS.get(ARCHITECTURES[arch]["model"], "sbi.neural_nets.posterior_nn")},
        "bands": list(bands),
        "filters": list(filters),
        "x_layout": layout.to_dict(),
        "missing_fraction": missing_fraction,
        "x_definition": ("mag_{b} (AB, extinction-corrected) for each band, mag_err_{b} = 1.0857 flux_err/flux, z"
                         if layout.kind == "mag" else
                         "asinh_mag_{b} = 22.5 - 1.0857 [asinh(f / 2s_b) + ln s_b] for each band (Lupton et al. "
                         "1999; s_b in x_layout), asinh_mag_err_{b} = 1.0857 flux_err / sqrt(f^2 + 4 s_b^2), z, "
                         "missing_{b} (1: no measurement; that band's entries set to the training mean)")
                        + "; the network sees log10 of the errors; all standardised"
                        + ("; no z: the redshift is inferred (theta's last column)" if infer_redshift else ""),
        "theta_space": (f"PriorWithRedshift.to_unconstrained (12-dim, R^12: the 11 of Prior and the {unconstrained} "
                        "of z's place in its range), standardised" if infer_redshift else
                        f"Prior.to_unconstrained (11-dim, R^11, {unconstrained} of the box coordinates), standardised"),
        "standardization": stats["standardization"],
        "ood": stats["ood"],
        "prior": prior.to_dict(),
        "noise_model": manifest.get("noise_model"),
        "sed_model": manifest.get("sed_model"),
        "simulation": manifest.get("config"),
        "training_data": {**fingerprint, "rows_train": stats["rows_train"], "val_fraction": val_fraction,
                          "split_seed": seed},
        "training": {"optimizer": "Adam", "lr": lr, "lr_patience": lr_patience,
                     "lr_schedule": ("CosineAnnealingLR(T_max=max_epochs)" if lr_schedule == "cosine" else
                                     "ReduceLROnPlateau(factor=0.5, patience=lr_patience)" if lr_patience else "constant"),
                     "batch_size": batch_size, "workers": workers, "renoise": renoise,
                     "precision": precision,
                     "max_epochs": max_epochs, "patience": patience, "epochs": state["epoch"],
                     "best_epoch": state["best_epoch"], "best_val_loss": state["best_val"],
                     "wall_seconds_this_run": time.perf_counter() - t0},
        "metrics": history,
    }
    save_model(out, net, config)
    return {"artifact": str(out), "epochs": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_loss": state["best_val"], "final_train_loss": history[-1]["train_loss"],
            "first_train_loss": history[0]["train_loss"], "parameters": n_params,
            "seconds": time.perf_counter() - t0, "history": history}


# ---------------------------------------------------------------------- calibration fine-tune
CALIBRATION_BANDWIDTH = 0.2    # soft-rank kernel width, in units of each posterior's own spread


def calibration_moments(net, u, x, to_theta, draws: int = 64):
    """Moments of the SBC ranks that vanish for a calibrated posterior, differentiable in the flow.

    For a calibrated q, the rank F_j = q(theta_j < theta*_j | x) of each true parameter is uniform
    and independent of x, so E[(F_j - 1/2) g(x)] = 0 and E[(|F_j - 1/2| - E|F0_j - 1/2|) g(x)] = 0
    for any g, F0 the rank of a draw of q itself (what a calibrated truth looks like to the
    estimator below). Here g is 1, the posterior median and the log posterior width (each
    standardised over the batch): the pooled mean rank and spread of ranks, and their trends with
    where and how wide the posterior is. F is a soft rank over ``draws // 2`` reparameterised draws
    (a logistic kernel `CALIBRATION_BANDWIDTH` posterior widths wide); the median and width come
    from other draws than the ranks and the pseudo-truth from a third, so none correlates with
    another by chance. A calibration term of the training loss in the spirit of Falkiewicz et al.
    2023 (NeurIPS, arXiv:2310.13402), on marginal ranks instead of coverage of the joint.

    net: an sbi `ZukoFlow` (its ``net`` the conditional zuko flow); u (n, d), x (n, n_x): standardised
    training pairs; to_theta: standardised u (..., d) tensor -> the parameters whose ranks count.
    Returns a (n_params, 6) tensor: location moments for g = 1, median, width, then spread moments.
    """
    import torch

    def theta(v):
        return to_theta(v.reshape(-1, v.shape[-1])).reshape(*v.shape[:-1], -1)

    t, s = theta(u), theta(net.net(net.embedding_net(x)).rsample((draws,)))       # (n, p), (draws, n, p)
    pseudo, ref, ranked = s[0].detach(), s[1:draws // 2].detach(), s[draws // 2:]
    width = ref.std(0).clamp_min(1e-6)
    centre = ref.median(0).values

    def soft_rank(v):
        return torch.sigmoid((v[None] - ranked) / (CALIBRATION_BANDWIDTH * width)).mean(0)

    def standardised(a):
        return (a - a.mean(0)) / a.std(0).clamp_min(1e-6)

    r, r0 = soft_rank(t), soft_rank(pseudo).detach()
    g = torch.stack([torch.ones_like(centre), standardised(centre), standardised(width.log())], -1)
    h = torch.stack([r - 0.5, (r - 0.5).abs() - (r0 - 0.5).abs()], -1)
    return (h[..., :, None] * g[..., None, :]).mean(0).flatten(1)


def calibrate(model, data_dir, out_dir, steps: int = 2500, weight: float = 100.0, lr: float = 3e-5,
              batch_size: int = 2048, rank_rows: int = 256, draws: int = 64, seed: int = 0,
              progress: bool = True) -> dict:
    """Fine-tune a trained model (a directory or shipped name) for calibration; write it to ``out_dir``.

    ``steps`` Adam steps (``lr`` annealed to 0, cosine) on the model's own training rows (the same
    simulations, split and, with renoise, fresh noise per pass) of the loss
    NLL + weight * sum(m_bar * m): m the `calibration_moments` of ``rank_rows`` rows of each batch,
    m_bar their running mean (exponential, over ~100 steps; held constant in the gradient, so the
    term pushes against a bias that persists over many batches, not against one batch's noise,
    which would favour wide posteriors). One process, all its threads, no Ray: with the defaults
    11-12 minutes on 2 cores for the shipped model, loading included. ``progress``: a progress bar.
    Returns a summary: validation loss before and after, final moments, wall time."""
    import torch
    from tqdm.auto import tqdm

    from sedflow.posterior import load_model, model_path, save_model

    if steps < 1 or weight < 0 or lr <= 0 or rank_rows < 2 or draws < 8:
        raise ValueError("steps >= 1, weight >= 0, lr > 0, rank_rows >= 2 and draws >= 8 are needed")
    post = load_model(model, precision="float32")
    cfg, net, layout = post.config, post.net, post.inputs
    shards, manifest, fingerprint = training_data(data_dir)
    trained_on = cfg.get("training_data") or {}
    if fingerprint["manifest_sha256"] != trained_on.get("manifest_sha256"):
        raise ValueError(f"{data_dir} holds other simulations than the model was trained on "
                         f"({trained_on.get('directory_name')}); calibrate on those")
    t0 = time.perf_counter()
    split, val_fraction = trained_on.get("split_seed", 0), trained_on.get("val_fraction", 0.1)
    renoise_cfg = renoise_settings(manifest) if (cfg.get("training") or {}).get("renoise") else None
    u_parts, x_parts, obs_parts = {"train": [], "val": []}, {"train": [], "val": []}, []
    for k, p in enumerate(shards):
        u, x, val = _read_shard(p, k, split, val_fraction, layout, cfg["missing_fraction"], cfg["prior"])
        for name, sel in (("train", ~val), ("val", val)):
            u_parts[name].append(((u[sel] - post.u_mean) / post.u_std).astype(np.float32))
            x_parts[name].append(layout.standardise(x[sel], post.x_mean, post.x_std).astype(np.float32))
        if renoise_cfg:
            obs_parts.append(tuple(a[~val] for a in _read_observations(p, layout)))
    u_tr, x_tr, u_va, x_va = (torch.from_numpy(np.concatenate(parts[name]))
                              for name in ("train", "val") for parts in (u_parts, x_parts))
    observations = tuple(np.concatenate(a) for a in zip(*obs_parts)) if renoise_cfg else None
    if len(u_tr) < batch_size:
        raise ValueError(f"batch size {batch_size} exceeds the training rows ({len(u_tr)})")
    u_mean, u_std = (torch.tensor(a, dtype=torch.float32) for a in (post.u_mean, post.u_std))

    def to_theta(v):
        return post.prior.from_unconstrained_torch(v * u_std + u_mean)

    def val_loss():
        with torch.no_grad():
            return float(sum(-net.log_prob(u_va[i:i + 65536][None], x_va[i:i + 65536])[0].sum().item()
                             for i in range(0, len(u_va), 65536)) / max(len(u_va), 1))

    before = val_loss()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    running = None
    per_pass = len(u_tr) // batch_size
    net.train()
    for step in tqdm(range(steps), desc="calibrate", unit="step", disable=not progress):
        if step % per_pass == 0:         # a new pass: new order, and with renoise new noise and masks
            order = torch.from_numpy(rng.permutation(len(u_tr)))
            if renoise_cfg:
                x_tr = torch.from_numpy(_renoised_inputs(observations, {"renoise": renoise_cfg, **cfg}, layout,
                                                         post.x_mean, post.x_std, rng))
        idx = order[(step % per_pass) * batch_size:(step % per_pass + 1) * batch_size]
        u, x = u_tr[idx], x_tr[idx]
        loss = -net.log_prob(u[None], x)[0].mean()
        if weight:
            m = calibration_moments(net, u[:rank_rows], x[:rank_rows], to_theta, draws)
            running = m.detach() if running is None else 0.99 * running + 0.01 * m.detach()
            loss = loss + weight * (running * m).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    after = val_loss()
    summary = {"steps": steps, "weight": weight, "lr": lr, "batch_size": batch_size, "rank_rows": rank_rows,
               "draws": draws, "seed": seed, "base_model": cfg.get("weights_sha256"),
               "val_loss_before": before, "val_loss_after": after,
               "moments": dict(zip(post.names, running.tolist())) if running is not None else None,
               "wall_seconds": time.perf_counter() - t0}
    save_model(out_dir, net, {**cfg, "calibration": summary})
    if post.population_prior is not None:      # the fine-tune leaves the model's population prior as it was
        import shutil

        from sedflow.population import POPULATION_FILE
        shutil.copyfile(model_path(model) / POPULATION_FILE, Path(out_dir) / POPULATION_FILE)
    return {"artifact": str(Path(out_dir).resolve()), **summary}
