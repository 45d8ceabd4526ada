"""The dashboard: JSON API in-process, and the page in a real headless Chromium (CDP).

The browser tests watch real searches: `search launch` of the toy MLP problem
(tests/toy_problem.py, two local workers, nsga2), finished ones and one running in the
background. The API tests use a store made by driving real strategies (nsga2 / random) over a
cheap analytic problem and writing each trial through the Store API the way the controller
does: fast, deterministic, with failed trials, two comparable runs and a three-objective run.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from search.report import load_run
from search.store import COMPLETE, FAIL, STOPPED, Store

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
GROUPS = ["embed", "layers.00", "layers.01", "layers.02", "layers.03", "head"]
EXPERTS = ["math", "code"]


# ----------------------------------------------------------------------------- a real small search


def _space() -> dict[str, Any]:
    names = [f"{g}/{e}/weight" for g in GROUPS for e in EXPERTS]
    return {"names": names, "groups": GROUPS, "experts": EXPERTS, "searched": ["weight"],
            "lower": [0.0] * len(names), "upper": [1.0] * len(names)}


OBJECTIVES_2 = [("math", "maximize"), ("code", "maximize")]
OBJECTIVES_3 = OBJECTIVES_2 + [("mass", "minimize")]


def analytic(x: np.ndarray, n_obj: int) -> list[float]:
    """Two experts per layer group: 'math' is best at (math=1, code=0) everywhere, 'code' the
    reverse; 'mass' (third objective, minimised) is the mean coefficient."""
    cube = np.asarray(x).reshape(len(GROUPS), len(EXPERTS))
    m, c = cube[:, 0], cube[:, 1]
    vals = [math.exp(-np.mean((m - 1) ** 2) - 0.6 * np.mean(c**2)), math.exp(-np.mean((c - 1) ** 2) - 0.6 * np.mean(m**2))]
    if n_obj == 3:
        vals.append(float(cube.mean()))
    return vals


def run_search(
    path: Path, name: str, strategy: str = "nsga2", budget: int = 32, workers: int = 2, delay: float = 0.0,
    n_obj: int = 2, options: dict | None = None, seed: int = 0, stop: threading.Event | None = None,
) -> None:
    """Drive ``strategy`` over :func:`analytic` and write every trial like the controller does."""
    import yaml

    from search.strategies import STRATEGIES, Objective, Problem, TrialResult

    objectives = OBJECTIVES_3 if n_obj == 3 else OBJECTIVES_2
    sp = _space()
    cfg = {"name": name, "seed": seed, "objectives": [{"name": n, "evaluator": "python", "direction": d} for n, d in objectives],
           "strategy": {"name": strategy, "budget": budget, "options": options or {}}, "workers": {"count": workers}}
    st = Store.open(str(path))
    study = st.create_study(name, yaml.safe_dump(cfg), f"sha-{name}", objectives, sp)
    st.set_status(study.id, "running")
    problem = Problem(
        lower=np.asarray(sp["lower"]), upper=np.asarray(sp["upper"]),
        objectives=tuple(Objective(n, d) for n, d in objectives), budget=budget, names=tuple(sp["names"]),
        coord_group=np.repeat(np.arange(len(GROUPS)), len(EXPERTS)), n_experts=len(EXPERTS),
    )
    strat = STRATEGIES.get(strategy)(problem, options or {}, seed=seed)
    running: list[tuple[int, int, Any]] = []  # (trial id, number, candidate)
    number, done = 0, 0
    while done < budget and not (stop and stop.is_set()):
        free = min(workers - len(running), budget - number)
        if free > 0:
            for cand in strat.ask(free):
                tid = st.add_trial(study.id, number, cand.to_dict(), dict(zip(sp["names"], map(float, cand.x), strict=True)), strategy)
                running.append((tid, number, cand))
                number += 1
        if not running:
            break
        time.sleep(delay)
        tid, num, cand = running.pop(0)
        worker = f"local-{num % workers}"
        if num % 11 == 7:  # a deterministic evaluator failure now and then
            err = f"Traceback (most recent call last):\n  File \"evaluators/python.py\", line 42\nRuntimeError: simulated evaluator crash in trial {num}"
            st.finish_trial(tid, FAIL, error=err, worker=worker, materialize_s=0.01, evaluate_s=0.02)
            strat.tell([TrialResult(cand, None, error=err)])
        else:
            vals = analytic(cand.x, n_obj)
            evs = [{"objective_idx": i, "split": "search", "evaluator": "python", "metric": n, "value": v}
                   for i, ((n, _), v) in enumerate(zip(objectives, vals, strict=True))]
            st.finish_trial(tid, COMPLETE, values=vals, evaluations_=evs, worker=worker, materialize_s=0.01, evaluate_s=0.02)
            strat.tell([TrialResult(cand, np.asarray(vals))])
        done += 1
    for tid, _, _ in running:  # stopped early: leave nothing RUNNING
        st.finish_trial(tid, FAIL, error="stopped")
    data = load_run(name, st)
    for t in data.front_trials:  # held-out values for the front, as the controller does at the end
        st.add_heldout(t.id, [v * 0.97 for v in t.values[:2]] + ([t.values[2]] if n_obj == 3 else []))
    st.set_status(study.id, "finished")
    st.close()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "runs" / "small.db"
    run_search(path, "nsga", "nsga2", budget=40, options={"pop_size": 8})
    run_search(path, "rand", "random", budget=30, seed=1)
    run_search(path, "three", "nsga2", budget=24, n_obj=3, options={"pop_size": 8})
    return path


# ----------------------------------------------------------------------------- API (in-process)


@pytest.fixture
def client(small_store: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    app = create_app(["nsga", "rand"], store=str(small_store))
    with TestClient(app) as c:
        yield c
    for rc in app.state.runs:
        rc.store.close()


# ----------------------------------------------------------------------------- headless Chromium over CDP

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str:
    """Chromium for the browser tests ($CHROMIUM, else chromium on PATH); fails loudly if absent."""
    for cand in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if cand and Path(cand).exists():
            return cand
    pytest.fail("the dashboard browser tests need Chromium: install it (Debian: apt-get install chromium) or set "
                "$CHROMIUM to its path", pytrace=False)


class Browser:
    """A headless Chromium driven over the Chrome DevTools Protocol (websocket-client)."""

    def __init__(self, profile: Path, width: int = 1440, height: int = 1000):
        try:
            import websocket
        except ImportError:
            pytest.fail("the browser tests need websocket-client: pip install -e '.[test]'", pytrace=False)
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [find_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                pytest.fail(f"Chromium did not start (exit code {self.proc.poll()})", pytrace=False)
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._id = 0
        self.errors: list[str] = []
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Runtime.exceptionThrown":
                d = msg["params"]["exceptionDetails"]
                self.errors.append(d.get("exception", {}).get("description") or d.get("text", "?"))
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"].get("type") == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in msg["params"]["args"]))
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr!r} raised {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expr: str, timeout: float = 30.0, what: str | None = None) -> Any:
        deadline = time.time() + timeout
        while True:
            try:
                v = self.eval(expr)
            except RuntimeError:  # e.g. the page is still navigating
                v = None
            if v:
                return v
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expr}; page errors: {self.errors}")
            time.sleep(0.2)

    def click(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def center_of(self, selector: str) -> tuple[float, float]:
        r = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
                      " const b = e.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; })()")
        return float(r[0]), float(r[1])

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Dashboard:
    """``search dashboard ... --port 0`` in a subprocess; ``url`` from its start-up log line."""

    def __init__(self, args: list[str], cwd: Path = REPO):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "search", "dashboard", *args, "--port", "0"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.url: str | None = None
        got = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                m = re.search(r"at (http://\S+/) \(stores opened read-only", line)
                if m:
                    self.url = m.group(1)
                    got.set()
            got.set()

        threading.Thread(target=read, daemon=True).start()
        got.wait(60)
        if self.url is None:
            self.close()
            raise AssertionError("dashboard did not start:\n" + "\n".join(self.lines))

    def close(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def _poll(client: Any, run: str, cursor: dict | None = None) -> dict:
    q = "" if cursor is None else f"?after_id={cursor['after_id']}&since={cursor['since']}"
    r = client.get(f"/api/runs/{run}/trials{q}")
    assert r.status_code == 200, r.text
    return r.json()


def test_runs_summary_matches_load_run(client: Any, small_store: Path) -> None:
    doc = client.get("/api/runs").json()
    assert [r["key"] for r in doc["runs"]] == ["nsga", "rand"]
    for r in doc["runs"]:
        data = load_run(r["key"], str(small_store))
        assert r["objectives"] == [{"name": "math", "direction": "maximize"}, {"name": "code", "direction": "maximize"}]
        assert r["counts"] == data.counts() and r["front"] == data.front
        assert r["hypervolume"] == pytest.approx(data.hypervolume) and r["ref_point"] == [0.0, 0.0]
        assert r["space"] == {"groups": GROUPS, "experts": EXPERTS, "searched": ["weight"]}
        assert r["status"] == "finished" and r["budget"] in (40, 30)
        assert {w["worker"] for w in r["workers"]} == {"local-0", "local-1"}
    assert client.get("/api/runs/nsga").json()["front"] == load_run("nsga", str(small_store)).front
    r = client.get("/api/runs/nope")
    assert r.status_code == 404 and "runs: nsga, rand" in r.json()["detail"]


def test_trials_list_has_failures_with_errors(client: Any, small_store: Path) -> None:
    doc = _poll(client, "nsga")
    data = load_run("nsga", str(small_store))
    assert [t["number"] for t in doc["trials"]] == [t.number for t in data.trials]
    failed = [t for t in doc["trials"] if t["state"] == FAIL]
    assert failed and all("simulated evaluator crash" in t["error"] for t in failed) and all(t["values"] is None for t in failed)
    front = [t for t in doc["trials"] if t["number"] in data.front]
    assert all(t["heldout"] is not None for t in front)
    assert _poll(client, "nsga", doc["cursor"])["trials"] == []  # nothing changed since


def test_polling_returns_new_finished_and_heldout_trials_only(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    path = tmp_path / "live.db"
    w = Store.open(str(path))
    study = w.create_study("live", "name: live\n", "sha", OBJECTIVES_2, _space())
    names = _space()["names"]
    ids = [w.add_trial(study.id, n, {"id": n}, dict.fromkeys(names, 0.5), "random", worker=None) for n in range(2)]
    w.finish_trial(ids[0], COMPLETE, values=[0.5, 0.5], worker="local-0")
    app = create_app(["live"], store=str(path))
    app.state.runs[0].min_interval = 0.0
    try:
        with TestClient(app) as c:
            doc = _poll(c, "live")
            assert [(t["number"], t["state"]) for t in doc["trials"]] == [(0, COMPLETE), (1, "RUNNING")]
            cur = doc["cursor"]
            # a new trial, and the RUNNING one finishes (it failed)
            ids.append(w.add_trial(study.id, 2, {"id": 2}, dict.fromkeys(names, 0.1), "random"))
            w.finish_trial(ids[1], FAIL, error="RuntimeError: out of memory", worker="local-1")
            doc = _poll(c, "live", cur)
            got = {t["number"]: t for t in doc["trials"]}
            assert set(got) == {1, 2}
            assert got[1]["state"] == FAIL and got[1]["error"] == "RuntimeError: out of memory" and got[1]["worker"] == "local-1"
            assert got[2]["state"] == "RUNNING"
            # after_id alone: only rows newer than the id
            assert [t["number"] for t in c.get(f"/api/runs/live/trials?after_id={ids[1]}").json()["trials"]] == [2]
            # held-out values arrive later for trial 0; a restarted trial changes attempts
            cur = doc["cursor"]
            w.add_heldout(ids[0], [0.4, None])
            w.restart_trial(ids[2], worker="local-0")
            doc = _poll(c, "live", cur)
            got = {t["number"]: t for t in doc["trials"]}
            assert set(got) == {0, 2}
            assert got[0]["heldout"] == [0.4, None] and got[2]["attempts"] == 2
            assert _poll(c, "live", doc["cursor"])["trials"] == []
            assert doc["summary"]["counts"] == {"RUNNING": 1, "COMPLETE": 1, "FAIL": 1}
    finally:
        w.close()
        for rc in app.state.runs:
            rc.store.close()


def _fresh_read(path: Path, run: str) -> tuple[dict[int, dict], dict, dict]:
    """What a dashboard started now reads of ``run``: every trial by id, the summary, the curves."""
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    app = create_app([run], store=str(path))
    try:
        with TestClient(app) as c:
            doc = _poll(c, run)
            assert doc["view"] is None
            return {t["id"]: t for t in doc["trials"]}, doc["summary"], c.get("/api/hypervolume").json()
    finally:
        for rc in app.state.runs:
            rc.store.close()


def _same_summary(a: dict, b: dict) -> None:
    skip = {"now", "counter"} | ({"elapsed"} if a["counts"].get("RUNNING") else set())  # elapsed runs to now while trials run
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def test_incremental_polls_equal_a_full_reload(tmp_path: Path) -> None:
    """The page's way of reading a live run (one first load, then polls with the cursor, merged
    by trial id) holds exactly the trials, summary and hypervolume curve that a dashboard
    started afresh reads from the whole store, after every kind of change a run makes: new
    trials, RUNNING trials that complete, fail or are stopped at a low fidelity level,
    restarts, worker changes, held-out values added, re-scored and removed, a new point that
    dominates front members, a new worst value that moves the reference point."""
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    path = tmp_path / "inc.db"
    objectives = [("acc", "maximize"), ("loss", "minimize")]
    names = _space()["names"]
    w = Store.open(str(path))
    cfg = {"name": "inc", "strategy": {"name": "random", "budget": 40}}
    study = w.create_study("inc", yaml.safe_dump(cfg), "sha", objectives, _space())
    rng = np.random.default_rng(0)
    ids: dict[int, int] = {}

    def add(numbers: range) -> None:
        for n in numbers:
            ids[n] = w.add_trial(study.id, n, {"id": n}, dict.fromkeys(names, 0.5), "random", worker=f"local-{n % 3}")

    def finish(n: int, state: str = COMPLETE, values: list[float] | None = None, **kw: Any) -> None:
        if state in (COMPLETE, STOPPED) and values is None:
            values = [float(rng.uniform(0.2, 0.8)), float(rng.uniform(1.0, 2.0))]
        w.finish_trial(ids[n], state, values=values, worker=f"local-{n % 3}", materialize_s=0.1, evaluate_s=1.0 + n, **kw)

    add(range(12))
    for n in range(10):
        finish(n, FAIL, error="RuntimeError: boom") if n == 4 else finish(n)

    def new_and_finished() -> None:
        add(range(12, 20))
        finish(10, values=[0.95, 0.9])  # dominates most of the front
        finish(11, FAIL, error="CUDA out of memory")

    def heldout_restart_worker() -> None:
        for tid in (ids[0], ids[10], ids[3]):
            w.add_heldout(tid, [0.5, 1.5])
        w.restart_trial(ids[12], worker="local-9")
        w.set_worker(ids[13], "local-8")

    def rescore_stop_worst() -> None:
        w.add_heldout(ids[10], [0.9, None])  # re-scored: one value changes, one goes
        w.add_heldout(ids[0], [None, None])  # removed
        finish(12, values=[0.3, 50.0])  # a new worst loss: the reference point moves
        finish(13, STOPPED, values=[0.99, 0.1], level=0)  # stopped at a low level: never on the front
        finish(14, values=[0.95, 0.9])  # a duplicate of a front point: both on it

    def rest() -> None:
        for n in range(15, 20):
            finish(n)
        add(range(20, 23))
        w.set_status(study.id, "finished")

    app = create_app(["inc"], store=str(path))
    app.state.runs[0].min_interval = 0.0
    try:
        with TestClient(app) as c:
            doc = _poll(c, "inc")
            held = {t["id"]: t for t in doc["trials"]}
            for step in (new_and_finished, heldout_restart_worker, rescore_stop_worst, lambda: None, rest):
                step()
                doc = _poll(c, "inc", doc["cursor"])
                if step.__name__ == "<lambda>":
                    assert doc["trials"] == []  # nothing changed, nothing sent
                held.update({t["id"]: t for t in doc["trials"]})
                trials, summary, hv = _fresh_read(path, "inc")
                assert held == trials, step.__name__
                _same_summary(doc["summary"], summary)
                assert c.get("/api/hypervolume").json() == hv, step.__name__
            # the page's compact curve: where the hypervolume changes, and the last point
            (curve,) = hv["groups"][0]["runs"].values()
            want = [p for i, p in enumerate(curve) if i == 0 or p[1] != curve[i - 1][1] or i == len(curve) - 1]
            (got,) = c.get("/api/hypervolume?changes=true").json()["groups"][0]["runs"].values()
            assert got == want and len(got) < len(curve)
    finally:
        w.close()
        for rc in app.state.runs:
            rc.store.close()
    data = load_run("inc", str(path))
    assert summary["front"] == data.front and 14 in data.front and 10 in data.front and 13 not in data.front
    assert summary["ref_point"] == pytest.approx(data.ref_point) and data.ref_point[1] == pytest.approx(55.0)
    assert summary["counts"] == data.counts() == {"RUNNING": 3, "COMPLETE": 17, "FAIL": 2, "STOPPED": 1}


def test_heldout_poll_reads_the_id_range_of_the_run(tmp_path: Path) -> None:
    """The poll's held-out query is a range on the (split, trial_id) index over the run's trial
    ids, not every held-out row in the store; another run's held-out values in one store
    (launched together: ids interleave) are not taken for this run's."""
    import sqlite3

    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    path = tmp_path / "two.db"
    w = Store.open(str(path))
    a = w.create_study("a", "name: a\n", "sha", OBJECTIVES_2, _space())
    b = w.create_study("b", "name: b\n", "sha", OBJECTIVES_2, _space())
    ids = {s.name: [] for s in (a, b)}
    for n in range(6):
        for s in (a, b):
            tid = w.add_trial(s.id, n, {"id": n}, {}, "random")
            w.finish_trial(tid, COMPLETE, values=[0.1 * n, 1 - 0.1 * n], worker="local-0")
            ids[s.name].append(tid)
    app = create_app(["a"], store=str(path))
    app.state.runs[0].min_interval = 0.0
    con = sqlite3.connect(path)
    try:
        with TestClient(app) as c:
            doc = _poll(c, "a")
            q = app.state.runs[0].heldout_query().compile(compile_kwargs={"literal_binds": True})
            plan = " ".join(str(r) for r in con.execute(f"EXPLAIN QUERY PLAN {q}"))
            assert "ix_trial_values_split" in plan and "SCAN trial_values" not in plan, plan  # the index, not a scan
            w.add_heldout(ids["b"][2], [0.5, 0.5])
            assert _poll(c, "a", doc["cursor"])["trials"] == []
            w.add_heldout(ids["a"][2], [0.4, 0.6])
            assert [t["heldout"] for t in _poll(c, "a", doc["cursor"])["trials"]] == [[0.4, 0.6]]
    finally:
        con.close()
        w.close()
        for rc in app.state.runs:
            rc.store.close()


