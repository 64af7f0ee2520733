"""How close the default sampler gets to the CPU's dense float32 matmul rate.

Peer: torch's float32 matmul rate (GFLOP/s; 2 n^3 FLOPs per n x n product, n = 2048, best
of several) at 1 thread and at all cores. Measured: the FLOP rate of the shipped model's
network while sampling, net.sample((10000,), condition of 2 galaxies) = 20,000 draws per call
as `PosteriorModel.sample` makes them, at the same thread counts; the ratio is the fraction of
the matmul ceiling it achieves. Also for ``realnvp``, the architecture shipped before 2026-12-04.

FLOPs per sample are counted, not estimated: torch's ``FlopCounterMode`` counts the matrix
products (2 x m x k x n each) of one sampling call as it really runs them: a context computed
once per galaxy (``realnvp``, ``realnvp_deep``) counts once, the two passes per transform of a
two-pass MAF (``coupling``) would count twice. Biases, activations, the affine updates and the
base-distribution draws are not matrix products and are left out, so the achieved rate is a
slight underestimate.

Where ``--precision auto`` samples in bfloat16 (CPUs with AMX), the shipped sampler is also
timed in bfloat16 (`sedflow.flows.BFloat16Sampler`, as `PosteriorModel.sample` runs it) against
torch's bfloat16 matmul rate, a ceiling ~7-10x the float32 one: there the sampler's hidden
matmuls run near that rate and the rest (first and output layers over the (draws, 160)
activations, the float32 affine updates, the base draws) takes about as long again.
"""

from __future__ import annotations

from bench._common import CPUS, best_time, row, threads

N_MATMUL = 2048
DRAWS, GALAXIES = 10000, 2


def flops_per_sample(net, n_x: int, n: int = 256, n_cond: int = 2) -> float:
    """Matrix-product FLOPs per drawn sample (see the module docstring)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net.sample((n,), condition=torch.zeros(n_cond, n_x))
    return counter.get_total_flops() / (n * n_cond)


def matmul_gflops(n_threads: int, repeat: int, dtype: str = "float32") -> float:
    import torch

    a, b = (torch.randn(N_MATMUL, N_MATMUL, dtype=getattr(torch, dtype)) for _ in range(2))
    with threads(n_threads):
        t = best_time(lambda: a @ b, repeat=repeat)
    return 2 * N_MATMUL**3 / t / 1e9


def sampler_rate(net, n_x: int, n_threads: int, repeat: int, precision: str = "float32") -> float:
    """Samples/s of net.sample((10000,), condition of 2 galaxies), in ``precision`` arithmetic."""
    import torch

    from sedflow.flows import make_sampler

    cond = torch.randn(GALAXIES, n_x, generator=torch.Generator().manual_seed(0))
    sample = make_sampler(net, precision)
    with threads(n_threads), torch.inference_mode():
        t = best_time(lambda: sample(DRAWS, cond), repeat=repeat)
    return DRAWS * GALAXIES / t


def run(quick: bool = False) -> dict:
    from bench._common import untrained_posterior
    from sedflow.flows import bfloat16_is_fast
    from sedflow.posterior import load_model

    repeat = 3 if quick else 10
    post = load_model(precision="float32")
    n_x, arch = len(post.x_names), post.arch
    nets = {arch: post.net, "realnvp": untrained_posterior("realnvp").net}
    res = {"matmul_n": N_MATMUL, "arch": arch,
           "flops_per_sample": {a: flops_per_sample(net, n_x) for a, net in nets.items()},
           "matmul_gflops": {}, "sampler_samples_per_s": {}, "sampler_gflops": {}}
    rows = [row(f"{arch} matmul FLOPs per sample", res["flops_per_sample"][arch], "FLOP", "realnvp",
                res["flops_per_sample"]["realnvp"])]
    for t in sorted({1, CPUS}):
        ceiling = matmul_gflops(t, repeat)
        res["matmul_gflops"][str(t)] = ceiling
        rows.append(row(f"fp32 matmul {N_MATMUL}^2, {t} thread(s)", ceiling, "GFLOP/s"))
        for a, net in nets.items():
            sps = sampler_rate(net, n_x, t, repeat)
            achieved = res["flops_per_sample"][a] * sps / 1e9
            res["sampler_samples_per_s"].setdefault(a, {})[str(t)] = sps
            res["sampler_gflops"].setdefault(a, {})[str(t)] = achieved
            rows.append(row(f"{a} sampler ({sps:,.0f} samples/s), {t} thread(s)", achieved, "GFLOP/s",
                            f"matmul, {t} thread(s)", ceiling))
        if bfloat16_is_fast():      # what `--precision auto` samples in here, against the bfloat16 matmul rate
            ceiling16 = matmul_gflops(t, repeat, "bfloat16")
            sps = sampler_rate(post.net, n_x, t, repeat, "bfloat16")
            res.setdefault("matmul_gflops_bfloat16", {})[str(t)] = ceiling16
            res["sampler_samples_per_s"].setdefault(f"{arch}_bfloat16", {})[str(t)] = sps
            rows.append(row(f"{arch} sampler in bfloat16 ({sps:,.0f} samples/s), {t} thread(s)",
                            res["flops_per_sample"][arch] * sps / 1e9, "GFLOP/s", f"bfloat16 matmul, {t} thread(s)",
                            ceiling16))
    res["rows"] = rows
    return res
