"""The SQLite store: schema, read-only readers beside the writer, versioning, the run lock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from search.errors import StoreError
from search.store import COMPLETE, FAIL, SCHEMA_VERSION, LockLostError, Store, StrategyEvent, open_run


def _study(st: Store, name: str = "r"):
    return st.create_study(name, "name: r\n", "sha", [("acc", "maximize"), ("len", "minimize")], {"names": ["g/a/weight"]})


def test_roundtrip_values_metrics_per_sample_and_state(tmp_path: Path) -> None:
    st = Store.open(str(tmp_path / "s.db"))
    s = _study(st)
    assert s.objectives == [("acc", "maximize"), ("len", "minimize")]
    ask = StrategyEvent(1, "ask", {"n": 1, "items": [{"id": 0, "h": "ab", "number": 0}]})
    (tid,) = st.add_trials(s.id, [dict(number=0, candidate={"x": [0.5], "id": 0, "generation": 2, "parents": [7]},
                                       params={"g/a/weight": 0.5}, worker="w0")], "nsga2", ask)
    margins = np.array([0.25, -1e-300, 3.0, 0.1])
    st.finish_trial(tid, COMPLETE, [0.75, 12.0],
                    [{"objective_idx": 0, "split": "search", "evaluator": "lm_eval", "metric": "exact_match,none", "value": 0.75}],
                    {"acc/task": np.array([1, 0, 1, 1])}, worker="w0", materialize_s=0.01, evaluate_s=0.5,
                    margins_={0: margins}, event=StrategyEvent(2, "tell", {"items": [[0, 0]]}), study_id=s.id)
    st.save_snapshot(s.id, 2, 1, '{"format": "x"}', b"npz")
    tid2 = st.add_trial(s.id, 1, {"x": [0.1], "id": 1}, {"g/a/weight": 0.1}, "nsga2")
    st.finish_trial(tid2, FAIL, error="RuntimeError: boom")
    st.add_heldout(tid, [0.7, None])
    (t0, t1) = st.trials(s.id, with_metrics=True)
    assert t0.values == [0.75, 12.0] and t0.heldout == [0.7, None] and t0.generation == 2 and t0.parents == [7]
    assert t0.params == {"g/a/weight": 0.5} and t0.metrics[0]["metric"] == "exact_match,none"
    assert t1.state == FAIL and t1.values is None and t1.error == "RuntimeError: boom"
    assert np.array_equal(st.per_sample(tid)["acc/task"], [1, 0, 1, 1])
    per, marg = st.trial_arrays(s.id)[0]
    assert np.array_equal(per["acc/task"], [1, 0, 1, 1]) and marg[0].dtype == np.float64 and np.array_equal(marg[0], margins)
    assert [(e.seq, e.kind, e.payload) for e in st.events(s.id)] == [(1, "ask", ask.payload), (2, "tell", {"items": [[0, 0]]})]
    assert st.latest_snapshot(s.id) == (2, 1, '{"format": "x"}', b"npz")
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


def test_heldout_index_is_added_by_a_writable_open_and_not_needed_to_read(tmp_path: Path) -> None:
    """The held-out index is no schema change: a store without it (older) opens read-only and
    reads the same; the next writable open adds it, and the query the dashboard polls uses it."""
    p = tmp_path / "s.db"
    st = Store.open(str(p))
    s = _study(st)
    tid = st.add_trial(s.id, 0, {"id": 0}, {"g/a/weight": 0.5}, "nsga2")
    st.finish_trial(tid, COMPLETE, [0.5, 3.0])
    st.add_heldout(tid, [0.4, 2.5])
    st.close()
    con = sqlite3.connect(p)
    indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'ix_trial_values_split'"
    assert con.execute(indexes).fetchall() == [("ix_trial_values_split",)]
    con.execute("DROP INDEX ix_trial_values_split")  # as a store written before it
    con.commit()
    ro = Store.open(str(p), readonly=True)
    assert ro.trials(s.id)[0].heldout == [0.4, 2.5]
    ro.close()
    assert con.execute(indexes).fetchall() == []
    Store.open(str(p)).close()
    assert con.execute(indexes).fetchall() == [("ix_trial_values_split",)]
    plan = " ".join(str(r) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT v.trial_id FROM trial_values v JOIN trials t ON t.id = v.trial_id"
        " WHERE v.split = 'heldout' AND t.study_id = 1"))
    assert "ix_trial_values_split" in plan
    con.close()


def test_a_writable_open_carries_on_when_an_index_cannot_be_added(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An index that cannot be created (here a table already holds its name; on PostgreSQL a
    role that does not own the tables) is one warning, not a "damaged store" error: the store
    opens, reads and writes without it. An index already there is not created again."""
    p = tmp_path / "s.db"
    st = Store.open(str(p))
    s = _study(st)
    st.close()
    con = sqlite3.connect(p)
    con.execute("DROP INDEX ix_trial_values_split")
    con.execute("CREATE TABLE ix_trial_values_split (x INTEGER)")  # CREATE INDEX with this name fails
    con.commit()
    with caplog.at_level("WARNING", logger="search.store"):
        st = Store.open(str(p))
    warned = [r.getMessage() for r in caplog.records if r.name == "search.store"]
    assert len(warned) == 1 and "could not add index ix_trial_values_split" in warned[0] and "polls will scan" in warned[0]
    tid = st.add_trial(s.id, 0, {"id": 0}, {"g/a/weight": 0.5}, "nsga2")
    st.finish_trial(tid, COMPLETE, [0.5, 3.0])
    st.add_heldout(tid, [0.4, 2.5])
    assert st.trials(s.id)[0].heldout == [0.4, 2.5]
    st.close()
    con.execute("DROP TABLE ix_trial_values_split")
    con.commit()
    Store.open(str(p)).close()  # now it can be added
    import sqlalchemy as sa

    sql: list[str] = []

    def seen(conn, cursor, statement, *rest) -> None:  # noqa: ANN001
        sql.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        Store.open(str(p)).close()
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    assert sql and not [q for q in sql if "CREATE INDEX" in q.upper()]
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'ix_trial_values_split'").fetchall() == [("ix_trial_values_split",)]
    con.close()


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


