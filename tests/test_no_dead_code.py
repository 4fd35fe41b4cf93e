"""Every public function, class and method of the library has a caller, or is documented for users.

A caller is any use of its name outside its own definition in the library, the benchmarks, configs, launchers or
setup.py's entry points; tests do not count (code that serves only tests lives in tests/). Documented means named
in README.md or docs/*.md. Framework hooks that nothing here calls by name are listed in HOOKS with their caller.
"""
import ast
import collections
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARIES = ("sarmae_jax", "data_pipelines")
USERS = LIBRARIES + ("benchmarks", "configs", "launch")
HOOKS = {"LocalBuilder.code_path": "tensorflow_datasets calls it to find the builder's files"}


def _definitions():
    """(file, qualified name, bare name) of every public top-level function / class and public method."""
    for path in sorted(p for d in LIBRARIES for p in (ROOT / d).rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield path, node.name, node.name
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, ast.FunctionDef) and not member.name.startswith("_"):
                        yield path, f"{node.name}.{member.name}", member.name


def test_every_public_definition_has_a_caller_or_is_documented():
    code = "\n".join(p.read_text() for d in USERS if (ROOT / d).exists() for p in (ROOT / d).rglob("*.py"))
    code += (ROOT / "setup.py").read_text()
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    in_code = collections.Counter(re.findall(r"\w+", code))
    in_docs = set(re.findall(r"\w+", docs))
    unused = []
    for path, qualified, name in _definitions():
        uses = in_code[name] - 1  # its own `def` / `class` line
        if uses < 1 and name not in in_docs and qualified not in HOOKS:
            unused.append(f"{path.relative_to(ROOT)}: {qualified}")
    assert not unused, "no caller outside tests, not documented:\n" + "\n".join(unused)

