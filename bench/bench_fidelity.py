"""Multi-fidelity on and off, against the examples evaluated (not a test).

For each problem (``--configs``; default ``configs/digits3.yaml``: 3 accuracies on ~100-155
validation examples each; with ``--shifted`` also the same objectives on 9 one-pixel shifts
of every validation image, 900-1400 examples each; with ``--tinylm N`` the quickstart's tiny-lm add
vs reverse on N generated prompts per task, held out on the shipped 200-prompt test splits), each strategy (``--strategies``: mobo, nsga2, cmaes) and each seed,
two real runs through the controller (``search.controller.launch``, one in-process worker,
an SQLite store under ``bench/results/fidelity/``):

* ``off``: ``--budget`` trials, every candidate scored on every example;
* ``on``: the same config with ``fidelity: {levels: --levels, z: --z, rule: --rule, epsilon: --epsilon}`` and up to
  ``--on-factor`` x ``--budget`` trials, cut at the examples the ``off`` run evaluated.

From each store, in finish order: the examples evaluated so far (all objectives, from
``trials.examples_json``), the evaluation seconds so far, and the front of the full-fidelity
(COMPLETE) trials. At ``--fractions`` of the ``off`` run's examples E (1/3, 1/2, 1) the
front is taken, its validation hypervolume computed, and its members re-evaluated on the
held-out split (``heldout`` settings, every example) by one in-process worker; the held-out
hypervolume is that of those values. The reference point is the report's rule over every
value measured for the problem (0 for maximised accuracies). Ratios are to the ``off`` run
of the same strategy and seed at E: the target is held-out hypervolume with fidelity on at
E/3 >= the ``off`` run's at E. The table also gives the screening factor: the candidates the
``on`` run finished (stopped or complete) within E/3, and those of them scored on every
example, as multiples of the ``off`` run's candidates. Its front at E/3 is made of the latter
only; with a strategy that proposes alike with fidelity on and off, matching the off run at
E/3 takes looking at about as many candidates (a factor near 1 or above) within that third.

    python bench/bench_fidelity.py                       # digits3, mobo/nsga2/cmaes, 5 seeds
    python bench/bench_fidelity.py --seeds 2 --budget 60 # shorter
    python bench/bench_fidelity.py --only-tinylm --tinylm 1000 --strategies nsga2 --reuse --out ...  # one process per strategy
    python bench/bench_fidelity.py ... --levels 0.02,0.1,0.3,1 --tag=-l4 --reuse   # other levels, the same off runs
Writes bench/results/fidelity.json (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shifted_digits(out: Path) -> Path:
    """An ``.npz`` for the classification evaluator: the digits validation split with every
    image also shifted by one pixel in each of the 8 directions (zero fill): 9 x 359 = 3231
    validation examples; the test split as it is (held out)."""
    from search.zoo.digits import digits_split

    X, y = digits_split("validation")
    imgs = X.reshape(-1, 8, 8)
    shifted = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            a = np.zeros_like(imgs)
            a[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = imgs[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
            shifted.append(a.reshape(-1, 64))
    Xt, yt = digits_split("test")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, X_validation=np.concatenate(shifted).astype(np.float32), y_validation=np.tile(y, 9),
             X_test=Xt.astype(np.float32), y_test=yt)
    return out


def _write_once(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` already holds it (atomically: bench processes started
    together share the task folder, and one may be reading it)."""
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def tinylm_problem(n: int, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The quickstart problem (tiny-lm add vs reverse, lm-eval exact match) searched on ``n``
    generated validation prompts per task instead of the shipped 40 of 200, held out on the
    shipped 200-prompt test splits. The prompts are drawn like the zoo's (seeded), distinct and
    disjoint from both shipped splits; unlike those, they may have been seen in the experts'
    training (the zoo only keeps the shipped prompts out of it). Writes the lm-eval task folder
    ``folder`` (jsonl + YAML with absolute paths); returns (config path, config)."""
    import random

    from search.zoo.tiny_lm import _heldout_prompts, make_example

    folder.mkdir(parents=True, exist_ok=True)
    shipped = _heldout_prompts()
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["name"] = f"tiny-lm-{n}"
    for o in cfg["objectives"]:
        task = o["name"]  # add, reverse
        rng, seen, rows = random.Random(f"bench-fidelity/{n}/{task}"), set(shipped), []
        for _ in range(50 * n):
            if len(rows) == n:
                break
            prompt, answer = make_example(task, rng)
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": prompt, "answer": answer})
        if len(rows) < n:
            raise SystemExit(f"--tinylm {n}: the {task} task has only about {len(rows)} prompts that are not shipped ones; "
                             "ask for fewer")
        data = folder / f"{task}_validation.jsonl"
        _write_once(data, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        spec = yaml.safe_load((ROOT / "evaluators" / "tasks" / "tinylm" / f"tinylm_{task}.yaml").read_text())
        spec["task"] = f"tinylm{n}_{task}"
        spec["dataset_kwargs"] = {"data_files": {"validation": str(data)}}
        _write_once(folder / f"tinylm{n}_{task}.yaml", yaml.safe_dump(spec, sort_keys=False))
        o["settings"] = {**o["settings"], "tasks": [spec["task"]], "limit": None, "include_path": [str(folder)]}
    return ROOT / "configs" / "quickstart.yaml", cfg


def shifted_variant(cfg: dict[str, Any], npz: Path) -> dict[str, Any]:
    """``cfg`` (digits objectives) scored on :func:`shifted_digits`' validation examples."""
    cfg = copy.deepcopy(cfg)
    cfg["name"] = f"{cfg.get('name', 'digits')}-shift9"
    for o in cfg["objectives"]:
        o["settings"] = {**o["settings"], "dataset": str(npz)}
    return cfg


def run_store(cfg: dict[str, Any], base_dir: Path, store: Path, reuse: bool = False) -> list[Any]:
    """Launch ``cfg`` (in-process, one worker) into a fresh ``store``; its trials in finish order.
    With ``reuse``, an existing ``store`` is read instead and never replaced: it must hold the
    run finished with the same config identity and budget, or the bench stops with one line."""
    from search.config import parse_config
    from search.controller import launch
    from search.pareto import _finish_order
    from search.report import load_run

    c = parse_config(cfg).with_base_dir(base_dir)
    if reuse and store.exists():
        return _reused(c, store)
    for f in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        f.unlink(missing_ok=True)
    rc = launch(c, store=str(store))
    if rc != 0:
        raise SystemExit(f"run {cfg['name']} failed with exit code {rc}")
    return _finish_order(load_run(cfg["name"], str(store)).trials)


def _reused(c: Any, store: Path) -> list[Any]:
    """The trials of ``store``'s finished run ``c.name`` when it was launched with the config
    identity (problem, merge, objectives, strategy and options, fidelity, seed) and budget of
    ``c``; otherwise SystemExit naming what differs. The identity covers configs, not code: after
    a change to a strategy, give its new runs another ``--tag`` (or remove the stores)."""
    from search.controller import config_identity
    from search.pareto import _finish_order
    from search.report import load_run
    from search.store import StoreError

    fix = "use another --tag, or remove the file to run it again"
    try:
        run = load_run(c.name, str(store))
    except StoreError as e:
        raise SystemExit(f"--reuse: {store}: {e}; {fix}") from None
    if run.study.config_sha != config_identity(c):
        raise SystemExit(f"--reuse: {store} holds {c.name} launched with another config; {fix}")
    if run.budget != c.strategy.budget:
        raise SystemExit(f"--reuse: {store} holds {c.name} with budget {run.budget}, not {c.strategy.budget}; {fix}")
    if run.study.status != "finished":
        raise SystemExit(f"--reuse: {store} holds {c.name} with status {run.study.status!r} (still running or "
                         f"interrupted); wait for it, or remove the file to run it again")
    return _finish_order(run.trials)


def curve(trials: list[Any]) -> list[dict[str, Any]]:
    """Per finished trial: examples, evaluation seconds and trials so far, and the full-fidelity points so far."""
    from search.pareto import trial_examples
    from search.store import COMPLETE

    out, ex, sec, pts = [], 0, 0.0, []
    for i, t in enumerate(trials):
        ex += trial_examples(t) or 0
        sec += t.evaluate_s or 0.0
        if t.state == COMPLETE and t.values is not None and all(math.isfinite(v) for v in t.values):
            pts.append((t.number, t.candidate["x"], list(t.values)))
        out.append({"examples": ex, "seconds": sec, "trials": i + 1, "points": list(pts)})
    return out


def at_examples(c: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The last state of a curve within ``budget`` examples."""
    last = None
    for row in c:
        if row["examples"] > budget + 1e-9:
            break
        last = row
    return last


class Heldout:
    """Held-out values of points, by one in-process worker (cached per vector)."""

    def __init__(self, cfg: dict[str, Any], base_dir: Path):
        from search.workers import TrialWorker

        self.worker = TrialWorker(yaml.safe_dump(cfg), str(base_dir), "bench-heldout")
        self.cache: dict[bytes, list[float]] = {}

    def __call__(self, x: list[float]) -> list[float]:
        from search.workers import TrialTask

        key = np.round(np.asarray(x, dtype=np.float64), 10).tobytes()
        if key not in self.cache:
            res = self.worker.run(TrialTask(0, list(x), split="heldout"))
            if not res.ok:
                raise SystemExit(f"held-out evaluation failed: {res.error}")
            self.cache[key] = list(res.values or [])
        return self.cache[key]


def hv_of(values: list[list[float]], directions: list[str], ref: list[float]) -> float:
    from search.pareto import pareto_mask
    from search.pareto import ref_hypervolume as _hv

    if not values:
        return 0.0
    v = np.asarray(values, dtype=np.float64)
    return float(_hv(v[np.asarray(pareto_mask(v, directions), dtype=bool)], directions, ref))


def front_values(points: list[tuple[int, list[float], list[float]]], directions: list[str]) -> list[tuple[list[float], list[float]]]:
    from search.pareto import pareto_mask

    if not points:
        return []
    v = np.asarray([p[2] for p in points], dtype=np.float64)
    mask = np.asarray(pareto_mask(v, directions), dtype=bool)
    return [(p[1], p[2]) for p, m in zip(points, mask, strict=True) if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/digits3.yaml")
    ap.add_argument("--strategies", default="mobo,nsga2,cmaes")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=100, help="trials of the fidelity-off run")
    ap.add_argument("--on-factor", type=float, default=3.0, help="trial cap of the fidelity-on run, x --budget")
    ap.add_argument("--levels", default="0.1,0.3,1.0")
    ap.add_argument("--z", type=float, default=2.0)
    ap.add_argument("--rule", default="paired", choices=["paired", "independent"])
    ap.add_argument("--epsilon", type=float, default=0.0)
    ap.add_argument("--fractions", default="0.333333,0.5,1.0", help="fractions of the off run's examples to compare at")
    ap.add_argument("--shifted", action="store_true", help="also the digits configs on 9 one-pixel shifts of each validation image")
    ap.add_argument("--only-shifted", action="store_true", help="only the shifted variants")
    ap.add_argument("--tinylm", type=int, default=0, metavar="N",
                    help="also tiny-lm add vs reverse searched on N generated prompts per task (held out on the shipped test splits)")
    ap.add_argument("--only-tinylm", action="store_true", help="only the --tinylm problem")
    ap.add_argument("--tag", default="", help="appended to the on runs' names (their stores), so that runs with other "
                    "fidelity settings keep theirs; the off runs are shared (with --reuse, run once)")
    ap.add_argument("--reuse", action="store_true",
                    help="read a run whose store under bench/results/fidelity/ exists instead of running it; the store must "
                         "hold that run finished with the same config and budget (never replaced: the bench stops with one "
                         "line otherwise), so several processes can fill the stores, one per strategy")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fidelity.json"))
    args = ap.parse_args()
    logging.getLogger("search").setLevel(logging.WARNING)
    levels = [float(v) for v in args.levels.split(",")]
    fractions = [float(v) for v in args.fractions.split(",")]
    store_dir = ROOT / "bench" / "results" / "fidelity"
    store_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "machine": platform.platform(), "problems": {}}
    t_all = time.time()
    problems: list[tuple[Path, dict[str, Any]]] = []
    for cpath in [] if args.only_tinylm else args.configs.split(","):
        path = (ROOT / cpath).resolve()
        base = yaml.safe_load(path.read_text())
        base.setdefault("name", path.stem)
        if not args.only_shifted:
            problems.append((path, base))
        if args.shifted or args.only_shifted:
            problems.append((path, shifted_variant(base, shifted_digits(store_dir / "digits-shift9.npz"))))
    if args.tinylm or args.only_tinylm:
        n = args.tinylm or 1000
        problems.append(tinylm_problem(n, store_dir / f"tinylm{n}"))
    for path, base in problems:
        pname = base["name"]
        directions = [o["direction"] for o in base["objectives"]]
        held = Heldout(base, path.parent)
        runs: dict[str, dict[str, Any]] = {}
        for strat in args.strategies.split(","):
            for seed in range(args.seeds):
                for mode in ("off", "on"):
                    cfg = copy.deepcopy(base)
                    cfg["name"] = f"{pname}-{strat}-{mode}{args.tag if mode == 'on' else ''}-{seed}"
                    cfg["seed"] = seed
                    cfg["strategy"] = {"name": strat, "budget": args.budget, "options": {}}
                    cfg["workers"] = {"backend": "local", "count": 1}
                    if mode == "on":
                        cfg["fidelity"] = {"levels": levels, "z": args.z, "rule": args.rule, "epsilon": args.epsilon}
                        cfg["strategy"]["budget"] = int(args.on_factor * args.budget)
                    t0 = time.time()
                    trials = run_store(cfg, path.parent, store_dir / f"{cfg['name']}.db", args.reuse)
                    runs[cfg["name"]] = {"strategy": strat, "seed": seed, "mode": mode, "wall_s": time.time() - t0,
                                         "curve": curve(trials), "n_trials": len(trials),
                                         "levels": _level_counts(trials)}
                    print(f"  {cfg['name']}: {len(trials)} trials, {runs[cfg['name']]['curve'][-1]['examples']} examples, "
                          f"{time.time() - t0:.0f}s", flush=True)
        pooled = [p[2] for r in runs.values() for p in r["curve"][-1]["points"]]
        from search.pareto import reference_point

        ref = reference_point(pooled, directions)
        rows = []
        for strat in args.strategies.split(","):
            for seed in range(args.seeds):
                off = runs[f"{pname}-{strat}-off-{seed}"]
                on = runs[f"{pname}-{strat}-on{args.tag}-{seed}"]
                E = off["curve"][-1]["examples"]
                row: dict[str, Any] = {"strategy": strat, "seed": seed, "examples_off": E,
                                       "trials_on": on["n_trials"], "levels_on": on["levels"]}
                for mode, r in (("off", off), ("on", on)):
                    for f in fractions:
                        st = at_examples(r["curve"], f * E)
                        fr = front_values(st["points"] if st else [], directions)
                        row[f"{mode}@{f:.2f}"] = {
                            "examples": st["examples"] if st else 0,
                            "seconds": st["seconds"] if st else 0.0,
                            "hv_val": hv_of([v for _, v in fr], directions, ref),
                            "hv_test": hv_of([held(x) for x, _ in fr], directions, ref),
                            "front": len(fr),
                            "trials": st["trials"] if st else 0,  # candidates finished (stopped or complete)
                            "full": len(st["points"]) if st else 0,  # of them scored on every example
                        }
                # examples the on run needed to reach the off run's final validation / held-out hypervolume
                target_val, target_test = row["off@1.00"]["hv_val"], row["off@1.00"]["hv_test"]
                row["on_examples_to_off_val"] = _first_reach(on["curve"], target_val, directions, ref, None)
                row["on_examples_to_off_test"] = _first_reach(on["curve"], target_test, directions, ref, held)
                rows.append(row)
        results["problems"][pname] = {"ref_point": ref, "rows": rows,
                                      "runs": {k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in runs.items()}}
        print_table(pname, rows, fractions)
    results["wall_s"] = time.time() - t_all
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {args.out} ({results['wall_s']:.0f}s)")


def _level_counts(trials: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        if t.level is not None:
            k = f"{t.state.lower()}@{t.level}"
            out[k] = out.get(k, 0) + 1
    return out


def _first_reach(c: list[dict[str, Any]], target: float, directions: list[str], ref: list[float], held: Any) -> int | None:
    """Examples at the first finished trial whose full-fidelity front reaches ``target``
    hypervolume (held-out values when ``held`` is given), or None."""
    last_n = -1
    for row in c:
        if len(row["points"]) == last_n:
            continue
        last_n = len(row["points"])
        fr = front_values(row["points"], directions)
        vals = [held(x) for x, _ in fr] if held is not None else [v for _, v in fr]
        if hv_of(vals, directions, ref) >= target - 1e-12:
            return int(row["examples"])
    return None


def print_table(pname: str, rows: list[dict[str, Any]], fractions: list[float]) -> None:
    print(f"\n{pname}: hypervolume with fidelity on / off, as ratios to the off run at all its examples E "
          "(mean over seeds; validation / held-out)")
    head = ["strategy", "seeds"] + [f"off@{f:.2f}E" for f in fractions[:-1]] + [f"on@{f:.2f}E" for f in fractions] + \
        ["on reaches off(E) val / test at", f"on@{fractions[0]:.2f}E: candidates, full (x off's)", "on: trials, finished per level"]
    print(" | ".join(head))
    for strat in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == strat]

        def ratio(key: str, what: str, rs: list[dict[str, Any]] = rs) -> str:
            v = np.mean([r[key][what] / r["off@1.00"][what] if r["off@1.00"][what] > 0 else np.nan for r in rs])
            return f"{v:.3f}"

        cells = [strat, str(len(rs))]
        cells += [f"{ratio(f'off@{f:.2f}', 'hv_val')} / {ratio(f'off@{f:.2f}', 'hv_test')}" for f in fractions[:-1]]
        cells += [f"{ratio(f'on@{f:.2f}', 'hv_val')} / {ratio(f'on@{f:.2f}', 'hv_test')}" for f in fractions]

        def reach(key: str, rs: list[dict[str, Any]] = rs) -> str:
            got = [r[key] / r["examples_off"] for r in rs if r[key] is not None]
            return f"{np.mean(got):.2f}E ({len(got)}/{len(rs)})" if got else f"never (0/{len(rs)})"

        cells.append(f"{reach('on_examples_to_off_val')} / {reach('on_examples_to_off_test')}")
        # the screening factor at the first fraction: candidates the on run finished within it (and
        # those of them scored on every example) per candidate of the off run; matching the off
        # run's front at E/3 with a third of its full evaluations takes a factor near 1 or above
        f0 = f"on@{fractions[0]:.2f}"
        n_off = np.mean([r["off@1.00"]["trials"] for r in rs])
        cells.append(f"{np.mean([r[f0]['trials'] for r in rs]) / n_off:.2f}, {np.mean([r[f0]['full'] for r in rs]) / n_off:.2f}")
        lv: dict[str, int] = {}
        for r in rs:
            for k, n in r["levels_on"].items():
                lv[k] = lv.get(k, 0) + n
        cells.append(f"{np.mean([r['trials_on'] for r in rs]):.0f}; " + ", ".join(f"{k} {n / len(rs):.0f}" for k, n in sorted(lv.items())))
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
