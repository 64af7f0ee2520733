"""The amortized posterior q(theta | x): density estimators, the model artifact, sampling.

The flow models the 11-dim unconstrained coordinates u of `Prior` (so every sample maps
back inside the prior), standardised, conditioned on x built from fluxes, errors and z by the
artifact's `InputLayout`: SEDflow's (mag_b, mag_err_b for each band, z; Hahn & Melchior 2022,
Sec. 2.1 and 3.3), or asinh magnitudes with missing-band flags for non-detections and missing
bands; the network sees log10 of the errors (they span three decades), standardised. The bands
and their filters come from the artifact: any survey's. Estimators come from sbi's factory
`sbi.neural_nets.posterior_nn`; no flow layer is written here.

Architectures (`ARCHITECTURES`):

* ``paper``: sbi MAF (nflows), 15 MADE transforms with 2 hidden layers of 500 units, as
  SEDflow.
* ``coupling``: zuko MAF with ``passes=2``, i.e. an affine coupling flow, 5 transforms, 2
  hidden layers of 64 units: sampling is two network passes per transform instead of 11
  sequential ones (the shipped architecture until the 2026-12 model).
* ``spline``: the same coupling structure with rational-quadratic spline transforms (zuko NSF).
* ``realnvp``: zuko's affine coupling transform (RealNVP), 5 transforms, 2 hidden layers of 160
  units, with each transform's context term computed once per galaxy (`sedflow.flows`): one
  network pass per transform when sampling, not two as ``coupling`` (the shipped spec-z
  architecture until 2026-12-04).
* ``realnvp_deep`` (default): the same with 3 hidden layers (the shipped ``sdss`` model's).
* ``realnvp_deep_sas``: ``realnvp_deep`` with a sinh-arcsinh map per parameter at the parameter
  end whose skew and tail weight are set by x (`sedflow.flows.ConditionalSinhArcsinh`): better
  calibrated than ``realnvp_deep`` on independent held-out sets, not shipped
  (docs/validation/architectures.md).
* ``realnvp10``: ``realnvp`` with 10 transforms (the shipped photo-z model's, MODEL_CARD.md).

The artifact is a directory with ``weights.safetensors`` and ``config.json`` (architecture,
x/theta definitions, standardisation, prior, noise model, training-data fingerprint,
metrics, OOD thresholds, package versions, format version, sha256 of the weights). It loads
without executing code, and a corrupted, tampered or incompatible artifact is refused.

Example
-------
>>> post = load_model()                         # the shipped default ("sdss")
>>> flux = [[-0.3, 12.0, 30.0, 44.0, 51.0]]     # ugriz nanomaggies (u not detected)
>>> x = post.inputs.observables(flux, [[0.9, 0.3, 0.6, 0.9, 2.9]], [0.31])   # fluxes, errors, z -> x
>>> post.sample(x, 1000, seed=0).shape          # x (n_gal, 16) -> (n_gal, 1000, 12)
(1, 1000, 12)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from sedflow.catalog import MAG_ERR_PER_FRAC
from sedflow.prior import PARAM_NAMES, UNCONSTRAINED_NAMES, PriorWithRedshift, prior_from_dict
from sedflow.sps.photometry import BANDS, SDSS_FILTERS, nanomaggies_to_mag
from sedflow.storage import atomic_write, file_sha256, write_json

__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "FORMAT_VERSION", "DEFAULT_MODEL", "InputLayout", "build_estimator",
           "x_names", "PosteriorModel", "load_model", "save_model", "ArtifactError", "model_path",
           "shipped_models", "default_model_path"]

FORMAT_VERSION = 2     # 2: bands and filters recorded, x of any number of bands; 1 (SDSS ugriz) still loads
ARCHITECTURES = {
    "paper": {"model": "maf", "hidden_features": 500, "num_transforms": 15},
    "coupling": {"model": "zuko_maf", "hidden_features": [64, 64], "num_transforms": 5, "passes": 2},
    # rational-quadratic spline coupling (NSF, Durkan et al. 2019, arXiv:1906.04032): a candidate for the
    # next shipped model (`python -m bench --only architectures` compares it with `coupling`)
    "spline": {"model": "zuko_nsf", "hidden_features": [64, 64], "num_transforms": 5, "passes": 2},
    "realnvp": {"model": "sedflow_realnvp", "hidden_features": [160, 160], "num_transforms": 5},
    # the same flow with a third hidden layer in every coupling's MLP, the shipped sdss model's: 0.27 nats
    # per galaxy better held-out log density at the same epochs, sampling in bfloat16 within ~15% of its
    # rate (docs/validation/architectures.md)
    "realnvp_deep": {"model": "sedflow_realnvp", "hidden_features": [160, 160, 160], "num_transforms": 5},
    # the same with a skew and tail weight per parameter set by x (`sedflow.flows.ConditionalSinhArcsinh`)
    "realnvp_deep_sas": {"model": "sedflow_realnvp", "hidden_features": [160, 160, 160], "num_transforms": 5,
                         "marginal_shape": True},
    # twice as deep, for posteriors that curve along the mass-redshift degeneracy: the shipped photo-z
    # model's (MODEL_CARD.md: calibrated on simulations where 5 transforms were not; half the speed)
    "realnvp10": {"model": "sedflow_realnvp", "hidden_features": [160, 160], "num_transforms": 10},
}
BUILDERS = {"sedflow_realnvp": "sedflow.flows.realnvp"}      # other models: sbi.neural_nets.posterior_nn
DEFAULT_ARCH = "realnvp_deep"  # the shipped model's (MODEL_CARD.md, docs/validation/architectures.md)
DEFAULT_MODEL = "sdss"        # the shipped SDSS ugriz spectroscopic-redshift model (MODEL_CARD.md)
WEIGHTS, CONFIG = "weights.safetensors", "config.json"


class ArtifactError(ValueError):
    """A model artifact that is missing, corrupted, tampered with or incompatible."""


def _models_dir() -> Path:
    return Path(str(resources.files("sedflow") / "data" / "models"))


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package (``sedflow/data/models/NAME/``)."""
    return sorted(p.name for p in _models_dir().iterdir() if (p / CONFIG).is_file())


