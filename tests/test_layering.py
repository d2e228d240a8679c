"""The layering of ARCHITECTURE.md, checked on the source: every import, wherever it stands.

Each ``.py`` under ``semtile/``, ``kernels/`` and ``cli/`` is parsed (never imported) as the
module ``semtile.<...>``, ``semtile.kernels.<...>`` or ``semtile.cli.<...>``. Every ``import`` and
``from ... import`` counts: at module level, inside functions, under ``if TYPE_CHECKING:``;
relative imports are resolved. Each rule is its own test, so a failure names the rule it broke,
and lists each offending ``file:line importer -> imported``.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each top-level folder goes in the installed distribution (pyproject.toml, package-dir).
SOURCES = {"semtile": "semtile", "kernels": "semtile.kernels", "cli": "semtile.cli"}

# Top first. A room may import itself and any room in a layer below its own; rooms of one layer
# must not import each other.
LAYERS = [
    ["cli"],
    ["execution", "report"],
    ["defects", "explain", "science"],
    ["inference"],
    ["engines", "results"],
    ["models", "store"],
    ["io", "synth"],
    ["errors", "logs"],
    ["kernels"],
]
LAYER_OF = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}
# The package root re-exports a few names and maps kernels/ and cli/ in: it is exempt as an importer.
EXEMPT_IMPORTERS = {"semtile"}

# Only semtile/store/ itself may import a backend; the rest goes through semtile.store and its shared parts.
STORE_BACKENDS = {"semtile.store.ome_zarr", "semtile.store.directory", "semtile.store.zarr_dir"}

# kernels/ stays light: numpy, numba, math and the standard library (and itself); stitch_torch may use torch.
KERNEL_ALLOWED = {"numpy", "numba", "math"} | set(sys.stdlib_module_names)
KERNEL_EXTRA = {"semtile.kernels.stitch_torch": {"torch"}}

MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    path: str  # as shown in messages: relative to the repository root
    line: int
    importer: str  # module name
    imported: str  # the module imported (longest known module for a semtile name; the dotted name otherwise)
    name: str | None = None  # for ``from X import name``: the name

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.importer} -> {self.imported}"

    def with_name(self) -> str:
        return f"{self} ({self.name})" if self.name else str(self)


def module_name(relative: Path) -> str:
    top, *rest = relative.with_suffix("").parts
    parts = [SOURCES[top], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_tree(root: Path = ROOT) -> dict[str, tuple[str, str]]:
    """Module name -> (path relative to root, source), for every .py of the three source folders."""
    modules = {}
    for top in SOURCES:
        for file in sorted((root / top).rglob("*.py")):
            relative = file.relative_to(root)
            modules[module_name(relative)] = (relative.as_posix(), file.read_text(encoding="utf-8"))
    return modules


def _resolve(name: str, known: set[str]) -> str:
    """The longest prefix of a dotted name that is a known module (itself when none is)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return name