def test_a_controller_whose_lock_was_taken_over_writes_nothing_more(tmp_path: Path) -> None:
    """Every write of a lock holder re-checks the lock in its own transaction."""
    st = Store.open(str(tmp_path / "s.db"))
    s = _study(st)
    owner = st.acquire(s.id)
    tid = st.add_trial(s.id, 0, {"x": [0.5], "id": 0}, {}, "random")
    other = Store.open(str(tmp_path / "s.db"))  # a second controller, after our heartbeat went stale
    with other.engine.begin() as c:
        c.exec_driver_sql("UPDATE studies SET lock_heartbeat = lock_heartbeat - 3600")
    assert other.acquire(s.id, owner="elsewhere:1") == "elsewhere:1"
    for write in (lambda: st.finish_trial(tid, COMPLETE, [0.5, 1.0]), lambda: st.add_trial(s.id, 1, {"x": [0.1], "id": 1}, {}, "random"),
                  lambda: st.log_event(s.id, StrategyEvent(1, "tell", {"items": []})), lambda: st.set_status(s.id, "finished"),
                  lambda: st.restart_trial(tid), lambda: st.set_worker(tid, "w9"), lambda: st.add_heldout(tid, [0.1, 0.2]),
                  lambda: st.save_snapshot(s.id, 1, 0, "{}", b""), lambda: st.update_config(s.id, "name: changed\n")):
        with pytest.raises(LockLostError, match="another controller took over this run"):
            write()
    (t,) = st.trials(s.id)
    assert t.state == "RUNNING" and t.attempts == 1 and t.worker is None and t.heldout is None
    assert st.events(s.id) == [] and st.latest_snapshot(s.id) is None
    assert st.study("r").status == "created" and st.study("r").config_yaml == "name: r\n"
    st.release(s.id, owner)  # releasing a lock that is no longer ours leaves the new owner's in place
    assert st.study("r").lock_owner == "elsewhere:1"
    st.close()
    other.close()


def _bad_store(kind: str, tmp_path: Path) -> Path:
    p = tmp_path / f"{kind}.db"
    if kind == "random-bytes":
        p.write_bytes(np.random.default_rng(0).bytes(50_000))
        return p
    if kind == "unreadable":  # (as root, a file's mode does not stop reads: a folder in its place does)
        p.mkdir()
        return p
    if kind == "not-a-store":
        con = sqlite3.connect(p)
        con.execute("CREATE TABLE t (a)")
        con.commit()
        con.close()
        return p
    st = Store.open(str(p))
    s = _study(st)
    for i in range(300):
        st.add_trial(s.id, i, {"x": [i / 300] * 40, "id": i}, {f"p{j}": 0.5 for j in range(20)}, "random")
    st.close()
    con = sqlite3.connect(p)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    if kind == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        data = bytearray(p.read_bytes())
        data[8192:16384] = np.random.default_rng(1).bytes(8192)
        p.write_bytes(bytes(data))
    elif kind == "newer":
        con = sqlite3.connect(p)
        con.execute("UPDATE schema_info SET value='7' WHERE key='version'")
        con.commit()
        con.close()
    return p


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "random-bytes", "not-a-store", "newer", "unreadable"])
def test_every_bad_store_is_one_line_and_exit_2(kind: str, tmp_path: Path) -> None:
    """`search status` / `front` on a bad store: one line naming the file, exit code 2."""
    import subprocess
    import sys

    p = _bad_store(kind, tmp_path)
    for cmd in (["status", "r", "--store", str(p)], ["front", "r", "--store", str(p)]):
        proc = subprocess.run([sys.executable, "-m", "search", *cmd], capture_output=True, text=True, timeout=120)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, (kind, proc.stdout, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(p) in lines[0], (kind, proc.stderr)
        assert "Traceback" not in proc.stderr
