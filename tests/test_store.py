"""The SQLite store: schema, read-only readers beside the writer, versioning, the run lock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from search.errors import StoreError
from search.store import COMPLETE, FAIL, SCHEMA_VERSION, Store, open_run


def _study(st: Store, name: str = "r"):
    return st.create_study(name, "name: r\n", "sha", [("acc", "maximize"), ("len", "minimize")], {"names": ["g/a/weight"]})


def test_roundtrip_values_metrics_per_sample_and_state(tmp_path: Path) -> None:
    st = Store.open(str(tmp_path / "s.db"))
    s = _study(st)
    assert s.objectives == [("acc", "maximize"), ("len", "minimize")]
    tid = st.add_trial(s.id, 0, {"x": [0.5], "id": 0, "generation": 2, "parents": [7]}, {"g/a/weight": 0.5}, "nsga2",
                       strategy_state=(1, 0, b"state-1"))
    st.finish_trial(tid, COMPLETE, [0.75, 12.0],
                    [{"objective_idx": 0, "split": "search", "evaluator": "lm_eval", "metric": "exact_match,none", "value": 0.75}],
                    {"acc/task": np.array([1, 0, 1, 1])}, worker="w0", materialize_s=0.01, evaluate_s=0.5,
                    strategy_state=(2, 1, b"state-2"), study_id=s.id)
    tid2 = st.add_trial(s.id, 1, {"x": [0.1], "id": 1}, {"g/a/weight": 0.1}, "nsga2")
    st.finish_trial(tid2, FAIL, error="RuntimeError: boom")
    st.add_heldout(tid, [0.7, None])
    (t0, t1) = st.trials(s.id, with_metrics=True)
    assert t0.values == [0.75, 12.0] and t0.heldout == [0.7, None] and t0.generation == 2 and t0.parents == [7]
    assert t0.params == {"g/a/weight": 0.5} and t0.metrics[0]["metric"] == "exact_match,none"
    assert t1.state == FAIL and t1.values is None and t1.error == "RuntimeError: boom"
    assert np.array_equal(st.per_sample(tid)["acc/task"], [1, 0, 1, 1])
    assert st.latest_strategy_state(s.id) == (2, 1, b"state-2")
    assert st.counts(s.id) == {COMPLETE: 1, FAIL: 1}
    assert st.next_number(s.id) == 2
    assert [t.number for t in st.trials(s.id, after_id=tid)] == [1]


def test_sqlite_pragmas_and_schema_version(tmp_path: Path) -> None:
    p = tmp_path / "s.db"
    Store.open(str(p)).close()
    con = sqlite3.connect(p)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.execute("UPDATE schema_info SET value='99' WHERE key='version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 99 is newer than this mergesearch understands"):
        Store.open(str(p))


def test_reader_sees_writes_while_the_writer_writes(tmp_path: Path) -> None:
    p = tmp_path / "s.db"
    st = Store.open(str(p))
    s = _study(st)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        ro = Store.open(str(p), readonly=True)
        try:
            while not stop.is_set():
                seen.append(len(ro.trials(s.id)))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=read)
    th.start()
    for i in range(200):
        tid = st.add_trial(s.id, i, {"x": [i], "id": i}, {"g/a/weight": float(i)}, "random")
        st.finish_trial(tid, COMPLETE, [0.5, 1.0])
    stop.set()
    th.join()
    assert not errors
    assert seen == sorted(seen) and len(seen) > 1
    assert len(Store.open(str(p), readonly=True).trials(s.id)) == 200


def test_readonly_store_refuses_writes_and_missing_store_is_clear(tmp_path: Path) -> None:
    p = tmp_path / "s.db"
    _study(Store.open(str(p)))
    ro = Store.open(str(p), readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        _study(ro, "other")
    with pytest.raises(StoreError, match="no such store"):
        Store.open(str(tmp_path / "missing.db"), readonly=True)


def test_open_run_by_name_suggests_close_names(tmp_path: Path) -> None:
    p = tmp_path / "s.db"
    _study(Store.open(str(p)), "quickstart")
    st, study = open_run(str(p))
    assert study.name == "quickstart"
    with pytest.raises(StoreError, match="did you mean 'quickstart'"):
        open_run("quikstart", store=str(p))


def test_lock_is_taken_over_from_a_dead_controller(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    st = Store.open(str(tmp_path / "s.db"))
    s = _study(st)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    st.acquire(s.id, owner=f"{socket.gethostname()}:{dead.stdout.strip()}")
    assert st.acquire(s.id) == f"{socket.gethostname()}:{os.getpid()}"
