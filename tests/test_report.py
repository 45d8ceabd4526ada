"""search.report: load_run, the front, the hypervolume convention, `search status` / `search front`."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from search.cli import main
from search.errors import StoreError
from search.pareto import hypervolume_history, reference_point
from search.report import front_json, load_run, print_front, print_status
from search.store import COMPLETE, FAIL, Store

GROUPS = ["embed", "layers.00", "layers.01", "head"]
EXPERTS = ["math", "code"]


def _space() -> dict:
    names = [f"{g}/{e}/weight" for g in GROUPS for e in EXPERTS]
    return {"names": names, "groups": GROUPS, "experts": EXPERTS, "searched": ["weight"],
            "lower": [0.0] * len(names), "upper": [1.0] * len(names)}


def _config(ref_loss: float | None = None, budget: int = 10) -> str:
    loss = {"name": "loss", "evaluator": "python", "direction": "minimize"}
    if ref_loss is not None:
        loss["ref_point"] = ref_loss
    return yaml.safe_dump({"name": "r", "objectives": [{"name": "acc", "evaluator": "python", "direction": "maximize"}, loss],
                           "strategy": {"name": "nsga2", "budget": budget}})


# (number, state, values, heldout): acc is maximised, loss minimised.
# Front: 0, 1, 6 (2 is dominated by 1, 4 by 0); 3 failed; 5 still running.
TRIALS = [
    (0, COMPLETE, (0.9, 2.0), (0.85, 2.1)),
    (1, COMPLETE, (0.5, 1.0), None),
    (2, COMPLETE, (0.4, 1.5), None),
    (3, FAIL, None, None),
    (4, COMPLETE, (0.9, 2.5), None),
    (5, "RUNNING", None, None),
    (6, COMPLETE, (0.7, 1.2), (0.66, None)),
]
# reference point: acc -> 0 (maximised, values >= 0); loss -> worst 2.5 * 1.1 = 2.75
HV = 0.9 * (2.75 - 2.0) + 0.7 * (2.0 - 1.2) + 0.5 * (1.2 - 1.0)


def fill_store(path: Path, name: str = "r", config_yaml: str | None = None) -> Path:
    st = Store.open(str(path))
    study = st.create_study(name, config_yaml or _config(), "sha", [("acc", "maximize"), ("loss", "minimize")], _space())
    sp = _space()
    for number, state, values, heldout in TRIALS:
        params = {n: (number + 1) / 10 * (i % 3) / 2 for i, n in enumerate(sp["names"])}
        tid = st.add_trial(study.id, number, {"id": number, "generation": number // 3, "parents": [0] if number else []},
                           params, "nsga2", worker=f"w{number % 2}")
        if state == "RUNNING":
            continue
        st.finish_trial(
            tid, state, values=values, error="RuntimeError: boom" if state == FAIL else None, worker=f"w{number % 2}",
            materialize_s=0.1, evaluate_s=0.5,
            evaluations_=[{"objective_idx": 0, "split": "search", "evaluator": "python", "metric": "acc", "value": values[0]}]
            if values else (),
        )
        if heldout:
            st.add_heldout(tid, heldout)
        time.sleep(0.002)  # distinct finished_at, in number order
    st.close()
    return path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return fill_store(tmp_path / "runs" / "r.db")


def test_load_run_front_counts_and_hypervolume(store_path: Path) -> None:
    data = load_run("r", str(store_path))
    assert data.name == "r" and data.objectives == ["acc", "loss"] and data.directions == ["maximize", "minimize"]
    assert data.counts() == {"RUNNING": 1, "COMPLETE": 5, "FAIL": 1}
    assert data.front == [0, 1, 6]
    assert data.ref_point == pytest.approx([0.0, 2.75])
    assert data.hypervolume == pytest.approx(HV)
    assert data.budget == 10
    assert [t.number for t in data.front_trials] == [0, 1, 6]
    best = {name: t.number for name, _, t in data.best()}
    assert best == {"acc": 0, "loss": 1}  # ties on acc (0 and 4 at 0.9) go to the lower number
    assert data.trial(0).heldout == pytest.approx([0.85, 2.1])
    ws = {w["worker"]: w for w in data.workers()}
    assert ws["w0"]["trials"] == 4 and ws["w1"]["FAIL"] == 1 and ws["w1"]["RUNNING"] == 1


def test_load_run_by_store_path_and_open_store(store_path: Path) -> None:
    assert load_run(str(store_path)).front == [0, 1, 6]  # a store path with one run
    st = Store.open(str(store_path), readonly=True)
    try:
        assert load_run("r", st).hypervolume == pytest.approx(HV)
    finally:
        st.close()
    with pytest.raises(StoreError, match="no run named 'rr'"):
        load_run("rr", str(store_path))


def test_hypervolume_history_counts_failures_and_ends_at_the_run_value(store_path: Path) -> None:
    data = load_run("r", str(store_path))
    hist = data.hypervolume_history()
    a = 0.9 * (2.75 - 2.0)
    b = a + 0.5 * (2.0 - 1.0)
    assert [n for n, _ in hist] == [1, 2, 3, 4, 5, 6]  # 6 finished trials (failed 3 included), running 5 not
    assert [h for _, h in hist] == pytest.approx([a, b, b, b, b, HV])
    assert hypervolume_history(data.trials, data.directions, [0.0, 2.0])[0][1] == 0.0  # trial 0 is not better than ref


def test_reference_point_rules() -> None:
    assert reference_point([[0.2, 3.0], [0.5, 1.0]], ["maximize", "minimize"]) == pytest.approx([0.0, 3.3])
    assert reference_point([[-2.0, -4.0]], ["maximize", "minimize"]) == pytest.approx([-2.2, -3.6])
    assert reference_point([[0.3, 0.0], [0.1, -1.0]], ["maximize", "minimize"]) == pytest.approx([0.0, 0.1])
    assert reference_point([[0.3, 5.0]], ["maximize", "minimize"], [0.1, None]) == pytest.approx([0.1, 5.5])


def test_config_ref_point_wins(tmp_path: Path) -> None:
    path = fill_store(tmp_path / "x.db", config_yaml=_config(ref_loss=3.0))
    data = load_run("r", str(path))
    assert data.ref_point == pytest.approx([0.0, 3.0])
    assert data.hypervolume == pytest.approx(0.9 * 1.0 + 0.7 * 0.8 + 0.5 * 0.2)
    assert load_run("r", str(path), ref_point=[0.0, 2.75]).hypervolume == pytest.approx(HV)


def test_front_json_schema(store_path: Path) -> None:
    doc = front_json(load_run("r", str(store_path)))
    assert doc["run"] == "r"
    assert doc["objectives"] == [{"name": "acc", "direction": "maximize"}, {"name": "loss", "direction": "minimize"}]
    assert [f["number"] for f in doc["front"]] == [0, 6, 1]  # best-first by acc
    f0 = doc["front"][0]
    assert f0["values"] == {"acc": 0.9, "loss": 2.0} and f0["heldout"] == pytest.approx({"acc": 0.85, "loss": 2.1})
    assert doc["front"][1]["heldout"] == pytest.approx({"acc": 0.66, "loss": None})
    assert doc["front"][2]["heldout"] is None
    assert f0["strategy"] == "nsga2" and f0["generation"] == 0 and len(f0["params"]) == 8
    assert doc["hypervolume"] == pytest.approx(HV) and doc["ref_point"] == pytest.approx([0.0, 2.75])
    assert doc["counts"]["COMPLETE"] == 5 and doc["budget"] == 10


def test_search_front_json_cli(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["front", "r", "--store", str(store_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["number"] for f in doc["front"]] == [0, 6, 1]


def test_print_front_table(store_path: Path) -> None:
    buf = io.StringIO()
    assert print_front("r", str(store_path), console=Console(file=buf, width=200)) == 0
    out = buf.getvalue()
    assert "Pareto front of r: 3 of 5 complete trials" in out
    assert "acc (max)" in out and "loss (min)" in out and "acc held-out" in out
    assert "0.8500" in out  # held-out of trial 0
    assert f"hypervolume {HV:.6f}" in out


def test_print_status(store_path: Path) -> None:
    buf = io.StringIO()
    assert print_status("r", str(store_path), console=Console(file=buf, width=200)) == 0
    out = buf.getvalue()
    assert "trials: 5 complete, 1 failed, 1 running" in out
    assert "budget 6/10 (60%)" in out
    assert "front: 3 trials" in out and f"hypervolume {HV:.6f}" in out and "loss=2.75" in out
    assert "workers seen: 2" in out and "w0" in out and "w1" in out
    assert "elapsed:" in out


def test_status_of_a_missing_store_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "nope", "--store", str(tmp_path / "none.db")]) == 2
    assert "no such store" in capsys.readouterr().err


def test_empty_run(tmp_path: Path) -> None:
    st = Store.open(str(tmp_path / "e.db"))
    st.create_study("e", _config(), "sha", [("acc", "maximize"), ("loss", "minimize")], _space())
    st.close()
    data = load_run("e", str(tmp_path / "e.db"))
    assert data.front == [] and data.hypervolume is None and data.hypervolume_history() == []
    buf = io.StringIO()
    assert print_status("e", str(tmp_path / "e.db"), console=Console(file=buf, width=200)) == 0
    assert "workers seen: none yet" in buf.getvalue()
    assert front_json(data)["front"] == []


def test_hypervolume_tracker_is_incremental_and_matches_the_full_history(store_path: Path) -> None:
    from search.pareto import HypervolumeTracker

    data = load_run("r", str(store_path))
    full = data.hypervolume_history()
    order = sorted((t for t in data.trials if t.state != "RUNNING"), key=lambda t: t.finished_at)
    tr = HypervolumeTracker(data.directions, data.ref_point)
    for k in range(len(order) + 1):
        assert tr.update(order[:k]) == full[:k]
    # a different finish order (e.g. another run's trials) starts over instead of extending
    assert tr.update(order[1:]) == hypervolume_history(order[1:], data.directions, data.ref_point)
