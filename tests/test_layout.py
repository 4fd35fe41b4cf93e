"""The house rules of docs/architecture.md, checked on the source: imports run one way, with no cycle;
imports inside functions only for the optional heavy dependencies; every path the page names exists."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARIES = ("sarmae_jax", "data_pipelines")
# The `torch` extra, and tensorboardX, which imports torch whenever it is installed (1.6 s per process).
# Everything else is imported at the top of its module.
OPTIONAL_HEAVY = ("torch", "transformers", "tensorboardX")
# Private modules of a dependency are imported inside the one function that needs them, so that a release
# which moves them breaks that function, not every entry point (runtime/tpu_topology.py).
PRIVATE = ("jax._src",)

# (importer prefix, imported prefix): edges that would run against the data's way.
FORBIDDEN = [
    ("data_pipelines", "sarmae_jax"),
    ("sarmae_jax.runtime", "sarmae_jax.data"), ("sarmae_jax.runtime", "sarmae_jax.sare"),
    ("sarmae_jax.runtime", "sarmae_jax.models"), ("sarmae_jax.runtime", "sarmae_jax.training"),
    ("sarmae_jax.sare", "sarmae_jax.data"), ("sarmae_jax.sare", "sarmae_jax.models"),
    ("sarmae_jax.data", "sarmae_jax.models"), ("sarmae_jax.data", "sarmae_jax.sare"),
    ("sarmae_jax.models", "sarmae_jax.data"), ("sarmae_jax.models", "sarmae_jax.convert"),
    ("sarmae_jax.models", "sarmae_jax.training"), ("sarmae_jax.models", "sarmae_jax.evaluate"),
    ("sarmae_jax.models", "sarmae_jax.config"),
    ("sarmae_jax.training", "sarmae_jax.evaluate"),
    ("sarmae_jax.config", "sarmae_jax.training"), ("sarmae_jax.config", "sarmae_jax.evaluate"),
]
# The commands sit on top of everything; the conversion library itself does not reach into training.
COMMANDS = ("sarmae_jax.convert.cli", "sarmae_jax.evaluate.cli", "sarmae_jax.main")
FORBIDDEN += [("sarmae_jax.convert", "sarmae_jax.training"), ("sarmae_jax.convert", "sarmae_jax.evaluate")]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library_modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p))
            for lib in LIBRARIES for p in sorted((ROOT / lib).rglob("*.py"))}


MODULES = _library_modules()


def _imports(tree: ast.Module):
    """(imported module, node, inside a function?) for every import statement of `tree`."""
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node, id(node) in in_function
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # `from pkg import module` imports pkg.module when that is a module
                full = f"{node.module}.{alias.name}"
                yield (full if full in MODULES else node.module), node, id(node) in in_function


def _graph() -> dict[str, set[str]]:
    return {name: {target for target, _, _ in _imports(tree) if target in MODULES and target != name}
            for name, tree in MODULES.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_library_has_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_run_with_the_data():
    wrong = [f"{a} imports {b}" for a, targets in _graph().items() for b in sorted(targets)
             if a not in COMMANDS and any(_within(a, src) and _within(b, dst) for src, dst in FORBIDDEN)]
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_only_for_optional_heavy_dependencies():
    nested = [f"{name}:{node.lineno} imports {target}" for name, tree in MODULES.items()
              for target, node, inside in _imports(tree)
              if inside and target.split(".")[0] not in OPTIONAL_HEAVY and not target.startswith(PRIVATE)]
    assert not nested, "\n".join(nested)


def test_private_modules_of_dependencies_are_imported_inside_functions_only():
    top_level = [f"{name}:{node.lineno} imports {target}" for name, tree in MODULES.items()
                 for target, node, inside in _imports(tree) if not inside and target.startswith(PRIVATE)]
    assert not top_level, "\n".join(top_level)


def test_the_rules_see_real_edges():
    """The checks above read the actual graph: known edges are there, so an empty result means something."""
    graph = _graph()
    assert "data_pipelines.records" in graph["sarmae_jax.data.pipeline"]
    assert "sarmae_jax.models.vit" in graph["sarmae_jax.models.mae"]
    assert "sarmae_jax.training.state" in graph["sarmae_jax.training.loop"]
    assert any(t.split(".")[0] == "torch" for t, _, inside in _imports(MODULES["sarmae_jax.convert.state_dicts"]) if inside)


def _architecture_paths() -> list[str]:
    """Every file and folder the layout tree of docs/architecture.md names, plus the paths in backticks."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = text.split("```")[1]
    paths, stack = [], []  # stack of (indent, folder)
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        head = re.split(r"\s{2,}", line.strip())[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        base = "/".join(folder for _, folder in stack)
        for name in (n.strip() for n in head.split(",")):
            if name:
                paths.append(f"{base}/{name}".strip("/") if base else name)
        if head.endswith("/"):
            stack.append((indent, head.rstrip("/")))
    paths += re.findall(r"`((?:sarmae_jax|data_pipelines|configs|tests|benchmarks|launch|docs)/[\w/.]+)", text)
    return paths


def test_every_path_in_the_architecture_page_exists():
    paths = _architecture_paths()
    assert "sarmae_jax/models/teachers/dinov3.py" in paths and "configs/" in paths  # the tree was parsed
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


@pytest.mark.parametrize("lib", LIBRARIES)
def test_every_library_module_is_on_the_architecture_page(lib):
    named = set(_architecture_paths())
    text = (ROOT / "docs" / "architecture.md").read_text()
    absent = [str(p.relative_to(ROOT)) for p in sorted((ROOT / lib).rglob("*.py"))
              if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in named and p.name not in text]
    assert not absent, f"modules missing from docs/architecture.md: {absent}"
