#!/usr/bin/env bash
# Prints the directory cargo builds into (CARGO_TARGET_DIR, build.target-dir in a cargo config, else ./target),
# so that scripts run the binaries they just built wherever those went.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
