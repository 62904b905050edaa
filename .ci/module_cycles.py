#!/usr/bin/env python3
"""Import cycles between the files of src/: a file depends on another when it names
`crate::a::b` (in a `use` or a path) that lives in that file. Prints every cycle (strongly
connected component of more than one file) and exits 1 if there is any.

Usage: python3 .ci/module_cycles.py [src]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
root = os.path.normpath(root)

# module path (tuple) -> file
modules = {}
for dirpath, _, files in os.walk(root):
    for name in files:
        # Unit tests (a folder's tests.rs) may use anything.
        if not name.endswith(".rs") or name == "tests.rs":
            continue
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib", "main"):
            rel = rel[:-1]
        if rel and rel[0] == "bin":
            continue
        modules[tuple(rel)] = path


def strip_comments(text):
    """Comments (doc links included) name items without depending on them."""
    return re.sub(r"//[^\n]*", "", text)


def strip_tests(text):
    # Drop `#[cfg(test)] mod tests { ... }` blocks and `mod tests;` lines: tests may use anything.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    out.append(text[i:])
    return "".join(out)


DEFINES = {}


def defined_in(mod, item):
    """The file under `mod` (itself or a submodule) that defines `item`, if one does: a name
    re-exported by a folder's mod.rs belongs to the file that defines it."""
    key = (mod, item)
    if key not in DEFINES:
        pattern = re.compile(
            r"^\s*pub(?:\([^)]*\))?\s+(?:async\s+)?(?:struct|enum|fn|type|trait|const|static|mod)\s+"
            + re.escape(item) + r"\b", re.M)
        found = None
        for other, path in modules.items():
            if other[:len(mod)] != mod:
                continue
            if pattern.search(strip_tests(open(path, encoding="utf-8").read())):
                if found is None or len(other) < len(found):
                    found = other
        DEFINES[key] = found or mod
    return DEFINES[key]


def resolve(parts):
    """The file of `parts`: the longest module prefix that is a file, then (for a name it
    re-exports) the file under it that defines the name."""
    for n in range(len(parts), -1, -1):
        if tuple(parts[:n]) in modules:
            mod = tuple(parts[:n])
            if n < len(parts):
                return defined_in(mod, parts[n])
            return mod
    return ()


def expand_use(body):
    """`a::{b, c::{d}}` -> [a::b, a::c::d] (good enough for this crate's use lines)."""
    body = re.sub(r"\s+", "", body)
    def walk(prefix, s):
        res = []
        depth, start = 0, 0
        items = []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:k])
                start = k + 1
        items.append(s[start:])
        for item in items:
            if not item:
                continue
            if "{" in item:
                head, rest = item.split("{", 1)
                res += walk(prefix + head, rest[:-1])
            else:
                res.append(prefix + item.split("as")[0] if "::" in item or prefix else prefix + item)
        return res
    return walk("", body)


edges = {m: set() for m in modules}
for mod, path in modules.items():
    text = strip_comments(strip_tests(open(path, encoding="utf-8").read()))
    targets = []
    for m in re.finditer(r"\buse\s+crate::([^;]+);", text):
        targets += expand_use(m.group(1))
    for m in re.finditer(r"\bcrate::((?:\w+::)*\w+)", text):
        targets.append(m.group(1))
    # `use super::x` inside a folder
    for m in re.finditer(r"\buse\s+super::([^;]+);", text):
        base = list(mod[:-1]) if not path.endswith("mod.rs") else list(mod[:-1])
        for t in expand_use(m.group(1)):
            targets.append("::".join(base + [t]))
    for t in targets:
        parts = [p for p in t.split("::") if p and p not in ("self", "*")]
        dep = resolve(parts)
        if dep and dep != mod:
            edges[mod].add(dep)

# Tarjan's strongly connected components.
index, low, stack, on, sccs = {}, {}, [], set(), []
counter = [0]
sys.setrecursionlimit(10000)


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)


for v in modules:
    if v not in index:
        strong(v)

name = lambda m: os.path.relpath(modules[m], root)
found = bool(sccs)
for comp in sccs:
    print(f"cycle of {len(comp)} files:")
    for m in sorted(comp, key=name):
        inside = sorted(name(d) for d in edges[m] if d in comp)
        print(f"  {name(m)} -> {', '.join(inside)}")

# The same between the top-level modules (a folder counts as one): siblings that import each
# other, however many files the path goes through.
top = lambda m: m[0] if m else "lib"
folder_edges = {}
for m, deps in edges.items():
    for d in deps:
        if top(m) != top(d):
            folder_edges.setdefault(top(m), set()).add(top(d))
nodes = sorted(set(top(m) for m in modules))
edges = {n: folder_edges.get(n, set()) for n in nodes}
index, low, stack, on, sccs = {}, {}, [], set(), []
counter = [0]
for v in nodes:
    if v not in index:
        strong(v)
for comp in sccs:
    found = True
    print(f"cycle of {len(comp)} top-level modules:")
    for m in sorted(comp):
        print(f"  {m} -> {', '.join(sorted(d for d in edges[m] if d in comp))}")
if found:
    sys.exit(1)
print(f"no import cycle among {len(modules)} files of {root}, nor among its top-level modules")
