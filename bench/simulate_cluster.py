"""Cluster scale by simulation (not a test): see docs/simulate.md.

Modes (each writes ``bench/results/simulate_<mode>.json`` and prints a table):

* ``cluster``: for each strategy and W in ``--workers``, the real controller, strategy and
  SQLite store run ``--budget`` trials of the digits problem (``--config``) on W simulated
  workers (:mod:`search.simulate`; lognormal durations, mean ``--trial-mean`` s, log-spread
  ``--trial-sigma``), with the controller's measured real time added to the virtual clock.
  Reports the busy fraction (worker time over W x the time of the last submission), virtual
  makespan, the controller's real seconds, hypervolume at fixed virtual times (and the
  curve's change points in the JSON), the time to 0.9 of the reference front's hypervolume
  (the front of every run in the invocation pooled) and its speed-up against W = 8 (the
  smallest W when 8 is not run); and the hypervolume after k evaluations (finish order),
  the sample efficiency of the largest W against the smallest.
* ``throughput``: each strategy asks and is told in batches of ``--grow-batch`` (real digits
  evaluations) up to each of ``--points`` (n) told results; there, cycles of (tell ``--q``
  results, ask ``--q``) are timed, at least 3 and enough to tell n/25 results (so that a
  mobo hyperparameter refit, due every n/25 results, is inside the window): proposals per
  second = q / mean cycle time; the slowest cycle is reported too.
  The rate a cluster needs is W / trial time (256 / 60 s = 4.3 per second). With
  ``--shared-growth`` the variants of one strategy (``mobo,mobo@seq`` with
  ``--options mobo@seq:batch_from=null``) are all told the first one's growth results, so
  each is timed on the same data; the last variant is the baseline of the printed ratios.

A strategy ``name@label`` is a labelled variant of ``name``, with its own ``--options``.
* ``store``: SQLite writes per second as the controller makes them for 1024 workers (an ask
  of 1024 trials in one transaction, then one finish per trial), and at 10,000 and 100,000
  trials the dashboard's routes as the page calls them: the first load on a fresh server, a
  poll with nothing new, with 10 new trials, with 10 RUNNING trials finished, and the
  hypervolume curve; against rebuilding the summary from every trial (the baseline).

    python bench/simulate_cluster.py throughput --strategies mobo,nsga2,cmaes --points 100,500,1000,3000
    python bench/simulate_cluster.py throughput --strategies mobo,mobo@before --shared-growth --q 16 \
        --options mobo@before:batch_from=null --options mobo@before:blas_threads=null
    python bench/simulate_cluster.py cluster --strategies nsga2,cmaes,mobo --workers 8,64,256 --budget 500
    python bench/simulate_cluster.py store --trials 10000,100000
    python bench/simulate_cluster.py store --trials 10000 --url postgresql+psycopg://bench@127.0.0.1:54321/ms
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RESULTS = REPO / "bench" / "results"


def _cfg(config: str, strategy: str, budget: int, options: dict[str, Any], seed: int | None = None) -> Any:
    import yaml

    from search.config import parse_config

    path = Path(config) if Path(config).exists() else REPO / "configs" / f"{config}.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["strategy"] = {"name": strategy, "budget": budget, "options": options}
    if seed is not None:
        raw["seed"] = seed
    return parse_config(raw).with_base_dir(str(path.resolve().parent))


def _strategy(entry: str) -> str:
    """``mobo@seq`` (a labelled variant, with its own ``--options mobo@seq:...``) -> ``mobo``."""
    return entry.split("@", 1)[0]


def _options(spec: list[str]) -> dict[str, dict[str, Any]]:
    """``--options mobo:max_model_points=null`` -> {"mobo": {"max_model_points": None}}."""
    out: dict[str, dict[str, Any]] = {}
    for s in spec:
        name, _, kv = s.partition(":")
        k, _, v = kv.partition("=")
        out.setdefault(name, {})[k] = json.loads(v)
    return out


def _write(mode: str, payload: dict[str, Any], out: str | None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(out) if out else RESULTS / f"simulate_{mode}.json"
    payload["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------- cluster
TIMES = (60, 120, 240, 480, 960, 1920, 3840, 7680)  # virtual seconds at which the hypervolume is reported


def cluster(args: argparse.Namespace) -> None:
    import numpy as np

    from search.pareto import ref_hypervolume as _hv
    from search.simulate import SimSettings, busy_fraction, hypervolume_curve, last_submit, simulate

    opts = _options(args.options)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            for w in [int(x) for x in args.workers.split(",")]:
                cfg = _cfg(args.config, _strategy(strategy), args.budget, opts.get(strategy, {}), seed=args.seed)
                sim = SimSettings(workers=w, trial_mean_s=args.trial_mean, trial_sigma=args.trial_sigma, controller_time=True, seed=args.seed)
                rep = simulate(cfg, sim, str(Path(tmp) / f"{strategy}-{w}.db"))
                search = [t for t in rep.timeline if t["split"] == "search"]
                until = last_submit(search)
                runs.append(dict(strategy=strategy, workers=w, budget=args.budget, rc=rep.rc, busy=busy_fraction(search, w, until),
                                 busy_all=busy_fraction(search, w), last_submit_s=until, makespan_s=max(t["end"] for t in search),
                                 controller_s=rep.controller_s, real_s=rep.real_s,
                                 done=[(t["end"], t["values"]) for t in sorted(search, key=lambda t: t["end"]) if t["ok"]]))
                r = runs[-1]
                print(f"{strategy:7s} W={w:5d} busy {r['busy']:.3f} makespan {r['makespan_s']:8.0f}s controller {r['controller_s']:6.1f}s real {r['real_s']:6.1f}s", flush=True)
    directions = [o.direction for o in _cfg(args.config, "random", 1, {}).objectives]
    ref = [0.0 if d == "maximize" else 1.0 for d in directions]  # accuracies: the report's rule gives 0
    pooled = np.array([v for r in runs for _, v in r["done"]])
    ref_hv = float(_hv(pooled, directions, ref))
    for r in runs:
        tl = [dict(split="search", ok=True, end=e, values=v) for e, v in r["done"]]
        ends = [e for e, _ in r["done"]]
        hv = hypervolume_curve(tl, directions, ref, ends)
        r["t90_s"] = next((e for e, h in zip(ends, hv, strict=True) if h >= 0.9 * ref_hv), None)
        r["n90"] = next((k + 1 for k, h in enumerate(hv) if h >= 0.9 * ref_hv), None)
        r["hv_final"] = hv[-1] / ref_hv if hv else 0.0
        ks = [k for k in (25, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000) if k <= len(hv)]
        r["hv_at_evals"] = {k: hv[k - 1] / ref_hv for k in ks}
        # hypervolume against virtual wall-clock time: at fixed times, and the curve's change points
        r["hv_at_times"] = {t: (hv[i - 1] / ref_hv if (i := int(np.searchsorted(ends, t, side="right"))) else 0.0) for t in TIMES}
        r["hv_curve"] = [(e, h / ref_hv) for k, (e, h) in enumerate(zip(ends, hv, strict=True)) if k == 0 or h != hv[k - 1]]
        del r["done"]
    ws = {x["workers"] for x in runs}
    base_w = 8 if 8 in ws else min(ws)  # the yardstick: the speed-up from 8 workers
    for r in runs:
        base = next(b for b in runs if b["strategy"] == r["strategy"] and b["workers"] == base_w)
        r["speedup_t90"] = base["t90_s"] / r["t90_s"] if r["t90_s"] and base["t90_s"] and r["workers"] >= base_w else None
    print(f"\nreference hypervolume (all runs pooled) {ref_hv:.4f}; trial mean {args.trial_mean}s sigma {args.trial_sigma}; budget {args.budget}")
    print(f"{'strategy':8s} {'W':>5s} {'busy':>6s} {'makespan_s':>10s} {'ctrl_s':>7s} {'t90_s':>8s} {'n90':>5s} {'speedup':>7s} {'hv_end':>6s}  hv/ref after k evals")
    for r in runs:
        t90 = f"{r['t90_s']:.0f}" if r["t90_s"] else "-"
        sp = f"{r['speedup_t90']:.1f}x" if r["speedup_t90"] else "-"
        ev = " ".join(f"{k}:{v:.3f}" for k, v in r["hv_at_evals"].items())
        print(f"{r['strategy']:8s} {r['workers']:5d} {r['busy']:6.3f} {r['makespan_s']:10.0f} {r['controller_s']:7.1f} {t90:>8s} {str(r['n90'] or '-'):>5s} {sp:>7s} {r['hv_final']:6.3f}  {ev}")
    print(f"\nspeed-up against W = {base_w}; hv/ref at virtual time (s):")
    print(f"{'strategy':8s} {'W':>5s}  " + " ".join(f"{t:>6d}" for t in TIMES))
    for r in runs:
        print(f"{r['strategy']:8s} {r['workers']:5d}  " + " ".join(f"{r['hv_at_times'][t]:6.3f}" for t in TIMES))
    _write("cluster", dict(args=vars(args), ref_hv=ref_hv, reference_point=ref, runs=runs), args.out)


# ----------------------------------------------------------------------------- throughput
class _Evaluate:
    """Candidates -> TrialResults, by the real in-process worker (not timed as strategy time)."""

    def __init__(self, worker: Any):
        self.worker, self.number = worker, 0

    def __call__(self, cands: list[Any]) -> list[Any]:
        import numpy as np

        from search.strategies.base import TrialResult
        from search.workers import TrialTask

        sp, out = self.worker.space, []
        for c in cands:
            r = self.worker.run(TrialTask(self.number, np.clip(c.x, sp.lower, sp.upper).tolist()))
            self.number += 1
            out.append(TrialResult(c, np.asarray(r.values) if r.ok else None, None, r.error, dict(r.margins) if r.ok and r.margins else None))
        return out


def throughput(args: argparse.Namespace) -> None:
    import numpy as np

    from search import statedata
    from search.controller import build_problem
    from search.strategies import STRATEGIES
    from search.workers import TrialWorker

    opts = _options(args.options)
    rows: list[dict[str, Any]] = []
    points = sorted(int(p) for p in args.points.split(","))
    entries = args.strategies.split(",")
    if args.shared_growth and len({_strategy(e) for e in entries}) > 1:
        sys.exit("--shared-growth: give variants of one strategy (e.g. mobo,mobo@seq), not different strategies")
    groups = [entries] if args.shared_growth else [[e] for e in entries]
    for group in groups:
        strats, evaluate = {}, None
        for entry in group:
            cfg = _cfg(args.config, _strategy(entry), max(points) + 4 * args.q + args.grow_batch + max(points) // 20, opts.get(entry, {}))
            worker = TrialWorker(cfg.to_yaml(), str(cfg.base_dir), "throughput")
            evaluate = evaluate or _Evaluate(worker)
            strats[entry] = STRATEGIES.get(_strategy(entry))(build_problem(worker.space, cfg), cfg.strategy.options, seed=args.seed)
        assert evaluate is not None
        lead = strats[group[0]]  # with --shared-growth its proposals grow every variant's data
        n_told = 0
        t_start = time.perf_counter()
        for n in points:
            while n_told < n:
                k = min(args.grow_batch, n - n_told)
                res = evaluate(lead.ask(k))
                for strat in strats.values():
                    strat.tell(res)
                n_told += k
            for entry, strat in strats.items():
                cycles = []
                pend = strat.ask(args.q)
                # enough cycles that n/25 results are told in the window: a mobo refit (every n/25) falls in it
                n_cycles = max(3, math.ceil(n / 25 / args.q) + 1)
                refits = []  # cycles whose ask refitted mobo's hyperparameters (its _fit_n moved)
                for _ in range(n_cycles):
                    res = evaluate(pend)  # evaluation time is not the strategy's
                    fit_n = getattr(strat, "_fit_n", None)
                    t0 = time.perf_counter()
                    strat.tell(res)
                    pend = strat.ask(args.q)
                    cycles.append(time.perf_counter() - t0)
                    if fit_n is not None and strat._fit_n != fit_n:
                        refits.append(cycles[-1])
                strat.tell(evaluate(pend))
                snap_s = snap_mb = None
                if strat.snapshots:  # what the controller encodes and writes for a snapshot (geometrically spaced)
                    t0 = time.perf_counter()
                    text, blob = statedata.encode(strat.state_dict())
                    snap_s, snap_mb = time.perf_counter() - t0, (len(text) + len(blob)) / 2**20
                plain = [c for c in cycles if c not in refits]
                row = dict(strategy=entry, options=opts.get(entry, {}), told=n, q=args.q, cycle_s=cycles, refit_cycle_s=refits,
                           proposals_per_s=args.q / float(np.mean(cycles)), max_cycle_s=max(cycles),
                           median_plain_cycle_s=float(np.median(plain)) if plain else None,
                           snapshot_encode_s=snap_s, snapshot_mb=snap_mb, elapsed_s=time.perf_counter() - t_start)
                rows.append(row)
                print(f"{entry:10s} told {n:5d}: {row['proposals_per_s']:8.1f} proposals/s over {n_cycles} cycles "
                      f"(mean {np.mean(cycles):.3f} s, max {max(cycles):.3f} s; refit cycles {', '.join(f'{c:.3f}' for c in refits) or '-'} s"
                      + (f"; snapshot {snap_mb:.1f} MB encoded in {snap_s:.3f} s" if snap_s is not None else "") + ")", flush=True)
            n_told += (n_cycles + 1) * args.q  # the lead's own timed cycles
    load = os.getloadavg()
    print(f"\n{'strategy':10s} {'options':40s} " + " ".join(f"{p:>8d}" for p in points) + f"   (proposals/s at told points; q={args.q}; "
          f"load average {load[0]:.2f} {load[1]:.2f})")
    for s in dict.fromkeys(r["strategy"] for r in rows):
        by = {r["told"]: r["proposals_per_s"] for r in rows if r["strategy"] == s}
        o = json.dumps(opts.get(s, {}))
        print(f"{s:10s} {o:40s} " + " ".join(f"{by[p]:8.1f}" if p in by else f"{'-':>8s}" for p in points))
    if len(rows) and len(entries) > 1:
        base = entries[-1]
        print(f"ratio to {base}: " + "; ".join(
            f"{e} " + " ".join(f"{r['proposals_per_s'] / b['proposals_per_s']:.1f}x" for r in rows if r["strategy"] == e
                               for b in rows if b["strategy"] == base and b["told"] == r["told"])
            for e in entries[:-1]))
    _write("throughput", dict(args=vars(args), rows=rows, load_average=load), args.out)


# ----------------------------------------------------------------------------- store
def store(args: argparse.Namespace) -> None:
    import numpy as np

    from search.store import COMPLETE, Store, StrategyEvent

    rows_out: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    w = args.store_workers
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(int(x) for x in args.trials.split(",")):
            url = args.url or str(Path(tmp) / f"s{n}.db")
            st = Store.open(url)
            run = f"bench{n}-{int(time.time())}"
            study = st.create_study(run, f"name: {run}\n", "x", [("a", "maximize"), ("b", "maximize")], {"names": ["w0", "w1", "w2", "w3"]})
            seq, number = 0, 0
            t_ask = t_finish = 0.0
            n_tx = 0
            while number < n:
                k = min(w, n - number)
                rows = [dict(number=number + i, candidate={"id": number + i, "x": rng.random(4).tolist(), "meta": {}},
                             params={f"w{j}": 0.5 for j in range(4)}, worker=f"sim-{i}") for i in range(k)]
                seq += 1
                t0 = time.perf_counter()
                ids = st.add_trials(study.id, rows, "bench", StrategyEvent(seq, "ask", {"n": k, "items": [{"id": r["number"], "number": r["number"]} for r in rows]}))
                t_ask += time.perf_counter() - t0
                n_tx += 1
                t0 = time.perf_counter()
                for i, tid in enumerate(ids):
                    seq += 1
                    st.finish_trial(tid, COMPLETE, values=rng.random(2).tolist(), worker=f"sim-{i}", materialize_s=0.1, evaluate_s=60.0,
                                    event=StrategyEvent(seq, "tell", {"items": [[number + i, number + i]]}), study_id=study.id)
                t_finish += time.perf_counter() - t0
                number += k
            st.close()
            row = dict(store=url.split("://")[0] if "://" in url else "sqlite", trials=n, workers=w, add_trials_per_s=n / t_ask,
                       finish_per_s=n / t_finish, writes_per_s=(n + n_tx) / (t_ask + t_finish), needed_per_s=w / args.trial_mean,
                       db_mb=os.path.getsize(url) / 2**20 if "://" not in url else None)
            rows_out.append(row)
            print(f"{n:7d} trials: ask rows {row['add_trials_per_s']:8.0f}/s, finishes {row['finish_per_s']:7.0f}/s "
                  f"(needed {row['needed_per_s']:.1f}/s at W={w}, {args.trial_mean:.0f}s trials)", flush=True)
            _write("store", dict(args=vars(args), rows=rows_out), args.out)  # kept if the dashboard part is cut short
            if not args.no_dashboard:
                row["dashboard"] = _dashboard_poll(url, run)
                print("   dashboard: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in row["dashboard"].items()), flush=True)
    _write("store", dict(args=vars(args), rows=rows_out), args.out)
    dash = [r for r in rows_out if "dashboard" in r]
    if dash:
        print("\ndashboard (seconds; polls: median of 5; baseline: rebuilding the summary from every trial)")
        print(f"{'store':8} {'trials':>7} {'load avg':>8} {'first load':>10} {'page reload':>11} {'rows sent':>9} {'poll, nothing new':>17} "
              f"{'poll, 10 new':>12} {'poll, 10 finished':>17} {'poll, held-out':>14} {'hv curve':>8} {'baseline':>8} {'baseline / poll':>15}")
        for r in dash:
            d = r["dashboard"]
            print(f"{r['store']:8} {r['trials']:7d} {d['load_avg_1m']:8.1f} {d['first_load_s']:10.2f} {d['reload_s']:11.2f} {d['first_rows']:9d} "
                  f"{d['poll_nothing_new_s']:17.3f} {d['poll_10_new_s']:12.3f} {d['poll_10_finished_s']:17.3f} {d['poll_heldout_front_s']:14.3f} "
                  f"{d['hypervolume_s']:8.3f} {d['full_recompute_s']:8.2f} {d['full_recompute_s'] / d['poll_10_new_s']:14.0f}x")


def _dashboard_poll(url: str, run: str, rounds: int = 5) -> dict[str, float]:
    """Seconds the dashboard's app (in process, its real FastAPI routes) takes for what the page
    asks: its first load on a freshly started server (``/api/runs``, which reads the whole run,
    the trials, the hypervolume curve; each part and their sum), the same again (a page
    opened while the server runs), a poll with its cursor when
    nothing is new, a poll after 10 new finished trials, after 10 RUNNING trials finish, after
    held-out values are added to 10 front members, and the hypervolume curve the page then fetches (``changes=true``) and the full one; polls are
    the median of ``rounds`` rounds."""
    from fastapi.testclient import TestClient

    from search.dashboard.server import create_app
    from search.store import COMPLETE, Store

    def timed(c: Any, path: str, **params: Any) -> tuple[float, dict[str, Any], int]:
        t0 = time.perf_counter()
        r = c.get(path, params=params)
        dt = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        return dt, r.json(), len(r.content)

    out: dict[str, float] = {"load_avg_1m": os.getloadavg()[0]}
    app = create_app([run], store=url)
    for cache in app.state.runs:
        cache.min_interval = 0.0  # every request re-reads the store (the page polls slower than the throttle)
    w = Store.open(url)
    study = w.study(run)
    number = w.next_number(study.id)
    seen: dict[str, list[float]] = {"poll_nothing_new_s": [], "poll_10_new_s": [], "poll_10_finished_s": [], "poll_heldout_front_s": [],
                                    "hypervolume_s": []}
    with TestClient(app) as c:
        out["first_runs_s"], _, _ = timed(c, "/api/runs")
        out["first_trials_s"], body, out["first_trials_bytes"] = timed(c, f"/api/runs/{run}/trials")
        out["first_rows"] = len(body["trials"])
        out["first_hypervolume_s"], _, out["first_hypervolume_bytes"] = timed(c, "/api/hypervolume", changes=True)
        out["first_load_s"] = out["first_runs_s"] + out["first_trials_s"] + out["first_hypervolume_s"]
        # the same three requests again: a page opened (or reloaded) while the server runs
        out["reload_s"] = sum(timed(c, path, **q)[0] for path, q in
                              (("/api/runs", {}), (f"/api/runs/{run}/trials", {}), ("/api/hypervolume", {"changes": True})))
        cur = body["cursor"]
        for rnd in range(rounds):
            dt, body, _ = timed(c, f"/api/runs/{run}/trials", **cur)
            seen["poll_nothing_new_s"].append(dt)
            assert not body["trials"]
            cur = body["cursor"]
            ids = w.add_trials(study.id, [dict(number=number + i, candidate={"id": number + i, "x": [0.5] * 4, "meta": {}}, params={},
                                               worker=f"sim-{i}") for i in range(10)], "bench", None)
            number += 10
            for tid in ids:
                w.finish_trial(tid, COMPLETE, values=[0.5, 0.5], worker="sim-0", evaluate_s=60.0)
            dt, body, _ = timed(c, f"/api/runs/{run}/trials", **cur)
            seen["poll_10_new_s"].append(dt)
            assert len(body["trials"]) == 10
            cur = body["cursor"]
            seen["hypervolume_s"].append(timed(c, "/api/hypervolume", changes=True)[0])
            ids = w.add_trials(study.id, [dict(number=number + i, candidate={"id": number + i, "x": [0.5] * 4, "meta": {}}, params={},
                                               worker=f"sim-{i}") for i in range(10)], "bench", None)
            number += 10
            body = timed(c, f"/api/runs/{run}/trials", **cur)[1]
            cur = body["cursor"]
            for tid in ids:
                w.finish_trial(tid, COMPLETE, values=[0.4, 0.4], worker="sim-0", evaluate_s=60.0)
            dt, body, _ = timed(c, f"/api/runs/{run}/trials", **cur)
            seen["poll_10_finished_s"].append(dt)
            assert sorted(t["state"] for t in body["trials"]) == [COMPLETE] * 10
            cur = body["cursor"]
            # held-out values added to (up to) 10 front members: what held-out evaluation writes
            front = body["summary"]["front"]
            for num in front[:10]:
                w.add_heldout(w.trial(study.id, num).id, [0.5, 0.5 + rnd / 100])  # new values each round
            dt, body, _ = timed(c, f"/api/runs/{run}/trials", **cur)
            seen["poll_heldout_front_s"].append(dt)
            assert len(body["trials"]) == min(10, len(front))
            cur = body["cursor"]
        out["hypervolume_full_s"], _, out["hypervolume_full_bytes"] = timed(c, "/api/hypervolume")
    # the baseline: a poll that rebuilt the summary from every trial (what the server did before
    # it kept incremental state; its O(n^2) front is not counted here, the sorted sweep is)
    from search.report import run_data

    t0 = time.perf_counter()
    run_data(w.study(run), w.trials(study.id, with_params=False))
    out["full_recompute_s"] = time.perf_counter() - t0
    w.close()
    for cache in app.state.runs:
        cache.store.close()
    for k, v in seen.items():
        out[k] = float(sorted(v)[len(v) // 2])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["cluster", "throughput", "store"])
    ap.add_argument("--config", default="digits", help="a configs/<name>.yaml or a path (default: digits)")
    ap.add_argument("--strategies", default="nsga2,cmaes,mobo")
    ap.add_argument("--options", action="append", default=[], help="strategy:key=json, e.g. mobo:max_model_points=null")
    ap.add_argument("--workers", default="8,64,256")
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--trial-mean", type=float, default=60.0)
    ap.add_argument("--trial-sigma", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0, help="the simulation's seed (durations, faults) and, in cluster mode, the run's")
    ap.add_argument("--points", default="100,500,1000,3000")
    ap.add_argument("--q", type=int, default=4, help="throughput: proposals per timed ask (256 workers / 60 s = 4.3/s)")
    ap.add_argument("--grow-batch", type=int, default=64)
    ap.add_argument("--shared-growth", action="store_true",
                    help="throughput: variants of one strategy are all told the first one's growth results, so each is timed on the same data")
    ap.add_argument("--trials", default="10000,100000")
    ap.add_argument("--store-workers", type=int, default=1024)
    ap.add_argument("--no-dashboard", action="store_true", help="store: skip the dashboard timings")
    ap.add_argument("--url", help="store: a database URL (e.g. postgresql+psycopg://user@host/db) instead of a new SQLite file per size")
    ap.add_argument("--out")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    {"cluster": cluster, "throughput": throughput, "store": store}[args.mode](args)


if __name__ == "__main__":
    main()
