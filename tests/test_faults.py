"""Faults and security: Ctrl-C leaves a resumable run; no config code runs unless named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from search.controller import resume
from search.store import COMPLETE, Store
from tests.toy_problem import toy_config

REPO = Path(__file__).resolve().parents[1]


def _count_complete(store: Path, run: str) -> int:
    if not store.exists():
        return 0
    try:
        st = Store.open(str(store), readonly=True)
    except Exception:
        return 0
    try:
        s = st.find_study(run)
        return 0 if s is None else st.counts(s.id).get(COMPLETE, 0)
    finally:
        st.close()


def test_ctrl_c_stops_cleanly_and_the_run_resumes(toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "int.db"
    cfg = toy_config(toy_root, name="int", budget=12, strategy="nsga2", options={"pop_size": 4}, store=str(store))
    path = tmp_path / "int.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "search", "launch", str(path)], cwd=REPO,
                            env=dict(os.environ, TOY_DELAY="0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _count_complete(store, "int") < 3 and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "search resume int" in err and "Traceback" not in err
    st = Store.open(str(store), readonly=True)
    study = st.study("int")
    assert study.status == "interrupted" and study.lock_owner is None  # lock released
    st.close()
    assert resume("int", store=str(store)) == 0
    st = Store.open(str(store), readonly=True)
    trials = st.trials(st.study("int").id)
    assert [t.number for t in trials] == list(range(12)) and all(t.state == COMPLETE for t in trials)


def _remote_code_model(root: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    d = root / "remote"
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    conf = json.loads((d / "config.json").read_text())
    conf["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    conf["model_type"] = "evil_arch"  # only the repository's own code could load it
    (d / "config.json").write_text(json.dumps(conf))
    marker = root / "evil_ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n")
    return d


def test_remote_code_does_not_run_unless_trust_remote_code(tmp_path: Path) -> None:
    from search.config import parse_config
    from search.models import load_model

    d = _remote_code_model(tmp_path)
    cfg = parse_config({
        "name": "rc", "models": {"base": str(d), "experts": [{"name": "e", "path": str(d)}]},
        "objectives": [{"name": "o", "evaluator": "python", "direction": "maximize", "settings": {"function": "m:f"}}],
    })
    assert cfg.models.trust_remote_code is False
    with pytest.raises(Exception, match="trust_remote_code"):
        load_model(str(d), cfg)
    assert not (tmp_path / "evil_ran").exists()


def test_validate_runs_no_code_from_the_config(tmp_path: Path, toy_root: Path) -> None:
    """`search validate` only looks up named modules; it never imports or calls them."""
    mod = tmp_path / "sidefx.py"
    marker = tmp_path / "imported"
    mod.write_text(f"open({str(marker)!r}, 'w').write('x')\ndef f(model, tok):\n    return {{'value': 1.0}}\n")
    cfg = toy_config(toy_root)
    cfg["objectives"][0]["settings"] = {"function": "sidefx:f", "metric": "value"}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "search", "validate", str(p)], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}"))
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
