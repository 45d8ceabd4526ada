"""Bytes written for a strategy's state per trial, and the time a resume takes to rebuild it.

For mobo (its state holds every observation) on the toy problem, runs of growing length:

* ``log+snapshots``: bytes the controller writes for the strategy (the call log, plus the
  data snapshots at geometrically spaced points), per trial;
* ``full state twice per trial``: the baseline, measured in the same run: the size of the
  strategy's whole state, encoded as data, written after every ask and every tell (what a
  store that snapshots on every change writes: it grows with the square of the run);
* ``rebuild``: seconds to rebuild the strategy from the store as a resume does (newest
  snapshot + replay of the calls after it), and from the call log alone (no snapshot).

Writes bench/results/state.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = str(REPO)


def run(budget: int, root: Path, tmp: Path) -> dict:
    import yaml

    import search.controller as controller
    from search import statedata
    from search.store import Store
    from tests.toy_problem import toy_config

    written = {"log": 0, "snap": 0, "full": 0}
    real_event, real_snap, real_tell = Store._put_event, Store.save_snapshot, controller._RunState.told

    def put_event(c, study_id, ev):  # noqa: ANN001
        written["log"] += len(json.dumps(ev.payload))
        real_event(c, study_id, ev)

    def save_snapshot(self, study_id, seq, n_told, text, arrays):  # noqa: ANN001
        written["snap"] += len(text) + len(arrays)
        real_snap(self, study_id, seq, n_told, text, arrays)

    def told(self):  # noqa: ANN001
        text, arrays = statedata.encode(self.strategy.state_dict())
        written["full"] += 2 * (len(text) + len(arrays))  # after the ask and after the tell
        real_tell(self)

    Store._put_event, Store.save_snapshot, controller._RunState.told = staticmethod(put_event), save_snapshot, told
    try:
        cfg = toy_config(root, name=f"s{budget}", budget=budget, strategy="mobo", store=str(tmp / f"{budget}.db"))
        path = tmp / f"{budget}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        t0 = time.perf_counter()
        assert controller.launch(str(path)) == 0
        run_s = time.perf_counter() - t0
    finally:
        Store._put_event, Store.save_snapshot, controller._RunState.told = real_event, real_snap, real_tell
    rebuild = {}
    for label, keep_snapshot in (("snapshot", True), ("log only", False)):
        from search.validation import check_run

        st = Store.open(str(tmp / f"{budget}.db"))
        sid = st.study(f"s{budget}").id
        if not keep_snapshot:
            with st.engine.begin() as c:
                c.exec_driver_sql("DELETE FROM strategy_snapshots")
        checked = check_run(controller.load_config(path), run_code=True)
        state = controller._RunState(st, sid, checked.strategy, checked.space)
        t0 = time.perf_counter()
        state.restore(False)
        rebuild[label] = time.perf_counter() - t0
        st.close()
    return {
        "budget": budget,
        "run_s": run_s,
        "bytes_per_trial": (written["log"] + written["snap"]) / budget,
        "baseline_bytes_per_trial": written["full"] / budget,
        "rebuild_s": rebuild["snapshot"],
        "rebuild_log_only_s": rebuild["log only"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="50,100,200")
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    from tests.toy_problem import make_toy_models

    rows = []
    with tempfile.TemporaryDirectory() as d:
        root, tmp = Path(d) / "toy", Path(d)
        make_toy_models(root)
        os.environ["TOY_ROOT"] = str(root)
        for b in (int(x) for x in args.budgets.split(",")):
            rows.append(run(b, root, tmp))
    out = REPO / "bench" / "results" / "state.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"{'trials':>6} {'log+snapshots B/trial':>22} {'full state twice per trial':>27} {'ratio':>6} {'rebuild s':>10} {'log-only s':>11}")
    for r in rows:
        print(f"{r['budget']:>6} {r['bytes_per_trial']:>22.0f} {r['baseline_bytes_per_trial']:>27.0f} "
              f"{r['baseline_bytes_per_trial'] / r['bytes_per_trial']:>6.1f} {r['rebuild_s']:>10.2f} {r['rebuild_log_only_s']:>11.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
