#!/usr/bin/env python3
"""Lists the functions of the workspace's crates longer than a bound (default 70 lines), longest first.

A function's length is the lines of its `fn` item, from `fn` to its closing brace. Tests are left out: files named
`tests.rs`, test modules' files (`sim.rs`, `testing.rs`, `*/tests/*`, `*/scenarios/*`) and functions marked
`#[test]` or `#[tokio::test]`. Usage: `python3 scripts/long-functions.py [MIN_LINES] [ROOT]`.
"""

import os
import re
import sys

SKIP_FILES = {"tests.rs", "sim.rs", "testing.rs"}
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        attrs = []
        k = i - 1
        while k >= 0 and (lines[k].strip().startswith("#[") or lines[k].strip().startswith("///")):
            attrs.append(lines[k].strip())
            k -= 1
        if any(a.startswith("#[test]") or a.startswith("#[tokio::test") for a in attrs):
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j] == indent + "}":
                yield j - i + 1, m.group(7), i + 1
                break


def main():
    bound = int(sys.argv[1]) if len(sys.argv) > 1 else 70
    root = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("target", "tests", "scenarios", ".git", "node_modules")]
        if "/src" not in dirpath.replace(root, "", 1) and not dirpath.endswith("src"):
            continue
        for f in filenames:
            if f.endswith(".rs") and f not in SKIP_FILES:
                path = os.path.join(dirpath, f)
                for n, name, line in functions(path):
                    if n > bound:
                        found.append((n, os.path.relpath(path, root), line, name))
    for n, path, line, name in sorted(found, reverse=True):
        print(f"{n:5}  {path}:{line}  {name}")
    print(f"{len(found)} functions over {bound} lines")


if __name__ == "__main__":
    main()
