"""`import search` (and the CLI's modules) must not import torch, ray or lm_eval."""

import subprocess
import sys


def test_import_search_is_light() -> None:
    code = (
        "import sys, search, search.cli, search.config, search.space, search.store, search.strategies, "
        "search.controller, search.report, search.export, evaluators\n"
        "heavy = [m for m in ('torch', 'ray', 'lm_eval', 'transformers', 'pymoo', 'cma', 'optuna') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"heavy modules imported: {r.stdout.strip()}"
