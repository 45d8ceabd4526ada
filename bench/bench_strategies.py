"""Search strategies compared on real merges (not a test).

For each problem (by default the digits zoo: ``configs/digits.yaml``, experts low/high, and
``configs/digits3.yaml``, experts a/b/c with one objective each; layer-wise task arithmetic,
weights in [0, 1.5]) and each strategy (every registered one; Optuna's
default multi-objective sampler and random search are the baselines), ``--seeds`` runs of
``max(budgets)`` evaluations each. Candidates are evaluated in-process by one
``search.workers.TrialWorker`` per problem (the same code a worker runs: in-place
materialization + the configured evaluators); nothing is cached across candidates except
what the worker builds once (model, task vectors, evaluator data). Two virtual workers are
simulated (``--workers``): two candidates are always outstanding and results come back
oldest first, so the strategies' ask-ahead paths are exercised.

Measured per run, at each budget B in ``--budgets`` (the first B evaluations of the run):

* ``hv_val``: hypervolume of the measured front (validation split: the objectives' search
  settings); reference point by the report's rule (``search.pareto.reference_point``: an
  objective's ``ref_point`` if set, else 0 for maximised accuracies, worst x 1.1 for minimised
  ones) over all runs of the problem pooled, so every run is scored against the same point;
* ``hv_test``: the same front's members re-evaluated on the held-out split (the objectives'
  ``heldout`` settings), hypervolume of those held-out values (not re-filtered: the front
  chosen on validation is what a user would get);
* ``igd_plus``: IGD+ of the measured front to the reference front;
* the reference: the front of all points measured in all runs of that problem, pooled
  (``ref_hv_val``; the held-out reference is the pooled front's held-out hypervolume),
  including one long reference run (``--reference-strategy``, NSGA-II with a population of
  100 by default, ``--reference-factor`` x ``--target-budget`` = 20 x 200 = 4000
  evaluations). Fractions in the table are hv / ref_hv: the pooled front is at least as good
  as the reference run alone, so these fractions are the stricter ones.

The target check (printed after the table, ``target`` in the JSON): the best project
strategy's mean hypervolume at the target budget as a fraction of the reference run's (and
of the pooled front's), the same on the held-out split (each run's validation front
re-evaluated there, the reference run's too: a run 20x longer selects more on the noise of
the validation split, and this ratio shows how much of its lead survives on unseen data), and
at every budget, in how many seeds the best project strategy (by mean) beats each baseline
(``--baselines``: random search and Optuna's default sampler) run with the same seed.

``--hide-margins`` (default ``mobo``): each strategy named there also runs as
``<name>-nomarg``, told the values and per-example scores but not the evaluators' margins (as
with an evaluator or a user callable that reports none), so both numbers are reported side by
side in the same pool.

MAP's initial design (d+1)(d+2) exceeds the small budgets on layer-wise spaces, so its
numbers at 25-100 are its design phase; ``map@global`` runs MAP in its native setting (one
coefficient per expert, same objectives, a subspace of the layer-wise box) for reference.

    python bench/bench_strategies.py              # full: budgets 25..500, 5 seeds
    python bench/bench_strategies.py --quick      # budgets 25,50,100, 2 seeds
    python bench/bench_strategies.py --problems digits --out a.json   # one problem per process,
    python bench/bench_strategies.py --combine a.json,b.json          # then merged
    F="--runs-dir R --reference-factor 0 --heldout-budgets="   # fillers: no reference run, no held-out scoring
    python bench/bench_strategies.py $F --strategies mobo --out a.json &    # one pool filled by
    python bench/bench_strategies.py $F --strategies turbo --out b.json     # two processes;
    python bench/bench_strategies.py --runs-dir R --strategies mobo,turbo   # the last runs the reference, scores them all
Writes bench/results/strategies.json and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BUDGETS = (25, 50, 100, 200, 500)
NOMARGINS = "-nomarg"  # suffix of a run whose strategy is not shown the evaluators' margins
QUICK_BUDGETS = (25, 50, 100)


# ----------------------------------------------------------------------------- problems


def load_problems(config_paths: list[Path], keep_merge: bool = False) -> dict[str, dict[str, Any]]:
    """Each config as given, forced to layer-wise task arithmetic with weights in [0, 1.5]
    (``keep_merge``: the config's own merge method and searched parameters, layer-wise) and
    one in-process worker thread; the problem is named after the run name."""
    import yaml

    out = {}
    for path in config_paths:
        raw = yaml.safe_load(path.read_text())
        raw.setdefault("name", path.stem)
        if keep_merge:
            raw["merge"] = {**raw.get("merge", {}), "granularity": "layer"}
        else:
            raw["merge"] = {**raw.get("merge", {}), "method": "task_arithmetic", "granularity": "layer", "search": {"weight": [0.0, 1.5]}}
        raw["workers"] = {"backend": "local", "count": 1, "threads": 1}
        out[raw["name"]] = raw
    return out


def granularity_variant(cfg: dict[str, Any], granularity: str) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    c["merge"]["granularity"] = granularity
    return c


def global_variant(cfg: dict[str, Any]) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    c["merge"]["granularity"] = "global"
    return c


# ----------------------------------------------------------------------------- one problem


class Evaluated:
    """In-process evaluation of coefficient vectors with one TrialWorker (built once)."""

    def __init__(self, cfg_dict: dict[str, Any], base_dir: Path):
        import yaml

        from search.config import parse_config
        from search.workers import TrialWorker

        self.cfg = parse_config(cfg_dict).with_base_dir(base_dir)
        self.worker = TrialWorker(yaml.safe_dump(cfg_dict), str(base_dir), "bench")
        self.space = self.worker.space
        self.directions = [o.direction for o in self.cfg.objectives]
        self.n_evals = 0
        self.eval_s = 0.0

    def problem(self, budget: int):
        from search.controller import build_problem

        return build_problem(self.space, self.cfg, budget)

    def __call__(self, x: np.ndarray, number: int, split: str = "search") -> tuple[np.ndarray | None, np.ndarray | None, dict[int, np.ndarray] | None]:
        """(values, per-example scores, per-example margins by objective); Nones for a failed trial."""
        from search.workers import TrialTask

        t0 = time.perf_counter()
        r = self.worker.run(TrialTask(number, [float(v) for v in x], split=split))
        self.eval_s += time.perf_counter() - t0
        self.n_evals += 1
        if not r.ok:
            return None, None, None
        per = np.concatenate([np.asarray(v).ravel() for v in r.per_sample.values()]) if r.per_sample else None
        return np.asarray(r.values, dtype=np.float64), per, r.margins or None


def run_one(ev: Evaluated, strategy: str, options: dict[str, Any], seed: int, n: int, workers: int,
            hide_margins: bool = False) -> dict[str, Any]:
    """One run of ``n`` evaluations; ``hide_margins``: the strategy is told values and
    per-example scores only, as from an evaluator that reports no margins."""
    from search.strategies import STRATEGIES, TrialResult

    prob = ev.problem(n)
    t_strat = 0.0
    t0 = time.perf_counter()
    s = STRATEGIES.get(strategy)(prob, options, seed=seed)
    pending = s.ask(workers)
    t_strat += time.perf_counter() - t0
    X, V, failed = [], [], 0
    while len(X) < n:
        c = pending.pop(0)
        vals, per, margins = ev(c.x, len(X))
        if vals is None:
            failed += 1
        X.append(np.asarray(c.x, dtype=np.float64))
        V.append(vals if vals is not None else np.full(prob.n_obj, np.nan))
        t0 = time.perf_counter()
        s.tell([TrialResult(c, vals, per, margins=None if hide_margins else margins)])
        if len(X) + len(pending) < n:
            pending += s.ask(1)
        t_strat += time.perf_counter() - t0
    return {"X": np.asarray(X), "V": np.asarray(V), "failed": failed, "strategy_s": t_strat}


def score_run(ev: Evaluated, run: dict[str, Any], budgets: list[int], ref: np.ndarray, ref_front: np.ndarray, heldout: dict[int, np.ndarray],
              heldout_budgets: list[int] | None = None) -> dict[str, Any]:
    """Validation hypervolume, IGD+ and front size at each budget, and the held-out hypervolume
    of the front at each of ``heldout_budgets`` (default: every budget)."""
    from search.pareto import hypervolume, igd_plus, pareto_mask

    X, V = run["X"], run["V"]
    out: dict[str, Any] = {"hv_val": {}, "hv_test": {}, "igd_plus": {}, "front_size": {}}
    for b in budgets:
        if b > len(V):
            continue
        mask = pareto_mask(V[:b], ev.directions)
        idx = np.flatnonzero(mask)
        out["hv_val"][b] = hypervolume(V[:b], ev.directions, ref)
        out["igd_plus"][b] = igd_plus(V[:b][mask], ev.directions, ref_front) if len(idx) else math.inf
        out["front_size"][b] = int(len(idx))
        if heldout_budgets is not None and b not in heldout_budgets:
            continue
        H = []
        for i in idx:
            if int(i) not in heldout:
                vals, _, _ = ev(X[i], 1_000_000 + int(i), split="heldout")
                heldout[int(i)] = vals if vals is not None else np.full(len(ev.directions), np.nan)
            H.append(heldout[int(i)])
        out["hv_test"][b] = hypervolume(np.asarray(H), ev.directions, ref) if H else 0.0
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--configs",
        default=f"{ROOT / 'configs' / 'digits.yaml'},{ROOT / 'configs' / 'digits3.yaml'}",
        help="comma-separated config files, one problem each (default: digits 2 and 3 experts)",
    )
    ap.add_argument("--quick", action="store_true", help="budgets 25,50,100 and 2 seeds")
    ap.add_argument("--budgets", default=None, help="comma-separated evaluation budgets")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (seeds run: seed-start .. seed-start + seeds - 1; e.g. to split one "
                    "pool's seeds over processes sharing --runs-dir)")
    ap.add_argument("--strategies", default=None, help="comma-separated (default: all registered + map@global); options as name:key=value;key=value")
    ap.add_argument("--problems", default=None, help="comma-separated problem names to run (default all)")
    ap.add_argument("--workers", type=int, default=2, help="virtual workers (outstanding candidates)")
    ap.add_argument("--target-budget", type=int, default=200, help="the budget the target is checked at")
    ap.add_argument("--reference-factor", type=int, default=20, help="reference run = this x the target budget (0: none)")
    ap.add_argument("--reference-strategy", default="nsga2:pop_size=100", help="strategy (with options) of the reference run")
    ap.add_argument("--baselines", default="random,optuna", help="comma-separated baseline strategies (the rest are the project's)")
    ap.add_argument("--keep-merge", action="store_true", help="keep each config's merge method and searched parameters (default: task arithmetic, weights)")
    ap.add_argument("--granularities", default="layer", help="comma-separated granularities run by every strategy (e.g. layer,schedule:4); "
                    "runs at another granularity than layer are named strategy@granularity and share the problem's pooled reference")
    ap.add_argument("--hide-margins", default="mobo", help="comma-separated strategies also run with the evaluators' margins hidden "
                    f"(named strategy{NOMARGINS}), so both numbers are reported side by side ('': none)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "strategies.json"))
    ap.add_argument("--runs-dir", default=None, help="keep every run's points here (one .npz per problem, strategy, granularity and seed); "
                    "a run already there with the same setup (config, budget, workers) is loaded instead of re-run, and every run "
                    "there of a problem with that setup joins its pool, so "
                    "several processes (one per core) can fill one pool and a last call scores it")
    ap.add_argument("--heldout-budgets", default=None, help="budgets at which each run's front is re-evaluated on the held-out split "
                    "(default: every budget; '': none, and no held-out hypervolume of the pooled front either)")
    ap.add_argument("--combine", default=None, help="comma-separated result files of earlier runs (e.g. one per problem): merge them into --out and print")
    args = ap.parse_args()
    runs_dir = Path(args.runs_dir) if args.runs_dir else None
    heldout_budgets = None if args.heldout_budgets is None else [int(b) for b in args.heldout_budgets.split(",") if b]
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine.split(",")]
        results = {"meta": {**parts[0]["meta"], "combined_from": args.combine.split(",")}, "problems": {}, "summary": {}, "target": {}}
        for part in parts:
            for key in ("problems", "summary", "target"):
                results[key].update(part.get(key, {}))
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print_table(results, results["meta"]["budgets"])
        print_target(results["target"])
        print(f"\nwrote {args.out}")
        return

    import torch

    torch.set_num_threads(1)
    from search.strategies import STRATEGIES

    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else list(QUICK_BUDGETS if args.quick else BUDGETS)
    n = max(budgets)
    seeds = list(range(args.seed_start, args.seed_start + (args.seeds if args.seeds is not None else (2 if args.quick else 5))))
    names = args.strategies.split(",") if args.strategies else [*STRATEGIES.names(), "map@global"]
    hide = [h for h in args.hide_margins.split(",") if h]
    names = [v for nm in names for v in ([nm, nm + NOMARGINS] if parse_strategy(nm) in hide and "@" not in nm
                                          and parse_options(nm).get("margins") is not False else [nm])]
    cfg_paths = [Path(c).resolve() for c in args.configs.split(",")]
    problems = load_problems(cfg_paths, args.keep_merge)
    grans = args.granularities.split(",")
    base_dir = cfg_paths[0].parent
    if args.problems:
        problems = {k: v for k, v in problems.items() if k in args.problems.split(",")}

    results: dict[str, Any] = {
        "meta": {
            "configs": [str(c.relative_to(ROOT) if c.is_relative_to(ROOT) else c) for c in cfg_paths],
            "budgets": budgets,
            "seeds": seeds,
            "workers": args.workers,
            "quick": args.quick,
            "strategies": names,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "runs_dir": str(runs_dir) if runs_dir else None,  # the pools also hold the runs other calls left there (problems.*.runs)
        },
        "problems": {},
    }
    for pname, cfg_dict in problems.items():
        print(f"== {pname}", flush=True)
        evs = {"layer": Evaluated(cfg_dict, base_dir)}
        ev = evs["layer"]
        print(f"   {ev.space.describe()}; objectives {[o.name for o in ev.cfg.objectives]}", flush=True)
        raw_runs: list[tuple[str, int, dict[str, Any], Evaluated]] = []
        setup = run_setup(cfg_dict, n, args.workers)
        for gran, name in [(g, nm) for g in grans for nm in names]:
            hidden = name.endswith(NOMARGINS)
            base_name = name.removesuffix(NOMARGINS)
            strat, opts, e = parse_strategy(base_name), parse_options(base_name), ev
            if name == "map@global" and gran != grans[0]:
                continue  # once per problem, in its own (global) space
            if gran != "layer" and name != "map@global":
                if gran not in evs:
                    evs[gran] = Evaluated(granularity_variant(cfg_dict, gran), base_dir)
                    print(f"   {gran}: {evs[gran].space.describe()}", flush=True)
                e = evs[gran]
                name = f"{name}@{gran}"
            if name == "map@global":
                if "global" not in evs:
                    evs["global"] = Evaluated(global_variant(cfg_dict), base_dir)
                strat, e = "map", evs["global"]
            cls = STRATEGIES.get(strat)
            msgs = cls.check(cls.Options(**opts), e.problem(n).info())
            if msgs:
                print(f"   {name}: skipped: {msgs[0]}", flush=True)
                continue
            for seed in seeds:
                gname = name if "@" in name else f"{name}@{gran}"
                run = load_run(runs_dir, pname, gname, seed, setup) if runs_dir else None
                if run is None:
                    t0 = time.perf_counter()
                    e0 = e.eval_s
                    run = run_one(e, strat, opts, seed, n, args.workers, hide_margins=hidden)
                    run["seconds"] = time.perf_counter() - t0
                    run["eval_s"] = e.eval_s - e0
                    if runs_dir:
                        save_run(runs_dir, pname, gname, seed, run, name, "global" if name == "map@global" else gran, setup)
                raw_runs.append((name, seed, run, e))
                print(f"   {name:12s} seed {seed}: {run['seconds']:.1f}s (strategy {run['strategy_s']:.1f}s, eval {run['eval_s']:.1f}s)"
                      + (" (from --runs-dir)" if run.get("cached") else ""), flush=True)
        # the reference run: one long run of a strong strategy (20 x the target budget by default)
        ref_run = None
        if args.reference_factor > 0:
            rname = args.reference_strategy
            rn = args.reference_factor * args.target_budget
            t0 = time.perf_counter()
            ref_setup = run_setup(cfg_dict, rn, args.workers)
            ref_run = load_run(runs_dir, pname, f"reference:{rname}@layer", 0, ref_setup) if runs_dir else None
            if ref_run is None:
                ref_run = run_one(ev, parse_strategy(rname), parse_options(rname), 0, rn, args.workers)
                if runs_dir:
                    save_run(runs_dir, pname, f"reference:{rname}@layer", 0, ref_run, f"reference:{rname}", "layer", ref_setup)
            print(f"   reference {rname} x{rn}: {time.perf_counter() - t0:.1f}s", flush=True)
            raw_runs.append((f"reference:{rname}", 0, ref_run, ev))
        # runs another process left in --runs-dir for this problem join the pool (and the table)
        if runs_dir:
            for name, seed, run, gran in other_runs(runs_dir, pname, {(nm, sd) for nm, sd, _, _ in raw_runs}, setup):
                if gran not in evs:
                    evs[gran] = Evaluated(global_variant(cfg_dict) if gran == "global" else granularity_variant(cfg_dict, gran), base_dir)
                if run["X"].shape[1] != evs[gran].space.dim:
                    print(f"   {name} seed {seed}: {run['X'].shape[1]} coordinates, not the {evs[gran].space.dim} of {gran}: left out", flush=True)
                    continue
                raw_runs.append((name, seed, run, evs[gran]))
                print(f"   {name:12s} seed {seed}: from --runs-dir", flush=True)
        # pooled reference front and reference point
        from search.pareto import hypervolume, pareto_mask

        allV = np.vstack([r["V"] for _, _, r, _ in raw_runs])
        # each point with the evaluator of its own space (global, layer, schedule)
        allXE = [(x, e) for _, _, r, e in raw_runs for x in r["X"]]
        finite = np.all(np.isfinite(allV), axis=1)
        from search.pareto import reference_point

        given = [getattr(o, "ref_point", None) for o in ev.cfg.objectives]
        ref = np.asarray(reference_point(allV, ev.directions, given), dtype=np.float64)
        mask = pareto_mask(allV, ev.directions) & finite
        ref_front = allV[mask]
        ref_hv = hypervolume(ref_front, ev.directions, ref)
        # held-out values of the pooled front
        H = []
        for i in np.flatnonzero(mask) if heldout_budgets != [] else []:
            x_i, e_i = allXE[i]
            vals, _, _ = e_i(x_i, 2_000_000 + int(i), split="heldout")
            H.append(vals if vals is not None else np.full(len(ev.directions), np.nan))
        ref_hv_test = hypervolume(np.asarray(H), ev.directions, ref) if H else 0.0
        runs_out = []
        ref_run_out = None
        if ref_run is not None:
            tb = args.reference_factor * args.target_budget
            rsc = score_run(ev, ref_run, [tb], ref, ref_front, {}, None if heldout_budgets != [] else [])
            ref_run_out = {
                "strategy": args.reference_strategy,
                "evaluations": tb,
                "hv_val": rsc["hv_val"][tb],
                "hv_test": rsc["hv_test"].get(tb),  # its validation front re-evaluated on the held-out split
                "seconds": round(ref_run.get("strategy_s", 0.0), 2),
            }
        for name, seed, run, e in raw_runs:
            if name.startswith("reference:"):
                continue
            sc = score_run(e, run, budgets, ref, ref_front, {}, heldout_budgets)
            runs_out.append(
                {
                    "strategy": name,
                    "seed": seed,
                    "dim": int(e.space.dim),
                    "failed": run["failed"],
                    "seconds": round(run["seconds"], 2),
                    "strategy_seconds": round(run["strategy_s"], 2),
                    "eval_seconds": round(run["eval_s"], 2),
                    **{k: {str(b): (None if not math.isfinite(v) else round(float(v), 6)) for b, v in d.items()} for k, d in sc.items()},
                    "best_val": [round(float(v), 4) for v in np.nanmax(run["V"] * np.where(np.array(ev.directions) == "maximize", 1, -1), axis=0)],
                }
            )
        results["problems"][pname] = {
            "space": ev.space.describe(),
            "dim": int(ev.space.dim),
            "objectives": [{"name": o.name, "direction": o.direction} for o in ev.cfg.objectives],
            "reference_point": ref.tolist(),
            "ref_hv_val": ref_hv,
            "ref_hv_test": ref_hv_test,
            "ref_front_size": int(len(ref_front)),
            "reference_run": ref_run_out,
            "evals_per_second": round(ev.n_evals / max(ev.eval_s, 1e-9), 1),
            "runs": runs_out,
        }
    results["summary"] = summarise(results, budgets)
    results["target"] = check_target(results, budgets, args.target_budget, args.baselines.split(","))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print_table(results, budgets)
    print_target(results["target"])
    print(f"\nwrote {args.out}")


def _run_path(runs_dir: Path, problem: str, gname: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in gname)
    return runs_dir / problem / f"{safe}_s{seed}.npz"


def run_setup(cfg_dict: dict[str, Any], budget: int, workers: int) -> str:
    """What a run's points depend on besides its strategy, granularity and seed: the problem's
    config (merge method, searched parameters, objectives), the budget the strategy was built
    with (mobo's and map's initial designs depend on it) and the virtual workers."""
    digest = hashlib.sha256(json.dumps(cfg_dict, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return json.dumps({"config": digest, "budget": int(budget), "workers": int(workers)}, sort_keys=True)


def save_run(runs_dir: Path, problem: str, gname: str, seed: int, run: dict[str, Any], name: str, gran: str, setup: str) -> None:
    """One run's points and timings (plain arrays and strings: read back without pickle),
    written to a temporary file and renamed, so a reader never sees half a file."""
    path = _run_path(runs_dir, problem, gname, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")  # one per writer: two processes may save the same run
    with open(tmp, "wb") as fh:
        np.savez(fh, X=run["X"], V=run["V"], failed=run["failed"], seconds=run.get("seconds", 0.0), strategy_s=run["strategy_s"],
                 eval_s=run.get("eval_s", 0.0), name=name, gname=gname, gran=gran, seed=seed, setup=setup)
    os.replace(tmp, path)


def _read_run(path: Path, arrays: bool = True) -> dict[str, Any]:
    """A saved run (``arrays`` False: its names, seed and setup only, without reading X and V)."""
    with np.load(path, allow_pickle=False) as d:
        run = {"name": str(d["name"]), "gran": str(d["gran"]), "seed": int(d["seed"]), "setup": json.loads(str(d["setup"]))}
        if arrays:
            run.update(X=d["X"], V=d["V"], failed=int(d["failed"]), seconds=float(d["seconds"]), strategy_s=float(d["strategy_s"]),
                       eval_s=float(d["eval_s"]), cached=True)
        return run


def load_run(runs_dir: Path, problem: str, gname: str, seed: int, setup: str) -> dict[str, Any] | None:
    """The run :func:`save_run` saved under these names with this ``setup``, or None (none
    saved, unreadable, or made with another setup: then it is run again and replaced)."""
    path = _run_path(runs_dir, problem, gname, seed)
    try:
        run = _read_run(path) if path.exists() else None
    except Exception as e:  # noqa: BLE001 - a damaged file is re-run
        print(f"   {path.name}: unreadable or of an older bench ({type(e).__name__}), run again", flush=True)
        return None
    return run if run is not None and run["setup"] == json.loads(setup) else None


def other_runs(runs_dir: Path, problem: str, have: set[tuple[str, int]], setup: str) -> list[tuple[str, int, dict[str, Any], str]]:
    """Every run saved for ``problem`` with this ``setup`` (a reference run: with this config and
    workers, any budget) whose (name, seed) is not in ``have``: (name, seed, run, granularity).
    Runs of another setup and unreadable files are left out, each with a line saying so."""
    want = json.loads(setup)
    out = []
    for path in sorted((runs_dir / problem).glob("*.npz")):
        try:
            meta = _read_run(path, arrays=False)
            got = dict(meta["setup"])
            if meta["name"].startswith("reference:"):
                got["budget"] = want["budget"]
            if got != want:
                print(f"   {path.name}: made with another setup ({meta['setup']}), left out of the pool", flush=True)
            elif (meta["name"], meta["seed"]) not in have:  # the runs this process holds are not read again
                out.append((meta["name"], meta["seed"], _read_run(path), meta["gran"]))
        except Exception as e:  # noqa: BLE001 - a file another process is damaging or a stale format
            print(f"   {path.name}: unreadable or of an older bench ({type(e).__name__}), left out of the pool", flush=True)
    return out


def parse_strategy(name: str) -> str:
    """``optuna:sampler=gp;sampler_kwargs={...}`` -> ``optuna`` (options are parsed beside it)."""
    return name.split(":", 1)[0]


def parse_options(name: str) -> dict[str, Any]:
    """``name:key=value;key=value`` -> options (values parsed as YAML scalars)."""
    if ":" not in name:
        return {}
    import yaml

    return {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in name.split(":", 1)[1].split(";"))}


def summarise(results: dict[str, Any], budgets: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pname, p in results["problems"].items():
        rows: dict[str, Any] = {}
        for name in dict.fromkeys(r["strategy"] for r in p["runs"]):
            rs = [r for r in p["runs"] if r["strategy"] == name]
            row: dict[str, Any] = {}
            for b in budgets:
                key = str(b)
                val = [r["hv_val"][key] / p["ref_hv_val"] for r in rs if key in r["hv_val"] and p["ref_hv_val"] > 0]
                tst = [r["hv_test"][key] / p["ref_hv_test"] for r in rs if key in r["hv_test"] and p["ref_hv_test"] > 0]
                if val:
                    row[key] = {
                        "val_mean": round(float(np.mean(val)), 4),
                        "val_std": round(float(np.std(val)), 4),
                        "test_mean": round(float(np.mean(tst)), 4) if tst else None,
                        "test_std": round(float(np.std(tst)), 4) if tst else None,
                    }
            row["strategy_seconds_mean"] = round(float(np.mean([r["strategy_seconds"] for r in rs])), 2)
            rows[name] = row
        out[pname] = rows
    return out


def check_target(results: dict[str, Any], budgets: list[int], target_budget: int, baselines: list[str]) -> dict[str, Any]:
    """The issue's target, per problem: (a) the best project strategy's mean validation HV at
    ``target_budget`` as a fraction of the reference run's HV (and of the pooled front's), and
    its held-out HV as a fraction of the reference run's held-out HV; (b) at every budget, the project strategy with the best mean, and in how many seeds its
    HV beats each baseline's HV of the same seed."""
    out: dict[str, Any] = {}
    for pname, p in results["problems"].items():
        runs = p["runs"]
        base = {parse_strategy(b) for b in baselines}
        every = list(dict.fromkeys(r["strategy"] for r in runs))
        baseline_runs = [n for n in every if parse_strategy(n.split("@")[0].removesuffix(NOMARGINS)) in base]
        names = [n for n in every if n not in baseline_runs and n != "map@global"]
        hv = {(r["strategy"], r["seed"]): r["hv_val"] for r in runs}
        seeds = sorted({r["seed"] for r in runs})
        hv_test = {(r["strategy"], r["seed"]): r["hv_test"] for r in runs}
        def mean(n: str, b: int, hv: dict = hv, seeds: list = seeds) -> float:
            return float(np.mean([hv[(n, s)][str(b)] for s in seeds if (n, s) in hv and str(b) in hv[(n, s)]]))

        t: dict[str, Any] = {"per_budget": {}}
        ref_run = p.get("reference_run")
        if target_budget in budgets and names:
            best = max(names, key=lambda n: mean(n, target_budget))
            held = mean(best, target_budget, hv_test) if any(str(target_budget) in v for v in hv_test.values()) else None
            t["at_target"] = {
                "budget": target_budget,
                "best_project_strategy": best,
                "hv": mean(best, target_budget),
                "fraction_of_reference_run": (mean(best, target_budget) / ref_run["hv_val"]) if ref_run else None,
                "fraction_of_pooled_front": mean(best, target_budget) / p["ref_hv_val"],
                "hv_test": held,
                "heldout_fraction_of_reference_run": (held / ref_run["hv_test"]) if held is not None and ref_run and ref_run.get("hv_test") else None,
                "reference_run": ref_run,
            }
        for b in budgets:
            if not names:
                break
            best = max(names, key=lambda n: mean(n, b))
            wins = {bl: int(sum(hv[(best, s)][str(b)] > hv[(bl, s)][str(b)] for s in seeds if (bl, s) in hv and (best, s) in hv)) for bl in baseline_runs}
            t["per_budget"][str(b)] = {"best_project_strategy": best, "mean_hv_fraction": mean(best, b) / p["ref_hv_val"], "seeds": len(seeds), "wins": wins}
        out[pname] = t
    return out


