"""The modules follow docs/architecture.md: every module is in one layer of
its map and imports only from its own layer or the layers below; there are
no import cycles; an import inside a function says why. Reads the source
with `ast`: nothing is imported."""

import ast
import functools
import os
import re

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "smallgpt_jax")
MAP = os.path.join(ROOT, "docs", "architecture.md")
MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE)
                 if name.endswith(".py") and name != "__init__.py")


def layers() -> dict[str, int]:
    """{module: layer number}, from the map's '### N. Title' headings and
    the '- `module`: ...' lines under them."""
    found, layer = {}, None
    with open(MAP, encoding="utf-8") as f:
        for line in f:
            heading = re.match(r"#+ (?:(\d+)\. )?", line)
            if heading:  # A numbered '###' is a layer; any other heading ends one.
                layer = int(heading.group(1)) if heading.group(1) else None
            item = re.match(r"- `(\w+)`", line)
            if item and layer is not None:
                assert item.group(1) not in found, f"{item.group(1)} is twice in the map"
                found[item.group(1)] = layer
    return found


@functools.lru_cache(maxsize=None)
def parse(module: str) -> ast.Module:
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        return ast.parse(f.read())


def package_imports(tree: ast.AST) -> set[str]:
    """The smallgpt_jax modules `tree` imports, anywhere in it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("smallgpt_jax."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "smallgpt_jax":  # from smallgpt_jax import a, b
                names.update(a.name for a in node.names)
            elif node.module.startswith("smallgpt_jax."):
                names.add(node.module.split(".")[1])
    return names & set(MODULES)


GRAPH = {m: package_imports(parse(m)) - {m} for m in MODULES}


def test_every_module_is_in_the_map_and_every_entry_is_a_module():
    mapped = layers()
    missing = [m for m in MODULES if m not in mapped]
    assert not missing, (f"smallgpt_jax/{missing[0]}.py is not in the module map of "
                         "docs/architecture.md: add it, one line, to the layer it belongs to.")
    stale = sorted(set(mapped) - set(MODULES))
    assert not stale, f"docs/architecture.md maps {stale}, which are no modules any more."


def test_a_module_imports_only_from_its_layer_and_the_layers_below():
    layer = layers()
    wrong = [f"{m} (layer {layer[m]}) imports {d} (layer {layer[d]})"
             for m in MODULES for d in sorted(GRAPH[m])
             if m in layer and d in layer and layer[d] > layer[m]]
    assert not wrong, ("imports that go up a layer of docs/architecture.md: " +
                       "; ".join(wrong))


def test_no_import_cycles():
    done, path = set(), []

    def visit(m):
        if m in path:
            cycle = path[path.index(m):] + [m]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if m in done:
            return
        path.append(m)
        for d in sorted(GRAPH[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in MODULES:
        visit(m)


def test_the_package_itself_imports_nothing():
    # Importing smallgpt_jax must not load (and so run) any of its modules.
    tree = ast.parse(open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8").read())
    assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))


def test_an_import_inside_a_function_says_why():
    silent = []
    for m in MODULES:
        lines = open(os.path.join(PACKAGE, m + ".py"), encoding="utf-8").read().splitlines()
        for run in _imports_in_functions(parse(m)):
            # A comment on one of the imports, or on the line just above them.
            first, last = run[0].lineno, run[-1].end_lineno
            if not any("#" in lines[i - 1] for i in range(first - 1, last + 1)):
                silent.append(f"smallgpt_jax/{m}.py:{first}")
    assert not silent, ("imports inside functions without a reason (import at the top, "
                        "or say why in a comment): " + ", ".join(silent))


def _imports_in_functions(tree: ast.AST) -> list[list[ast.stmt]]:
    """The runs of consecutive import statements inside functions."""
    runs = []

    def visit(node, in_function):
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if in_function and isinstance(stmts, list):
                run = []
                for stmt in stmts + [None]:  # None ends the last run.
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        run.append(stmt)
                    elif run:
                        runs.append(run)
                        run = []
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree, False)
    return runs
