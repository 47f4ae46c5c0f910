#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what is missing, checks formatting and lints, builds
# the binaries the end-to-end tests start, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
# The dependency graph docs/ARCHITECTURE.md writes down: crates, module layers, no cycles.
python3 scripts/check-deps.py
# The Kubernetes manifests and pod scripts, offline (docs/KUBERNETES.md).
./scripts/check-deploy.sh
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# Generated requests against the OpenAPI documents: no 5xx (docs/API.md).
./scripts/check-api.sh
# The dashboard in headless Chromium (Playwright): network, proposals, a receipt verified in the browser.
./scripts/check-dashboard.sh
cargo test --workspace
# A short run of the seeded cluster simulation (docs/RELIABILITY.md has the long ones).
"$(./scripts/target-dir.sh)/debug/synod-sim" --seeds 200 --steps 1500
