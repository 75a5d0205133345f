"""The modules follow docs/architecture.md: every module is listed under its
folder (or the top level) in the map and imports only from its own part of
the map or the parts before it; there are no import cycles; an import inside
a function says why; the package's and the folders' __init__.py import
nothing (but those the map lists); the command names at the top only run
their command. Reads the source with `ast`: nothing is imported."""

import ast
import functools
import os
import re

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "smallgpt_jax")
MAP = os.path.join(ROOT, "docs", "architecture.md")


def _only_docstring(path: str) -> bool:
    body = ast.parse(open(path, encoding="utf-8").read()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _modules() -> dict[str, str]:
    """{name: path}: 'model', 'checkpoint.reader', 'sweep' (a folder's
    __init__.py with code), 'sweep.__main__'."""
    found = {}
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        rel = os.path.relpath(folder, PACKAGE)
        prefix = "" if rel == "." else rel.replace(os.sep, ".") + "."
        for f in sorted(files):
            path = os.path.join(folder, f)
            if not f.endswith(".py"):
                continue
            if f == "__init__.py":
                if prefix and not _only_docstring(path):
                    found[prefix[:-1]] = path
            else:
                found[prefix + f[:-3]] = path
    return found


FILES = _modules()
MODULES = sorted(FILES)


def sections() -> list[tuple[int, str, str, list[str]]]:
    """(number, title, folder or '', [module names]) of the map's '### N. Title'
    headings; a folder is named in its heading as `folder/`."""
    out = []
    with open(MAP, encoding="utf-8") as f:
        for line in f:
            heading = re.match(r"#+ (?:(\d+)\. (.*))?", line)
            if heading:  # A numbered heading opens a part; any other heading ends one.
                if heading.group(1):
                    folder = re.search(r"`(\w+)/`", heading.group(2))
                    out.append((int(heading.group(1)), heading.group(2),
                                folder.group(1) if folder else "", []))
                else:
                    out.append(None)
                continue
            item = re.match(r"- `(\w+)`", line)
            if item and out and out[-1] is not None:
                folder, name = out[-1][2], item.group(1)
                full = (folder if name == "__init__" else f"{folder}.{name}") if folder else name
                out[-1][3].append(full)
    return [s for s in out if s is not None]


def layers() -> dict[str, int]:
    found = {}
    for number, _, _, names in sections():
        for name in names:
            assert name not in found, f"{name} is twice in the map"
            found[name] = number
    return found


@functools.lru_cache(maxsize=None)
def parse(module: str) -> ast.Module:
    with open(FILES[module], encoding="utf-8") as f:
        return ast.parse(f.read())


def _owner(dotted: str) -> str | None:
    """The module that `dotted` (relative to smallgpt_jax) is, or is in."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in FILES:
            return ".".join(parts[:i])
    return None


def package_imports(tree: ast.AST) -> set[str]:
    """The smallgpt_jax modules `tree` imports, anywhere in it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(_owner(a.name[len("smallgpt_jax."):]) for a in node.names
                         if a.name.startswith("smallgpt_jax."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "smallgpt_jax" or node.module.startswith("smallgpt_jax.")):
            base = node.module[len("smallgpt_jax."):] if "." in node.module else ""
            for a in node.names:  # A module of a folder, or a name of a module.
                names.add(_owner(f"{base}.{a.name}" if base else a.name) or _owner(base))
    return names - {None}


GRAPH = {m: package_imports(parse(m)) - {m} for m in MODULES}


def test_every_module_is_in_the_map_and_every_entry_is_a_module():
    mapped = layers()
    missing = [m for m in MODULES if m not in mapped]
    assert not missing, (f"{os.path.relpath(FILES[missing[0]], ROOT)} is not in the module map "
                         "of docs/architecture.md: add it, one line, under its folder.")
    stale = sorted(set(mapped) - set(MODULES))
    assert not stale, f"docs/architecture.md maps {stale}, which are no modules any more."


def test_a_module_imports_only_from_its_part_and_the_parts_before_it():
    layer = layers()
    wrong = [f"{m} (part {layer[m]}) imports {d} (part {layer[d]})"
             for m in MODULES for d in sorted(GRAPH[m])
             if m in layer and d in layer and layer[d] > layer[m]]
    assert not wrong, ("imports that go to a later part of docs/architecture.md: " +
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


def test_every_folder_is_a_package_and_its_init_imports_only_what_the_map_says():
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        if any(f.endswith(".py") for f in files):
            assert "__init__.py" in files, f"{folder} has no __init__.py"
    # A folder's __init__.py with code is a module of the map (checked above).


def test_the_command_names_only_run_their_command():
    last = max(sections())
    shims = last[3] + [m for m in MODULES if m.endswith(".__main__")]
    assert shims, "the map's last part lists the command names"
    for m in shims:
        assert not GRAPH[m], f"{m} imports {sorted(GRAPH[m])}: it should only run its command"
        runs = [n.args[0].value for n in ast.walk(parse(m)) if isinstance(n, ast.Call)
                and getattr(n.func, "attr", "") == "run_module" and n.args
                and isinstance(n.args[0], ast.Constant)]
        assert len(runs) == 1 and runs[0].startswith("smallgpt_jax.") and \
            runs[0][len("smallgpt_jax."):] in FILES, f"{m} runs {runs}"


def test_an_import_inside_a_function_says_why():
    silent = []
    for m in MODULES:
        lines = open(FILES[m], encoding="utf-8").read().splitlines()
        for run in _imports_in_functions(parse(m)):
            # A comment on one of the imports, or on the line just above them.
            first, last = run[0].lineno, run[-1].end_lineno
            if not any("#" in lines[i - 1] for i in range(first - 1, last + 1)):
                silent.append(f"{os.path.relpath(FILES[m], ROOT)}:{first}")
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
