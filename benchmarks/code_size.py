"""How large are the package's modules and functions, at a commit or in the working tree?

Prints the package's lines of code in all, the five largest modules, the lines of the training
loop ``train()`` and every function or method over 80 lines (by its ``def`` to its last line, with
its docstring), read with ``ast`` from ``git show REV:path`` for each ``--rev`` (the working tree
where none is given), so a redesign can show its before and after:

    python benchmarks/code_size.py --rev 6ea8f0e --rev HEAD
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "anomalymap_helpers"
LONG = 80


def sources(rev: str | None) -> dict[str, str]:
    """The package's Python files at ``rev`` (None: the working tree), by path."""
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / PACKAGE).rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, PACKAGE], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def functions(text: str) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method in ``text``."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(text), "")
    return out


def report(rev: str | None) -> None:
    files = sources(rev)
    lines = {path: len(text.splitlines()) for path, text in files.items()}
    print(f"## {rev or 'working tree'}: {sum(lines.values()):,} lines in {len(files)} modules")
    print("five largest modules:")
    for path, n in sorted(lines.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {n:5d}  {path}")
    long, loop = [], None
    for path, text in files.items():
        for name, n in functions(text):
            if n > LONG:
                long.append((n, f"{path}:{name}"))
            if name == "train" and "/train" in path:
                loop = (n, path)
    if loop:
        print(f"train(): {loop[0]} lines ({loop[1]})")
    print(f"functions over {LONG} lines: {len(long)}")
    for n, where in sorted(long, reverse=True):
        print(f"  {n:5d}  {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", help="a git revision (repeatable; default: the working tree)")
    args = parser.parse_args(argv)
    for rev in args.rev or [None]:
        report(rev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
