"""The benchmark suite: every performance figure of the README in one command.

    python -m bench [--quick] [--only NAME ...] [--json OUT] [--simulate-n N] [--infer-n N]
                   [--infer-samples K ...]

Each benchmark is a module of this package with ``run(quick) -> dict``; the dict's
``rows`` (measure, value, unit, peer, peer_value, ratio) make the table printed at the end,
and the whole dict goes to the JSON file (default bench/results.json). Every ratio is
against a peer measured in the same run. A benchmark that fails is reported and the
others still run (exit status 1). Timings are only as good as the machine is quiet: the
load average before and after each benchmark is recorded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
import traceback
from pathlib import Path

BENCHMARKS = {
    "forward_model": "SEDModel.photometry vs the PROVABGS emulator",
    "simulate": "simulate_rows in-process and run_simulation with Ray",
    "training": "training step throughput, default architecture vs realnvp (shipped before), coupling and paper",
    "sampling": "posterior sampling, default architecture vs realnvp (shipped before) and paper",
    "infer": "ingest + infer end to end (Dask), shipped model vs the same pipeline with realnvp (shipped before)",
    "ceiling": "sampler FLOP rate vs the fp32 matmul rate",
    "architectures": ("coupling, spline (NSF), realnvp (with and without its context cache), realnvp_deep: "
                      "sampling, training"),
    "photoz": "the photo-z model vs the spec-z model: sampling at 1,000 and 10,000 draws, infer_frame",
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and abs(v) < 100 and v != int(v):
        return f"{v:.3g}"
    return f"{v:,.0f}"


def table(results: dict) -> str:
    head = f"{'benchmark':<14} {'measure':<62} {'value':>20} {'peer':>38} {'ratio':>8}"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"{name:<14} FAILED: {res['error'].strip().splitlines()[-1]}")
        for r in res.get("rows", []):
            peer = f"{r['peer']} {_fmt(r['peer_value'])}" if r.get("peer") else ""
            ratio = f"{r['ratio']:.3g}" if r.get("ratio") is not None else ""
            lines.append(f"{name:<14} {r['measure']:<62} {_fmt(r['value']) + ' ' + r['unit']:>20} "
                         f"{peer:>38} {ratio:>8}")
    return "\n".join(lines)


def _machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (minutes instead of hours)")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME",
                   help=f"run only these ({', '.join(BENCHMARKS)})")
    p.add_argument("--simulate-n", type=int, help="rows for run_simulation (default 200,000; quick 20,000)")
    p.add_argument("--infer-n", type=int, help="galaxies for infer (default 100,000; quick 500)")
    p.add_argument("--infer-samples", type=int, nargs="+", metavar="K",
                   help="posterior draws per galaxy for infer (default 1000 10000)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"write results here (default {DEFAULT_JSON})")
    args = p.parse_args(argv)

    names = args.only or list(BENCHMARKS)
    out = {"quick": args.quick, "machine": _machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "benchmarks": {}}
    if args.quick:
        print("quick mode: small sizes; the paper MAF is timed on 1-2 galaxies per setting")
    for name in names:
        print(f"\n== {name}: {BENCHMARKS[name]}", flush=True)
        load, t0 = os.getloadavg()[0], time.perf_counter()
        try:
            sizes = {"simulate": {"n": args.simulate_n}, "infer": {"n": args.infer_n, "samples": args.infer_samples}}.get(name, {})
            res = importlib.import_module(f"bench.{name}").run(quick=args.quick, **sizes)
        except Exception:
            res = {"error": traceback.format_exc()}
            print(res["error"], flush=True)
        res.update(seconds=time.perf_counter() - t0, loadavg_before=load, loadavg_after=os.getloadavg()[0])
        out["benchmarks"][name] = res
        print(table({name: res}).split("\n", 2)[-1] if res.get("rows") else "", flush=True)
        print(f"({res['seconds']:.0f} s; load average {load:.2f} -> {res['loadavg_after']:.2f} "
              f"on {os.cpu_count()} CPUs)", flush=True)

    print("\n" + table(out["benchmarks"]))
    busy = [n for n, r in out["benchmarks"].items() if max(r["loadavg_before"], r["loadavg_after"]) > 0.5 * os.cpu_count()]
    if busy:
        print(f"note: other load on the machine during {', '.join(busy)}: those timings are pessimistic")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"wrote {args.json}")
    return 1 if any("error" in r for r in out["benchmarks"].values()) else 0
