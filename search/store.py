"""The persistent record of every run: SQLite (WAL) by default, any SQLAlchemy URL otherwise.

The controller is the only writer; the dashboard and reports open the store read-only.
Schema version lives in ``schema_info`` (and SQLite's ``user_version``); a store written
by a newer version is refused with a message.

Tables::

    studies(id, name UNIQUE, config_yaml, config_sha, space_json, created_at, status,
            lock_owner, lock_heartbeat)
    objectives(study_id, idx, name, direction)
    trials(id, study_id, number UNIQUE per study, strategy, generation, parents_json,
           candidate_json, state, worker, attempts, started_at, heartbeat_at, finished_at,
           error, materialize_s, evaluate_s, level, examples_json)
                                      state: RUNNING | COMPLETE | FAIL | STOPPED (fidelity:
                                      stopped at a low level; its values are split 'low')
    trial_params(trial_id, name, value)
    trial_values(trial_id, objective_idx, split, value)      split: 'search' | 'heldout' | 'low';
                                                             indexed on (split, trial_id)
    evaluations(trial_id, objective_idx, split, evaluator, metric, value, raw_json)
    per_sample(trial_id, name, blob)                         .npy bytes (float32)
    margins(trial_id, objective_idx, blob)                   .npy bytes (float64)
    strategy_events(study_id, seq, kind, payload_json)       every ask and tell, in order
    strategy_snapshots(study_id, seq, n_told, state_json, arrays, created_at)
    trial_examples(trial_id, objective_idx, level, combine, sizes_json, blob)
                                                             per-example results of each fidelity
                                                             level, .npy (n, 5) float64

Nothing in a store is ever unpickled: arrays are ``.npy``/``.npz`` read with
``allow_pickle=False`` and a strategy's state is plain data (:mod:`search.statedata`) or
rebuilt by replaying ``strategy_events``. Stores of schema 1 kept pickled strategy states;
they are read for reports but never continued (see :meth:`Store.require_current`). Schema 3
added fidelity (``trials.level``, ``trials.examples_json``, ``trial_examples``, the STOPPED
state); schema-2 stores are read as they are and upgraded in place when a run continues.

While a controller holds a run's lock (:meth:`Store.acquire`), every write it makes first
checks, in the same transaction, that the lock is still its own; a controller whose lock
was taken over gets :class:`LockLostError` and writes nothing more.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event

from .errors import StoreError, did_you_mean

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
SQLITE_MAGIC = b"SQLite format 3\x00"
RUNNING, COMPLETE, FAIL, STOPPED = "RUNNING", "COMPLETE", "FAIL", "STOPPED"
#: trials columns schema 3 added (a schema-2 store is read without them)
_V3_TRIAL_COLUMNS = ("level", "examples_json")
STALE_LOCK_SECONDS = 60.0

md = sa.MetaData()
schema_info = sa.Table("schema_info", md, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text))
studies = sa.Table(
    "studies",
    md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("config_yaml", sa.Text, nullable=False),
    sa.Column("config_sha", sa.String(64), nullable=False),
    sa.Column("space_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lock_owner", sa.String(255)),
    sa.Column("lock_heartbeat", sa.Float),
)
objectives = sa.Table(
    "objectives",
    md,
    sa.Column("study_id", sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.UniqueConstraint("study_id", "idx"),
)
trials = sa.Table(
    "trials",
    md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("strategy", sa.String(64), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False, default=0),
    sa.Column("parents_json", sa.Text, nullable=False, default="[]"),
    sa.Column("candidate_json", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("worker", sa.String(255)),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("started_at", sa.Float),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("materialize_s", sa.Float),
    sa.Column("evaluate_s", sa.Float),
    sa.Column("level", sa.Integer),  # fidelity level reached (None: fidelity off)
    sa.Column("examples_json", sa.Text),  # examples evaluated per objective, e.g. [36, 36, 40]
    sa.UniqueConstraint("study_id", "number"),
)
trial_params = sa.Table(
    "trial_params",
    md,
    sa.Column("trial_id", sa.ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
)
trial_values = sa.Table(
    "trial_values",
    md,
    sa.Column("trial_id", sa.ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("objective_idx", sa.Integer, nullable=False),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.UniqueConstraint("trial_id", "objective_idx", "split"),
)
#: the held-out values of a run (what a dashboard polls for) without a scan of every value; an
#: index only, so no schema version: a writable open adds it to older stores (:meth:`Store.open`)
heldout_index = sa.Index("ix_trial_values_split", trial_values.c.split, trial_values.c.trial_id)
evaluations = sa.Table(
    "evaluations",
    md,
    sa.Column("trial_id", sa.ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("objective_idx", sa.Integer, nullable=False),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("evaluator", sa.String(64), nullable=False),
    sa.Column("metric", sa.String(255), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("raw_json", sa.Text),
)
per_sample = sa.Table(
    "per_sample",
    md,
    sa.Column("trial_id", sa.ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=False),
)
margins = sa.Table(
    "margins",
    md,
    sa.Column("trial_id", sa.ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("objective_idx", sa.Integer, nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("trial_id", "objective_idx"),
)
strategy_events = sa.Table(
    "strategy_events",
    md,
    sa.Column("study_id", sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("payload_json", sa.Text, nullable=False),
    sa.UniqueConstraint("study_id", "seq"),
)
strategy_snapshots = sa.Table(
    "strategy_snapshots",
    md,
    sa.Column("study_id", sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("n_told", sa.Integer, nullable=False),
    sa.Column("state_json", sa.Text, nullable=False),
    sa.Column("arrays", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

trial_examples = sa.Table(
    "trial_examples",
    md,
    sa.Column("trial_id", sa.ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("objective_idx", sa.Integer, nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("combine", sa.String(16), nullable=False),
    sa.Column("sizes_json", sa.Text, nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("trial_id", "objective_idx", "level"),
)

#: schema 1 kept pickled strategy states here; they are never read
_legacy_md = sa.MetaData()
legacy_strategy_state = sa.Table("strategy_state", _legacy_md, sa.Column("study_id", sa.Integer), sa.Column("blob", sa.LargeBinary))


class LockLostError(StoreError):
    """Another controller took this run's lock (ours had gone stale): stop writing."""


