"""Affine coupling flows whose context is applied once per galaxy, not once per draw.

An amortized posterior draws thousands of samples for one galaxy, all with the same
condition x. In a coupling transform (RealNVP, Dinh et al. 2017, arXiv:1605.08803) the
hyper network's first layer sees ``[u_a, x]``; its x columns give the same product for every
draw. `ContextCachedCoupling` is zuko's `GeneralCouplingTransform` (same parameters, same
function) that computes ``W_x x + b`` once per condition and, per draw, only ``W_a u_a``.
Sampling a coupling transform is one pass of its network (zuko's ``MAF(passes=2)``, today's
``coupling`` architecture, inverts with two).

Sampling can run the hyper networks' hidden layers in bfloat16 (`make_sampler`, `BFloat16Sampler`):
on a CPU with AMX tiles (Intel Sapphire Rapids and later) a bfloat16 matmul is ~10x a float32 one.
The first layer stays float32-accurate (one fused bfloat16 matmul of high and low parts), the
affine transform itself float32; the cost is a rounding of the hidden activations and weights to
8-bit mantissas (measured on the shipped model: per-draw offsets ~0.01 posterior sigma,
`tests/test_flows.py`). ``"auto"`` picks it only where it is fast (`bfloat16_is_fast`).
`sampling_precision` runs the couplings' own hidden layers in bfloat16 with autograd: the
arithmetic of ``sedflow train --precision bfloat16``.

`ConditionalSinhArcsinh` is an optional last step of a draw (``realnvp(..., marginal_shape=True)``):
a skew and tail weight per parameter, set by the condition once per galaxy.

`realnvp(n_theta, n_x, ...)` builds the flow as an sbi density estimator (sbi's `ZukoFlow`
around a zuko `Flow`), so that `sedflow.train` and `sedflow.posterior` use it like any
other: ``net.log_prob(u[None], x)``, ``net.sample((n,), condition=x)``.

Example
-------
>>> import torch
>>> net = realnvp(11, 16, hidden_features=(64, 64), transforms=6)
>>> net.sample((1000,), condition=torch.zeros(3, 16)).shape
torch.Size([1000, 3, 11])
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from functools import partial

import torch
from torch.distributions import Transform, constraints
from torch.nn import functional as F
from zuko.flows import Flow, GeneralCouplingTransform, LazyTransform, UnconditionalDistribution
from zuko.distributions import DiagNormal
from zuko.nn import MLP
from zuko.transforms import CouplingTransform, DependentTransform, MonotonicAffineTransform
from zuko.utils import unpack

__all__ = ["BFloat16Sampler", "ContextCachedCoupling", "ConditionalSinhArcsinh", "IndexedCouplingTransform",
           "PRECISIONS", "SinhArcsinhTransform", "bfloat16_is_fast", "coupling_masks", "make_sampler", "realnvp",
           "resolve_precision", "sampling_precision"]

PRECISIONS = ("auto", "float32", "bfloat16")


class ContextCachedCoupling(GeneralCouplingTransform):
    """`zuko.flows.GeneralCouplingTransform` with its context term computed once per condition.

    The hyper network's first Linear layer acts on ``[x_a, c]``; ``forward(c)`` applies its
    context columns (and bias) to ``c`` once and the returned transform adds that to
    ``W_a x_a`` for each draw, then runs the rest of the network. The parameters and the
    function are zuko's (`tests/test_flows.py` checks both give the same numbers).
    ``compute_dtype`` (float32; bfloat16 inside `sampling_precision`) is the dtype of the first
    layer's output and of the layers after it.
    """

    compute_dtype = torch.float32

    def forward(self, c=None):
        if c is None or len(self.hyper) < 3:       # no condition, or no hidden layer: zuko's own path
            return super().forward(c)
        first = self.hyper[0]
        n_a = int(self.mask.sum())
        context_term = F.linear(c, first.weight[:, n_a:], first.bias)
        weight_a = first.weight[:, :n_a]
        dtype = None if self.compute_dtype == torch.float32 else self.compute_dtype
        first_block = partial(_first_block, context_term, weight_a, self.hyper[1], dtype)
        return IndexedCouplingTransform(partial(self._cached_meta, first_block), self.mask)

    def _cached_meta(self, first_block, x_a):
        phi = first_block(x_a)                  # the first Linear layer and its activation
        layers = list(self.hyper)[2:]
        if self.compute_dtype == torch.float32:
            for layer in layers:
                phi = layer(phi)
        else:   # the layers after the first in compute_dtype
            *hidden, last = layers              # zuko's MLP: (Linear, activation) pairs, then the output Linear
            for linear, activation in zip(hidden[::2], hidden[1::2]):
                w, b = _weights(linear, phi.dtype)
                phi = _linear_relu(phi, w, b) if isinstance(activation, torch.nn.ReLU) else activation(F.linear(phi, w, b))
            phi = F.linear(phi, *_weights(last, phi.dtype)).float()
        phi = unpack(phi.unflatten(-1, (-1, self.total)), self.shapes)
        return DependentTransform(self.univariate(*phi), 1)


class SinhArcsinhTransform(Transform):
    r"""The sinh-arcsinh map of Jones & Pewsey (2009, Biometrika 96, 761) about a pivot m with width s:

    .. math:: y = m + s \sinh(\delta \operatorname{asinh}((x - m) / s) - \epsilon)

    epsilon skews, delta > 1 lightens and delta < 1 weighs down both tails; epsilon = 0, delta = 1
    is the identity. Elementwise, monotone, with a closed-form inverse and log-Jacobian.
    """

    domain = codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, pivot, width, skew, tail, **kwargs):
        super().__init__(**kwargs)
        self.pivot, self.width, self.skew, self.tail = pivot, width, skew, tail

    def call_and_ladj(self, x):
        """y and log |dy/dx| with the asinh computed once (the training loss calls this)."""
        t = (x - self.pivot) / self.width
        a = self.tail * torch.asinh(t) - self.skew
        log_cosh = a.abs() + torch.log1p(torch.exp(-2 * a.abs())) - math.log(2)
        return self.pivot + self.width * torch.sinh(a), log_cosh + torch.log(self.tail) - 0.5 * torch.log1p(t * t)

    def _call(self, x):
        return self.call_and_ladj(x)[0]

    def _inverse(self, y):
        t = (y - self.pivot) / self.width
        return self.pivot + self.width * torch.sinh((torch.asinh(t) + self.skew) / self.tail)

    def log_abs_det_jacobian(self, x, y):
        return self.call_and_ladj(x)[1]


class ConditionalSinhArcsinh(LazyTransform):
    """A `SinhArcsinhTransform` on each coordinate whose pivot, width, skew and tail weight depend
    on the condition only: once per galaxy, its network sets the shape of each marginal of
    q(theta | x) (skewness and tail weight, which an affine coupling flow's Gaussian base carries
    through only approximately), and each draw pays a few elementwise operations.

    Bounds keep it tame: |skew| < 2, tail weight delta in (1/2, 2), width in (e^-3, e^3) of the
    standardised coordinates. The output layer starts at zero: an untrained layer is the identity.
    """

    def __init__(self, features: int, context: int, hidden_features=(64, 64)):
        super().__init__()
        self.hyper = MLP(context, 4 * features, hidden_features)
        torch.nn.init.zeros_(self.hyper[-1].weight)
        torch.nn.init.zeros_(self.hyper[-1].bias)

    def forward(self, c=None):
        pivot, log_width, skew, log_tail = self.hyper(c).unflatten(-1, (4, -1)).unbind(-2)
        transform = SinhArcsinhTransform(pivot, torch.exp(3 * torch.tanh(log_width / 3)), 2 * torch.tanh(skew / 2),
                                         torch.exp(math.log(2) * torch.tanh(log_tail / math.log(2))))
        return DependentTransform(transform, 1)


class IndexedCouplingTransform(CouplingTransform):
    """zuko's `CouplingTransform` with the split and merge done by ``index_select`` (and one
    ``cat``) instead of advanced indexing and index assignment: the same values, ~1.7x faster
    on a sampler's (draws, galaxies, 11) tensors."""

    def __init__(self, meta, mask, **kwargs):
        super().__init__(meta, mask, **kwargs)
        self.unsplit = torch.argsort(torch.cat([self.idx_a, self.idx_b]))

    def split(self, x):
        return x.index_select(-1, self.idx_a), x.index_select(-1, self.idx_b)

    def merge(self, x_a, x_b, shape):
        return torch.cat([x_a, x_b], -1).index_select(-1, self.unsplit)


