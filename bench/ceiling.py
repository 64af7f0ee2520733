"""How close the default sampler gets to the CPU's dense float32 matmul rate.

Peer: torch's float32 matmul rate (GFLOP/s; 2 n^3 FLOPs per n x n product, n = 2048, best
of several) at 1 thread and at all cores. Measured: the FLOP rate of the shipped (default,
``coupling``) model's network while sampling, net.sample((10000,), condition of 2 galaxies)
= 20,000 draws per call as `PosteriorModel.sample` makes them, at the same thread counts;
the ratio is the fraction of the matmul ceiling it achieves.

FLOPs per sample are counted, not estimated: a forward hook on every ``torch.nn.Linear``
(zuko's ``MaskedLinear`` is one, and applies its masked weight as a full dense matmul)
adds 2 * in_features * out_features per row that goes through the layer, over one sampling
call. This counts each layer as often as sampling really calls it: the coupling MAF
(``passes=2``) inverts each of its 5 transforms with 2 passes of its 3-layer MLP
(22 -> 64 -> 64 -> 22; input = 11 draws + 11 conditions), 30 layer calls per sample; the
paper MAF inverts each of its 15 MADE transforms with 11 sequential passes. Biases,
activations, the affine updates and the base-distribution draws are left out, so the
achieved rate is a slight underestimate.
"""

from __future__ import annotations

from bench._common import CPUS, best_time, row, threads

N_MATMUL = 2048


def linear_flops_per_sample(net, n: int = 64, n_cond: int = 2) -> float:
    """FLOPs of the Linear layers per drawn sample (see the module docstring)."""
    import numpy as np
    import torch

    total = [0]

    def hook(module, inputs, output):
        rows = int(np.prod(inputs[0].shape[:-1]))
        total[0] += 2 * module.in_features * module.out_features * rows

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            net.sample((n,), condition=torch.zeros(n_cond, 11))
    finally:
        for h in handles:
            h.remove()
    return total[0] / (n * n_cond)


def matmul_gflops(n_threads: int, repeat: int) -> float:
    import torch

    a, b = torch.randn(N_MATMUL, N_MATMUL), torch.randn(N_MATMUL, N_MATMUL)
    with threads(n_threads):
        t = best_time(lambda: a @ b, repeat=repeat)
    return 2 * N_MATMUL**3 / t / 1e9


def sampler_rate(net, n_threads: int, repeat: int) -> float:
    """Samples/s of net.sample((10000,), condition of 2 galaxies)."""
    import torch

    cond = torch.randn(2, 11, generator=torch.Generator().manual_seed(0))
    with threads(n_threads), torch.inference_mode():
        t = best_time(lambda: net.sample((10000,), condition=cond), repeat=repeat)
    return 20000 / t


def run(quick: bool = False) -> dict:
    from sedflow.posterior import build_estimator, load_model

    repeat = 3 if quick else 10
    net = load_model().net
    flops = linear_flops_per_sample(net)
    res = {"matmul_n": N_MATMUL, "flops_per_sample": {"coupling": flops,
                                                      "paper": linear_flops_per_sample(build_estimator("paper", n_x=11), n=4)},
           "matmul_gflops": {}, "sampler_samples_per_s": {}, "sampler_gflops": {}}
    rows = [row("coupling Linear FLOPs per sample", flops, "FLOP", "paper MAF", res["flops_per_sample"]["paper"])]
    for t in sorted({1, CPUS}):
        ceiling = matmul_gflops(t, repeat)
        sps = sampler_rate(net, t, repeat)
        achieved = flops * sps / 1e9
        res["matmul_gflops"][str(t)], res["sampler_samples_per_s"][str(t)] = ceiling, sps
        res["sampler_gflops"][str(t)] = achieved
        rows.append(row(f"fp32 matmul {N_MATMUL}^2, {t} thread(s)", ceiling, "GFLOP/s"))
        rows.append(row(f"coupling sampler ({sps:,.0f} samples/s), {t} thread(s)", achieved, "GFLOP/s",
                        f"matmul, {t} thread(s)", ceiling))
    res["rows"] = rows
    return res