def collect_imports(modules: dict[str, tuple[str, str]]) -> list[Import]:
    """Every import of every module (ast.walk reaches function bodies and ``if TYPE_CHECKING:`` alike)."""
    known = set(modules)
    found = []
    for importer, (path, source) in modules.items():
        is_package = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(source, filename=path)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(path, node.lineno, importer, _resolve(alias.name, known)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = importer.split(".") if is_package else importer.split(".")[:-1]
                    base = package[: len(package) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module
                for alias in node.names:
                    full = f"{base_name}.{alias.name}"
                    if full in known:  # ``from package import module``
                        found.append(Import(path, node.lineno, importer, full))
                    else:
                        found.append(Import(path, node.lineno, importer, _resolve(base_name, known), alias.name))
    return sorted(found, key=lambda i: (i.path, i.line, i.imported, i.name or ""))


def room(module: str) -> str | None:
    """``semtile.execution.local`` -> ``execution``; None for the package root and anything outside semtile."""
    parts = module.split(".")
    if parts[0] != "semtile" or len(parts) < 2:
        return None
    return parts[1]


def upward_imports(imports: list[Import]) -> list[Import]:
    bad = []
    for imp in imports:
        if imp.importer in EXEMPT_IMPORTERS:
            continue
        source, target = room(imp.importer), room(imp.imported)
        if source is None or target is None or source == target:
            continue
        if source not in LAYER_OF or target not in LAYER_OF:
            bad.append(imp)  # a room missing from the table: add it to ARCHITECTURE.md and LAYERS first
        elif LAYER_OF[target] <= LAYER_OF[source]:
            bad.append(imp)
    return bad


def import_cycles(imports: list[Import], modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a list of modules."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.imported in modules and imp.imported != imp.importer:
            graph[imp.importer].add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        # Iterative Tarjan: (node, iterator over its successors).
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def _unique(lines) -> list[str]:
    """One line per import statement and module: ``from m import a, b`` is one arrow."""
    return list(dict.fromkeys(str(line) for line in lines))


def cycle_report(imports: list[Import], modules: set[str]) -> list[str]:
    """One block per cycle: its modules, then the imports that bind them."""
    lines = []
    for component in import_cycles(imports, modules):
        members = set(component)
        lines.append("cycle: " + " <-> ".join(component))
        lines.extend(f"  {line}" for line in _unique(
            imp for imp in imports
            if imp.importer in members and imp.imported in members and imp.importer != imp.imported))
    return lines


def _is_private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports
            if _is_private(imp.name) and imp.imported.split(".")[0] == "semtile" and imp.imported != imp.importer]


def store_backend_imports(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports
            if imp.imported in STORE_BACKENDS and imp.importer not in EXEMPT_IMPORTERS
            and not (imp.importer == "semtile.store" or imp.importer.startswith("semtile.store."))]


def kernel_imports(imports: list[Import]) -> list[Import]:
    bad = []
    for imp in imports:
        if room(imp.importer) != "kernels":
            continue
        if room(imp.imported) == "kernels":
            continue
        allowed = KERNEL_ALLOWED | KERNEL_EXTRA.get(imp.importer, set())
        if imp.imported.split(".")[0] not in allowed:
            bad.append(imp)
    return bad


def long_modules(modules: dict[str, tuple[str, str]]) -> list[str]:
    return [f"{path}: {len(source.splitlines())} lines" for path, source in modules.values()
            if len(source.splitlines()) > MAX_LINES]


def _fail(rule: str, offences: list[str]) -> None:
    if offences:
        listing = "\n".join(f"  {o}" for o in offences)
        pytest.fail(f"{rule}: {len(offences)} found\n{listing}", pytrace=False)


# --- the rules, on the tree ------------------------------------------------------------------------------------

_MODULES = load_tree()
_IMPORTS = collect_imports(_MODULES)


def test_no_upward_import():
    _fail("import against the layers (ARCHITECTURE.md)", _unique(upward_imports(_IMPORTS)))


def test_no_import_cycle():
    report = cycle_report(_IMPORTS, set(_MODULES))
    if report:
        count = sum(line.startswith("cycle") for line in report)
        pytest.fail(f"import cycles between modules: {count} found\n" + "\n".join(report), pytrace=False)


def test_no_private_name_across_modules():
    _fail("private name imported from another module", [i.with_name() for i in private_imports(_IMPORTS)])


def test_store_backends_only_inside_store():
    _fail("store backend imported outside semtile/store/ (use semtile.store)", _unique(store_backend_imports(_IMPORTS)))


#: Execution runs passes; it never names a kind of pass (those rooms provide them, the CLI chooses them).
PASS_PROVIDERS = {"defects", "explain", "science"}


def execution_pass_imports(imports: list[Import]) -> list[Import]:
    return [i for i in imports if room(i.importer) == "execution" and room(i.imported) in PASS_PROVIDERS]


def test_execution_never_imports_a_kind_of_pass():
    _fail("execution/ imports a room that provides passes (defects, explain, science)",
          _unique(execution_pass_imports(_IMPORTS)))


def test_kernels_import_only_numpy_numba_and_stdlib():
    _fail("kernels/ import beyond numpy, numba and the standard library", _unique(kernel_imports(_IMPORTS)))


def test_no_module_over_500_lines():
    _fail(f"modules over {MAX_LINES} lines", long_modules(_MODULES))


def test_every_room_is_in_the_table():
    rooms = {room(m) for m in _MODULES} - {None}
    assert rooms <= set(LAYER_OF), f"rooms missing from LAYERS and ARCHITECTURE.md: {sorted(rooms - set(LAYER_OF))}"


# --- the checker can fail ----------------------------------------------------------------------------------------

def test_checker_reports_synthetic_breaks():
    modules = {
        "semtile.io.a": ("semtile/io/a.py", "def f():\n    from semtile.science import curve\n"),
        "semtile.science": ("semtile/science/__init__.py", ""),
        "semtile.science.curve": ("semtile/science/curve.py", "from . import helper\n_SECRET = 1\n"),
        "semtile.science.helper": ("semtile/science/helper.py",
                                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from semtile.science.curve import _SECRET\n"),
        "semtile.kernels.k": ("kernels/k.py", "import torch\nimport numpy\n"),
        "semtile.cli.x": ("cli/x.py", "import semtile.store.ome_zarr\nfrom semtile.io import a\n"),
        "semtile.store.ome_zarr": ("semtile/store/ome_zarr.py", ""),
    }
    imports = collect_imports(modules)
    assert [str(i) for i in upward_imports(imports)] == ["semtile/io/a.py:2 semtile.io.a -> semtile.science.curve"]
    assert import_cycles(imports, set(modules)) == [["semtile.science.curve", "semtile.science.helper"]]
    assert [i.with_name() for i in private_imports(imports)] == [
        "semtile/science/helper.py:3 semtile.science.helper -> semtile.science.curve (_SECRET)"]
    assert [str(i) for i in store_backend_imports(imports)] == ["cli/x.py:1 semtile.cli.x -> semtile.store.ome_zarr"]
    assert [str(i) for i in kernel_imports(imports)] == ["kernels/k.py:1 semtile.kernels.k -> torch"]


def test_kernels_and_cli_are_imported_by_their_installed_names():
    """``kernels/`` and ``cli/`` ship as ``semtile.kernels`` and ``semtile.cli``: a bare ``import kernels`` works
    only from the repository's root, and fails once semtile is installed and run from anywhere else."""
    bare = [imp for imp in collect_imports(load_tree())
            if imp.imported.split(".")[0] in ("kernels", "cli")]
    assert not bare, "\n".join(f"{i.path}:{i.line} imports {i.imported}; use semtile.{i.imported}" for i in bare)


def test_tests_and_benchmarks_import_kernels_by_their_installed_name():
    """A test or benchmark that imports ``kernels`` bare loads the same files as a second module, and Numba's
    on-disk cache (keyed by file) then holds functions pickled against ``kernels``: every later process that
    imports ``semtile.kernels`` without the repository root on its path fails to load them."""
    bare = []
    for top in ("tests", "benchmarks"):
        for file in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(file))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                bare += [f"{file.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                         if n.split(".")[0] in ("kernels", "cli")]
    assert not bare, "\n".join(bare)
