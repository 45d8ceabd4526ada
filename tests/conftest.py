"""Shared fixtures. Each block is owned by the part of the project it serves; add, don't rewrite."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Quiet, offline, reproducible defaults for every test (and every subprocess / Ray worker they start).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the switch Ray 2.60 actually reads
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
# A shell without job control starts background jobs with SIGINT ignored, and a process started
# with it ignored (every `search` subprocess the tests Ctrl-C) never sees KeyboardInterrupt:
# give the run Python's own handler, which a child's exec turns back into the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ----------------------------------------------------------------------------- controller / workers
@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy MLP problem (tests/toy_problem.py); TOY_ROOT is exported for workers."""
    from tests.toy_problem import make_toy_models

    root = tmp_path_factory.mktemp("toy_models")
    make_toy_models(root)
    os.environ["TOY_ROOT"] = str(root)
    return root


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Iterator[None]:
    """A real local Ray cluster (2 CPUs, no dashboard), shared by the tests that need one."""
    import ray

    tmp = Path("/tmp") / f"ray_{os.getpid()}"  # short: Ray's socket paths have a length limit
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        log_to_driver=False,
        _temp_dir=str(tmp),
    )
    try:
        yield
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- zoo / evaluators
# One model zoo per test session, shared by every test, subprocess and Ray worker (they inherit
# the variable): $MERGESEARCH_CACHE when set (reuse a built zoo across runs; outdated builds are
# rebuilt by version), else a temporary folder removed at exit.
if "MERGESEARCH_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _ZOO_TMP = tempfile.mkdtemp(prefix="mergesearch-test-cache-")
    os.environ["MERGESEARCH_CACHE"] = _ZOO_TMP
    atexit.register(shutil.rmtree, _ZOO_TMP, True)


@pytest.fixture(scope="session")
def tiny_lm_zoo() -> Path:
    """Folder of the built tiny-lm zoo (base, add, reverse, sort), built once per session."""
    from search.zoo import zoo_path

    return zoo_path("zoo:tiny-lm/base", build=True).parent


@pytest.fixture(scope="session")
def digits_zoo() -> Path:
    """Folder of the built digits zoo (base, low, high, a, b, c)."""
    from search.zoo import zoo_path

    return zoo_path("zoo:digits/base", build=True).parent
