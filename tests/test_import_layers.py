"""The import layers of scaleml/: no import inside a function, no cycle, nothing imported from a layer above.

Every module of the package is parsed with ``ast`` (nothing is imported). An
import makes an edge from the importing module to the module it names; a
``from .x import y`` also to ``x.y`` when that is a module, and an import of
``a.b.c`` also to the packages ``a`` and ``a.b`` (their ``__init__`` runs
first) unless the importer is inside them (a package's own modules import
each other while it initializes). Imports under ``if TYPE_CHECKING:`` never
run and make no edge. Each failure prints the offending edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "scaleml"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Third-party packages that are optional dependencies: imported where they are used, inside functions, so
# that ScaleML imports without them. fcntl is Unix only (scaleml._network asks it for the interfaces).
OPTIONAL = {"torch", "cupy", "matplotlib", "tqdm", "sklearn", "fcntl"}

# The layers, lowest first. A module may import modules of its own layer and of those below, never above.
# A name stands for the module and, for a package, everything inside it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves: import nothing of ScaleML", ("scaleml._version", "scaleml.errors", "scaleml._ffi_build",
                                           "scaleml._cuda_build")),
    ("the C core and the CUDA library", ("scaleml._native", "scaleml.algorithms", "scaleml._cuda",
                                         "scaleml._cuda_emulation", "scaleml._device", "scaleml._tensors")),
    ("compressors and value formats", ("scaleml.compress", "scaleml.value_format")),
    ("configuration", ("scaleml.config",)),
    ("logging", ("scaleml._log",)),
    ("timeline", ("scaleml.timeline",)),
    ("library", ("scaleml",)),  # everything not named in another layer
    ("applications", ("scaleml.torch", "scaleml.train", "scaleml.bench", "scaleml.__main__")),
]
APPLICATIONS = LAYERS[-1][1]


@dataclass(frozen=True)
class Import:
    importer: str
    line: int
    targets: tuple[str, ...]
    """The ScaleML modules the statement runs (parent packages included, as described above)."""
    names: tuple[str, ...]
    """``from X import names``: what it binds from ``X`` (empty for ``import X``)."""
    source: str
    """``X`` of ``from X import ...`` or ``import X`` (absolute)."""
    in_function: bool
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
# The C extension (scaleml._core, built in place or not): a module that imports nothing of ScaleML.
EXTENSIONS = {_module_name(p.with_name(p.name.split(".")[0] + ".py")) for p in ROOT.rglob("*.so")} | \
    {"scaleml._core"}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _with_parents(importer: str, target: str) -> list[str]:
    """``target`` and the packages above it whose ``__init__`` its import runs (not the importer's own)."""
    parts = target.split(".")
    found = []
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent in MODULES and not _inside(importer, parent):
            found.append(parent)
    return [*found, target]


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool = False, type_checking: bool = False
          ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function, type_checking
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, True, type_checking)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), in_function, type_checking)
        else:
            yield from _walk(child, in_function, type_checking)


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), str(MODULES[module]))
    found = []
    for node, in_function, type_checking in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                known = [m for m in MODULES if name == m or name.startswith(m + ".")]
                if known:
                    target = max(known, key=len)
                    found.append(Import(module, node.lineno, tuple(_with_parents(module, target)), (), name,
                                        in_function, type_checking))
                elif name.split(".")[0] != PACKAGE:
                    found.append(Import(module, node.lineno, (), (), name, in_function, type_checking))
        else:
            source = _absolute(module, node)
            names = tuple(alias.name for alias in node.names)
            if source in MODULES:
                submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in MODULES]
                extensions = [n for n in names if f"{source}.{n}" in EXTENSIONS]
                targets = _with_parents(module, source)
                if _inside(module, source) and len(submodules) + len(extensions) == len(names):
                    targets.pop()  # `from . import x`: x only (the package is being initialized)
                targets += submodules
                found.append(Import(module, node.lineno, tuple(dict.fromkeys(targets)), names, source,
                                    in_function, type_checking))
            elif source.split(".")[0] != PACKAGE:
                found.append(Import(module, node.lineno, (), names, source, in_function, type_checking))
    return found


