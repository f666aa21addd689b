"""Which of a module's decisions no test notices: each comparison flipped (== and !=, < and >=,
in and not in, is and is not), each `if`/`while`/conditional test negated and each and/or swapped,
one at a time, with the given tests run against every such mutant. A mutant that survives marks
a condition whose breaking no test catches: a place to add a test, or an equivalent change (a
guard around a recompile, say) to leave.

    python tools/mutation_check.py trt_multidev_backend/updates.py tests/test_updates.py [more tests]
        [--lines 37-184] [--only not:56,cmp:121] [--json out.json]

Run it in a clone of its own: the module file is rewritten for each mutant (and restored at the
end, on Ctrl-C or SIGTERM too), so tests run meanwhile from the same tree see the mutants.
Each mutant costs one pytest run (-x), so pick the tests that exercise the module.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import signal
import subprocess
import sys
from typing import Any

SWAPS = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
         ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def mutation_points(tree: ast.AST, low: int, high: int) -> list[tuple[str, int, int, int]]:
    """(kind, line, index of the node in ast.walk order, operator index) for each mutation."""
    points = []
    for index, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", 0)
        if not low <= line <= high:
            continue
        if isinstance(node, ast.Compare):
            points += [("cmp", line, index, k) for k, op in enumerate(node.ops) if type(op) in SWAPS]
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            points.append(("not", line, index, 0))
        elif isinstance(node, ast.BoolOp):
            points.append(("bool", line, index, 0))
    return points


def mutant(tree: ast.AST, kind: str, index: int, k: int) -> str:
    """The module's source with one mutation applied (comments are not kept)."""
    copied = copy.deepcopy(tree)
    target: Any = list(ast.walk(copied))[index]
    if kind == "cmp":
        target.ops[k] = SWAPS[type(target.ops[k])]()
    elif kind == "not":
        target.test = ast.UnaryOp(op=ast.Not(), operand=target.test)
    else:
        target.op = ast.Or() if isinstance(target.op, ast.And) else ast.And()
    return ast.unparse(ast.fix_missing_locations(copied))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="the file to mutate, e.g. trt_multidev_backend/updates.py")
    parser.add_argument("tests", nargs="+", help="pytest arguments: the tests that exercise it")
    parser.add_argument("--lines", default=None, help="only lines LOW-HIGH")
    parser.add_argument("--only", default="", help="only these mutations, kind:line,... (as printed)")
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per test run (over it: killed)")
    args = parser.parse_args()
    source = open(args.module).read()
    tree = ast.parse(source)
    low, high = (map(int, args.lines.split("-")) if args.lines else (1, len(source.splitlines())))
    points = mutation_points(tree, low, high)
    only = {tuple(item.split(":")) for item in args.only.split(",") if item}
    if only:
        points = [p for p in points if (p[0], str(p[1])) in only]
    lines = source.splitlines()
    results = []

    def restore(*_: Any) -> None:
        with open(args.module, "w") as f:
            f.write(source)
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, restore)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    try:
        for kind, line, index, k in points:
            with open(args.module, "w") as f:
                f.write(mutant(tree, kind, index, k))
            try:
                run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args.tests],
                                     capture_output=True, text=True, timeout=args.timeout, env=env)
                killed = run.returncode != 0
            except subprocess.TimeoutExpired:
                killed = True
            text = lines[line - 1].strip()
            results.append({"kind": kind, "line": line, "killed": killed, "text": text})
            print("killed  " if killed else "SURVIVED", f"{kind}:{line}", text[:110], flush=True)
    finally:
        with open(args.module, "w") as f:
            f.write(source)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    survived = sum(not r["killed"] for r in results)
    print(f"{len(results) - survived} killed, {survived} survived", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
