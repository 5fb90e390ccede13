"""The project's modules import each other without circles, and its packages depend on each other one way
(DESIGN.md's Layout). Every import counts: at module level, inside functions, and under `if TYPE_CHECKING:` (a
type-only import is still an arrow a reader has to follow). A package's `__init__` re-exports count too."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("da2_platform", "pose_models", "search_spaces", "baselines")
# which packages each may import (DESIGN.md): da2_platform the other three; baselines the search space, the
# models and the shared training step; search_spaces and pose_models neither each other nor the platform
ALLOWED = {"da2_platform": {"pose_models", "search_spaces", "baselines"},
           "baselines": {"search_spaces", "pose_models"},
           "search_spaces": set(), "pose_models": set()}
SHARED_STEP = {"da2_platform.training.step"}  # the one module of da2_platform that baselines may import


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement anywhere in the file: module level, functions, classes, TYPE_CHECKING blocks."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports (`from pkg import name` points at pkg.name when that is a module)."""
    modules = {_module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _all_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([base] if base else [])])
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [*subs, base]
            graph[name] |= {t for t in map(owner, targets) if t and t != name and t.split(".")[0] in packages}
    return graph


def package_graph(graph: dict[str, set[str]], shared: set[str] = SHARED_STEP) -> dict[str, set[str]]:
    """Top-level package -> the packages its modules import; an arrow into `shared` is DESIGN's allowed one."""
    out: dict[str, set[str]] = {}
    for name, deps in graph.items():
        top = name.split(".")[0]
        out.setdefault(top, set())
        out[top] |= {d.split(".")[0] for d in deps if d.split(".")[0] != top and d not in shared}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles_among_the_projects_modules():
    assert cycles(import_graph()) == []


def test_no_cycles_between_the_projects_packages():
    assert cycles(package_graph(import_graph())) == []


def test_dependencies_point_one_way_between_packages():
    """Each package imports only what DESIGN.md's Layout allows it."""
    for package, deps in package_graph(import_graph()).items():
        assert deps <= ALLOWED[package], (package, sorted(deps - ALLOWED[package]))


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_a_circle_through_type_checking_and_function_level_imports_is_caught(tmp_path):
    """alpha.a imports beta.b only inside a function; beta.b imports alpha.a only for type checking."""
    _plant(tmp_path, {
        "alpha/__init__.py": "",
        "alpha/a.py": """
            def f():
                from beta.b import g
                return g
        """,
        "beta/__init__.py": "",
        "beta/b.py": """
            from __future__ import annotations
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from alpha.a import f
            def g() -> f: ...
        """,
    })
    graph = import_graph(tmp_path, ("alpha", "beta"))
    assert cycles(graph) == [["alpha.a", "beta.b"]]
    assert cycles(package_graph(graph, set())) == [["alpha", "beta"]]


def test_a_circle_between_packages_without_a_module_circle_is_caught(tmp_path):
    """alpha.x -> beta.y and beta.z -> alpha.w: no module imports itself back, but the packages do."""
    _plant(tmp_path, {
        "alpha/__init__.py": "", "alpha/w.py": "",
        "alpha/x.py": "import beta.y\n",
        "beta/__init__.py": "", "beta/y.py": "",
        "beta/z.py": "from alpha import w\n",
    })
    graph = import_graph(tmp_path, ("alpha", "beta"))
    assert cycles(graph) == []
    assert cycles(package_graph(graph, set())) == [["alpha", "beta"]]


def test_a_circle_through_a_package_init_and_a_relative_import_is_caught(tmp_path):
    """gamma/__init__ re-exports gamma.c, and gamma.c imports the package back (`from . import ...`)."""
    _plant(tmp_path, {
        "gamma/__init__.py": "from gamma.c import C\n",
        "gamma/c.py": "from . import helper\nclass C: ...\n",
        "gamma/d.py": "",
    })
    assert cycles(import_graph(tmp_path, ("gamma",))) == [["gamma", "gamma.c"]]
