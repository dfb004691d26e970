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
