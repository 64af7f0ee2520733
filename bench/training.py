"""Training throughput: samples/s of one optimisation step (forward + backward + Adam) at
batch size 2048, in-process (no Ray), all cores.

Measured: the default ``coupling`` architecture. Peer: the ``paper`` architecture. Both
built with `sedflow.posterior.build_estimator`, loss and step as in `sedflow.train` (the
same negative log-probability module, Adam at lr 5e-4), on random standard-normal data of
the right shapes (11-dim u, 11-dim x; the training data are standardised). Steps run until
``min_time`` seconds have passed (at least ``min_steps``, after ``min_steps`` untimed).
Also reports parameter counts.
"""

from __future__ import annotations

import time

from bench._common import CPUS, row, threads

BATCH = 2048


def step_rate(arch: str, min_time: float, min_steps: int = 3, batch: int = BATCH,
              n_threads: int = CPUS) -> tuple[float, int]:
    """(training samples/s, parameters) of ``arch``."""
    import torch

    from sedflow.posterior import build_estimator
    from sedflow.train import _nll_module

    torch.manual_seed(0)
    net = build_estimator(arch, n_x=11)              # the SDSS model's x: 5 mags, 5 errors, z
    model = _nll_module(net).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    u, x = torch.randn(8 * batch, 11), torch.randn(8 * batch, 11)

    def step(i):
        s = slice((i % 8) * batch, (i % 8 + 1) * batch)
        loss = model(u[s], x[s]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    with threads(n_threads):
        for i in range(min_steps):
            step(i)
        steps, t0 = 0, time.perf_counter()
        while steps < min_steps or time.perf_counter() - t0 < min_time:
            step(steps)
            steps += 1
        elapsed = time.perf_counter() - t0
    return steps * batch / elapsed, sum(p.numel() for p in net.parameters())


def run(quick: bool = False) -> dict:
    min_time, min_steps = (3.0, 2) if quick else (20.0, 5)
    (cp, n_cp), (pa, n_pa) = (step_rate(arch, min_time, min_steps) for arch in ("coupling", "paper"))
    return {"batch_size": BATCH, "threads": CPUS, "min_time_s": min_time,
            "samples_per_s": {"coupling": cp, "paper": pa}, "parameters": {"coupling": n_cp, "paper": n_pa},
            "rows": [row(f"coupling, batch {BATCH}, {CPUS} threads", cp, "samples/s", "paper MAF", pa),
                     row("coupling parameters", n_cp, "", "paper MAF", n_pa)]}