def model_path(model=None) -> Path:
    """The artifact directory of ``model``: None (the default shipped model), a directory, or the
    name of a shipped model (`shipped_models`); anything else raises `ArtifactError`."""
    if model is None:
        model = DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if isinstance(model, str) and model in shipped_models():
        return _models_dir() / model
    raise ArtifactError(f"model {str(model)!r} is neither a model directory nor a shipped model "
                        f"(shipped: {shipped_models()})")


def default_model_path() -> Path:
    """The default shipped model's directory."""
    return model_path(None)


ASINH = 2.5 / np.log(10)       # Lupton et al. (1999): a = 2.5 log10(e)
MIN_VALID_BANDS = 3            # an asinh-layout model samples galaxies with at least this many bands


@dataclass(frozen=True)
class InputLayout:
    """How a galaxy's fluxes, errors and redshift become the flow's input x.

    ``kind="mag"`` (SEDflow's, Hahn & Melchior 2022 Sec. 3.3): x = (AB mag per band, mag error per
    band, z); any flux <= 0 or missing band makes the row unusable.

    ``kind="asinh"``: x = (asinh magnitude per band, its error, z, missing flag per band). Asinh
    magnitudes (Lupton, Gunn & Szalay 1999, AJ 118, 1406), mu = 22.5 - a [asinh(f / 2s) + ln s]
    with ``softening`` s [nanomaggies] per band, equal AB mags for f >> s and stay finite and smooth
    through f <= 0; their error is a sigma_f / sqrt(f^2 + 4 s^2). A band whose flux or error is
    missing (NaN, inf, ivar 0) is flagged, and its two entries are set to the training mean; the
    flow learns the posterior marginalised over it (trained with random band masks).

    The network sees log10 of the errors; everything is standardised by the artifact's statistics.

    Example
    -------
    >>> layout = InputLayout(("g", "r", "i"), "asinh", (0.05, 0.05, 0.08))
    >>> layout.names[-3:]
    ('missing_g', 'missing_r', 'missing_i')
    >>> x = layout.observables([[-0.02, 10.0, float("nan")]], [[0.03, 0.1, 0.1]], [0.1])
    >>> bool(np.isfinite(x[0, 0])), float(x[0, -1])            # a negative flux is a measurement
    (True, 1.0)
    """

    bands: tuple
    kind: str = "mag"
    softening: tuple | None = None
    redshift: bool = True          # False: a photo-z model's x, photometry only (z is inferred)

    def __post_init__(self):
        object.__setattr__(self, "bands", tuple(self.bands))
        if self.kind not in ("mag", "asinh"):
            raise ValueError(f"input layout kind must be 'mag' or 'asinh', got {self.kind!r}")
        if self.kind == "asinh":
            if self.softening is None or len(self.softening) != len(self.bands) or min(self.softening) <= 0:
                raise ValueError("asinh inputs need one positive softening flux per band")
            object.__setattr__(self, "softening", tuple(float(v) for v in self.softening))

    @property
    def names(self) -> tuple:
        """The columns of x."""
        z = ["z"] if self.redshift else []
        if self.kind == "mag":
            return tuple([f"mag_{b}" for b in self.bands] + [f"mag_err_{b}" for b in self.bands] + z)
        return tuple([f"asinh_mag_{b}" for b in self.bands] + [f"asinh_mag_err_{b}" for b in self.bands] + z
                     + [f"missing_{b}" for b in self.bands])

    def missing(self, flux, err) -> np.ndarray:
        """(n, n_bands) True where a band has no measurement: non-finite flux or error, or error <= 0."""
        flux, err = np.atleast_2d(flux).astype(float), np.atleast_2d(err).astype(float)
        with np.errstate(invalid="ignore"):
            return ~(np.isfinite(flux) & np.isfinite(err) & (err > 0))

    def observables(self, flux, err, z=None) -> np.ndarray:
        """x (n, len(names)) from fluxes and 1-sigma errors (n, n_bands) [nanomaggies] and z (n,)
        (ignored, and may be None, for a layout without redshift).

        Unusable entries come out NaN/inf (mag: non-positive flux; asinh: missing bands), without
        warnings."""
        flux, err = np.atleast_2d(flux).astype(float), np.atleast_2d(err).astype(float)
        if flux.ndim != 2 or flux.shape[1] != len(self.bands) or err.shape != flux.shape:
            raise ValueError(f"flux and err must both have shape (n, {len(self.bands)}) (bands {list(self.bands)}), "
                             f"got {flux.shape} and {err.shape}")
        if self.redshift:
            if z is None:
                raise ValueError("this model conditions on the redshift: give z (a photo-z model infers it)")
            zcol = [np.asarray(z, dtype=float).reshape(-1)]
            if len(zcol[0]) != len(flux):
                raise ValueError(f"z must have one value per row ({len(flux)}), got {len(zcol[0])}")
        else:
            zcol = []
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "mag":
                return np.column_stack([nanomaggies_to_mag(flux), MAG_ERR_PER_FRAC * err / flux, *zcol])
            s = np.asarray(self.softening)
            miss = self.missing(flux, err)
            nb = len(self.bands)
            out = np.empty((flux.shape[0], 3 * nb + len(zcol)))     # written in place: large catalogs
            mu, sigma = out[:, :nb], out[:, nb:2 * nb]
            np.divide(flux, 2 * s, out=mu)                             # 22.5 - ASINH (asinh(f / 2s) + ln s)
            np.arcsinh(mu, out=mu)
            mu += np.log(s)
            mu *= ASINH
            np.subtract(22.5, mu, out=mu)
            np.multiply(flux, flux, out=sigma)                         # ASINH err / sqrt(f^2 + 4 s^2)
            sigma += 4 * s**2
            np.sqrt(sigma, out=sigma)
            np.divide(ASINH * err, sigma, out=sigma)
            mu[miss], sigma[miss] = np.nan, np.nan
            if zcol:
                out[:, 2 * nb] = zcol[0]
            out[:, 2 * nb + len(zcol):] = miss
            return out

    def features(self, x) -> np.ndarray:
        """x -> network features before standardisation: log10 of the errors."""
        x = np.asarray(x, dtype=np.float64)
        nb = len(self.bands)
        f = x.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            f[:, nb:2 * nb] = np.log10(x[:, nb:2 * nb])
        return f

    def standardise(self, features, mean, std) -> np.ndarray:
        """(features - mean) / std, the entries of missing bands set to 0 (the training mean)."""
        features = np.asarray(features, dtype=np.float64)
        f = (features - mean) / std
        if self.kind == "asinh":
            nb = len(self.bands)
            miss = features[:, 2 * nb + int(self.redshift):] > 0.5
            f[:, :nb][miss] = 0.0
            f[:, nb:2 * nb][miss] = 0.0
        return f

    def to_dict(self) -> dict:
        return {"kind": self.kind, "bands": list(self.bands),
                **({"softening_nanomaggies": list(self.softening)} if self.softening else {}),
                **({} if self.redshift else {"redshift": False})}

    @classmethod
    def from_dict(cls, d: dict | None, bands) -> "InputLayout":
        """The layout an artifact records (none recorded: SEDflow's log magnitudes)."""
        if not d:
            return cls(tuple(bands))
        return cls(tuple(d.get("bands", bands)), d["kind"], d.get("softening_nanomaggies"), d.get("redshift", True))


