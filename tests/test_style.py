"""The style guide's rules that a machine can check: no function in mt/ runs over 60 lines, and
docstrings and comments state rules, not measured figures (those live in docs/)."""

import ast
import io
import re
import tokenize
from pathlib import Path

MAX_LINES = 60
PACKAGE = Path(__file__).resolve().parent.parent / "mt"


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_in_mt_is_over_60_lines():
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}:{fn.lineno} {fn.name} ({n} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for fn in _functions(path)
        if (n := fn.end_lineno - fn.lineno + 1) > MAX_LINES
    ]
    assert not too_long, "split these functions: " + "; ".join(too_long)


# a speed or rate claim: "1.26x", "3x faster", "tok/s", "sent/s", "GFLOP/s"
FIGURE = re.compile(r"\b\d+(\.\d+)?x\b|\bx faster\b|tok/s|sent/s|GFLOP", re.IGNORECASE)


def _prose(path: Path):
    """(line, text) of every docstring and comment of a module."""
    source = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def test_docstrings_and_comments_state_rules_not_figures():
    claims = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {match.group(0)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, text in _prose(path)
        if (match := FIGURE.search(text))
    ]
    assert not claims, "move these figures to docs/performance.md: " + "; ".join(claims)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The mt modules `path` imports anywhere in it, deferred imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def test_no_import_cycles_among_mt_modules():
    """Every import counts, those inside functions too: a cycle closed by a deferred import is
    still a cycle. Packages are not nodes of their own (`mt.decode` is its __init__)."""
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    cycles, done = [], set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycles.append(" -> ".join([*stack[stack.index(name) :], name]))
            return
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "import cycles: " + "; ".join(sorted(set(cycles)))


def test_the_architecture_map_names_every_module():
    """docs/architecture.md names every module of the package, so the map cannot fall behind."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    unnamed = [
        str(path.relative_to(PACKAGE.parent))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py"
        and f"`{path.relative_to(PACKAGE.parent)}`" not in doc
        and f"`{path.name}`" not in doc
    ]
    assert not unnamed, f"docs/architecture.md does not name: {', '.join(unnamed)}"


def test_a_deferred_mt_import_says_why():
    """An `mt` import inside a function hides a dependency from the module's reader: each one
    carries a comment on its line or the line above saying why it cannot sit at the top."""
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("mt"):
                    here, above = lines[inner.lineno - 1], lines[inner.lineno - 2].strip()
                    if "#" not in here and not above.startswith("#"):
                        silent.append(f"{path.relative_to(PACKAGE.parent)}:{inner.lineno}")
    assert not silent, f"deferred mt imports without a reason: {', '.join(silent)}"