def print_target(target: dict[str, Any]) -> None:
    for pname, t in target.items():
        print(f"\n{pname}: target check")
        a = t.get("at_target")
        if a:
            rr = a["reference_run"]
            frac = f"{a['fraction_of_reference_run']:.3f} of the reference run ({rr['strategy']}, {rr['evaluations']} evaluations)" if rr else "no reference run"
            print(f"  @{a['budget']}: best project strategy {a['best_project_strategy']}: {frac}; {a['fraction_of_pooled_front']:.3f} of the pooled front")
            if a.get("heldout_fraction_of_reference_run") is not None:
                print(f"  @{a['budget']}: held-out split (both fronts re-evaluated): {a['heldout_fraction_of_reference_run']:.3f} of the reference run's "
                      f"({a['hv_test']:.4f} vs {rr['hv_test']:.4f})")
        for b, row in t["per_budget"].items():
            wins = ", ".join(f"beats {bl} in {w}/{row['seeds']} seeds" for bl, w in row["wins"].items())
            print(f"  @{b}: best project strategy {row['best_project_strategy']} ({row['mean_hv_fraction']:.3f}): {wins}")


def print_table(results: dict[str, Any], budgets: list[int]) -> None:
    for pname, rows in results["summary"].items():
        p = results["problems"][pname]
        print(f"\n{pname}: {p['space']}; hypervolume / pooled reference (val ref {p['ref_hv_val']:.4f}, test ref {p['ref_hv_test']:.4f})")
        head = f"{'strategy':12s} " + " ".join(f"{('@' + str(b)):>15s}" for b in budgets) + "   strat s"
        print(head)
        print(" " * 13 + " ".join(f"{'val   / test':>15s}" for _ in budgets))
        best = {str(b): max((r.get(str(b), {}).get("val_mean", -1) for r in rows.values()), default=-1) for b in budgets}
        for name, row in rows.items():
            cells = []
            for b in budgets:
                c = row.get(str(b))
                if not c:
                    cells.append(f"{'-':>15s}")
                    continue
                mark = "*" if c["val_mean"] >= best[str(b)] - 1e-12 else " "
                t = f"{c['test_mean']:.3f}" if c["test_mean"] is not None else "  -  "
                cells.append(f"{mark}{c['val_mean']:.3f}/{t}".rjust(15))
            print(f"{name:12s} " + " ".join(cells) + f"   {row['strategy_seconds_mean']:7.2f}")
        print("(* best validation mean at that budget; means over seeds)")


if __name__ == "__main__":
    main()
