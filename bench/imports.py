"""python -m bench.imports: the import graph of the packages, read from their source (AST).

Every `import` and `from ... import` in compress, images, hw, tb, fpga and bench, resolved to
the module it names (relative imports included; `from pkg import name` is the module pkg.name
when that is a module, else pkg). Printed:

* the package graph: for every pair of packages, how many imports go from one to the other;
  data flows compress -> images -> hw -> tb -> fpga -> bench, so a module that imports one of
  a later stage is a back-arrow;
* the circles: groups of modules that import each other (strongly connected components of the
  module graph, imports in functions included: they are circles the moment both run);
* how many imports sit inside functions, not at the head of their module.

`--json PATH` writes the same figures as JSON. Nothing is imported or run: the files are parsed.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "images", "hw", "tb", "fpga", "bench")  # in the order data flows


def modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module `name` names, or the nearest package above it that is one of ours."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports(mods: dict[str, Path], every: list | None = None) -> list[tuple[str, str, bool]]:
    """(importer, imported, in_function) for every import of one of our modules; `every`, if
    given, gets (importer, in_function) for every imported name, ours or not."""
    edges = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rpartition(".")[0]

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if every is not None and isinstance(child, (ast.Import, ast.ImportFrom)):
                    if not (isinstance(child, ast.ImportFrom) and child.module == "__future__"):
                        every.extend((mod, in_function) for _ in child.names)
                if isinstance(child, ast.Import):
                    for a in child.names:
                        target = _resolve(a.name, mods)
                        if target:
                            edges.append((mod, target, in_function))
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = here
                        for _ in range(child.level - 1):
                            base = base.rpartition(".")[0]
                        base = f"{base}.{child.module}" if child.module else base
                    else:
                        base = child.module or ""
                    for a in child.names:
                        target = _resolve(f"{base}.{a.name}", mods) if f"{base}.{a.name}" in mods \
                            else _resolve(base, mods)
                        if target:
                            edges.append((mod, target, in_function))
                visit(child, inner)

        visit(tree, False)
    return [(a, b, f) for a, b, f in edges if a != b]


def circles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = defaultdict(set)
    for a, b, _f in edges:
        graph[a].add(b)
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def package(mod: str) -> str:
    return mod.split(".", 1)[0]


def report(root: Path = REPO) -> dict:
    mods = modules(root)
    every: list = []
    edges = imports(mods, every)
    pk = defaultdict(int)
    back = []
    for a, b, _f in edges:
        pa, pb = package(a), package(b)
        if pa != pb:
            pk[pa, pb] += 1
            if PACKAGES.index(pb) > PACKAGES.index(pa):
                back.append((a, b))
    total = len(edges)
    inner = sum(1 for e in edges if e[2])
    return {
        "modules": len(mods),
        "imports": total,
        "in_functions": inner,
        "in_functions_share": inner / total if total else 0.0,
        "all_imports": len(every),
        "all_in_functions": sum(1 for _m, f in every if f),
        "packages": {f"{a} -> {b}": n for (a, b), n in sorted(
            pk.items(), key=lambda kv: (PACKAGES.index(kv[0][0]), PACKAGES.index(kv[0][1])))},
        "back_arrows": sorted(set(back)),
        "circles": circles(edges),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.imports", description=__doc__.split("\n")[0])
    p.add_argument("--json", help="also write the figures as JSON")
    args = p.parse_args(argv)
    r = report()
    print(f"{r['modules']} modules, {r['imports']} imports of our own modules, "
          f"{r['in_functions']} ({100 * r['in_functions_share']:.0f}%) inside functions; "
          f"{r['all_imports']} imported names in all (libraries too), "
          f"{r['all_in_functions']} ({100 * r['all_in_functions'] / max(r['all_imports'], 1):.0f}%)"
          " inside functions")
    print("package graph (imports from -> to; data flows " + " -> ".join(PACKAGES)
          + ", so an import of a later stage is a back-arrow):")
    for k, n in r["packages"].items():
        a, b = k.split(" -> ")
        mark = "   BACK-ARROW" if PACKAGES.index(b) > PACKAGES.index(a) else ""
        print(f"  {k:<22} {n:4d}{mark}")
    print(f"back-arrows (module -> module): {len(r['back_arrows'])}")
    for a, b in r["back_arrows"]:
        print(f"  {a} -> {b}")
    print(f"circles: {len(r['circles'])}")
    for c in r["circles"]:
        print("  " + " <-> ".join(c))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