def _first_block(context_term, weight_a, activation, dtype, x_a):
    """activation(x_a W_a^T + context term) in float32, then cast to ``dtype`` (None: kept float32)."""
    phi = F.linear(x_a, weight_a) + context_term
    if dtype is None:
        return activation(phi)
    return (phi.relu_() if isinstance(activation, torch.nn.ReLU) else activation(phi)).to(dtype)


MAX_FUSED_CONDITIONS = 64   # above this many conditions per call the one-hot columns outweigh the saving
_MIN_SLOPE = inspect.signature(MonotonicAffineTransform).parameters["slope"].default     # zuko's: 1e-3


class BFloat16Sampler:
    """``net.sample((n,), condition=c)`` of a `realnvp` flow with its couplings' hidden layers in bfloat16.

    Each `ContextCachedCoupling` is packed once, at construction, into matrices over all the flow's
    coordinates, so a draw never splits or merges its coordinates:

    * first layer: ``relu([x_hi, x_hi, x_lo, onehot, onehot] @ [W_hi, W_lo, W_hi, C_hi, C_lo]^T)``, one
      fused oneDNN matmul + ReLU. W holds zuko's first-layer columns of the conditioning half and zeros
      for the transformed half; C is each condition's context term ``W_x c + b`` (float32, once per
      call), entering through one-hot columns; every factor is split into bfloat16 high and low parts
      (x W ~ x_hi W_hi + x_hi W_lo + x_lo W_hi), so the layer is float32-accurate to ~1e-5 before its
      one rounding to bfloat16. Above `MAX_FUSED_CONDITIONS` conditions per call it is a float32 matmul
      plus the context term instead.
    * hidden layers: bfloat16 matmul + ReLU (oneDNN), weights rounded to bfloat16.
    * output layer: a shift and a scaled log-slope for every coordinate, zero rows for the conditioning
      half (shift 0, slope 1: those coordinates pass unchanged, exactly), then float32:
      zuko's ``MonotonicAffineTransform`` inverse ``(y - shift) / exp(a / (1 + |a / ln s|))`` written
      ``(y - shift) * s ** softsign(a / |ln s|)`` with s its minimum slope (1e-3).

    The base draws are the flow's own (same generator, same order as ``net.sample``), so a seed gives
    the float32 draws up to the bfloat16 roundings (``tests/test_flows.py``). Any other transform in the
    flow (e.g. `ConditionalSinhArcsinh`) runs as zuko's, in float32. On the shipped model and the
    bench's 2 x 10,000 draws per call this is ~1.6x the sampler that ran each coupling as zuko's
    transform with bfloat16 layers.

    Example
    -------
    >>> net = realnvp(11, 16, hidden_features=(64, 64), transforms=4)
    >>> with torch.inference_mode():
    ...     draws = BFloat16Sampler(net)(1000, torch.zeros(3, 16))
    >>> draws.shape
    torch.Size([1000, 3, 11])
    """

    def __init__(self, net):
        self.net = net
        self.steps = [_PackedCoupling(t) if _PackedCoupling.packs(t) else t for t in net.net.transform.transforms]

    def __call__(self, n: int, condition: torch.Tensor) -> torch.Tensor:
        """(n, n_cond, d) draws given conditions (n_cond, n_x), without gradients."""
        with torch.inference_mode():
            c = self.net._embedding_net(condition)
            base = self.net.net.base(c)
            standard = isinstance(base, DiagNormal) and bool((base.base_dist.loc == 0).all()
                                                             & (base.base_dist.scale == 1).all())
            if standard:            # zuko's draws (torch.normal(0, 1) is randn), without its loc/scale passes
                z = torch.randn(n, *c.shape[:-1], *base.event_shape)
            else:
                z = base.expand(c.shape[:-1]).sample((n,))
            shape = z.shape
            x = z.reshape(-1, shape[-1])
            onehot = _onehot_columns(c.shape[0], n) if c.shape[0] <= MAX_FUSED_CONDITIONS else None
            for step in reversed(self.steps):
                if isinstance(step, _PackedCoupling):
                    x = step.inverse(x, c, onehot)
                else:
                    x = step(c).inv(x.view(shape)).reshape(x.shape)
            return x.view(shape)