IMPORTS: dict[str, list[Import]] = {m: _imports(m) for m in MODULES}


def _edges() -> dict[str, dict[str, list[Import]]]:
    """importer -> imported -> the statements (run at import: not in a function, not under TYPE_CHECKING)."""
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in MODULES}
    for module, imports in IMPORTS.items():
        for imp in imports:
            if imp.in_function or imp.type_checking:
                continue
            for target in imp.targets:
                if target != module:
                    graph[module].setdefault(target, []).append(imp)
    return graph


def _where(imp: Import) -> str:
    return f"{MODULES[imp.importer].relative_to(ROOT.parent)}:{imp.line}"


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if _inside(module, name) and len(name) > best_len:
                best, best_len = index, len(name)
    return best


def _cycles(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ---- the tests --------------------------------------------------------------------------------------------


def test_every_module_is_parsed():
    assert {"scaleml", "scaleml.errors", "scaleml._log", "scaleml.config", "scaleml.timeline",
            "scaleml.compress.names", "scaleml.train.reducer", "scaleml.torch"} <= set(MODULES)
    assert all(_layer(m) >= 0 for m in MODULES)


def test_no_scaleml_module_is_imported_inside_a_function():
    bad = [f"{_where(i)}: {i.importer} imports {i.source} ({', '.join(i.targets)})"
           for imports in IMPORTS.values() for i in imports if i.in_function and i.targets]
    assert not bad, "imports of ScaleML's own modules inside functions:\n  " + "\n  ".join(bad)


def test_only_optional_packages_are_imported_inside_functions():
    bad = [f"{_where(i)}: {i.importer} imports {i.source}" for imports in IMPORTS.values() for i in imports
           if i.in_function and not i.targets and i.source.split(".")[0] not in OPTIONAL]
    assert not bad, f"imports inside functions of packages that are not optional ({sorted(OPTIONAL)}):\n  " + \
        "\n  ".join(bad)


def test_no_import_cycle():
    graph = _edges()
    report = []
    for component in _cycles(graph):
        members = set(component)
        edges = [f"{a} -> {b} ({', '.join(_where(i) for i in graph[a][b])})"
                 for a in component for b in sorted(graph[a]) if b in members]
        report.append(f"cycle among {', '.join(component)}:\n    " + "\n    ".join(edges))
    assert not report, "import cycles (module-level imports):\n  " + "\n  ".join(report)


def test_no_module_imports_a_layer_above_its_own():
    graph = _edges()
    bad = []
    for importer, targets in sorted(graph.items()):
        for target, imports in sorted(targets.items()):
            if _layer(target) > _layer(importer):
                bad.append(f"{importer} ({LAYERS[_layer(importer)][0]}) -> {target} ({LAYERS[_layer(target)][0]}) "
                           f"at {', '.join(_where(i) for i in imports)}")
    assert not bad, "upward imports:\n  " + "\n  ".join(bad)


def test_the_library_never_imports_the_applications():
    bad = [f"{_where(i)}: {i.importer} imports {t}"
           for imports in IMPORTS.values() for i in imports for t in i.targets
           if not any(_inside(i.importer, a) for a in APPLICATIONS) and any(_inside(t, a) for a in APPLICATIONS)]
    assert not bad, "library modules importing scaleml.train, scaleml.bench, scaleml.torch or __main__ " \
        "(also inside functions):\n  " + "\n  ".join(bad)


def test_the_torch_hook_uses_only_public_names_of_train():
    bad = [f"{_where(i)}: from {i.source} import {n}" for i in IMPORTS["scaleml.torch"]
           if _inside(i.source, "scaleml.train") for n in (i.names or (i.source,))
           if any(part.startswith("_") for part in [*i.source.split("."), n])]
    assert not bad, "scaleml.torch imports private names of scaleml.train:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("module", ["scaleml.errors", "scaleml._version", "scaleml._cuda_build"])
def test_leaves_import_nothing_of_scaleml(module):
    assert not [i for i in IMPORTS[module] if i.targets], f"{module} imports ScaleML modules"
