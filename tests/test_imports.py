"""`import search` (and the CLI's modules) must not import torch, ray or lm_eval."""

import ast
import re
import subprocess
import sys
from pathlib import Path


def test_import_search_is_light() -> None:
    code = (
        "import sys, search, search.cli, search.config, search.space, search.store, search.strategies, "
        "search.controller, search.report, search.export, evaluators\n"
        "heavy = [m for m in ('torch', 'ray', 'lm_eval', 'transformers', 'pymoo', 'cma', 'optuna') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"heavy modules imported: {r.stdout.strip()}"


# ----------------------------------------------------------------------------- seams (issue 20)

SEARCH = Path(__file__).resolve().parents[1] / "search"
PROJECT = ("search", "evaluators")


def project_imports(source: str) -> set[str]:
    """Every project module ``source`` imports, anywhere in it (functions included), as a dotted
    name relative to ``search/`` for relative imports (``.errors`` -> ``errors``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                out.add(("." * (node.level - 1)) + (node.module or "*"))
            elif (node.module or "").split(".")[0] in PROJECT:
                out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in PROJECT}
    return out


def test_config_imports_only_the_errors_leaf() -> None:
    """search/config.py depends on nothing in the project but search/errors.py (itself a leaf):
    validation, registries and everything else import config, never the other way round."""
    assert project_imports((SEARCH / "config.py").read_text()) <= {"errors", "search.errors"}
    assert project_imports((SEARCH / "errors.py").read_text()) == set()


# names of the hypervolume / reference-point / front maths that live in search/pareto.py
PARETO_MATHS = re.compile(r"hv|hypervolume|ref_point|reference_point|front_numbers|dominat|pareto|finite", re.I)


def pareto_maths_in_report(source: str) -> list[str]:
    """What of the Pareto maths search/report.py ``source`` defines itself or takes from anywhere
    but search/pareto.py (empty: it only reads the store and prints). A method that only returns
    a call of a function imported from pareto.py is a delegation, not maths."""
    tree = ast.parse(source)
    from_pareto = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                   and n.module == "pareto" for a in n.names}

    def delegates(fn: ast.AST) -> bool:  # a method whose body only returns a call of a pareto function
        body = [b for b in getattr(fn, "body", []) if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
        return (len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call)
                and isinstance(body[0].value.func, ast.Name) and body[0].value.func.id in from_pareto)

    methods = {m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body}
    found = [f"defines {n.name}" for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and PARETO_MATHS.search(n.name)
             and not (n in methods and delegates(n))]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not (node.level == 1 and node.module == "pareto"):
            found += [f"imports {a.name} from {node.module}" for a in node.names if PARETO_MATHS.search(a.name)]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"imports {m}" for m in mods if m.split(".")[0] == "pymoo"]
    return found


def test_report_only_reads_and_prints() -> None:
    """The reference point, hypervolume, finiteness, front numbers and hypervolume history are
    search/pareto.py's; report.py defines none of them and imports them from there."""
    source = (SEARCH / "report.py").read_text()
    assert pareto_maths_in_report(source) == []
    uses = {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module == "pareto"
            for a in n.names}
    assert {"reference_point", "ref_hypervolume", "hypervolume_history", "front_numbers"} <= uses, uses
    # the check sees the maths where they were before the move to pareto.py
    before = ("from pymoo.indicators.hv import HV\n"
              "def _hv(values, directions, ref):\n    return HV(ref)(values)\n"
              "class HypervolumeTracker:\n    pass\n"
              "class RunData:\n    def hypervolume(self):\n        return _hv(self.values, self.directions, self.ref)\n")
    assert pareto_maths_in_report(before) == ["defines _hv", "defines HypervolumeTracker", "defines hypervolume",
                                              "imports HV from pymoo.indicators.hv", "imports pymoo.indicators.hv"]
