"""The layering of the package (ARCHITECTURE.md): data flows one way, so a module imports only
from its own layer or the layers below it. No import cycles, and no import hidden inside a
function to dodge one: every import of ours, wherever it stands in the file, is checked.

The layers, lowest first (a folder is one layer; the card's relay_passes/, schedules/ and
targets/ folders install as tvm_intq.relay_passes, .schedules, .targets):
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "tvm_intq": "tvm_intq",
    "relay_passes": "tvm_intq.relay_passes",
    "schedules": "tvm_intq.schedules",
    "targets": "tvm_intq.targets",
}

LAYERS = [
    (
        "errors, files, core, reports: plain numpy and plain data",
        ["errors", "files", "core", "reports"],
    ),
    ("calibration: statistics and ranges, numpy", ["calibration"]),
    ("graph passes: Relax rewrites and analyses", ["relay_passes"]),
    ("targets: machines, boards, RPC, counting", ["targets"]),
    ("schedules: layouts, intrinsics, tuning", ["schedules"]),
    ("frontends: model files -> Relax", ["frontends"]),
    ("compiler: the flow's steps, the intq pipeline, running a build", ["compiler"]),
    ("evaluation: reference interpreter, error per layer", ["evaluation"]),
    ("search: float layers, scheme choice", ["search"]),
    ("api and export: the compile job, QDQ out", ["api", "export"]),
    (
        "deploy, qat, demo: libraries, benches, training, the bundled model",
        ["deploy", "qat", "demo", "bundled_model"],
    ),
    ("cli: the verbs", ["cli"]),
]
__doc__ += "\n".join(f"  {i}. {desc}" for i, (desc, _) in enumerate(LAYERS))
LAYER_OF = {room: i for i, (_, rooms) in enumerate(LAYERS) for room in rooms}
#: Layers that must not touch TVM at all (they are the reference the compiled code is held to).
NO_TVM = {"core", "reports", "errors", "files", "calibration"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = FOLDERS[rel.parts[0]].split(".") + list(rel.with_suffix("").parts[1:])
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """``tvm_intq.search.float_layers`` -> ``search``; ``tvm_intq.api`` -> ``api``."""
    return module.split(".")[1] if module.count(".") else ""


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, made absolute (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return names


SOURCES = sorted(
    p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "boards/runtime" not in str(p)
)


def test_every_room_has_a_layer():
    rooms = {room(module_name(p)) for p in SOURCES} - {""}
    assert rooms <= set(LAYER_OF), f"folders/modules with no layer: {sorted(rooms - set(LAYER_OF))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_only(path):
    mine = room(module_name(path))
    if not mine:  # tvm_intq/__init__.py: the lazy top-level names
        return
    upward = sorted(
        {
            m
            for m in imports(path)
            if m.startswith("tvm_intq.")
            and room(m) in LAYER_OF
            and LAYER_OF[room(m)] > LAYER_OF[mine]
        }
    )
    assert not upward, f"{mine} (layer {LAYER_OF[mine]}) imports upward: {upward}"
    if mine in NO_TVM:
        tvm = sorted(m for m in imports(path) if m == "tvm" or m.startswith(("tvm.", "tvm_ffi")))
        assert not tvm, f"{path.name} imports {tvm}"


def test_no_import_cycles_between_modules():
    """Within a layer a module may use its neighbours, but never in a circle."""
    mods = {module_name(p): p for p in SOURCES}
    graph = {
        m: {i for i in imports(p) if i in mods and i != m and not m.startswith(i + ".")}
        for m, p in mods.items()
    }
    # a package's __init__ re-exporting its own modules is not a cycle with them
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


#: PyTorch is the optional ``qat`` extra: these alone may import it, and nothing else imports
#: them at module level (the frontends load the PyTorch one on demand, see
#: test_the_package_loads_without_torch).
TORCH_MODULES = ("tvm_intq.qat", "tvm_intq.frontends.torch", "tvm_intq.bundled_model")


def _is_torch_module(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TORCH_MODULES)


def test_only_torch_modules_import_torch():
    """Everything but the qat package, the PyTorch frontend and the bundled model's PyTorch
    definition installs and runs without PyTorch."""
    bad = sorted(
        str(p.relative_to(ROOT))
        for p in SOURCES
        if not _is_torch_module(module_name(p))
        and any(m == "torch" or m.startswith("torch.") for m in imports(p))
    )
    assert not bad, f"import torch outside {', '.join(TORCH_MODULES)}: {bad}"


def test_the_package_loads_without_torch():
    """With torch made unimportable, every module but the torch ones imports, and reading a
    ``.pt2`` program says how to get PyTorch."""
    modules = sorted(
        m
        for m in map(module_name, SOURCES)
        if not _is_torch_module(m) and not m.endswith("__main__")  # __main__ runs the CLI
    )
    code = (
        "import importlib, sys\n"
        "sys.modules['torch'] = None  # import torch raises ImportError\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from tvm_intq.errors import IntqError\n"
        "from tvm_intq.frontends import import_model\n"
        "try:\n"
        "    import_model('model.pt2')\n"
        "except IntqError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "needs PyTorch" in out.stdout and "tvm-intq[qat]" in out.stdout, out.stdout


def test_import_tvm_intq_and_the_cli_load_no_tvm():
    """``import tvm_intq`` and ``tvm-intq --help`` answer without loading TVM (PEP 562 lazy
    names; the verbs import their work when they run)."""
    code = (
        "import sys, tvm_intq, tvm_intq.cli; tvm_intq.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'tvm' or m.startswith('tvm.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_takes_under_a_second_of_cpu():
    """``tvm-intq --help`` answers at once: CPU time, not wall time (a shared machine's load
    would measure its neighbours)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-m", "tvm_intq.cli", "--help"], capture_output=True, text=True, check=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert "compile" in out.stdout and cpu < 1.0, cpu


def test_lazy_names_resolve():
    import tvm_intq

    for name in tvm_intq.__all__:
        assert getattr(tvm_intq, name) is not None
