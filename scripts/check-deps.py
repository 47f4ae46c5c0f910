#!/usr/bin/env python3
"""Checks Synod's dependency graph against the one written in docs/ARCHITECTURE.md ("Dependency graph").

Two levels, as CCF's source-dependencies check does for its tree:
- crates: each workspace crate's normal (not dev) dependencies on other workspace crates must be among those the
  graph allows it;
- modules: in every crate, the top-level modules' uses of each other (`crate::x`) must form no cycle, and in the
  crates the graph gives layers for, a module may use only modules of lower layers.

Test code is not checked: files declared `#[cfg(test)] mod x;`, `tests.rs` files, inline `#[cfg(test)] mod x {}`
blocks, and comments (doc links are not dependencies). Exits 1 with one line per violation.
"""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "ARCHITECTURE.md")
MARK = "<!-- dependency-graph: checked by scripts/check-deps.py -->"


def read_graph():
    """The allowed graph from the doc: `crate NAME: DEPS...` and `layer SRC_DIR N: MODULES...` lines."""
    text = open(DOC, encoding="utf-8").read()
    start = text.find(MARK)
    if start < 0:
        sys.exit(f"{DOC}: no '{MARK}' block")
    block = text[start:].split("```", 2)[1].split("\n", 1)[1]  # after the fence's language tag
    crates, layers = {}, {}
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"crate ([\w-]+):(.*)", line)
        if m:
            crates[m.group(1)] = set(m.group(2).split())
            continue
        m = re.fullmatch(r"layer ([\w/]+) (\d+):(.*)", line)
        if m:
            for module in m.group(3).split():
                layers.setdefault(m.group(1), {})[module] = int(m.group(2))
            continue
        sys.exit(f"{DOC}: cannot read dependency-graph line {line!r}")
    return crates, layers


def crate_edges():
    meta = json.loads(
        subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT)
    )
    names = {p["name"] for p in meta["packages"]}
    out = {}
    for p in meta["packages"]:
        src = os.path.dirname(p["manifest_path"])
        deps = {d["name"] for d in p["dependencies"] if d["name"] in names and d["kind"] is None}
        out[p["name"]] = (deps, os.path.join(src, "src"))
    return out


TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+(\w+)\s*;")
INLINE_TEST = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+\w+\s*\{")


def strip(src):
    """Source without comments and inline test modules."""
    src = "\n".join(uncommented(line) for line in src.split("\n"))
    while True:
        m = INLINE_TEST.search(src)
        if not m:
            return src
        src = src[: m.start()] + src[block_end(src, m.end() - 1) :]


def uncommented(line):
    """A line without its `//` comment. Comments here start a line or follow a space; a `//` inside a string
    (a URL) follows a colon, or sits after an odd number of quotes."""
    for m in re.finditer(r"(?:^|\s)//", line):
        if line.count('"', 0, m.start()) % 2 == 0:
            return line[: m.start()]
    return line


def block_end(src, open_brace):
    """The index after the brace closing the one at `open_brace` (string and char literals skipped)."""
    depth, i = 0, open_brace
    while i < len(src):
        ch = src[i]
        if src.startswith('r#"', i):
            end = src.find('"#', i + 3)
            i = len(src) if end < 0 else end + 1
        elif ch == "'" and src[i + 1 : i + 2] == "\\":
            end = src.find("'", i + 3)
            i = len(src) if end < 0 else end
        elif ch == "'" and src[i + 2 : i + 3] == "'":
            i += 2
        elif ch == '"':
            i += 1
            while i < len(src) and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(src)


def module_files(src_dir):
    """(top-level module, path) for every non-test file of a crate's src directory."""
    skipped = set()
    files = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames.sort()
        for f in sorted(filenames):
            if f.endswith(".rs"):
                files.append(os.path.join(dirpath, f))
    for path in files:
        for name in TEST_MOD.findall(open(path, encoding="utf-8").read()):
            base = os.path.splitext(path)[0] if not path.endswith(("mod.rs", "lib.rs", "main.rs")) else os.path.dirname(path)
            skipped.add(os.path.join(base, name + ".rs"))
            skipped.add(os.path.join(base, name))
    out = []
    for path in files:
        rel = os.path.relpath(path, src_dir)
        if os.path.basename(path) == "tests.rs" or any(path == s or path.startswith(s + os.sep) for s in skipped):
            continue
        parts = rel[:-3].split(os.sep)
        if parts[0] in ("lib", "main", "bin"):
            continue  # the crate root and binaries sit above every module
        out.append((parts[0], path))
    return out


USE_GROUP = re.compile(r"\buse crate::\{(.*?)\};", re.S)
PATH = re.compile(r"\bcrate::(\w+)")


def leading_names(group):
    """The first name of each item of a `use crate::{...}` group: `a::b, c::{d, e}, self` gives a, c."""
    items, depth, item = [], 0, ""
    for ch in group + ",":
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            items.append(item)
            item = ""
        else:
            item += ch
    names = (re.match(r"\s*(\w+)", i) for i in items)
    return {m.group(1) for m in names if m and m.group(1) != "self"}


def module_edges(src_dir):
    edges = {}
    for module, path in module_files(src_dir):
        src = strip(open(path, encoding="utf-8").read())
        targets = set(PATH.findall(src))
        for group in USE_GROUP.findall(src):
            targets.update(leading_names(group))
        edges.setdefault(module, set()).update(t for t in targets if t != module)
    return edges


def cycles(edges):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main():
    allowed_crates, layers = read_graph()
    errors = []
    crates = crate_edges()
    for name, (deps, src_dir) in sorted(crates.items()):
        if name not in allowed_crates:
            errors.append(f"crate {name}: not in the dependency graph ({DOC})")
            continue
        for d in sorted(deps - allowed_crates[name]):
            errors.append(f"crate {name} depends on {d}: not allowed by the dependency graph")
        if not os.path.isdir(src_dir):
            continue
        edges = module_edges(src_dir)
        rel = os.path.relpath(src_dir, ROOT)
        for comp in cycles(edges):
            errors.append(f"{rel}: modules in a cycle: {' <-> '.join(comp)}")
        layer = layers.get(rel)
        if layer is None:
            continue
        for module in sorted(edges):
            if module not in layer:
                errors.append(f"{rel}: module {module} has no layer in the dependency graph")
                continue
            for t in sorted(edges[module]):
                if t in layer and layer[t] >= layer[module]:
                    errors.append(
                        f"{rel}: {module} (layer {layer[module]}) uses {t} (layer {layer[t]}): "
                        "a module may use only lower layers"
                    )
    for e in errors:
        print(e)
    if errors:
        sys.exit(1)
    print(f"dependency graph: {len(crates)} crates and their modules as {os.path.relpath(DOC, ROOT)} allows")


if __name__ == "__main__":
    main()