def test_run_state_takes_back_a_counted_result_that_changes() -> None:
    """A store never changes a finished result, but if a trial that the front, the value range,
    a best or a worker row counted does change, the aggregates are rebuilt, not left stale."""
    import dataclasses

    from search.dashboard.runstate import RunState
    from search.report import run_data
    from search.store import Study, Trial

    study = Study(1, "s", "", "", {}, 0.0, "running", [("acc", "maximize"), ("loss", "minimize")])
    rng = np.random.default_rng(3)
    trials = {
        n: Trial(id=n + 1, number=n, state=COMPLETE, strategy="random", generation=0, parents=[], candidate={}, params={},
                 values=[float(rng.random()), float(rng.random())], heldout=None, worker=f"w{n % 2}", attempts=1,
                 started_at=100.0 + n, finished_at=200.0 + n, error=None, materialize_s=0.1, evaluate_s=1.0)
        for n in range(30)
    }
    st = RunState(study.directions, [None, None])

    def check() -> None:
        d = run_data(study, sorted(trials.values(), key=lambda t: t.number))
        assert st.front() == d.front and st.ref_point() == pytest.approx(d.ref_point)
        assert st.hypervolume() == pytest.approx(d.hypervolume)
        assert [t.number if t else None for t in st.best()] == [t.number if t else None for _, _, t in d.best()]
        assert st.counts == d.counts() and st.workers() == d.workers() and st.elapsed(1e9) == d.elapsed(1e9)

    for t in trials.values():
        st.put(t)
    check()
    best_acc = max(trials.values(), key=lambda t: t.values[0]).number
    trials[best_acc] = dataclasses.replace(trials[best_acc], values=[0.0, 5.0], worker="w9", finished_at=900.0)
    assert st.put(trials[best_acc])
    check()
    for n in (best_acc, min(st.front())):  # the worst loss (the reference point), then a front member
        trials[n] = dataclasses.replace(trials[n], state=FAIL, values=None, started_at=50.0)
        assert st.put(trials[n]) and not st.put(trials[n])
        check()


