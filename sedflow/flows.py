"""Affine coupling flows whose context is applied once per galaxy, not once per draw.

An amortized posterior draws thousands of samples for one galaxy, all with the same
condition x. In a coupling transform (RealNVP, Dinh et al. 2017, arXiv:1605.08803) the
hyper network's first layer sees ``[u_a, x]``; its x columns give the same product for every
draw. `ContextCachedCoupling` is zuko's `GeneralCouplingTransform` (same parameters, same
function) that computes ``W_x x + b`` once per condition and, per draw, only ``W_a u_a``.
Sampling a coupling transform is one pass of its network (zuko's ``MAF(passes=2)``, today's
``coupling`` architecture, inverts with two).

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

from functools import partial

import torch
from torch.nn import functional as F
from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
from zuko.distributions import DiagNormal
from zuko.transforms import CouplingTransform, DependentTransform
from zuko.utils import unpack

__all__ = ["ContextCachedCoupling", "coupling_masks", "realnvp"]


class ContextCachedCoupling(GeneralCouplingTransform):
    """`zuko.flows.GeneralCouplingTransform` with its context term computed once per condition.

    The hyper network's first Linear layer acts on ``[x_a, c]``; ``forward(c)`` applies its
    context columns (and bias) to ``c`` once and the returned transform adds that to
    ``W_a x_a`` for each draw, then runs the rest of the network. The parameters and the
    function are zuko's (`tests/test_flows.py` checks both give the same numbers).
    """

    def forward(self, c=None):
        if c is None:
            return super().forward(c)
        first = self.hyper[0]
        n_a = int(self.mask.sum())
        context_term = F.linear(c, first.weight[:, n_a:], first.bias)
        return CouplingTransform(partial(self._cached_meta, context_term, first.weight[:, :n_a]), self.mask)

    def _cached_meta(self, context_term, weight_a, x_a):
        phi = F.linear(x_a, weight_a) + context_term
        for layer in list(self.hyper)[1:]:
            phi = layer(phi)
        phi = unpack(phi.unflatten(-1, (-1, self.total)), self.shapes)
        return DependentTransform(self.univariate(*phi), 1)


def coupling_masks(n: int, transforms: int) -> list:
    """Boolean masks (True: conditioning half): random halves of ``n``, each followed by its complement."""
    g = torch.Generator().manual_seed(0)
    masks = []
    for i in range(transforms):
        masks.append(torch.randperm(n, generator=g) < n // 2 if i % 2 == 0 else ~masks[-1])
    return masks


def realnvp(n_theta: int, n_x: int, hidden_features=(64, 64), transforms: int = 5, cache_context: bool = True):
    """An affine coupling flow q(theta | x) as an sbi `ZukoFlow`.

    Masks come in complementary pairs of random halves (fixed generator; stored with the
    weights), so every parameter is transformed in every pair and the pairs split the
    parameters differently, unlike alternating checkered masks, which only ever split odd
    from even.
    ``cache_context=False`` builds zuko's own `GeneralCouplingTransform` (same parameters,
    same state dict, slower sampling): the reference the cached one is checked against.
    """
    from sbi.neural_nets.estimators.zuko_flow import ZukoFlow

    layer = ContextCachedCoupling if cache_context else GeneralCouplingTransform
    layers = [layer(n_theta, n_x, mask=m, hidden_features=tuple(hidden_features))
              for m in coupling_masks(n_theta, transforms)]
    flow = Flow(layers,
                UnconditionalDistribution(DiagNormal, torch.zeros(n_theta), torch.ones(n_theta), buffer=True))
    return ZukoFlow(flow, torch.nn.Identity(), input_shape=torch.Size([n_theta]), condition_shape=torch.Size([n_x]))
