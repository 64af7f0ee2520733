"""Real multi-process Ray and Dask clusters on this host, for tests and local rehearsals.

`LoopbackRayCluster` runs ``ray start --head`` plus ``ray start --address ...`` for each
extra node, every node a separate process tree with its own temp dir and object store;
`LoopbackDaskCluster` runs ``dask scheduler`` and ``dask worker`` processes. This is how
a cloud cluster is driven (``--address``, ``ray job submit``), minus the machines.

Every node is started in its own session (process group), and every process of that
group is stopped by pid at teardown (SIGTERM, then SIGKILL after a grace period), so
nothing outlives the cluster; all files stay under ``root``. Addresses are loopback only.
Ray still advertises this host's own address internally (it resolves the node IP itself;
ray-project/ray#26293), so traffic stays on the host.

Start one by hand (prints the addresses, Ctrl-C stops it)::

    python -m sedflow.loopback ray  --nodes 2 --root /tmp/raycluster
    python -m sedflow.loopback dask --workers 2 --root /tmp/daskcluster
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

__all__ = ["LoopbackRayCluster", "LoopbackDaskCluster", "free_port", "cluster_env"]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cluster_env() -> dict:
    """Environment for cluster processes and their clients: no Ray auth token (a loopback
    cluster of one user; a real cluster should keep Ray's token auth), no usage stats."""
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    # this environment's executables first, as on a cluster node where it is installed
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _bin(name: str) -> str:
    """A console script of this Python environment (ray, dask)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {log}:\n"
                               + log.read_text()[-2000:])
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not open {HOST}:{port} within {timeout:.0f} s; see {log}")


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (a killed process whose parent has not reaped it yet)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Group:
    """One started command and every process of its session, stopped by pid."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict):
        self.name, self.log = name, log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.pid = self.proc.pid  # also the session and process-group id

    def processes(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getsid(p.pid) == self.pid:
                    found.append(p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return found

    def kill_now(self) -> list[int]:
        """SIGKILL every process of the session at once (a lost machine); returns their pids."""
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=30)
        alive = [p.pid for p in alive if _running(p)]
        if alive:
            raise RuntimeError(f"{self.name}: processes {alive} survived SIGKILL")
        self.proc.wait(timeout=30)
        return [p.pid for p in procs]

    def kill(self, grace: float = 10.0) -> list[int]:
        """SIGTERM every process of the session, SIGKILL what is left after `grace` s;
        returns the pids that were stopped."""
        procs = self.processes()
        stopped = [p.pid for p in procs]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            _, procs = psutil.wait_procs(procs, timeout=wait)
            if not procs:
                break
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        alive = [p.pid for p in procs if _running(p)]
        if alive:
            raise RuntimeError(f"{self.name}: processes {alive} survived SIGKILL")
        return stopped


class _Cluster:
    def __init__(self, root):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = cluster_env()
        self._groups: list[_Group] = []

    def _start(self, name, args) -> _Group:
        group = _Group(name, args, self.root / f"{name}.log", self.env)
        self._groups.append(group)
        return group

    def pids(self) -> list[int]:
        """Pids of every live process the cluster started (all nodes, all children)."""
        live = []
        for p in (p for g in self._groups for p in g.processes()):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        return sorted(live)

    def stop(self):
        errors = []
        for g in reversed(self._groups):
            try:
                g.kill()
            except Exception as e:  # keep stopping the others
                errors.append(str(e))
        self._groups.clear()
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


class LoopbackRayCluster(_Cluster):
    """A head node and ``nodes - 1`` worker nodes, ``cpus`` CPUs each, on 127.0.0.1.

    Attributes after `start`: ``address`` (GCS, for ``--address`` / ``ray.init``),
    ``dashboard_url`` (Ray Jobs API, for ``ray job submit --address``), ``nodes``
    (one process group per node; ``kill_node(i)`` kills node i > 0 by its pids).
    """

    def __init__(self, root, nodes: int = 2, cpus: int = 1, object_store_bytes: int = 200_000_000,
                 port: int | None = None, dashboard_port: int | None = None):
        super().__init__(root)
        # Ray's AF_UNIX sockets live at ROOT/nodeN/session_<date>_<pid>/sockets/plasma_store,
        # and a socket path may not exceed 107 bytes
        if len(str(self.root)) > 107 - 70:
            raise ValueError(f"{self.root}: too long for Ray's socket paths; use a root of at most "
                             "37 characters, e.g. tempfile.mkdtemp(prefix='ray-', dir='/tmp')")
        if nodes < 1 or cpus < 1:
            raise ValueError(f"need nodes >= 1 and cpus >= 1, got {nodes}, {cpus}")
        self.n_nodes, self.cpus, self.object_store_bytes = nodes, cpus, object_store_bytes
        self.port = port or free_port()
        self.dashboard_port = dashboard_port or free_port()
        self.address = f"{HOST}:{self.port}"
        self.dashboard_url = f"http://{HOST}:{self.dashboard_port}"
        self.nodes: list[_Group] = []

    def _node_args(self, i: int) -> list[str]:
        common = ["--block", "--node-ip-address", HOST, "--num-cpus", str(self.cpus),
                  "--object-store-memory", str(self.object_store_bytes),
                  "--temp-dir", str(self.root / f"node{i}"), "--disable-usage-stats",
                  # not Ray's fixed defaults (52365, ...), which another Ray on the host may hold
                  "--dashboard-agent-listen-port", str(free_port()),
                  "--dashboard-agent-grpc-port", str(free_port()),
                  "--runtime-env-agent-port", str(free_port()),
                  "--metrics-export-port", str(free_port())]
        if i == 0:
            return [_bin("ray"), "start", "--head", "--port", str(self.port),
                    "--dashboard-host", HOST, "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(free_port()), *common]
        return [_bin("ray"), "start", "--address", self.address, *common]

    def start(self):
        head = self._start("ray-node0", self._node_args(0))
        self.nodes.append(head)
        _wait_port(self.port, head.proc, "ray head", head.log)
        _wait_port(self.dashboard_port, head.proc, "ray dashboard", head.log)
        for i in range(1, self.n_nodes):
            self.nodes.append(self._start(f"ray-node{i}", self._node_args(i)))
        self.wait_for_nodes(self.n_nodes)
        self.wait_for_jobs_api()
        return self

    def wait_for_jobs_api(self, timeout: float = 90.0):
        """Until the head's job agent accepts a job (it registers some seconds after the
        dashboard opens its port; before that submissions fail with 'No available agent')."""
        end = time.monotonic() + timeout
        while True:
            out = subprocess.run([_bin("ray"), "job", "submit", "--address", self.dashboard_url, "--", "true"],
                                 capture_output=True, text=True, env=self.env, timeout=120)
            if out.returncode == 0:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"the Ray Jobs API at {self.dashboard_url} accepted no job in "
                                   f"{timeout:.0f} s:\n{out.stderr[-1000:]}")
            time.sleep(1.0)

    def alive_nodes(self) -> int:
        out = subprocess.run([_bin("ray"), "list", "nodes", "--address", self.dashboard_url,
                              "--filter", "state=ALIVE", "--format", "json"],
                             capture_output=True, text=True, env=self.env, timeout=60)
        start = out.stdout.find("[")  # the state API may print notices before the JSON
        try:
            return len(json.loads(out.stdout[start:])) if out.returncode == 0 and start >= 0 else 0
        except json.JSONDecodeError:
            return 0

    def wait_for_nodes(self, n: int, timeout: float = 90.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for g in self.nodes:
                if g.proc.poll() is not None and g in self._groups:
                    raise RuntimeError(f"{g.name} exited with code {g.proc.returncode}; see {g.log}")
            if self.alive_nodes() >= n:
                return
            time.sleep(1.0)
        raise TimeoutError(f"the Ray cluster did not reach {n} alive nodes in {timeout:.0f} s "
                           f"(logs in {self.root})")

    def kill_node(self, i: int) -> list[int]:
        """Kill worker node i (> 0) abruptly: SIGKILL to every process of its session."""
        if i == 0:
            raise ValueError("node 0 is the head; kill a worker node (i >= 1)")
        return self.nodes[i].kill_now()


class LoopbackDaskCluster(_Cluster):
    """``dask scheduler`` and ``workers`` ``dask worker`` processes (1 thread each) on 127.0.0.1.

    ``address`` is the scheduler's ``tcp://127.0.0.1:PORT``; ``kill_worker(i)`` kills worker
    i (its nanny and worker process) by pid.
    """

    def __init__(self, root, workers: int = 2, threads: int = 1, port: int | None = None,
                 memory_limit: str = "4GiB"):
        super().__init__(root)
        self.env["DASK_TEMPORARY_DIRECTORY"] = str(self.root)  # spill and lock files stay under root
        self.n_workers, self.threads, self.memory_limit = workers, threads, memory_limit
        self.port = port or free_port()
        self.address = f"tcp://{HOST}:{self.port}"
        self.workers: list[_Group] = []

    def start(self):
        sched = self._start("dask-scheduler", [_bin("dask"), "scheduler", "--host", HOST,
                                               "--port", str(self.port), "--no-dashboard"])
        _wait_port(self.port, sched.proc, "dask scheduler", sched.log)
        for i in range(self.n_workers):
            self.workers.append(self._start(f"dask-worker{i}", [
                _bin("dask"), "worker", self.address, "--host", HOST, "--nthreads", str(self.threads),
                "--nworkers", "1", "--memory-limit", self.memory_limit, "--no-dashboard",
                "--name", f"worker{i}", "--local-directory", str(self.root / f"worker{i}")]))
        self.wait_for_workers(self.n_workers)
        return self

    def wait_for_workers(self, n: int, timeout: float = 60.0):
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, i: int) -> list[int]:
        """Kill worker i abruptly: SIGKILL to its nanny and worker process."""
        return self.workers[i].kill_now()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sedflow.loopback", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["ray", "dask"])
    p.add_argument("--root", required=True, help="directory for every file the cluster writes")
    p.add_argument("--nodes", type=int, default=2, help="Ray nodes including the head (default 2)")
    p.add_argument("--workers", type=int, default=2, help="Dask workers (default 2)")
    p.add_argument("--port", type=int, help="Ray GCS / Dask scheduler port (default: a free one)")
    args = p.parse_args(argv)
    cluster = (LoopbackRayCluster(args.root, nodes=args.nodes, port=args.port) if args.kind == "ray"
               else LoopbackDaskCluster(args.root, workers=args.workers, port=args.port))
    with cluster:
        if args.kind == "ray":
            print(f"Ray cluster up: --address {cluster.address}   jobs: {cluster.dashboard_url}\n"
                  f"  export RAY_AUTH_MODE=disabled   # the cluster runs without token auth")
        else:
            print(f"Dask cluster up: --address {cluster.address}")
        print(f"logs and temp files in {cluster.root}; Ctrl-C stops every process", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
