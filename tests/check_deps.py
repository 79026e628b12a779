#!/usr/bin/env python3
"""check_deps: dependencies between the modules of src/ and tools/ point one
way (README, Layout): no two modules depend on each other, directly or round
a longer circle.

A module is a base name: src/pod.c and src/pod.h are the module `pod`; a
header without a .c (src/common.h, tools/cli.h) is a module of its own.
Two graphs are checked, each must be acyclic:
 1. includes: module A depends on B when A's .c or .h has #include "B.h"
    (quoted includes that name a file of src/ or tools/; include/hugevm.h
    and guest/ headers are outside);
 2. calls among the tools (with a build directory): module A depends on B
    when A's object file uses a function or object that B's defines (nm).
    Two commands calling each other through cli.h declarations are a
    circle even though neither includes the other.
Every circle fails, with no list of exceptions: the last one (guest <->
kvm, the backend contract) moved into guest_exec.h.
Output is TAP, one case per graph, for scripts/run-tests.sh; a failing
case prints one circle.

usage: check_deps.py SOURCE_DIR [BUILD_DIR]
"""
import os
import re
import subprocess
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def modname(path):
    return os.path.splitext(os.path.basename(path))[0]


def include_graph(src):
    files = {}
    for d in ("src", "tools"):
        for f in sorted(os.listdir(os.path.join(src, d))):
            if f.endswith((".c", ".h")):
                files[os.path.join(d, f)] = os.path.join(src, d, f)
    headers = {os.path.basename(p): p for p in files if p.endswith(".h")}
    g = {}
    for rel, full in files.items():
        m = modname(rel)
        g.setdefault(m, set())
        with open(full, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        for inc in INCLUDE.findall(text):
            if "/" in inc or inc not in headers:
                continue  # ../guest/..., hugevm.h (include/), generated headers
            t = modname(inc)
            if t != m:
                g[m].add(t)
    return g


def symbol_graph(build):
    objdir = os.path.join(build, "tools", "hugevm.p")
    if not os.path.isdir(objdir):
        return None
    defs, uses = {}, {}
    for f in sorted(os.listdir(objdir)):
        if not f.endswith(".c.o"):
            continue
        m = f[:-len(".c.o")]
        out = subprocess.run(["nm", "-P", os.path.join(objdir, f)], check=True,
                             capture_output=True, text=True).stdout
        uses[m] = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            sym, kind = parts[0], parts[1]
            if kind == "U":
                uses[m].add(sym)
            elif kind in "TDBRCV" or kind in "W":
                defs.setdefault(sym, m)
    g = {m: set() for m in uses}
    for m, syms in uses.items():
        for s in syms:
            t = defs.get(s)
            if t is not None and t != m:
                g[m].add(t)
    return g


def find_cycle(g):
    """One circle of g as a list of modules, or None."""
    state = {}
    stack = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                c = visit(t)
                if c:
                    return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    sys.setrecursionlimit(10000)
    src = sys.argv[1]
    build = sys.argv[2] if len(sys.argv) > 2 else None
    failed = 0
    n = 0
    print("1..2")
    n += 1
    c = find_cycle(include_graph(src))
    if c:
        failed += 1
        print("# include circle: " + " -> ".join(c))
        print(f"not ok {n} - src/ and tools/ modules include each other")
    else:
        print(f"ok {n} - no include circle among the modules of src/ and tools/")
    n += 1
    g = symbol_graph(build) if build else None
    if g is None:
        print("# no build directory with tools/hugevm.p objects")
        print(f"ok {n} # SKIP tools call graph")
    else:
        c = find_cycle(g)
        if c:
            failed += 1
            print("# call circle: " + " -> ".join(c))
            print(f"not ok {n} - tools/ modules call each other")
        else:
            print(f"ok {n} - no call circle among the modules of tools/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