@dataclass
class StrategyEvent:
    """One strategy call: ``ask`` (``payload``: ``n`` and the candidates' ``items``) or
    ``tell`` (``payload``: ``items``, pairs of candidate id and the trial number whose result
    it gets)."""

    seq: int
    kind: str
    payload: dict[str, Any]


@dataclass
class Study:
    id: int
    name: str
    config_yaml: str
    config_sha: str
    space: dict[str, Any]
    created_at: float
    status: str
    objectives: list[tuple[str, str]]  # (name, direction)
    lock_owner: str | None = None
    lock_heartbeat: float | None = None

    @property
    def objective_names(self) -> list[str]:
        return [n for n, _ in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]


@dataclass
class Trial:
    id: int
    number: int
    state: str
    strategy: str
    generation: int
    parents: list[int]
    candidate: dict[str, Any]
    params: dict[str, float]
    values: list[float] | None  # search-split values in objective order (None unless complete)
    heldout: list[float | None] | None
    worker: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    error: str | None
    materialize_s: float | None
    evaluate_s: float | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    level: int | None = None  # fidelity level reached (None: fidelity off)
    examples: list[int | None] | None = None  # examples evaluated per objective (None: not counted)
    low_values: list[float] | None = None  # a STOPPED trial's values on its subsets (never on the front)


@dataclass
class LevelRows:
    """One objective's per-example results of one fidelity level (:class:`search.fidelity.Examples`
    as an (n, 5) array), with how they combine and the sizes of the objective's example groups."""

    objective_idx: int
    level: int
    combine: str
    sizes: list[int]
    array: np.ndarray


