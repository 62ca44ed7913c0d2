"""Layers that import one way, and no import circle: read from the source, every import included.

The layers, lowest first (README, Layout): **kernel** (``raymedic`` itself: config,
errors, keys, storage, metrics, logs) ← **cluster** (``cluster``: connecting to and
starting Ray) ← **training** (``train_jobs``) ← **serving** (``serve_apps``) ←
**healing** (``controllers``) ← **app** (``raymedic.app``, ``raymedic.bench``,
``raymedic.__main__`` and ``serve_apps.app``, the Serve entry point that wires
serving to healing). A module may import its own layer and the layers below it;
healing reaches serving only through its public surface. An import of our own
code inside a function is allowed only where it keeps ``--help`` fast or an
optional dependency optional, and says so in a ``lazy:`` comment.

``python tests/test_layering.py`` prints the import graph between layers.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("raymedic", "cluster", "train_jobs", "serve_apps", "controllers")
LAYERS = ("kernel", "cluster", "training", "serving", "healing", "app")
APP_MODULES = ("raymedic.app", "raymedic.bench", "raymedic.__main__", "serve_apps.app")
SERVING_PUBLIC = ("serve_apps.application", "serve_apps.serve_state")
"""What healing may import from serving: building (canary) applications and reading Serve's view."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool
    comment: str


def layer(module: str) -> str:
    """The layer of one of our modules (dotted name)."""
    if any(module == m or module.startswith(m + ".") for m in APP_MODULES):
        return "app"
    top = module.split(".")[0]
    return {"raymedic": "kernel", "cluster": "cluster", "train_jobs": "training", "serve_apps": "serving",
            "controllers": "healing"}[top]


def modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of ours under ``root``: dotted name → file."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) refers to."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports(known: dict[str, Path]) -> list[Import]:
    """Every import of our code in our code, with where it sits."""
    found = []
    for module, path in known.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing package
                    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            else:
                continue
            if not any(n.split(".")[0] in PACKAGES for n in names):
                continue
            scope, in_function = node, False
            while scope in parents:
                scope = parents[scope]
                if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    in_function = True
            if isinstance(parents.get(node), ast.If) and _is_type_checking(parents[node]):
                continue  # annotations only: never executed
            comment = " ".join(lines[max(0, node.lineno - 3):node.end_lineno])
            targets = {_resolve(name, known) for name in names} - {None, module}
            found.extend(Import(module, t, node.lineno, in_function, comment) for t in sorted(targets))
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import circles."""
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _where(e: Import, known: dict[str, Path]) -> str:
    return f"{known[e.source].name}:{e.line} ({e.source} → {e.target})"


def against_layers(known: dict[str, Path]) -> list[str]:
    """Every import that points up the layers (or into serving's private modules from healing)."""
    wrong = []
    for e in imports(known):
        src, dst = layer(e.source), layer(e.target)
        if LAYERS.index(dst) > LAYERS.index(src):
            wrong.append(f"{_where(e, known)}: {src} must not import {dst}")
        elif src == "healing" and dst == "serving" and e.target not in SERVING_PUBLIC:
            wrong.append(f"{_where(e, known)}: healing reaches serving only through {SERVING_PUBLIC}")
    return wrong


def silent_lazy_imports(known: dict[str, Path]) -> list[str]:
    """Imports of our code inside a function with no ``lazy:`` comment saying why."""
    return [_where(e, known) for e in imports(known) if e.in_function and "lazy:" not in e.comment]


def test_every_import_points_down_the_layers():
    wrong = against_layers(modules())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_there_is_no_import_circle():
    found = cycles(imports(modules()))
    assert not found, "import circles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_imports_inside_functions_say_why():
    silent = silent_lazy_imports(modules())
    assert not silent, ("imports of our code inside a function without a `# lazy: <why>` comment (move them "
                        "to the top, or say why they must wait):\n" + "\n".join(silent))


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} == set(LAYERS)


def test_the_checks_catch_each_kind_of_mistake(tmp_path):
    """The same checks on a small tree with one mistake of each kind: they must all be found."""
    files = {
        "raymedic/__init__.py": "",
        "raymedic/config.py": "from controllers.loop import X\n",  # kernel → healing
        "train_jobs/__init__.py": "",
        "train_jobs/gate.py": "def f():\n    from train_jobs.job import g\n",  # in a function, no reason
        "train_jobs/job.py": "from train_jobs.gate import f\n",  # gate ↔ job through the function
        "cluster/__init__.py": "", "serve_apps/__init__.py": "", "serve_apps/gateway.py": "",
        "controllers/__init__.py": "",
        "controllers/loop.py": ("import serve_apps.gateway\n"  # a private serving module
                                "def main():\n    # lazy: keeps --help fast\n    from train_jobs import job\n"),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    known = modules(tmp_path)
    wrong = against_layers(known)
    assert any("(raymedic.config → controllers.loop): kernel must not import healing" in w for w in wrong)
    assert any("(controllers.loop → serve_apps.gateway): healing reaches serving only" in w for w in wrong)
    assert len(wrong) == 2
    assert cycles(imports(known)) == [["train_jobs.gate", "train_jobs.job"]]
    assert silent_lazy_imports(known) == ["gate.py:2 (train_jobs.gate → train_jobs.job)"]


def graph_report() -> str:
    """The import graph between layers: edges with their counts, and modules per layer."""
    known = modules()
    edges = Counter((layer(e.source), layer(e.target)) for e in imports(known))
    per_layer = Counter(layer(m) for m in known)
    lines = ["modules per layer: " + ", ".join(f"{name} {per_layer[name]}" for name in LAYERS),
             "imports between layers (importer → imported: count):"]
    for src in reversed(LAYERS):
        row = [f"{dst} {edges[(src, dst)]}" for dst in LAYERS if edges[(src, dst)]]
        lines.append(f"  {src:<9}→ " + (", ".join(row) if row else "-"))
    circles = cycles(imports(known))
    lines.append(f"import circles: {len(circles)}")
    return "\n".join(lines)


def test_print_the_graph(capsys):
    report = graph_report()
    with capsys.disabled():
        print("\n" + report)
    assert "import circles: 0" in report


if __name__ == "__main__":
    print(graph_report())
