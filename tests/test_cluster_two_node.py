"""A real two-node Ray cluster on this machine, and a search that uses both nodes.

Two ``ray start`` processes (a head and a worker node, one CPU each, separate temp dirs and
ports) form the cluster; ``search launch`` runs as its own process and joins it through
``workers.address``, exactly as on a GPU cluster. Each node advertises one ``merge_slot``
and each worker asks for one, so the two Ray actors land on different nodes.

Checked: the search completes, every trial is in the store, and the store's ``worker``
column (``ray-<i>@<host>:<node id prefix>``) shows trials from both nodes. Tiny-lm trials
take a fraction of a second, so the first worker ready could run the whole budget before the
second has loaded its model; the second objective (``rendezvous``, below) therefore holds each
worker's first trial until both workers have started one, which makes "both nodes ran
trials" a certainty instead of a race.

Teardown stops exactly the processes of these two nodes (every process in the sessions the
two ``ray start`` calls created, by pid) and checks that no raylet of theirs is left.
A plain ``ray stop`` is not used: it stops every Ray process of the machine, including the
session-wide local Ray of other tests (``ray_local``) and anyone else's cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parents[1]

_RENDEZVOUS_DONE = False


def rendezvous(model: object, tokenizer: object, folder: str, expect: int = 2, timeout: float = 120.0) -> dict[str, float]:
    """Objective run inside the Ray workers (python evaluator): the first call of each worker
    process registers it in ``folder`` and waits until ``expect`` workers have registered (or
    ``timeout`` s). Returns the mean of the first parameter, a smooth function of the merge."""
    global _RENDEZVOUS_DONE
    if not _RENDEZVOUS_DONE:
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{socket.gethostname()}-{os.getpid()}").write_text("")
        deadline = time.monotonic() + timeout
        while len(list(d.iterdir())) < expect and time.monotonic() < deadline:
            time.sleep(0.2)
        _RENDEZVOUS_DONE = True
    first = next(model.parameters())  # type: ignore[attr-defined]
    return {"mean": float(first.detach().float().mean())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every per-node port, explicit: two nodes on one machine must not share any."""
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DISABLE_USAGE_STATS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _ray_start(args: list[str], env: dict[str, str]) -> int:
    """Run ``ray start`` in a new session; return that session's id (its processes keep it)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed ({p.returncode}):\n{out[-3000:]}")
    return p.pid  # start_new_session: the session id is the pid of `ray start`


def _session_procs(sids: set[int]) -> list:
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) in sids and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def _stop_nodes(sids: set[int]) -> list[str]:
    """Stop every process of the given sessions (SIGTERM, then SIGKILL); return what is left."""
    import psutil

    procs = _session_procs(sids)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = _session_procs(sids)
        if not left:
            return []
        time.sleep(0.5)
    return [f"{p.pid} {p.name()}" for p in _session_procs(sids)]


def _cluster_nodes(address: str, env: dict[str, str], expect: int = 2, wait_s: float = 60.0) -> dict[str, dict[str, float]]:
    """Node id -> resources of the live cluster (from a short separate driver), once ``expect``
    nodes are alive or after ``wait_s`` seconds: ``ray start`` returns when a node's raylet is
    started, before the raylet has registered with the head, so the node may not be listed yet."""
    code = (
        "import json, time, ray\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        f"deadline = time.monotonic() + {wait_s}\n"
        "while True:\n"
        "    alive = {n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}\n"
        f"    if len(alive) >= {expect} or time.monotonic() > deadline:\n"
        "        break\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps(alive))\n"
        "ray.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_search_runs_on_a_two_node_ray_cluster(tmp_path: Path) -> None:
    from search.store import open_run
    from search.zoo import zoo_path

    env = _env()
    # build the tiny-lm zoo here, once, so the two workers only read it
    base = zoo_path("zoo:tiny-lm/base", build=True)
    assert base.is_dir()

    # Ray's socket paths have a length limit: keep the temp dirs short
    short = Path("/tmp") / f"rn{os.getpid()}_{tmp_path.name[-6:]}"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    sids: set[int] = set()
    run_out = ""
    try:
        sids.add(
            _ray_start(
                [
                    "--head",
                    f"--port={port}",
                    "--num-cpus=1",
                    "--num-gpus=0",
                    '--resources={"node_a": 1, "merge_slot": 1}',
                    "--include-dashboard=false",
                    f"--ray-client-server-port={_free_port()}",
                    f"--temp-dir={short}a",
                    "--object-store-memory=100000000",
                    "--disable-usage-stats",
                    *_node_ports(),
                ],
                env,
            )
        )
        sids.add(
            _ray_start(
                [
                    f"--address={address}",
                    "--num-cpus=1",
                    "--num-gpus=0",
                    '--resources={"node_b": 1, "merge_slot": 1}',
                    f"--temp-dir={short}b",
                    "--object-store-memory=100000000",
                    "--disable-usage-stats",
                    *_node_ports(),
                ],
                env,
            )
        )
        nodes = _cluster_nodes(address, env)
        assert len(nodes) == 2, nodes
        node_of = {("node_a" if "node_a" in r else "node_b"): nid for nid, r in nodes.items()}
        assert set(node_of) == {"node_a", "node_b"}, nodes

        cfg = {
            "name": "two_node",
            "seed": 0,
            "models": {
                "base": "zoo:tiny-lm/base",
                "experts": [{"name": "add", "path": "zoo:tiny-lm/add"}, {"name": "reverse", "path": "zoo:tiny-lm/reverse"}],
            },
            "merge": {"method": "task_arithmetic", "granularity": "global", "search": {"weight": [0.0, 1.5]}},
            "objectives": [
                {"name": "add", "evaluator": "lm_eval", "direction": "maximize",
                 "settings": {"tasks": ["tinylm_add"], "metric": "exact_match,none", "limit": 20}},
                {"name": "mean", "evaluator": "python", "direction": "maximize",
                 "settings": {"function": "tests.test_cluster_two_node:rendezvous", "metric": "mean",
                              "kwargs": {"folder": str(tmp_path / "rendezvous")}}},
            ],
            "strategy": {"name": "random", "budget": 8},
            "workers": {"backend": "ray", "count": 2, "cpus_per_worker": 1, "resources": {"merge_slot": 1},
                        "address": address, "trial_timeout": 240},
        }  # fmt: skip
        cfg_path = tmp_path / "two_node.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        db = tmp_path / "two_node.db"
        proc = subprocess.run(
            [sys.executable, "-m", "search", "launch", str(cfg_path), "--store", str(db)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        run_out = proc.stdout[-4000:] + proc.stderr[-6000:]
        assert proc.returncode == 0, run_out

        store, study = open_run("two_node", store=str(db))
        try:
            trials = store.trials(study.id)
        finally:
            store.close()
        assert len(trials) == 8, run_out
        assert all(t.state == "COMPLETE" for t in trials), [(t.number, t.state, t.error) for t in trials]
        workers = {t.worker for t in trials}
        # worker names are "ray-<i>@<host>:<first 8 hex digits of the node id>"
        prefixes = {w.rsplit(":", 1)[-1] for w in workers if w}
        used = {name for name, nid in node_of.items() if nid[:8] in prefixes}
        assert used == {"node_a", "node_b"}, (workers, node_of, run_out)
        assert len(workers) == 2, workers
    finally:
        left = _stop_nodes(sids)
        for d in (f"{short}a", f"{short}b"):
            subprocess.run(["rm", "-rf", d], check=False)
    assert not left, f"processes of the test's Ray nodes still running: {left}"
    assert not [p for p in _session_procs(sids) if "raylet" in p.name()]