def _onehot_columns(n_cond: int, n: int):
    """Each of n * n_cond rows' condition (rows (draw, condition)) as two copies of its one-hot vector,
    bfloat16: the columns that carry the high and low parts of the context term in the fused first layer."""
    eye = torch.eye(n_cond, dtype=torch.bfloat16)
    return torch.cat([eye, eye], 1).repeat(n, 1)


class _PackedCoupling:
    """One `ContextCachedCoupling`'s weights as `BFloat16Sampler` uses them (see there)."""

    @staticmethod
    def packs(layer) -> bool:
        """Whether ``layer`` is an affine coupling with a ReLU network (the `realnvp` flows' couplings)."""
        return (isinstance(layer, ContextCachedCoupling) and layer.univariate is MonotonicAffineTransform
                and tuple(layer.shapes) == ((), ()) and len(layer.hyper) >= 3
                and all(isinstance(m, torch.nn.ReLU) for m in list(layer.hyper)[1::2]))

    def __init__(self, layer):
        linears = list(layer.hyper)[::2]
        first, hidden, last = linears[0], linears[1:-1], linears[-1]
        d = layer.mask.numel()
        idx_a, idx_b = layer.mask.nonzero().squeeze(-1), (~layer.mask).nonzero().squeeze(-1)
        with torch.no_grad():
            weight_a = first.weight.new_zeros(first.out_features, d)
            weight_a[:, idx_a] = first.weight[:, :idx_a.numel()]
            self.weight_a = weight_a
            self.weight_context, self.bias_context = first.weight[:, idx_a.numel():], first.bias
            hi, lo = _hi_lo(weight_a)
            self.weight_first = torch.cat([hi, lo, hi], 1)
            self.hidden = [_weights(linear, torch.bfloat16) for linear in hidden]
            # zuko's output: (shift, raw log-slope a) for each transformed coordinate, interleaved
            log_slope = abs(math.log(_MIN_SLOPE))
            weight_out, bias_out = last.weight.new_zeros(2 * d, last.in_features), last.weight.new_zeros(2 * d)
            weight_out[idx_b], bias_out[idx_b] = last.weight[0::2], last.bias[0::2]
            weight_out[d + idx_b], bias_out[d + idx_b] = last.weight[1::2] / log_slope, last.bias[1::2] / log_slope
            self.weight_out, self.bias_out = weight_out.to(torch.bfloat16), bias_out.to(torch.bfloat16)
        self.d = d

    def first_layer(self, y, condition, onehot=None):
        """relu(the first Linear layer) of draws y (n * n_cond, d) under conditions (n_cond, n_x), rows
        (draw, condition), rounded once to bfloat16; ``onehot``: `BFloat16Sampler`'s one-hot columns
        (fused path), None for the float32 matmul."""
        context_term = F.linear(condition, self.weight_context, self.bias_context)      # (n_cond, hidden)
        if onehot is None:
            phi = F.linear(y, self.weight_a).view(-1, *context_term.shape).add_(context_term)
            return phi.relu_().to(torch.bfloat16).view(y.shape[0], -1)
        y_hi = y.to(torch.bfloat16)
        c_hi, c_lo = _hi_lo(context_term)
        return _linear_relu(torch.cat([y_hi, y_hi, (y - y_hi).to(torch.bfloat16), onehot], 1),
                            torch.cat([self.weight_first, c_hi.T, c_lo.T], 1), None)

    def inverse(self, y, condition, onehot=None):
        """x with this coupling's forward map f(x | c) = y (shapes as `first_layer`'s), float32."""
        phi = self.first_layer(y, condition, onehot)
        for weight, bias in self.hidden:
            phi = _linear_relu(phi, weight, bias)
        out = F.linear(phi, self.weight_out, self.bias_out).float()
        shift, a = out[:, :self.d], out[:, self.d:]        # a: zuko's raw log-slope / |ln s|
        return (y - shift).mul_(torch.div(a, a.abs().add_(1)).mul_(math.log(_MIN_SLOPE)).exp_())


