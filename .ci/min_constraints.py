"""Pin every direct dependency of pyproject.toml to its declared floor, or check such an install.

    python .ci/min_constraints.py [--extra test] [--torch SPEC]    prints a pip constraints file
    python .ci/min_constraints.py --check [--extra test]           exits 1 unless every direct
                                                                   dependency is installed at its floor

Each requirement ``name[extras]>=X`` (in ``[project] dependencies`` and the named optional
extras) becomes ``name==X``. A requirement without a ``>=`` floor is an error: an unbounded
dependency has no floor to prove. torch is pinned to ``--torch`` instead (default
``torch==2.13.0+cpu``, the CPU wheel on disk: a local-version pin can never resolve to a
CUDA build from the package index).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
FLOOR = re.compile(r">=\s*([0-9][^,;\s]*)")


def same_version(a: str, b: str) -> bool:
    """Equal as versions ("0.4" == "0.4.0"); compared as text where ``packaging`` is missing."""
    try:
        from packaging.version import Version
    except ImportError:
        return a == b
    return Version(a) == Version(b)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(pyproject: Path, extras: list[str]) -> dict[str, str]:
    """{canonical name: floor version} of the direct dependencies (base + the given extras)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        try:
            reqs += project["optional-dependencies"][extra]
        except KeyError:
            sys.exit(f"{pyproject}: no optional dependency group '{extra}'")
    out: dict[str, str] = {}
    for req in reqs:
        m = REQ.match(req)
        f = FLOOR.search(m.group(3)) if m else None
        if not f:
            sys.exit(f"{pyproject}: '{req}' has no '>=' floor; declare the lowest version that works")
        out[canonical(m.group(1))] = f.group(1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parents[1] / "pyproject.toml")
    ap.add_argument("--extra", action="append", default=[], help="optional dependency group to include")
    ap.add_argument("--torch", default="torch==2.13.0+cpu", help="the torch pin (replaces torch's floor)")
    ap.add_argument("--check", action="store_true", help="check the installed versions instead of printing")
    args = ap.parse_args()
    pins = floors(args.pyproject, args.extra)
    torch_pin = args.torch.split("==", 1)[1] if "==" in args.torch else None
    if not args.check:
        for name, version in pins.items():
            print(args.torch if name == "torch" else f"{name}=={version}")
        return 0
    bad = []
    for name, version in pins.items():
        want = torch_pin if name == "torch" and torch_pin else version
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or not same_version(have, want):
            bad.append(f"{name}: installed {have}, floor {want}")
    for line in bad:
        print(line, file=sys.stderr)
    if not bad:
        print(f"all {len(pins)} direct dependencies are installed at their floors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
