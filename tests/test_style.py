"""The size rule of the style guide: no function in mt/ runs over 60 lines."""

import ast
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