def _hi_lo(t):
    """bfloat16 (high, low) with high + low = t to ~16 bits of mantissa."""
    hi = t.to(torch.bfloat16)
    return hi, (t - hi.float()).to(torch.bfloat16)


def _weights(linear, dtype) -> tuple:
    """A Linear layer's weight and bias (or None) cast to ``dtype``."""
    return linear.weight.to(dtype), None if linear.bias is None else linear.bias.to(dtype)


_FUSED = {"linear_relu": hasattr(torch.ops.mkldnn, "_linear_pointwise")}


def _linear_relu(phi, weight, bias):
    """relu(F.linear(phi, weight, bias)) through oneDNN's fused kernel (the one torch.compile's CPU
    backend emits; ~1.1x the two ops on the shipped model in bfloat16), the two ops where it is missing
    or where gradients are needed (the fused kernel has no backward)."""
    if _FUSED["linear_relu"] and not torch.is_grad_enabled():
        try:
            return torch.ops.mkldnn._linear_pointwise(phi, weight, bias, "relu", [], "")
        except RuntimeError:
            _FUSED["linear_relu"] = False
    return F.linear(phi, weight, bias).relu_()


def bfloat16_is_fast() -> bool:
    """Whether this CPU has AMX tiles, where torch's bfloat16 matmuls (oneDNN) outrun float32 ~10x."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str = "auto", net=None) -> str:
    """``"float32"`` or ``"bfloat16"``: ``"auto"`` is bfloat16 where it is fast and ``net`` (if given)
    has context-cached couplings, the only layers with a bfloat16 path; float32 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    supported = net is None or any(isinstance(m, ContextCachedCoupling) for m in net.modules())
    if precision == "bfloat16" and not supported:
        raise ValueError("bfloat16 sampling needs a realnvp (context-cached coupling) flow")
    if precision == "auto":
        return "bfloat16" if supported and bfloat16_is_fast() else "float32"
    return precision