def test_run_state_polls_cost_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change that leaves a trial's result as it was (a held-out value, which is all held-out
    evaluation adds to a front member) rebuilds no front, and worker rows come from running
    sums and time ranges, not from each worker's trials: with two workers every row still
    equals worker_rows() of the whole run after finishes, restarts (of a worker's first trial
    too), moves between workers (of its latest trial too) and held-out changes."""
    import dataclasses

    from search.dashboard import runstate
    from search.dashboard.runstate import RunState
    from search.report import run_data
    from search.store import RUNNING, Study, Trial

    study = Study(1, "s", "", "", {}, 0.0, "running", [("acc", "maximize"), ("loss", "minimize")])
    rng = np.random.default_rng(5)

    def trial(n: int, state: str) -> Trial:
        done = state != RUNNING
        return Trial(id=n + 1, number=n, state=state, strategy="random", generation=0, parents=[], candidate={}, params={},
                     values=rng.random(2).tolist() if done else None, heldout=None, worker=f"w{n % 2}", attempts=1,
                     started_at=100.0 + n, finished_at=100.5 + n if done else None, error=None,
                     materialize_s=float(rng.random()) if done else None, evaluate_s=float(rng.random()) if done else None)

    trials = {n: trial(n, COMPLETE if n < 50 else RUNNING) for n in range(60)}
    st = RunState(study.directions, [None, None])
    masks: list[int] = []
    real_mask = runstate.pareto_mask
    monkeypatch.setattr(runstate, "pareto_mask", lambda *a: masks.append(1) or real_mask(*a))

    class NoWalk(dict):  # the run's trials, refusing to be walked while worker rows are made
        def _walk(self, *a: object) -> None:
            raise AssertionError("worker rows walked the run's trials")

        values = items = keys = __iter__ = _walk

    def put(t: Trial) -> None:
        trials[t.number] = t
        assert st.put(t)

    def check() -> None:
        d = run_data(study, sorted(trials.values(), key=lambda t: t.number))
        kept, st.trials = st.trials, NoWalk(st.trials)
        try:
            rows = st.workers()
        finally:
            st.trials = kept
        assert rows == d.workers()
        assert st.front() == d.front and st.hypervolume() == pytest.approx(d.hypervolume) and st.counts == d.counts()
        assert [t.number if t else None for t in st.best()] == [t.number if t else None for _, _, t in d.best()]
        assert st.elapsed(1e9) == d.elapsed(1e9)

    for t in trials.values():
        st.put(t)
    check()
    before = len(masks)
    for n in st.front():
        put(dataclasses.replace(trials[n], heldout=[0.5, 0.5]))
    check()
    assert len(masks) == before  # held-out values only: no front rebuilt
    for n in range(50, 60):  # the running trials finish, the last one held each worker's latest time
        put(dataclasses.replace(trial(n, COMPLETE), heldout=None))
    check()
    put(dataclasses.replace(trials[0], state=RUNNING, values=None, started_at=400.0, finished_at=None))  # w0's first trial
    check()
    put(dataclasses.replace(trials[1], worker="w2"))
    put(dataclasses.replace(trials[59], worker="w2"))  # held w1's latest time
    put(dataclasses.replace(trials[3], worker=None, materialize_s=float("nan")))
    check()
    put(dataclasses.replace(trials[1], worker="w1"))
    put(dataclasses.replace(trials[3], materialize_s=0.25))
    check()
    # the run's first start (trial 1, 101.0) restarted later but finished earlier (a clock behind)
    put(dataclasses.replace(trials[1], started_at=150.0, finished_at=99.0))
    check()


def test_first_load_of_a_big_run_is_a_view(tmp_path: Path) -> None:
    """Above the limit the first load sends the front, every running trial, the latest trials
    and an even sample of the other results, and says so; polls then send what is new."""
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    path = tmp_path / "big.db"
    w = Store.open(str(path))
    study = w.create_study("big", "name: big\n", "sha", OBJECTIVES_2, _space())
    rng = np.random.default_rng(1)
    ids = [w.add_trial(study.id, n, {"id": n}, {}, "random") for n in range(120)]
    for tid in ids[:115]:
        w.finish_trial(tid, COMPLETE, values=rng.random(2).tolist(), worker="local-0")
    app = create_app(["big"], store=str(path), view_limit=40)
    app.state.runs[0].min_interval = 0.0
    try:
        with TestClient(app) as c:
            doc = _poll(c, "big")
            data = load_run("big", str(path))
            got = {t["number"] for t in doc["trials"]}
            v = doc["view"]
            assert doc["limit"] == 40 and v["total"] == 120 and v["running"] == 5 and v["complete"] == 115
            front, running, latest = set(data.front), set(range(115, 120)), set(range(112, 120))  # latest: limit // 5
            assert front | running | latest <= got
            assert v["front"] == len(front) and v["recent"] == len(latest - front - running)
            assert len(got) == v["sent"] == v["front"] + v["running"] + v["recent"] + v["sampled"]
            assert v["recent"] + v["sampled"] <= 40 and v["sampled"] > 20
            sampled = sorted(got - front - latest)
            assert sampled[0] < 10 and sampled[-1] > 100  # spread over the whole run
            assert doc["summary"]["front"] == data.front and doc["summary"]["counts"] == data.counts()
            w.finish_trial(ids[115], COMPLETE, values=[2.0, 2.0], worker="local-0")  # dominates every other point
            new = _poll(c, "big", doc["cursor"])
            assert [t["number"] for t in new["trials"]] == [115] and new["view"] is None
            assert new["summary"]["front"] == [115]
    finally:
        w.close()
        for rc in app.state.runs:
            rc.store.close()


def test_a_view_says_how_many_it_sent_when_the_front_exceeds_the_limit(tmp_path: Path) -> None:
    """A view holds the whole front and every running trial even past the limit; it says how
    many trials it sent, which the page subtracts before comparing what polls added with the
    limit (comparing the held trials with twice the limit re-fetched a view on every poll)."""
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    path = tmp_path / "wide.db"
    w = Store.open(str(path))
    study = w.create_study("wide", "name: wide\n", "sha", OBJECTIVES_2, _space())
    ids = [w.add_trial(study.id, n, {"id": n}, {}, "random") for n in range(60)]
    for n, tid in enumerate(ids[:50]):
        w.finish_trial(tid, COMPLETE, values=[n / 50, 1 - n / 50], worker="local-0")  # every result on the front
    app = create_app(["wide"], store=str(path), view_limit=10)
    try:
        with TestClient(app) as c:
            doc = _poll(c, "wide")
            v = doc["view"]
            assert v["front"] == 50 and v["running"] == 10 and v["sent"] == len(doc["trials"]) == 60 > 2 * doc["limit"]
    finally:
        w.close()
        for rc in app.state.runs:
            rc.store.close()


def test_trial_detail_has_coefficient_maps_and_metrics(client: Any, small_store: Path) -> None:
    data = load_run("nsga", str(small_store), with_metrics=True)
    t = data.front_trials[0]
    d = client.get(f"/api/runs/nsga/trials/{t.number}").json()
    assert d["number"] == t.number and d["on_front"] is True and d["values"] == pytest.approx(t.values)
    (m,) = d["coefficients"]["maps"]
    assert m["param"] == "weight" and m["groups"] == GROUPS and m["experts"] == EXPERTS
    assert (m["lower"], m["upper"]) == (0.0, 1.0)
    for i, e in enumerate(EXPERTS):
        for j, g in enumerate(GROUPS):
            assert m["matrix"][i][j] == pytest.approx(t.params[f"{g}/{e}/weight"])
    assert sorted(x["metric"] for x in d["metrics"]) == ["code", "math"]
    assert len(d["params"]) == len(GROUPS) * len(EXPERTS)
    assert client.get("/api/runs/nsga/trials/9999").status_code == 404


def test_hypervolume_curves_share_a_reference_point(client: Any, small_store: Path) -> None:
    doc = client.get("/api/hypervolume").json()
    (g,) = doc["groups"]
    assert g["ref_point"] == [0.0, 0.0] and set(g["runs"]) == {"nsga", "rand"}
    for run, curve in g["runs"].items():
        data = load_run(run, str(small_store))
        assert [p[0] for p in curve] == list(range(1, sum(1 for t in data.trials if t.state in (COMPLETE, FAIL)) + 1))
        assert curve[-1][1] == pytest.approx(data.hypervolume)
        assert all(b[1] >= a[1] for a, b in zip(curve, curve[1:], strict=False))


def test_hypervolume_documents_are_cached_per_form(small_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page asking for the compact curve (changes=true) and a client asking for the full one
    are each served from the cache while no run changes; neither evicts the other."""
    from fastapi.testclient import TestClient

    from search.dashboard import server

    built: list[int] = []
    real = server.reference_point
    monkeypatch.setattr(server, "reference_point", lambda *a: built.append(1) or real(*a))
    app = server.create_app(["nsga", "rand"], store=str(small_store))
    try:
        with TestClient(app) as c:
            first = [c.get("/api/hypervolume", params={"changes": ch}).json() for ch in (True, False)]
            assert len(built) == 2  # one group, each form built once
            again = [c.get("/api/hypervolume", params={"changes": ch}).json() for ch in (True, False, True)]
            assert again == [first[0], first[1], first[0]] and len(built) == 2
    finally:
        for rc in app.state.runs:
            rc.store.close()


