"""The repository stands alone: every third-party import is a declared dependency with a floor,
and nothing in the code or docs cites notes that live outside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# import name -> distribution name, where they differ
DIST_OF = {"yaml": "pyyaml", "sklearn": "scikit-learn", "websocket": "websocket-client", "lm_eval": "lm-eval"}
# imported only inside a try/except or a subprocess probe, with a skip or a fallback when absent
OPTIONAL = {"mergekit"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*groups: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for g in groups:
        reqs += project["optional-dependencies"][g]
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in reqs}


def _imports(*folders: str) -> dict[str, str]:
    """{distribution: first file importing it} of the third-party imports under the folders."""
    local = {"search", "evaluators", "tests", "bench"} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in local or top in OPTIONAL:
                        continue
                    found.setdefault(_canonical(DIST_OF.get(top, top)), str(path.relative_to(ROOT)))
    return found


def test_every_runtime_import_is_a_declared_dependency() -> None:
    """Declared in [project] dependencies, or in the optional extra that enables it (vllm)."""
    missing = {d: f for d, f in _imports("search", "evaluators", "bench").items() if d not in _declared("vllm")}
    assert not missing, f"imported but not in [project] dependencies or an extra: {missing}"


def test_every_test_import_is_declared_in_the_test_extra() -> None:
    missing = {d: f for d, f in _imports("tests").items() if d not in _declared("test")}
    assert not missing, f"imported by tests but not declared (dependencies or the test extra): {missing}"


def test_every_dependency_has_a_floor_and_the_constraints_pin_it() -> None:
    """`.ci/min-versions` installs exactly these pins; torch is pinned to the CPU wheel."""
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "min_constraints.py"), "--extra", "test"],
                         capture_output=True, text=True, check=True).stdout.split()
    pins = dict(line.split("==", 1) for line in out)
    assert set(pins) == _declared("test")
    assert pins["torch"].endswith("+cpu"), "torch must be pinned to a CPU build, never a CUDA download"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        name = _canonical(re.match(r"[A-Za-z0-9._-]+", req).group(0))
        if name != "torch":
            assert f">={pins[name]}" in req.replace(" ", ""), (req, pins[name])


def test_requires_python_covers_the_stdlib_the_code_uses() -> None:
    """tomllib (3.11) is used by tests and .ci/min_constraints.py."""
    req = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", req).groups()) >= (3, 11)


def test_nothing_cites_notes_outside_the_repository() -> None:
    pattern = re.compile(r"FACTS\.md|ALGORITHMS\.md|DESIGN\.md|\.\./shared|/work/shared")
    hits = []
    files = [ROOT / "README.md", *ROOT.glob(".ci/*")]
    for folder in ("search", "evaluators", "docs", "bench", "tests", "configs", "docker"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".yml", ".txt", ""}]
    for path in files:
        if path == Path(__file__).resolve():
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "cite docs/ instead:\n" + "\n".join(hits)


def test_ci_stops_with_one_line_before_an_install_the_disk_cannot_hold(tmp_path: Path) -> None:
    """`.ci/disk.sh`'s check, run before each CI venv is built: exit 2 and one line naming the
    step, the folder and the space, instead of pip's out-of-space error halfway through."""
    def check(gib: int) -> subprocess.CompletedProcess:
        script = f'source "{ROOT / ".ci" / "disk.sh"}"; need_free_gib "{tmp_path}" {gib} "the test venv"; echo fits'
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    ok = check(0)
    assert (ok.returncode, ok.stdout.strip(), ok.stderr) == (0, "fits", "")
    short = check(10**9)
    assert short.returncode == 2 and short.stdout == ""
    line, = short.stderr.splitlines()
    assert line.startswith(f"the test venv needs about {10**9} GiB free on the disk of {tmp_path}, which has ")