def make_sampler(net, precision: str):
    """A function ``(n, condition) -> draws`` of shape (n, n_cond, d) for ``net`` in ``precision``
    (``"float32"``: zuko's ``net.sample``; ``"bfloat16"``: `BFloat16Sampler`; `resolve_precision`
    turns ``"auto"`` into one of them)."""
    if precision == "bfloat16":
        return BFloat16Sampler(net)
    if precision == "float32":
        return lambda n, condition: net.sample((n,), condition=condition)
    raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")


@contextmanager
def sampling_precision(net, precision: str):
    """Within the block, ``net``'s context-cached couplings run their hidden layers in ``precision``
    (``"float32"`` or ``"bfloat16"``), gradients included: ``sedflow train --precision``. Sampling
    takes `make_sampler`."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]
    layers = [m for m in net.modules() if isinstance(m, ContextCachedCoupling)]
    for m in layers:
        m.compute_dtype = dtype
    try:
        yield net
    finally:
        for m in layers:
            m.compute_dtype = torch.float32


def coupling_masks(n: int, transforms: int) -> list:
    """Boolean masks (True: conditioning half): random halves of ``n``, each followed by its complement."""
    g = torch.Generator().manual_seed(0)
    masks = []
    for i in range(transforms):
        masks.append(torch.randperm(n, generator=g) < n // 2 if i % 2 == 0 else ~masks[-1])
    return masks


def realnvp(n_theta: int, n_x: int, hidden_features=(64, 64), transforms: int = 5, cache_context: bool = True,
            marginal_shape: bool = False):
    """An affine coupling flow q(theta | x) as an sbi `ZukoFlow`.

    Masks come in complementary pairs of random halves (fixed generator; stored with the
    weights), so every parameter is transformed in every pair and the pairs split the
    parameters differently, unlike alternating checkered masks, which only ever split odd
    from even.
    ``cache_context=False`` builds zuko's own `GeneralCouplingTransform` (same parameters,
    same state dict, slower sampling): the reference the cached one is checked against.
    ``marginal_shape=True`` puts a `ConditionalSinhArcsinh` at the parameter end (first in the
    list: applied to theta before the couplings, the last step of a draw).
    """
    from sbi.neural_nets.estimators.zuko_flow import ZukoFlow

    layer = ContextCachedCoupling if cache_context else GeneralCouplingTransform
    layers = [layer(n_theta, n_x, mask=m, hidden_features=tuple(hidden_features))
              for m in coupling_masks(n_theta, transforms)]
    if marginal_shape:
        layers.insert(0, ConditionalSinhArcsinh(n_theta, n_x))
    flow = Flow(layers,
                UnconditionalDistribution(DiagNormal, torch.zeros(n_theta), torch.ones(n_theta), buffer=True))
    return ZukoFlow(flow, torch.nn.Identity(), input_shape=torch.Size([n_theta]), condition_shape=torch.Size([n_x]))