def x_names(bands) -> tuple:
    """The log-magnitude layout's x columns for ``bands`` (`InputLayout`)."""
    return InputLayout(bands).names


def build_estimator(arch: str | dict, n_x: int, n_theta: int = len(UNCONSTRAINED_NAMES)):
    """A fresh (untrained) sbi density estimator for ``n_theta``-dim u (11; 12 with the redshift of a
    photo-z model) given ``n_x``-dim x (`BUILDERS` names the function that builds each model).

    Standardisation is done outside the network (stored in the artifact), so sbi's
    z-scoring is off and the network is fully determined by the architecture.
    """
    import warnings

    import torch
    from sbi.neural_nets import posterior_nn

    kwargs = dict(ARCHITECTURES[arch]) if isinstance(arch, str) else dict(arch)
    if kwargs["model"] == "sedflow_realnvp":
        from sedflow.flows import realnvp

        return realnvp(n_theta, n_x, kwargs["hidden_features"], kwargs["num_transforms"],
                       marginal_shape=kwargs.get("marginal_shape", False))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unknown kwargs passed to ConditionalFlowConfig")
        builder = posterior_nn(z_score_theta="none", z_score_x="none", **kwargs)
        dummy = torch.zeros(2, n_theta), torch.zeros(2, n_x)
        return builder(*dummy)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("sedflow", "torch", "sbi", "zuko", "numpy", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class PosteriorModel:
    """A trained amortized posterior (use `load_model` to get one)."""

    def __init__(self, net, config: dict, population_prior=None, precision: str = "auto"):
        self.net = net.eval()
        self.config = config
        self.precision = precision
        # `sedflow.population.PopulationPrior` over the prior's unconstrained coordinates, or None
        self.population_prior = population_prior
        std = config["standardization"]
        self.x_mean, self.x_std = np.array(std["x_mean"]), np.array(std["x_std"])
        self.u_mean, self.u_std = np.array(std["u_mean"]), np.array(std["u_std"])
        self.prior = prior_from_dict(config["prior"])      # with z for a photo-z model
        self.infers_redshift = isinstance(self.prior, PriorWithRedshift)
        self.arch = config["architecture"]["name"]
        self.bands = tuple(config["bands"])
        self.filters = tuple(config["filters"])
        self.inputs = InputLayout.from_dict(config.get("x_layout"), self.bands)
        self.x_names = self.inputs.names

    @property
    def precision(self) -> str:
        """Arithmetic of the flow's hidden layers when sampling: ``"float32"`` or ``"bfloat16"``
        (`sedflow.flows.make_sampler`). Set it to one of those or ``"auto"`` (bfloat16 where
        the CPU makes it fast); `log_prob` is always float32."""
        return self._precision

    @precision.setter
    def precision(self, value: str):
        from sedflow.flows import resolve_precision

        self._precision = resolve_precision(value, self.net)

    def sed_model(self, **kwargs):
        """The SED model this posterior was trained with (derived properties, MCMC, held-out sims)."""
        from sedflow.sps.model import SEDModel

        return SEDModel.from_description(self.config["sed_model"], prior=self.prior.sed_prior, **kwargs)

    # ------------------------------------------------------------------ inputs
    def _x_tensor(self, x):
        import torch

        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != len(self.x_names):
            raise ValueError(f"x must have shape (n_gal, {len(self.x_names)}) ordered {list(self.x_names)}, "
                             f"got {x.shape}")
        f = self.inputs.standardise(self.inputs.features(x), self.x_mean, self.x_std)
        if not np.all(np.isfinite(f)):
            bad = np.flatnonzero(~np.all(np.isfinite(f), axis=1))
            raise ValueError(f"{bad.size} rows of x are NaN/inf or have mag_err <= 0 (rows {bad[:10].tolist()})")
        return torch.as_tensor(f, dtype=torch.float32)

    # ------------------------------------------------------------------ sampling
    def _draw_chunks(self, x, n: int, seed, chunk_rows: int):
        """Yield (galaxies, draws, u) with u (k_gal, k, d) the de-standardised draws of those slices, one
        network call of about ``chunk_rows`` draws each, in `precision` arithmetic."""
        import torch

        from sedflow.flows import make_sampler

        if not (isinstance(n, (int, np.integer)) and n >= 1):
            raise ValueError(f"n (draws per galaxy) must be an integer >= 1, got {n!r}")
        xt = self._x_tensor(x)
        per_call = max(1, chunk_rows // n)             # galaxies per call
        draws = min(n, chunk_rows)                     # draws per galaxy per call
        sample = make_sampler(self.net, self.precision)
        with torch.random.fork_rng(), torch.inference_mode():
            torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
            for g in range(0, xt.shape[0], per_call):
                cond = xt[g:g + per_call]
                for s in range(0, n, draws):
                    k = min(draws, n - s)
                    u = sample(k, cond).permute(1, 0, 2).double().numpy()   # (n_cond, k, d)
                    u *= self.u_std
                    u += self.u_mean
                    yield slice(g, g + per_call), slice(s, s + k), u

    def sample_unconstrained(self, x, n: int, seed=None, chunk_rows: int = 20000) -> np.ndarray:
        """Draws of u (n_gal, n, 11, or 12 with z) given x (n_gal, n_x); chunks of about ``chunk_rows`` draws,
        in `precision` arithmetic."""
        out = np.empty((len(np.atleast_2d(x)), n, self.prior.ndim_unconstrained))
        for galaxies, draws, u in self._draw_chunks(x, n, seed, chunk_rows):
            out[galaxies, draws] = u
        return out

    def sample(self, x, n: int, seed=None, chunk_rows: int = 20000) -> np.ndarray:
        """Posterior draws theta (n_gal, n, 12) in the physical parameterisation (`names` order: PARAM_NAMES,
        and z last for a photo-z model: (n_gal, n, 13)); each chunk is mapped back as it is drawn, so
        only one chunk's u is held. No range checks: x outside the training set (z, sigma, colours) still
        gets draws; `sedflow.fit` and `sedflow infer` flag such rows."""
        out = np.empty((len(np.atleast_2d(x)), n, self.prior.ndim))
        for galaxies, draws, u in self._draw_chunks(x, n, seed, chunk_rows):
            out[galaxies, draws] = self.prior.from_unconstrained(u.reshape(-1, u.shape[-1])).reshape(*u.shape[:2], -1)
        return out

    def log_prob(self, theta, x) -> np.ndarray:
        """log q(theta | x) per row (theta (m, 12), 13 with z, with x (m, n_x) or one x (n_x,)), density
        over the prior's free coordinates (beta4 implied)."""
        import torch

        theta = self.prior.check(theta)
        xt = self._x_tensor(x)
        if xt.shape[0] == 1 and theta.shape[0] > 1:
            xt = xt.expand(theta.shape[0], -1)
        if xt.shape[0] != theta.shape[0]:
            raise ValueError(f"theta has {theta.shape[0]} rows, x has {xt.shape[0]}")
        out = np.full(theta.shape[0], -np.inf)
        ok = self.prior.in_support(theta)
        if ok.any():
            u = (self.prior.to_unconstrained(theta[ok]) - self.u_mean) / self.u_std
            with torch.inference_mode():
                lp = self.net.log_prob(torch.as_tensor(u, dtype=torch.float32)[None], xt[ok])[0].double().numpy()
            out[ok] = lp - np.sum(np.log(self.u_std)) + self.prior.log_abs_det_jacobian(theta[ok])
        return out

    @property
    def kind(self) -> str:
        """``"photoz"`` (infers z) or ``"specz"`` (conditions on it)."""
        return "photoz" if self.infers_redshift else "specz"

    @property
    def names(self) -> tuple:
        """The columns of `sample`: PARAM_NAMES, and "z" for a photo-z model."""
        return self.prior.names


def save_model(path, net, config: dict) -> Path:
    """Write an artifact directory (weights + JSON config with the weights' sha256), atomically per file."""
    from safetensors.torch import save_file

    if "bands" not in config or "filters" not in config or len(config["bands"]) != len(config["filters"]):
        raise ValueError("a model config names its bands and, one each, their filters")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    layout = InputLayout.from_dict(config.get("x_layout"), config["bands"])
    config = {**config, "format_version": FORMAT_VERSION, "kind": "sedflow.posterior", "x_layout": layout.to_dict(),
              "x_names": list(layout.names), "theta_names": list(prior_from_dict(config["prior"]).names),
              "u_names": list(UNCONSTRAINED_NAMES) + (["u_z"] if not layout.redshift else []),
              "versions": _versions(),
              "weights_sha256": file_sha256(path / WEIGHTS)}
    write_json(path / CONFIG, config)
    return path


def load_model(model=None, precision: str = "auto") -> PosteriorModel:
    """Load a model: a directory, a shipped model's name, or None for the default shipped model.
    ``precision``: its sampling arithmetic (`PosteriorModel.precision`).

    Never unpickles anything: safetensors weights and a JSON config, checked against the
    config's sha256; a corrupted, tampered or future-format artifact raises `ArtifactError`.

    Example
    -------
    >>> import sedflow
    >>> post = sedflow.load_model()              # the shipped SDSS model, i.e. load_model("sdss")
    >>> post.bands, post.x_names[:2]
    (('u', 'g', 'r', 'i', 'z'), ('asinh_mag_u', 'asinh_mag_g'))
    """
    from safetensors.torch import load_file

    path = model_path(model)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise ArtifactError(f"{path} is not a sedflow model: it needs {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path / CONFIG} is not valid JSON: {e}") from e
    if config.get("kind") != "sedflow.posterior":
        raise ArtifactError(f"{path / CONFIG} is not a sedflow posterior config")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has artifact format {version}; this sedflow reads up to {FORMAT_VERSION} "
                            "(upgrade sedflow)")
    if version < 2:          # format 1: SDSS ugriz, bands and filters implied
        config = {**config, "bands": list(BANDS), "filters": list(SDSS_FILTERS)}
    bands = config.get("bands") or []
    try:
        layout = InputLayout.from_dict(config.get("x_layout"), bands)
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: its input layout is invalid ({e})") from None
    try:
        prior = prior_from_dict(config["prior"])
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: its prior is invalid ({e})") from None
    if (list(config.get("x_names", [])) != list(layout.names) or len(config.get("filters") or []) != len(bands)
            or list(config.get("theta_names", [])) != list(prior.names)
            or layout.redshift == isinstance(prior, PriorWithRedshift)):
        raise ArtifactError(f"{path}: its bands, filters, x or theta definitions are inconsistent or differ from "
                            "this sedflow's")
    digest = file_sha256(path / WEIGHTS)
    if digest != config.get("weights_sha256"):
        raise ArtifactError(f"{path / WEIGHTS} is corrupted or was modified: sha256 {digest[:12]}... does not match "
                            f"the config's {str(config.get('weights_sha256'))[:12]}...")
    net = build_estimator(config["architecture"]["kwargs"], n_x=len(config["x_names"]), n_theta=prior.ndim_unconstrained)
    try:
        net.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: weights do not fit architecture {config['architecture']}: {e}") from e
    return PosteriorModel(net, config, _load_population_prior(path, prior), precision)


def _load_population_prior(path: Path, prior):
    """The artifact's `sedflow.population.PopulationPrior` (``population_prior.json``), or None."""
    from sedflow.population import POPULATION_FILE, PopulationPrior

    file = path / POPULATION_FILE
    if not file.is_file():
        return None
    try:
        pop = PopulationPrior.from_dict(json.loads(file.read_text()))
    except (ValueError, KeyError, TypeError, np.linalg.LinAlgError) as e:
        raise ArtifactError(f"{file} is not a valid population prior: {e}") from None
    if pop.ndim != prior.ndim_unconstrained:
        raise ArtifactError(f"{file} is a density in {pop.ndim} dimensions, the model's prior has "
                            f"{prior.ndim_unconstrained} unconstrained coordinates")
    fitted_map = pop.fitted_on.get("unconstrained", "logit")      # files without it were fitted in logit coordinates
    if fitted_map != prior.unconstrained:
        raise ArtifactError(f"{file} is a density over {fitted_map} coordinates, the model's prior uses "
                            f"{prior.unconstrained}: refit it (sedflow population-prior)")
    return pop
