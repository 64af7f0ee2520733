"""The cluster paths, driven as users drive a cloud cluster, on loopback.

A real Ray cluster of separate process trees (`ray start --head` + one `ray start --address`
node, 1 CPU each) and a real Dask cluster (`dask scheduler` + 2 `dask worker` processes).
Through them: `sedflow simulate/train/infer --address`, the `jobs/` scripts through the Ray
Jobs API (`ray job submit --working-dir`), and the loss of a Ray node / Dask worker mid-run.
Each result must equal the in-process local run with the same seeds. Marked `cluster` (part
of the default run, about 3 minutes on 2 cores; `-m "not cluster"` leaves it out).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import psutil
import pytest

from conftest import REPO
from sedflow.loopback import LoopbackDaskCluster, LoopbackRayCluster, cluster_env
from sedflow.simulate import SimulationConfig, run_simulation

pytestmark = pytest.mark.cluster

SIM = SimulationConfig(n=2000, shards=4, seed=11)
SIM_LONG = SimulationConfig(n=40000, shards=24, seed=12)  # long enough to lose a node mid-run
SEDFLOW = str(Path(sys.executable).parent / "sedflow")
RAY = str(Path(sys.executable).parent / "ray")


def run(args, timeout=600, check=True, cwd=None):
    out = subprocess.run(args, capture_output=True, text=True, env=cluster_env(), timeout=timeout, cwd=cwd)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def same_files(a: Path, b: Path, pattern="*.parquet"):
    """Every file matching pattern is byte-identical in both directories (and there are some)."""
    fa, fb = sorted(p.name for p in a.glob(pattern)), sorted(p.name for p in b.glob(pattern))
    assert fa and fa == fb
    for name in fa:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def no_process_left(pids):
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"processes {alive} outlived the cluster"


@pytest.fixture(scope="module")
def ray_cluster():
    root = Path(tempfile.mkdtemp(prefix="sfray-", dir="/tmp"))  # short: Ray's socket paths
    ray_defaults = [Path("/tmp/ray"), Path.home() / ".ray"]       # where Ray writes without a temp dir
    existed = [p.exists() for p in ray_defaults]
    cluster = LoopbackRayCluster(root, nodes=2, cpus=1)
    try:
        with cluster:
            pids = cluster.pids()
            assert len(cluster.nodes) == 2 and all(g.proc.poll() is None for g in cluster.nodes)
            yield cluster
        no_process_left(pids + cluster.pids())
        assert [p.exists() for p in ray_defaults] == existed, "the cluster wrote outside its temp dir"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_sims(tmp_path_factory, ray_local):
    """The reference: the same simulations run in-process on the test session's local Ray."""
    out = {}
    for name, cfg in (("short", SIM), ("long", SIM_LONG)):
        out[name] = tmp_path_factory.mktemp(f"sims_{name}")
        run_simulation(out[name], cfg, progress=False)
    return out


def sim_args(cfg: SimulationConfig, out: Path) -> list[str]:
    return ["--n", str(cfg.n), "--shards", str(cfg.shards), "--seed", str(cfg.seed), "--out", str(out), "--quiet"]


def test_simulate_through_the_cluster_equals_local(ray_cluster, local_sims, tmp_path):
    out = tmp_path / "sims"
    run([SEDFLOW, "simulate", *sim_args(SIM, out), "--address", ray_cluster.address])
    same_files(local_sims["short"], out)


def test_simulate_job_submitted_with_working_dir(ray_cluster, local_sims, tmp_path):
    out = tmp_path / "sims"
    res = run([RAY, "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(REPO),
               "--", "python", "jobs/simulate.py", *sim_args(SIM, out)])
    assert "succeeded" in res.stdout + res.stderr
    same_files(local_sims["short"], out)


def _trained_state(path: Path) -> tuple:
    cfg = json.loads((path / "config.json").read_text())
    t = cfg["training"]
    return cfg["weights_sha256"], t["epochs"], t["best_epoch"], t["best_val_loss"]


@pytest.fixture(scope="module")
def local_training(local_sims, tmp_path_factory, ray_local):
    from sedflow.train import train

    out = tmp_path_factory.mktemp("model_local")
    train(local_sims["short"], out, workers=2, max_epochs=2, batch_size=256, seed=3)
    return out


TRAIN_ARGS = ["--workers", "2", "--max-epochs", "2", "--batch-size", "256", "--seed", "3"]


def test_train_through_the_cluster_equals_local(ray_cluster, local_sims, local_training, tmp_path):
    out = tmp_path / "model"
    run([SEDFLOW, "train", str(local_sims["short"]), "--out", str(out), "--address", ray_cluster.address,
         *TRAIN_ARGS])
    assert _trained_state(out) == _trained_state(local_training)


def test_train_job_submitted_with_working_dir(ray_cluster, local_sims, local_training, tmp_path):
    out = tmp_path / "model"
    run([RAY, "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(REPO),
         "--", "python", "jobs/train.py", str(local_sims["short"]), "--out", str(out), *TRAIN_ARGS])
    assert _trained_state(out) == _trained_state(local_training)