def test_hypervolume_curve_is_rebuilt_when_a_finish_sorts_before_counted_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial that finishes between two polls with a finish time before trials already counted
    (a worker whose clock is behind) cannot extend the counted curve: the tracker says so and
    the curve is counted again from the whole run, as a freshly started dashboard reads it."""
    import sqlite3

    from fastapi.testclient import TestClient

    from search.dashboard import server

    path = tmp_path / "late.db"
    w = Store.open(str(path))
    study = w.create_study("late", "name: late\n", "sha", OBJECTIVES_2, _space())
    ids = [w.add_trial(study.id, n, {"id": n}, {}, "random") for n in range(8)]
    rng = np.random.default_rng(4)
    for tid in ids[:5]:
        w.finish_trial(tid, COMPLETE, values=rng.uniform(0.2, 0.6, 2).tolist(), worker="local-0")
    extended: list[bool] = []
    real = server.HypervolumeTracker.extend
    monkeypatch.setattr(server.HypervolumeTracker, "extend", lambda self, f: extended.append(real(self, f)) or extended[-1])
    app = server.create_app(["late"], store=str(path))
    app.state.runs[0].min_interval = 0.0
    con = sqlite3.connect(path)
    try:
        with TestClient(app) as c:
            c.get("/api/hypervolume")
            w.finish_trial(ids[5], COMPLETE, values=[0.7, 0.3], worker="local-0")  # in order: extends
            assert c.get("/api/hypervolume").json() == _fresh_read(path, "late")[2] and extended[-1] is True
            # two more finish, one of them stamped before every counted trial and better than all
            w.finish_trial(ids[6], COMPLETE, values=[0.9, 0.9], worker="local-1")
            w.finish_trial(ids[7], COMPLETE, values=[0.1, 0.65], worker="local-0")
            con.execute("UPDATE trials SET finished_at = 1.0 WHERE id = ?", (ids[6],))
            con.commit()
            got = c.get("/api/hypervolume").json()
            assert extended[-1] is False
            fresh = _fresh_read(path, "late")[2]
            assert got == fresh
            (curve,) = got["groups"][0]["runs"].values()
            assert curve[0][1] == pytest.approx(0.81) and len(curve) == 8  # the late trial counts first
    finally:
        con.close()
        w.close()
        for rc in app.state.runs:
            rc.store.close()


def test_hypervolume_against_examples_and_seconds_of_a_fidelity_run(toy_root: Path, tmp_path: Path) -> None:
    """Each point of the curve carries the examples evaluated and the evaluation seconds so far
    (in finish order, stopped trials included), so the page can plot against either."""
    from fastapi.testclient import TestClient

    from search.controller import launch
    from search.dashboard.server import create_app
    from search.pareto import _finish_order
    from tests.toy_problem import fidelity_config

    store = tmp_path / "fid.db"
    cfg = fidelity_config(toy_root, name="fid", budget=12, strategy="random", z=1.0, store=str(store))
    (tmp_path / "fid.yaml").write_text(yaml.safe_dump(cfg))
    assert launch(str(tmp_path / "fid.yaml")) == 0
    with TestClient(create_app(["fid"], store=str(store))) as c:
        (g,) = c.get("/api/hypervolume").json()["groups"]
    curve = g["runs"]["fid"]
    data = load_run("fid", str(store))
    done = _finish_order(data.trials)
    assert [p[0] for p in curve] == list(range(1, len(data.trials) + 1))
    assert [p[2] for p in curve] == list(np.cumsum([sum(t.examples) for t in done]))
    assert [p[3] for p in curve] == pytest.approx(list(np.cumsum([t.evaluate_s for t in done])))


def test_runs_with_other_objectives_get_their_own_reference(small_store: Path) -> None:
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    app = create_app(["nsga", "three"], store=str(small_store))
    with TestClient(app) as c:
        groups = c.get("/api/hypervolume").json()["groups"]
    assert [list(g["runs"]) for g in groups] == [["nsga"], ["three"]]
    three = load_run("three", str(small_store))
    assert groups[1]["ref_point"] == pytest.approx(three.ref_point) and groups[1]["ref_point"][2] > 0  # worst mass * 1.1


def test_export_route(client: Any, small_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import search.export as export

    url = "/api/runs/nsga/trials/1/export"
    assert client.post(url, content='{"out_dir": "x"}', headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post(url, json={"force": True}).status_code == 400
    assert client.post(url, json={"out_dir": "x", "force": "yes"}).status_code == 400
    assert client.post("/api/runs/nsga/trials/9999/export", json={"out_dir": "x"}).status_code == 404

    calls = []

    def fake(run_name: str, store: Any, number: int, out_dir: str, force: bool = False) -> Path:
        calls.append((run_name, store, number, out_dir, force))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "model.safetensors").write_bytes(b"")
        return Path(out_dir)

    monkeypatch.setattr(export, "export_trial", fake)
    out = tmp_path / "merged" / "t1"
    r = client.post(url, json={"out_dir": str(out), "force": False})
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["job"])
    assert job["status"] == "done" and job["result"] == str(out) and (out / "model.safetensors").exists()
    assert calls == [("nsga", str(small_store), 1, str(out), False)]
    assert client.post(url, json={"out_dir": str(out)}).status_code == 202  # the export itself decides about existing folders

    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    fenced = create_app(["nsga"], store=str(small_store), export_root=tmp_path / "merged")
    with TestClient(fenced) as c:
        assert c.post(url, json={"out_dir": str(tmp_path / "elsewhere")}).status_code == 403
        r = c.post(url, json={"out_dir": str(tmp_path / "merged" / "t1b")})
        assert r.status_code == 202 and _wait_job(c, r.json()["job"])["status"] == "done"
    fenced.state.runs[0].store.close()

    monkeypatch.delattr(export, "export_trial")
    r = client.post(url, json={"out_dir": str(tmp_path / "other")})
    assert r.status_code == 501 and "export is not available" in r.json()["detail"]


def test_export_route_runs_the_real_export(client: Any, tmp_path: Path) -> None:
    """The analytic run has no models, so the real export refuses it; the job reports why."""
    r = client.post("/api/runs/nsga/trials/1/export", json={"out_dir": str(tmp_path / "real")})
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["job"])
    assert job["status"] == "error" and job["error"]
    assert client.get("/api/exports").json()["jobs"][-1]["job"] == job["job"]


def _wait_job(client: Any, job: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = client.get(f"/api/exports/{job}").json()
        if j["status"] != "running":
            return j
        time.sleep(0.1)
    raise AssertionError(f"export job {job} still running after {timeout}s")


def test_page_and_assets_are_served_locally(client: Any) -> None:
    r = client.get("/")
    assert r.status_code == 200 and '<svg id="scatter"' in r.text
    for asset in ("app.js", "style.css"):
        a = client.get(f"/static/{asset}")
        assert a.status_code == 200 and len(a.text) > 1000
    static = Path(__file__).resolve().parents[1] / "search" / "dashboard" / "static"
    for f in static.iterdir():
        text = f.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), f"{f.name} loads something from elsewhere"
        assert "@import" not in text and "cdn" not in text.lower()


def test_store_is_opened_read_only(small_store: Path) -> None:
    from search.dashboard.server import create_app
    from search.errors import StoreError

    app = create_app(["nsga"], store=str(small_store))
    st = app.state.runs[0].store
    try:
        assert st.readonly
        with pytest.raises(StoreError, match="read-only"):
            st.set_status(1, "x")
    finally:
        st.close()


def test_host_header_is_checked_when_bound_to_loopback(small_store: Path) -> None:
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app

    app = create_app(["nsga"], store=str(small_store), allowed_hosts={"127.0.0.1", "localhost"})
    with TestClient(app) as c:
        assert c.get("/api/runs").status_code == 400  # Host: testserver (as after a DNS rebinding)
        assert c.get("/api/runs", headers={"Host": "127.0.0.1:8765"}).status_code == 200
        assert c.get("/api/runs", headers={"Host": "localhost"}).status_code == 200
    app.state.runs[0].store.close()


def test_serve_reports_user_errors(small_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from search.dashboard.server import serve

    assert serve(["nsgaa"], store=str(small_store), port=0) == 2
    assert "did you mean 'nsga'" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert serve(["nsga"], store=str(small_store), port=s.getsockname()[1]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_cli_start_line_and_non_loopback_warning(small_store: Path) -> None:
    d = Dashboard(["nsga", "--store", str(small_store), "--host", "0.0.0.0"])
    try:
        assert d.url.startswith("http://0.0.0.0:")
        with urllib.request.urlopen(d.url.replace("0.0.0.0", "127.0.0.1") + "api/runs", timeout=10) as r:
            assert json.loads(r.read())["runs"][0]["key"] == "nsga"
        deadline = time.time() + 10
        while not any("not a loopback address" in x for x in d.lines) and time.time() < deadline:
            time.sleep(0.1)
        assert any("WARNING" in x and "not a loopback address" in x for x in d.lines), d.lines
    finally:
        assert d.close() == 0


# ----------------------------------------------------------------------------- real `search launch` runs

def toy_search_config(toy_root: Path, store: Path, name: str, budget: int, *, three: bool = False, flaky: bool = False) -> Path:
    """A small search of the toy MLP problem (tests/toy_problem.py), two local workers, nsga2;
    ``flaky`` makes objective near_a fail now and then (raises or returns NaN), ``three`` adds
    a third, minimised objective."""
    import yaml

    from tests.toy_problem import toy_config

    cfg = toy_config(toy_root, name=name, budget=budget, strategy="nsga2", count=2, options={"pop_size": 6}, store=str(store),
                     function_a="tests.toy_problem:flaky" if flaky else "tests.toy_problem:closeness")
    if three:
        cfg["objectives"].append({"name": "near_base", "evaluator": "python", "direction": "minimize",
                                  "settings": {"function": "tests.toy_problem:closeness", "metric": "closeness",
                                               "kwargs": {"expert": "base"}}})
    path = store.parent.parent / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_launch(config: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search", "launch", str(config)], cwd=config.parent,
                            env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def launched_store(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Path:
    """Two finished runs made by `search launch`: 'toy' (two objectives, some failed trials) and
    'toy3' (three objectives), in one store."""
    store = tmp_path_factory.mktemp("launched") / "runs" / "toy.db"
    for cfg in (toy_search_config(toy_root, store, "toy", 18, flaky=True), toy_search_config(toy_root, store, "toy3", 18, three=True)):
        p = start_launch(cfg)
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return store


# ----------------------------------------------------------------------------- the page in a real browser

POINTS = "document.querySelectorAll('#scatter circle.pt').length"
READY = "document.body && document.body.dataset.ready === '1'"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chrome-profile")
    try:
        yield b
    finally:
        b.close()


def test_browser_shows_the_front_heatmap_and_exports(launched_store: Path, browser: Browser, tmp_path: Path) -> None:
    data = load_run("toy", str(launched_store))
    space = data.study.space
    complete = sorted(t.number for t in data.trials if t.state == COMPLETE)
    failed = [t for t in data.trials if t.state == FAIL]
    assert failed and complete  # the flaky objective failed some trials, not all
    d = Dashboard(["toy", "--store", str(launched_store)])
    try:
        browser.goto(d.url)
        browser.wait_for(READY, what="the page's first load")
        # one point per completed trial, front members marked
        assert browser.eval(POINTS) == len(complete)
        assert sorted(browser.eval("[...document.querySelectorAll('#scatter circle.pt')].map(c => +c.dataset.n)")) == complete
        assert sorted(browser.eval("[...document.querySelectorAll('#scatter circle.pt.front')].map(c => +c.dataset.n)")) == data.front
        # hover: the tooltip names the trial and its values (front members have held-out values)
        n = max(data.front, key=lambda k: data.trial(k).values[0] * data.trial(k).values[1])
        x, y = browser.center_of(f"#scatter circle.pt[data-n='{n}']")
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        tip = browser.wait_for("!document.getElementById('tip').hidden && document.getElementById('tip').innerText", what="tooltip")
        assert f"Trial #{n}" in tip and "near_a" in tip and "held-out" in tip
        # click: the coefficients as an experts x layer-groups heatmap
        browser.click(x, y)
        browser.wait_for("document.querySelectorAll('#detail svg.heatmap rect.cell').length > 0", what="the heatmap")
        assert browser.eval("document.querySelectorAll('#detail svg.heatmap rect.cell').length") == len(space["groups"]) * len(space["experts"])
        assert browser.eval("document.getElementById('detail-title').innerText") == f"Trial #{n}"
        cell = browser.eval("+document.querySelector('#detail svg.heatmap rect.cell').dataset.v")
        g, e = space["groups"][0], space["experts"][0]
        assert cell == pytest.approx(data.trial(n).params[f"{g}/{e}/weight"])
        # the table lists every trial, failed ones with their error; hypervolume and worker timeline drawn
        assert browser.eval("document.querySelectorAll('#trials tbody tr').length") == len(data.trials)
        assert browser.eval("document.querySelectorAll('#trials tbody tr.FAIL').length") == len(failed)
        errs = [t.error for t in failed if t.error]
        if errs:
            shown = browser.eval("[...document.querySelectorAll('#trials tbody tr.FAIL td.err')].map(td => td.title)")
            assert sorted(e for e in shown if e) == sorted(e[:600] + ("..." if len(e) > 600 else "") for e in errs)
        assert browser.eval("document.querySelectorAll('#hv path[data-run]').length") == 1
        # the same curve against evaluation seconds
        browser.eval("(() => { const s = document.getElementById('hv-x'); s.value = '3'; s.dispatchEvent(new Event('change')); })()")
        assert browser.eval("document.querySelectorAll('#hv path[data-run]').length") == 1
        assert "evaluation seconds" in browser.eval("document.getElementById('hv').innerText")
        assert browser.eval("document.querySelectorAll('#workers rect.bar').length") == len(data.trials)
        browser.screenshot(ARTIFACTS / "dashboard.png")
        # export from the page: the real search.export writes the model folder
        out = tmp_path / "exported"
        browser.eval(f"document.getElementById('export-dir').value = {json.dumps(str(out))}")
        bx, by = browser.center_of("#export-btn")
        browser.click(bx, by)
        msg = browser.wait_for("(() => { const m = document.getElementById('export-msg');"
                               " return /done|error/.test(m.className) && m.innerText; })()", 120, "the export")
        assert msg == f"exported to {out}", msg
        assert (out / "model.safetensors").exists() and (out / "README.md").exists()
        # dominated points off: only the front stays
        browser.eval("document.getElementById('chk-dom').click()")
        assert browser.eval(POINTS) == len(data.front)
        # sort the table by the first objective, best first
        browser.eval("document.querySelector('#trials th[data-col=\"obj:near_a\"]').click()")
        first = browser.eval("+document.querySelector('#trials tbody tr').dataset.n")
        best = max(t.values[0] for t in data.trials if t.state == COMPLETE)
        assert data.trial(first).values[0] == best
        assert browser.errors == []
    finally:
        assert d.close() == 0


def test_browser_three_objectives_rotatable_view(launched_store: Path, browser: Browser) -> None:
    data = load_run("toy3", str(launched_store))
    d = Dashboard(["toy3", "--store", str(launched_store)])
    try:
        browser.goto(d.url)
        browser.wait_for(READY)
        browser.eval("document.querySelector('#mode-seg button[data-mode=\"3d\"]').click()")
        n = sum(1 for t in data.trials if t.state == COMPLETE)
        assert browser.wait_for("document.getElementById('scatter3d').dataset.points") == str(n)
        assert browser.eval("document.getElementById('scatter').hasAttribute('hidden')")
        # drag to rotate, then click the projected position of a point to select it
        x, y = browser.center_of("#scatter3d")
        browser.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + 60, y=y + 20, button="left")
        browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + 60, y=y + 20, button="left", clickCount=1)
        px, py, num = browser.eval("(() => { const c = document.getElementById('scatter3d'), b = c.getBoundingClientRect();"
                                   " const q = c.__scr[c.__scr.length - 1]; return [b.x + q.x, b.y + q.y, q.p.t.number]; })()")
        browser.click(px, py)
        browser.wait_for(f"document.getElementById('detail-title').innerText === 'Trial #{num}'")
        browser.wait_for("document.querySelectorAll('#detail svg.heatmap rect.cell').length > 0")
        browser.screenshot(ARTIFACTS / "dashboard-3d.png")
        assert browser.errors == []
    finally:
        assert d.close() == 0


def test_browser_live_points_appear_while_a_search_runs(toy_root: Path, tmp_path: Path, browser: Browser) -> None:
    store = tmp_path / "runs" / "live.db"
    search = start_launch(toy_search_config(toy_root, store, "live", 30), TOY_DELAY="0.25")
    d = None
    try:
        _wait_until(lambda: _has_trials(store, "live") or search.poll() is not None, 120, "the search's first trial")
        assert search.poll() is None, "the search ended before the dashboard could watch it"
        d = Dashboard(["live", "--store", str(store)])
        browser.goto(d.url + "?poll=300")
        browser.wait_for(READY)
        first = browser.eval(POINTS)
        seen_running = False
        deadline = time.time() + 240
        while search.poll() is None and time.time() < deadline:
            seen_running |= bool(browser.eval("document.querySelectorAll('#trials tbody tr.RUNNING').length"))
            time.sleep(0.2)
        out, _ = search.communicate(timeout=60)
        assert search.returncode == 0, out
        data = load_run("live", str(store))
        n_complete = sum(1 for t in data.trials if t.state == COMPLETE)
        assert n_complete > first + 5, (first, n_complete)  # the search went on while the page was open
        # every trial the page saw RUNNING is now shown finished, without a reload
        browser.wait_for(f"{POINTS} === {n_complete}", 20, f"{n_complete} points")
        browser.wait_for("document.querySelectorAll('#trials tbody tr.RUNNING').length === 0", 20)
        assert seen_running
        # held-out values (evaluated at the end of the search) reach the table; the header says idle
        browser.wait_for("document.querySelectorAll('#trials .ho').length > 0", 20, "held-out values")
        browser.wait_for("document.getElementById('live').classList.contains('idle')", 20)
        assert browser.eval("document.querySelectorAll('#trials tbody tr').length") == len(data.trials)
        browser.screenshot(ARTIFACTS / "dashboard-live.png")
        assert browser.errors == []
    finally:
        if search.poll() is None:
            search.send_signal(signal.SIGINT)
            search.communicate(timeout=60)
        if d is not None:
            assert d.close() == 0


def _has_trials(path: Path, run: str) -> bool:
    try:
        st = Store.open(str(path), readonly=True)
    except Exception:  # noqa: BLE001 - not created yet
        return False
    try:
        s = st.find_study(run)
        return s is not None and bool(st.counts(s.id))
    except Exception:  # noqa: BLE001 - tables being created
        return False
    finally:
        st.close()


def _wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_browser_big_run_first_load_is_a_view_and_polls_add_new_points(tmp_path: Path, browser: Browser) -> None:
    """A run above the first-load limit (5000 trials): the page gets a view of it (the front and
    a sample of the rest), says so, and new results still appear without a reload."""
    from search.dashboard.server import VIEW_LIMIT

    path = tmp_path / "big.db"
    n = VIEW_LIMIT + 1000
    w = Store.open(str(path))
    study = w.create_study("big", yaml.safe_dump({"name": "big", "strategy": {"name": "random", "budget": n + 20}}), "sha",
                           OBJECTIVES_2, _space())
    rng = np.random.default_rng(7)
    ids = w.add_trials(study.id, [dict(number=i, candidate={"id": i}, params={}, worker=f"gpu-{i % 16}") for i in range(n)], "random")
    for i, tid in enumerate(ids[:-16]):  # the last 16 still running
        if i % 97 == 5:
            w.finish_trial(tid, FAIL, error="CUDA out of memory", worker=f"gpu-{i % 16}")
        else:
            w.finish_trial(tid, COMPLETE, values=(0.8 * rng.random(2)).tolist(), worker=f"gpu-{i % 16}", evaluate_s=60.0)
    d = Dashboard(["big", "--store", str(path)])
    try:
        with urllib.request.urlopen(d.url + "api/runs/big/trials", timeout=60) as r:
            doc = json.loads(r.read())
        assert doc["view"]["total"] == n and doc["view"]["running"] == 16
        sent = [t for t in doc["trials"] if t["state"] == COMPLETE]
        browser.goto(d.url + "?poll=300")
        browser.wait_for(READY, 60, "the page's first load")
        assert browser.eval(POINTS) == len(sent) < n
        front = load_run("big", str(path)).front
        assert sorted(browser.eval("[...document.querySelectorAll('#scatter circle.pt.front')].map(c => +c.dataset.n)")) == front
        assert "a sample of" in browser.eval("document.getElementById('points-note').innerText")
        assert f"of {n} trials" in browser.eval("document.getElementById('table-note').innerText")
        assert browser.eval("document.querySelectorAll('#hv path[data-run]').length") == 1
        # ten new results, one of them better than everything: they arrive with the next polls
        new = w.add_trials(study.id, [dict(number=n + i, candidate={"id": n + i}, params={}, worker="gpu-0") for i in range(10)], "random")
        for i, tid in enumerate(new):
            w.finish_trial(tid, COMPLETE, values=[0.95, 0.95] if i == 9 else [0.1, 0.1], worker="gpu-0", evaluate_s=60.0)
        browser.wait_for(f"{POINTS} === {len(sent) + 10}", 30, "ten new points")
        browser.wait_for(f"[...document.querySelectorAll('#scatter circle.pt.front')].map(c => +c.dataset.n).join() === '{n + 9}'", 30)
        browser.screenshot(ARTIFACTS / "dashboard-big.png")
        assert browser.errors == []
    finally:
        w.close()
        assert d.close() == 0
