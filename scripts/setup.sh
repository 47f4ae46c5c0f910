#!/usr/bin/env bash
# Installs what building and testing Synod needs on a fresh Debian machine with Rust. Idempotent and quiet when
# everything is already there. Why system RocksDB: the bundled C++ build costs 15-17 minutes on 2 cores;
# `rocksdb = "=0.20.1"` links Debian's librocksdb-dev 7.8 in ~20 s (see docs/ARCHITECTURE.md, "Build").
#
#   scripts/setup.sh [--test]    --test: also what only the tests need (Debian's chromium and playwright-core from
#                                npm, for the dashboard test in a browser)
set -euo pipefail
cd "$(dirname "$0")/.."
FOR_TESTS=0
[ "${1:-}" = --test ] && FOR_TESTS=1

APT_PACKAGES=(librocksdb-dev libclang-dev clang pkg-config curl)
((FOR_TESTS)) && APT_PACKAGES+=(chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pip_install() {
    python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}

# The independent COSE receipt check (node/core/tests/verify_receipt_pycose.py) uses pycose; pycose 1.1 cannot
# decode with cbor2 6.x, hence the pin. The OpenAPI documents are checked with openapi-spec-validator.
if ! python3 -c 'import pycose, cbor2, cryptography, openapi_spec_validator' 2>/dev/null; then
    echo "setup: installing pycose, cbor2<6, cryptography, openapi-spec-validator" >&2
    pip_install 'pycose==1.1.0' 'cbor2<6' cryptography openapi-spec-validator
fi
# CCF's own receipt verifiers (tests/scripts/verify_receipt_ccf.py). --no-deps: the package pins cryptography<47,
# packaging<26 and setuptools<81 for its CLI tools, which the receipt and COSE modules do not need; they need only
# cryptography, pycose and cbor2, installed above.
if ! python3 -c 'import ccf.receipt, ccf.cose' 2>/dev/null; then
    echo "setup: installing ccf==6.0.28 (CCF's Python package, receipt verifiers)" >&2
    pip_install --no-deps 'ccf==6.0.28'
fi
# The dashboard test drives Debian's chromium with playwright-core, which downloads no browser of its own.
if ((FOR_TESTS)) && [ ! -d tests/dashboard/node_modules/playwright-core ]; then
    echo "setup: installing playwright-core (npm, tests/dashboard)" >&2
    (cd tests/dashboard && npm ci --no-audit --no-fund --silent)
fi