def test_losing_a_ray_node_mid_simulation(ray_cluster, local_sims, tmp_path):
    """Kill the worker node by its pids while `sedflow simulate` runs: Ray retries the lost
    tasks on the head (or the command fails with a clear message); a rerun gives exactly the
    uninterrupted output. Last in this module: the cluster has one node afterwards."""
    out = tmp_path / "sims"
    proc = subprocess.Popen([SEDFLOW, "simulate", *sim_args(SIM_LONG, out), "--address", ray_cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env())
    deadline = time.monotonic() + 300
    while not list(out.glob("shard-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "simulate finished before the node could be killed: make SIM_LONG longer"
    killed = ray_cluster.kill_node(1)   # raises if one of the node's processes survives
    assert len(killed) >= 3             # ray start, raylet, agents: the node's whole process tree
    stdout, stderr = proc.communicate(timeout=600)
    print(f"\nsimulate with node 1 killed (pids {killed}): exit code {proc.returncode}; {stderr[-300:]}")
    if proc.returncode != 0:   # allowed, but it must say what happened, not just dump a traceback
        assert "rerun" in stderr.lower() or "node" in stderr.lower(), stderr[-2000:]
    run([SEDFLOW, "simulate", *sim_args(SIM_LONG, out), "--address", ray_cluster.address])
    same_files(local_sims["long"], out)
    assert not list(out.glob(".*tmp*"))


# ---------------------------------------------------------------------------- Dask

@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    cluster = LoopbackDaskCluster(tmp_path_factory.mktemp("daskcluster"), workers=2)
    with cluster:
        pids = cluster.pids()
        yield cluster
    no_process_left(pids + cluster.pids())


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, sed_model):
    """240 simulated galaxies with noisy fluxes, ingested in 24 partitions of 10 rows."""
    from sedflow.catalog import CatalogSpec
    from sedflow.ingest import ingest_catalog
    from sedflow.noise import NoiseModel
    from sedflow.prior import Prior
    from sedflow.simulate import simulate_rows
    from sedflow.sps.photometry import BANDS, SDSS_FILTERS

    cols, _ = simulate_rows(sed_model, NoiseModel.default(), Prior(), 240, np.random.default_rng(4))
    table = {"id": np.arange(240, dtype=np.int64), "z": cols["z"]}
    table.update({f"flux_{b}": cols[f"flux_{b}"] for b in BANDS})
    table.update({f"flux_err_{b}": cols[f"flux_err_{b}"] for b in BANDS})
    d = tmp_path_factory.mktemp("catalog")
    pq.write_table(pa.table(table), d / "cat.parquet")
    spec = CatalogSpec(name="simulated", bands=tuple(BANDS), id="id", redshift="z", filters=SDSS_FILTERS,
                       flux={"columns": [f"flux_{b}" for b in BANDS], "units": "nanomaggies"},
                       flux_error={"columns": [f"flux_err_{b}" for b in BANDS], "kind": "sigma"},
                       cuts={"redshift_range": [0.0, 0.2]})
    ingest_catalog(d / "cat.parquet", spec, d / "ingested", partition_rows=10)
    return d / "ingested"


INFER = {"n_samples": 400, "property_samples": 200, "keep_samples": 5, "seed": 9}
INFER_ARGS = ["--samples", "400", "--property-samples", "200", "--keep-samples", "5", "--seed", "9", "--quiet"]


@pytest.fixture(scope="module")
def local_posteriors(catalog, tmp_path_factory):
    from sedflow.infer import run_inference

    out = tmp_path_factory.mktemp("post_local")
    run_inference(catalog, out, workers=2, progress=False, **INFER)
    return out


def read_posteriors(path: Path):
    return ds.dataset(str(path), format="parquet").to_table().sort_by("id")


def test_infer_through_the_dask_cluster_equals_local(dask_cluster, catalog, local_posteriors, tmp_path):
    out = tmp_path / "post"
    run([SEDFLOW, "infer", str(catalog), "--out", str(out), "--address", dask_cluster.address, *INFER_ARGS])
    same_files(local_posteriors, out)
    assert json.loads((out / "_summary.json").read_text())["galaxies"] == 240


def test_losing_a_dask_worker_mid_inference(dask_cluster, catalog, local_posteriors, tmp_path):
    out = tmp_path / "post"
    proc = subprocess.Popen([SEDFLOW, "infer", str(catalog), "--out", f"file://{out}", "--address",
                             dask_cluster.address, *INFER_ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env())
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "infer finished before a worker could be killed"
    assert dask_cluster.kill_worker(1)
    stdout, stderr = proc.communicate(timeout=600)
    print(f"\ninfer with worker 1 killed: exit code {proc.returncode}; {stderr[-300:]}")
    if proc.returncode != 0:
        assert "rerun" in stderr.lower(), stderr[-2000:]
    run([SEDFLOW, "infer", str(catalog), "--out", str(out), "--address", dask_cluster.address, *INFER_ARGS])
    same_files(local_posteriors, out)
    t = read_posteriors(out)
    assert t.num_rows == 240 and len(set(t.column("id").to_pylist())) == 240
    assert not list(out.glob(".part-*"))


def test_object_store_urls_are_refused_clearly(tmp_path):
    res = run([SEDFLOW, "simulate", "--n", "10", "--out", "s3://bucket/sims"], check=False)
    assert res.returncode == 2 and "s3:// storage is not supported" in res.stderr


def test_local_dask_cluster_is_quiet_when_port_8787_is_taken(recwarn):
    """Another cluster on the machine holding Dask's default port: our local cluster still starts,
    works, and prints no "Port 8787 is already in use" (its scheduler takes a free port)."""
    import socket

    from distributed import Client

    from sedflow.dask_utils import local_cluster

    with socket.socket() as other:
        try:
            other.bind(("", 8787))
            other.listen()
        except OSError:
            pass            # already held by something else: the situation under test
        with local_cluster(1, processes=False) as cluster, Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result() == 3
            assert cluster.scheduler.http_server.port != 8787
    assert not [w for w in recwarn if "already in use" in str(w.message)]
