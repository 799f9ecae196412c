"""Data flows one way: the numpy core and calibration know nothing of TVM, and the graph
passes know nothing of the CLI, targets or boards (ARCHITECTURE.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


PURE = [ROOT / "tvm_intq" / f for f in ("intmath.py", "schemes.py", "metrics.py", "errors.py")] + \
    sorted((ROOT / "tvm_intq" / "calibration").glob("*.py"))


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_and_calibration_do_not_import_tvm(path):
    bad = {m for m in imported_modules(path) if m == "tvm" or m.startswith("tvm.")}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "relay_passes").glob("*.py")),
                         ids=lambda p: p.name)
def test_passes_do_not_reach_downstream(path):
    bad = {m for m in imported_modules(path)
           if any(part in m for part in ("cli", "targets", "api", "report", "runner"))}
    assert not bad, f"{path.name} imports {bad}"


def test_only_the_qat_package_imports_torch():
    """PyTorch is the optional ``qat`` extra: everything else installs and runs without it."""
    folders = [ROOT / d for d in ("tvm_intq", "relay_passes", "schedules", "targets")]
    bad = {str(p.relative_to(ROOT)) for folder in folders for p in folder.rglob("*.py")
           if "qat" not in p.relative_to(ROOT).parts
           and any(m == "torch" or m.startswith("torch.") for m in imported_modules(p))}
    assert not bad, f"import torch outside tvm_intq/qat: {sorted(bad)}"