def _npy(a: np.ndarray, dtype: type = np.float32) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=dtype), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def _check_sqlite_file(db: Path) -> None:
    """An existing store file must be a readable SQLite database (checked before SQLite sees it)."""
    try:
        with open(db, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StoreError(f"{db}: cannot read the store ({e.strerror}); check the path and its permissions") from None
    if head and head != SQLITE_MAGIC:
        raise StoreError(f"{db}: not a mergesearch store (not an SQLite database); pass the .db file 'search launch' wrote")


def damaged_detail(e: BaseException) -> str:
    """The first line of a database error's message (its type when it has none)."""
    orig = getattr(e, "orig", None) or e
    return str(orig).splitlines()[0] if str(orig) else type(orig).__name__


def damaged(e: BaseException) -> str:
    """One line for a database error raised while reading or writing a store."""
    return f"the store is damaged or unreadable ({damaged_detail(e)}); restore it from a copy, or pass another --store"


def store_url(path_or_url: str) -> str:
    """SQLAlchemy URL for a path (SQLite file) or a URL (returned as is)."""
    if "://" in path_or_url:
        return path_or_url
    return f"sqlite:///{Path(path_or_url).expanduser().resolve()}"


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot tell: trust the heartbeat
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Access to one store (database). Use :meth:`open`."""

    def __init__(self, engine: sa.Engine, readonly: bool):
        self.engine = engine
        self.readonly = readonly
        self.where = str(engine.url)
        self.version = SCHEMA_VERSION
        self._lock: tuple[int, str] | None = None  # (study id, owner) while holding a run's lock

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path_or_url: str, readonly: bool = False, create: bool = True, indexes: bool = True) -> Store:
        """Open (or create) a store. Anything that is not a readable mergesearch store (a
        missing, unreadable, truncated or corrupt file, another database, a newer schema)
        raises :class:`StoreError` with one line naming the file. A writable open adds the
        dashboard's indexes a store lacks unless ``indexes`` is False (a second connection of
        a process that opened the store already)."""
        url = store_url(path_or_url)
        is_sqlite = url.startswith("sqlite")
        where = url
        if is_sqlite:
            db = Path(url.split(":///", 1)[1])
            where = str(db)
            if not db.exists():
                if readonly or not create:
                    raise StoreError(f"{db}: no such store; run 'search launch <config>' first or pass --store")
                db.parent.mkdir(parents=True, exist_ok=True)
            else:
                _check_sqlite_file(db)
            if readonly:
                url = f"sqlite:///file:{db}?mode=ro&uri=true"
        engine = sa.create_engine(url, future=True, connect_args={"timeout": 30} if is_sqlite else {})
        if is_sqlite:

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _rec):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                if not readonly:
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

        store = cls(engine, readonly)
        store.where = where
        try:
            store._init_schema(is_sqlite)
            if not readonly and indexes:
                store._add_indexes(is_sqlite)
        except sa.exc.SQLAlchemyError as e:
            engine.dispose()
            raise StoreError(f"{where}: {damaged(e)}") from None
        except StoreError as e:
            engine.dispose()
            raise StoreError(f"{where}: {e}") from None
        return store

    def _add_indexes(self, is_sqlite: bool) -> None:
        """Add the indexes the dashboard's polls use to a store that lacks them (one made
        before they existed). Only a missing index is created: on PostgreSQL even CREATE INDEX
        IF NOT EXISTS needs table ownership and a SHARE lock. An index that cannot be added
        (a role that does not own the table, a concurrent launch) is logged once and skipped:
        the store works without it, the polls scan instead."""
        wanted: list[tuple[str, str, Any]] = [("trial_values", str(heldout_index.name), sa.schema.CreateIndex(heldout_index))]
        if not is_sqlite:  # a run's newest rows as a range (SQLite's study_id index already ends in the rowid)
            wanted.append(("trials", "ix_trials_study_id_id", sa.text("CREATE INDEX ix_trials_study_id_id ON trials (study_id, id)")))
        with self.engine.connect() as c:
            insp = sa.inspect(c)
            have = {t: {ix["name"] for ix in insp.get_indexes(t)} for t in {t for t, _, _ in wanted}}
        for table, name, create in wanted:
            if name in have[table]:
                continue
            try:
                with self.engine.begin() as c:
                    c.execute(create)
            except sa.exc.SQLAlchemyError as e:
                try:  # a concurrent launch may have added it meanwhile: then nothing is missing
                    with self.engine.connect() as c:
                        if name in {ix["name"] for ix in sa.inspect(c).get_indexes(table)}:
                            continue
                except sa.exc.SQLAlchemyError:
                    pass
                log.warning("%s: could not add index %s (%s); dashboard polls will scan", self.where, name, damaged_detail(e))

    def _init_schema(self, is_sqlite: bool) -> None:
        insp = sa.inspect(self.engine)
        if insp.has_table("schema_info"):
            with self.engine.connect() as c:
                row = c.execute(sa.select(schema_info.c.value).where(schema_info.c.key == "version")).first()
                if is_sqlite:  # reads every page: a truncated or overwritten file fails here, not mid-command
                    check = c.exec_driver_sql("PRAGMA quick_check(1)").first()
                    if check is None or check[0] != "ok":
                        raise StoreError(f"the store is damaged ({check[0] if check else 'no answer'}); restore it from a copy, or pass another --store")
            try:
                version = int(row[0]) if row else 0
            except ValueError:
                version = -1
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store schema version {version} is newer than this mergesearch understands ({SCHEMA_VERSION}); "
                    "upgrade mergesearch to read it"
                )
            if version < 1:
                raise StoreError("not a mergesearch store (its schema_info table has no valid version)")
            self.version = version
            return
        if insp.get_table_names():
            raise StoreError("this database holds other tables but no mergesearch store; pass another --store")
        if self.readonly:
            raise StoreError("this database holds no mergesearch store")
        md.create_all(self.engine)
        with self.engine.begin() as c:
            c.execute(schema_info.insert().values(key="version", value=str(SCHEMA_VERSION)))
            if is_sqlite:
                c.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.version = SCHEMA_VERSION

    def require_current(self, run: str) -> None:
        """Refuse to continue a run kept by an older schema (its strategy state is a pickle,
        which is never loaded)."""
        if self.version < 2:
            raise StoreError(
                f"{self.where}: run {run!r} was written by an older mergesearch (store schema {self.version}) that kept "
                "its strategy state as a pickle, which is never loaded; continue it with 'search resume "
                f"{run} --replay' (its trials are re-told to a new strategy: the run goes on, but not exactly as it "
                "would have), or start over under another run name or --store"
            )

    def upgrade(self) -> None:
        """Bring an older store to the current schema: add the new tables and columns, drop
        schema 1's pickled strategy states (unread). Trials, values and per-example scores are kept."""
        self._w()
        if self.version >= SCHEMA_VERSION:
            return
        md.create_all(self.engine)
        with self.engine.begin() as c:
            insp = sa.inspect(c)
            have = {col["name"] for col in insp.get_columns("trials")}
            for name in _V3_TRIAL_COLUMNS:
                if name not in have:
                    kind = trials.c[name].type.compile(dialect=self.engine.dialect)
                    c.exec_driver_sql(f"ALTER TABLE trials ADD COLUMN {name} {kind}")
            if insp.has_table("strategy_state"):
                c.execute(legacy_strategy_state.delete())
            c.execute(schema_info.update().where(schema_info.c.key == "version").values(value=str(SCHEMA_VERSION)))
            if self.engine.dialect.name == "sqlite":
                c.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.version = SCHEMA_VERSION

    def close(self) -> None:
        self.engine.dispose()

    def _w(self) -> None:
        if self.readonly:
            raise StoreError("store opened read-only")

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        """A write transaction; while this store holds a run's lock, its first statement
        checks (and refreshes) the lock, so a controller that lost it writes nothing."""
        self._w()
        with self.engine.begin() as c:
            if self._lock is not None:
                study_id, owner = self._lock
                res = c.execute(
                    studies.update()
                    .where(studies.c.id == study_id, studies.c.lock_owner == owner)
                    .values(lock_heartbeat=time.time())
                )
                if res.rowcount != 1:
                    raise LockLostError(
                        "another controller took over this run (this one's lock had gone stale); this controller "
                        "stopped and wrote nothing more: let the other one finish, or stop it and 'search resume'"
                    )
            yield c

    # ------------------------------------------------------------------ studies
    def create_study(
        self, name: str, config_yaml: str, config_sha: str, objectives_: Sequence[tuple[str, str]], space: dict[str, Any]
    ) -> Study:
        self._w()
        with self.engine.begin() as c:
            sid = c.execute(
                studies.insert().values(
                    name=name,
                    config_yaml=config_yaml,
                    config_sha=config_sha,
                    space_json=json.dumps(space),
                    created_at=time.time(),
                    status="created",
                )
            ).inserted_primary_key[0]
            c.execute(
                objectives.insert(),
                [{"study_id": sid, "idx": i, "name": n, "direction": d} for i, (n, d) in enumerate(objectives_)],
            )
        return self.study(name)

    def study_names(self) -> list[str]:
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(sa.select(studies.c.name).order_by(studies.c.id))]

    def find_study(self, name: str) -> Study | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(studies).where(studies.c.name == name)).mappings().first()
            if r is None:
                return None
            objs = c.execute(
                sa.select(objectives.c.name, objectives.c.direction)
                .where(objectives.c.study_id == r["id"])
                .order_by(objectives.c.idx)
            ).all()
        return Study(
            id=r["id"],
            name=r["name"],
            config_yaml=r["config_yaml"],
            config_sha=r["config_sha"],
            space=json.loads(r["space_json"]),
            created_at=r["created_at"],
            status=r["status"],
            objectives=[(o[0], o[1]) for o in objs],
            lock_owner=r["lock_owner"],
            lock_heartbeat=r["lock_heartbeat"],
        )

    def study(self, name: str) -> Study:
        s = self.find_study(name)
        if s is None:
            raise StoreError(f"no run named {name!r} in this store{did_you_mean(name, self.study_names())}")
        return s

    def update_config(self, study_id: int, config_yaml: str) -> None:
        """Replace the stored config (only budget, time and worker settings may differ)."""
        with self._tx() as c:
            c.execute(studies.update().where(studies.c.id == study_id).values(config_yaml=config_yaml))

    def set_status(self, study_id: int, status: str) -> None:
        with self._tx() as c:
            c.execute(studies.update().where(studies.c.id == study_id).values(status=status))

    # ------------------------------------------------------------------ single-controller lock
    def acquire(self, study_id: int, owner: str | None = None) -> str:
        """Take the run's controller lock or raise StoreError saying who holds it."""
        self._w()
        owner = owner or owner_id()
        now = time.time()
        with self.engine.begin() as c:
            r = c.execute(sa.select(studies.c.lock_owner, studies.c.lock_heartbeat).where(studies.c.id == study_id)).first()
            held_by, hb = r if r else (None, None)
            if held_by and held_by != owner:
                stale = hb is None or now - hb > STALE_LOCK_SECONDS or not _owner_alive(held_by)
                if not stale:
                    host, _, pid = held_by.rpartition(":")
                    raise StoreError(
                        f"this run is already being searched by process {pid} on {host} "
                        f"(heartbeat {now - hb:.0f}s ago); stop it first, or wait until it finishes"
                    )
            res = c.execute(
                studies.update()
                .where(studies.c.id == study_id)
                .where(sa.or_(studies.c.lock_owner.is_(None), studies.c.lock_owner == held_by))
                .values(lock_owner=owner, lock_heartbeat=now)
            )
            if res.rowcount != 1:
                raise StoreError("another controller took this run at the same moment; try again")
        self._lock = (study_id, owner)
        return owner

    def heartbeat(self, study_id: int, owner: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                studies.update()
                .where(studies.c.id == study_id, studies.c.lock_owner == owner)
                .values(lock_heartbeat=time.time())
            )

    def release(self, study_id: int, owner: str) -> None:
        self._lock = None
        with self.engine.begin() as c:
            c.execute(
                studies.update()
                .where(studies.c.id == study_id, studies.c.lock_owner == owner)
                .values(lock_owner=None, lock_heartbeat=None)
            )

    # ------------------------------------------------------------------ trials (controller writes)
    def next_number(self, study_id: int) -> int:
        with self.engine.connect() as c:
            n = c.execute(sa.select(sa.func.max(trials.c.number)).where(trials.c.study_id == study_id)).scalar()
        return 0 if n is None else int(n) + 1

    def add_trials(
        self,
        study_id: int,
        rows: Sequence[dict[str, Any]],
        strategy: str,
        event: StrategyEvent | None = None,
    ) -> list[int]:
        """Insert RUNNING trials (each row: ``number``, ``candidate``, ``params``, ``worker``)
        and the ask that proposed them (``event``) in one transaction; returns the trial ids."""
        now = time.time()
        ids = []
        with self._tx() as c:
            for r in rows:
                cand = r["candidate"]
                tid = c.execute(
                    trials.insert().values(
                        study_id=study_id,
                        number=int(r["number"]),
                        strategy=strategy,
                        generation=int(cand.get("generation", 0)),
                        parents_json=json.dumps(cand.get("parents", [])),
                        candidate_json=json.dumps(cand),
                        state=RUNNING,
                        worker=r.get("worker"),
                        attempts=1,
                        started_at=now,
                        heartbeat_at=now,
                    )
                ).inserted_primary_key[0]
                ids.append(int(tid))
                params = r.get("params") or {}
                if params:
                    c.execute(trial_params.insert(), [{"trial_id": tid, "name": k, "value": float(v)} for k, v in params.items()])
            if event is not None:
                self._put_event(c, study_id, event)
        return ids

    def add_trial(
        self, study_id: int, number: int, candidate: dict[str, Any], params: dict[str, float], strategy: str, worker: str | None = None
    ) -> int:
        """Insert one RUNNING trial (no strategy event)."""
        return self.add_trials(study_id, [dict(number=number, candidate=candidate, params=params, worker=worker)], strategy)[0]

    def restart_trial(self, trial_id: int, worker: str | None = None) -> None:
        """A RUNNING trial is run again (its worker died or the controller restarted)."""
        with self._tx() as c:
            c.execute(
                trials.update()
                .where(trials.c.id == trial_id)
                .values(attempts=trials.c.attempts + 1, worker=worker, started_at=time.time(), heartbeat_at=time.time())
            )

    def set_worker(self, trial_id: int, worker: str) -> None:
        with self._tx() as c:
            c.execute(trials.update().where(trials.c.id == trial_id).values(worker=worker))

    def finish_trial(
        self,
        trial_id: int,
        state: str,
        values: Sequence[float] | None = None,
        evaluations_: Iterable[dict[str, Any]] = (),
        per_sample_: dict[str, np.ndarray] | None = None,
        error: str | None = None,
        worker: str | None = None,
        materialize_s: float | None = None,
        evaluate_s: float | None = None,
        margins_: dict[int, np.ndarray] | None = None,
        event: StrategyEvent | None = None,
        study_id: int | None = None,
        level: int | None = None,
        examples_: Sequence[int | None] | None = None,
        levels_: Sequence[LevelRows] = (),
    ) -> None:
        """Record a trial's outcome in one transaction (values only for COMPLETE trials, and
        for STOPPED ones under split ``low``), with its per-example scores and margins, the
        fidelity level reached, the examples evaluated per objective, the last level's
        per-example results (``levels_``), and the tell that passed it to the strategy
        (``event``, needs ``study_id``)."""
        with self._tx() as c:
            upd: dict[str, Any] = dict(
                state=state, finished_at=time.time(), error=error, materialize_s=materialize_s, evaluate_s=evaluate_s
            )
            if worker is not None:
                upd["worker"] = worker
            if level is not None:
                upd["level"] = int(level)
            if examples_ is not None:
                upd["examples_json"] = json.dumps([None if n is None else int(n) for n in examples_])
            c.execute(trials.update().where(trials.c.id == trial_id).values(**upd))
            if values is not None and state in (COMPLETE, STOPPED):
                split = "search" if state == COMPLETE else "low"
                c.execute(
                    trial_values.insert(),
                    [{"trial_id": trial_id, "objective_idx": i, "split": split, "value": float(v)} for i, v in enumerate(values)],
                )
            self._put_levels(c, trial_id, levels_)
            ev = [dict(e, trial_id=trial_id) for e in evaluations_]
            if ev:
                c.execute(evaluations.insert(), ev)
            if per_sample_:
                c.execute(
                    per_sample.insert(), [{"trial_id": trial_id, "name": k, "blob": _npy(v)} for k, v in per_sample_.items()]
                )
            if margins_:
                c.execute(
                    margins.insert(),
                    [{"trial_id": trial_id, "objective_idx": int(j), "blob": _npy(v, np.float64)} for j, v in margins_.items()],
                )
            if event is not None and study_id is not None:
                self._put_event(c, study_id, event)

    def add_level(
        self, trial_id: int, level: int, levels_: Sequence[LevelRows], examples_: Sequence[int | None],
        materialize_s: float | None, evaluate_s: float | None,
    ) -> None:
        """A RUNNING trial's fidelity level ``level`` is done and it is promoted: its per-example
        results, the level, the examples and seconds so far, in one transaction."""
        with self._tx() as c:
            c.execute(
                trials.update().where(trials.c.id == trial_id).values(
                    level=int(level), examples_json=json.dumps([None if n is None else int(n) for n in examples_]),
                    materialize_s=materialize_s, evaluate_s=evaluate_s,
                )
            )
            self._put_levels(c, trial_id, levels_)

    @staticmethod
    def _put_levels(c: sa.Connection, trial_id: int, levels_: Sequence[LevelRows]) -> None:
        if levels_:
            c.execute(trial_examples.insert(), [
                {"trial_id": trial_id, "objective_idx": int(r.objective_idx), "level": int(r.level), "combine": r.combine,
                 "sizes_json": json.dumps([int(n) for n in r.sizes]), "blob": _npy(r.array, np.float64)}
                for r in levels_
            ])

    def trial_levels(self, study_id: int) -> dict[int, list[LevelRows]]:
        """Trial number -> its stored per-level per-example results (fidelity runs; schema 3)."""
        if self.version < 3:
            return {}
        q = (sa.select(trials.c.number, trial_examples).join(trials, trials.c.id == trial_examples.c.trial_id)
             .where(trials.c.study_id == study_id))
        out: dict[int, list[LevelRows]] = {}
        with self.engine.connect() as c:
            for r in c.execute(q.order_by(trials.c.number, trial_examples.c.level, trial_examples.c.objective_idx)):
                out.setdefault(int(r.number), []).append(
                    LevelRows(int(r.objective_idx), int(r.level), r.combine, json.loads(r.sizes_json), _from_npy(r.blob))
                )
        return out

    def add_heldout(self, trial_id: int, values: Sequence[float | None], evaluations_: Iterable[dict[str, Any]] = ()) -> None:
        with self._tx() as c:
            c.execute(trial_values.delete().where(trial_values.c.trial_id == trial_id, trial_values.c.split == "heldout"))
            rows = [
                {"trial_id": trial_id, "objective_idx": i, "split": "heldout", "value": float(v)}
                for i, v in enumerate(values)
                if v is not None
            ]
            if rows:
                c.execute(trial_values.insert(), rows)
            ev = [dict(e, trial_id=trial_id) for e in evaluations_]
            if ev:
                c.execute(evaluations.insert(), ev)

    # ------------------------------------------------------------------ strategy calls and snapshots
    def log_event(self, study_id: int, event: StrategyEvent) -> None:
        with self._tx() as c:
            self._put_event(c, study_id, event)

    @staticmethod
    def _put_event(c: sa.Connection, study_id: int, ev: StrategyEvent) -> None:
        c.execute(
            strategy_events.insert().values(study_id=study_id, seq=ev.seq, kind=ev.kind, payload_json=json.dumps(ev.payload))
        )

    def events(self, study_id: int) -> list[StrategyEvent]:
        """The run's strategy calls in order."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(strategy_events.c.seq, strategy_events.c.kind, strategy_events.c.payload_json)
                .where(strategy_events.c.study_id == study_id)
                .order_by(strategy_events.c.seq)
            ).all()
        return [StrategyEvent(int(r[0]), r[1], json.loads(r[2])) for r in rows]

    def save_snapshot(self, study_id: int, seq: int, n_told: int, state_json: str, arrays: bytes) -> None:
        """A strategy's data-only state after call ``seq`` (``n_told``: the tell calls up to
        it); it replaces the run's earlier snapshot."""
        with self._tx() as c:
            c.execute(strategy_snapshots.delete().where(strategy_snapshots.c.study_id == study_id))
            c.execute(
                strategy_snapshots.insert().values(
                    study_id=study_id, seq=seq, n_told=n_told, state_json=state_json, arrays=arrays, created_at=time.time()
                )
            )

    def drop_strategy_log(self, study_id: int) -> None:
        """Forget a run's strategy calls and snapshots (``search resume --replay`` re-tells its trials)."""
        with self._tx() as c:
            c.execute(strategy_snapshots.delete().where(strategy_snapshots.c.study_id == study_id))
            c.execute(strategy_events.delete().where(strategy_events.c.study_id == study_id))

    def latest_snapshot(self, study_id: int) -> tuple[int, int, str, bytes] | None:
        """(seq, n_told, state_json, arrays) of the run's snapshot, or None."""
        with self.engine.connect() as c:
            r = c.execute(
                sa.select(strategy_snapshots.c.seq, strategy_snapshots.c.n_told, strategy_snapshots.c.state_json, strategy_snapshots.c.arrays)
                .where(strategy_snapshots.c.study_id == study_id)
                .order_by(strategy_snapshots.c.seq.desc())
                .limit(1)
            ).first()
        return (int(r[0]), int(r[1]), str(r[2]), bytes(r[3])) if r else None

    def trial_arrays(self, study_id: int) -> dict[int, tuple[dict[str, np.ndarray], dict[int, np.ndarray]]]:
        """Trial number -> (per-example scores by name, margins by objective index), for every
        finished trial that has any (what a resumed controller re-tells its strategy)."""
        out: dict[int, tuple[dict[str, np.ndarray], dict[int, np.ndarray]]] = {}
        with self.engine.connect() as c:
            num = dict(c.execute(sa.select(trials.c.id, trials.c.number).where(trials.c.study_id == study_id)).all())
            ids = list(num)
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                for r in c.execute(sa.select(per_sample).where(per_sample.c.trial_id.in_(chunk))):
                    out.setdefault(num[r.trial_id], ({}, {}))[0][r.name] = _from_npy(r.blob)
                if self.version >= 2:
                    for r in c.execute(sa.select(margins).where(margins.c.trial_id.in_(chunk))):
                        out.setdefault(num[r.trial_id], ({}, {}))[1][int(r.objective_idx)] = _from_npy(r.blob)
        return out

    # ------------------------------------------------------------------ reading
    def trials(
        self,
        study_id: int,
        states: Sequence[str] | None = None,
        after_id: int | None = None,
        with_metrics: bool = False,
        numbers: Sequence[int] | None = None,
        with_params: bool = True,
    ) -> list[Trial]:
        """Trials of a study in number order; ``after_id`` returns only newer rows (for polling),
        ``numbers`` only those trial numbers. ``with_params=False`` leaves out the params and
        the candidate (``{}`` each: what a dashboard's trial list does not show)."""
        skip = set() if with_params else {"candidate_json"}
        cols = [col for col in trials.c if (self.version >= 3 or col.name not in _V3_TRIAL_COLUMNS) and col.name not in skip]
        q = sa.select(*cols).where(trials.c.study_id == study_id)
        if numbers is not None:
            q = q.where(trials.c.number.in_([int(n) for n in numbers]))
        if states:
            q = q.where(trials.c.state.in_(list(states)))
        if after_id is not None:
            q = q.where(trials.c.id > after_id)
        q = q.order_by(trials.c.number)
        with self.engine.connect() as c:
            res = c.execute(q)
            keys = list(res.keys())
            rows = [dict(zip(keys, row, strict=True)) for row in res]  # plain dicts: far faster to read than row mappings
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            params: dict[int, dict[str, float]] = {i: {} for i in ids}
            vals: dict[int, dict[str, dict[int, float]]] = {i: {"search": {}, "heldout": {}, "low": {}} for i in ids}
            mets: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                if with_params:
                    for r in c.execute(sa.select(trial_params).where(trial_params.c.trial_id.in_(chunk))):
                        params[r.trial_id][r.name] = r.value
                tv = trial_values.c
                for tid, j, split, v in c.execute(sa.select(tv.trial_id, tv.objective_idx, tv.split, tv.value).where(tv.trial_id.in_(chunk))):
                    vals[tid].setdefault(split, {})[j] = v
                if with_metrics:
                    for r in c.execute(sa.select(evaluations).where(evaluations.c.trial_id.in_(chunk))).mappings():
                        mets[r["trial_id"]].append({k: r[k] for k in ("objective_idx", "split", "evaluator", "metric", "value")})
        out = []
        for r in rows:
            sv, hv, lv = vals[r["id"]]["search"], vals[r["id"]]["heldout"], vals[r["id"]]["low"]
            n_obj = max(list(sv) + list(hv) + [-1]) + 1
            out.append(
                Trial(
                    id=r["id"],
                    number=r["number"],
                    state=r["state"],
                    strategy=r["strategy"],
                    generation=r["generation"],
                    parents=json.loads(r["parents_json"]),
                    candidate=json.loads(r["candidate_json"]) if with_params else {},
                    params=params[r["id"]],
                    values=[sv[i] for i in range(len(sv))] if sv and r["state"] == COMPLETE else None,
                    heldout=[hv.get(i) for i in range(n_obj)] if hv else None,
                    worker=r["worker"],
                    attempts=r["attempts"],
                    started_at=r["started_at"],
                    finished_at=r["finished_at"],
                    error=r["error"],
                    materialize_s=r["materialize_s"],
                    evaluate_s=r["evaluate_s"],
                    metrics=mets[r["id"]],
                    level=r.get("level"),
                    examples=json.loads(r["examples_json"]) if r.get("examples_json") else None,
                    low_values=[lv[i] for i in range(len(lv))] if lv and r["state"] == STOPPED else None,
                )
            )
        return out

    def trial(self, study_id: int, number: int) -> Trial | None:
        found = self.trials(study_id, numbers=[number], with_metrics=True)
        return found[0] if found else None

    def per_sample(self, trial_id: int) -> dict[str, np.ndarray]:
        with self.engine.connect() as c:
            return {r.name: _from_npy(r.blob) for r in c.execute(sa.select(per_sample).where(per_sample.c.trial_id == trial_id))}

    def counts(self, study_id: int) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(trials.c.state, sa.func.count()).where(trials.c.study_id == study_id).group_by(trials.c.state)
            ).all()
        return {s: int(n) for s, n in rows}


def default_store_for(run: str) -> str:
    """``run`` may be a store path (``runs/x.db``) or a run name (-> ``runs/<name>.db``)."""
    if run.endswith((".db", ".sqlite", ".sqlite3")) or "://" in run:
        return run
    return f"runs/{run}.db"


def open_run(run: str, store: str | None = None, readonly: bool = True) -> tuple[Store, Study]:
    """Open a run for reading: by name (``runs/<name>.db``) or by store path (its only run)."""
    url = store or default_store_for(run)
    st = Store.open(url, readonly=readonly, create=False)
    names = st.study_names()
    if run in names:
        return st, st.study(run)
    if store is None and (run.endswith((".db", ".sqlite", ".sqlite3")) or "://" in run):
        if len(names) == 1:
            return st, st.study(names[0])
        raise StoreError(f"{run} holds runs {names}; name one: search <cmd> RUN --store {run}")
    return st, st.study(run)
