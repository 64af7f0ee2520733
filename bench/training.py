"""Training throughput: samples/s of one optimisation step (forward + backward + Adam) at
batch size 2048, in-process (no Ray), all cores.

Measured: the default architecture (``DEFAULT_ARCH``). Peers: ``realnvp`` (shipped before
2026-12-04), ``coupling`` (before the 2026-12 model) and ``paper``. All built with
`sedflow.posterior.build_estimator` for the shipped model's x (its number of inputs), loss and
step as in `sedflow.train` (the same negative log-probability module, Adam at lr 5e-4), on
random standard-normal data of the right shapes
(the training data are standardised); the default also with ``--precision bfloat16``. Steps
run until ``min_time`` seconds have passed (at least ``min_steps``, after ``min_steps``
untimed). Also reports parameter counts.
"""

from __future__ import annotations

import time

from bench._common import CPUS, row, threads

BATCH = 2048


def step_rate(arch: str, min_time: float, min_steps: int = 3, batch: int = BATCH,
              n_threads: int = CPUS, precision: str = "float32") -> tuple[float, int]:
    """(training samples/s, parameters) of ``arch``, its hidden layers in ``precision``
    (`sedflow train --precision`)."""
    import torch

    from sedflow.flows import sampling_precision
    from sedflow.posterior import build_estimator, load_model
    from sedflow.prior import UNCONSTRAINED_NAMES
    from sedflow.train import _nll_module

    torch.manual_seed(0)
    n_x, n_u = len(load_model().x_names), len(UNCONSTRAINED_NAMES)
    net = build_estimator(arch, n_x=n_x)
    model = _nll_module(net).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    u, x = torch.randn(8 * batch, n_u), torch.randn(8 * batch, n_x)

    def step(i):
        s = slice((i % 8) * batch, (i % 8 + 1) * batch)
        loss = model(u[s], x[s]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    with threads(n_threads), sampling_precision(net, precision):
        for i in range(min_steps):
            step(i)
        steps, t0 = 0, time.perf_counter()
        while steps < min_steps or time.perf_counter() - t0 < min_time:
            step(steps)
            steps += 1
        elapsed = time.perf_counter() - t0
    return steps * batch / elapsed, sum(p.numel() for p in net.parameters())


def run(quick: bool = False) -> dict:
    from sedflow.posterior import DEFAULT_ARCH

    min_time, min_steps = (3.0, 2) if quick else (20.0, 5)
    archs = dict.fromkeys((DEFAULT_ARCH, "realnvp", "coupling", "paper"))
    rates = {a: step_rate(a, min_time, min_steps) for a in archs}
    (me, n_me) = rates[DEFAULT_ARCH]
    bf16 = step_rate(DEFAULT_ARCH, min_time, min_steps, precision="bfloat16")[0]
    rows = [row(f"{DEFAULT_ARCH} --precision bfloat16, batch {BATCH}, {CPUS} threads", bf16, "samples/s",
                f"{DEFAULT_ARCH} float32", me)]
    for peer in [a for a in archs if a != DEFAULT_ARCH]:
        rows.append(row(f"{DEFAULT_ARCH}, batch {BATCH}, {CPUS} threads", me, "samples/s", peer, rates[peer][0]))
        rows.append(row(f"{DEFAULT_ARCH} parameters", n_me, "", peer, rates[peer][1]))
    return {"batch_size": BATCH, "threads": CPUS, "min_time_s": min_time,
            "samples_per_s": {a: r[0] for a, r in rates.items()}, "bfloat16_samples_per_s": bf16,
            "parameters": {a: r[1] for a, r in rates.items()},
            "rows": rows}
