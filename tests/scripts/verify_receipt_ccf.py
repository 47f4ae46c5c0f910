#!/usr/bin/env python3
"""Verifies a Synod receipt with CCF's own verifiers, from the `ccf` PyPI package, unchanged.

Usage:
  verify_receipt_ccf.py json RECEIPT.json SERVICE_CERT.pem
  verify_receipt_ccf.py cose RECEIPT.cose SERVICE_CERT.pem CLAIMS_DIGEST_HEX

JSON: the leaf is computed from the receipt's leaf components as CCF's documentation says, then
`ccf.receipt.root` + `ccf.receipt.verify` (the node's signature over the root) + `ccf.receipt.check_endorsements`
(the node certificate endorsed by the service certificate). COSE: `ccf.cose.verify_receipt` with the service
certificate's public key. Exits 0 and prints the root if valid; any exception means refused (exit 1).
"""
import base64
import hashlib
import json
import sys

import ccf.cose
import ccf.receipt
from cryptography.x509 import load_pem_x509_certificate


def verify_json(receipt, service_cert):
    lc = receipt["leaf_components"]
    leaf = hashlib.sha256(
        bytes.fromhex(lc["write_set_digest"])
        + hashlib.sha256(lc["commit_evidence"].encode()).digest()
        + bytes.fromhex(lc["claims_digest"])
    ).hexdigest()
    root = ccf.receipt.root(leaf, receipt["proof"])
    node_cert = load_pem_x509_certificate(receipt["cert"].encode())
    ccf.receipt.verify(root, receipt["signature"], node_cert)
    endorsements = [load_pem_x509_certificate(e.encode()) for e in receipt.get("service_endorsements", [])]
    ccf.receipt.check_endorsements(node_cert, service_cert, endorsements)
    return root


def main():
    mode, path, cert_path = sys.argv[1:4]
    service_cert = load_pem_x509_certificate(open(cert_path, "rb").read())
    data = open(path, "rb").read()
    if mode == "json":
        root = verify_json(json.loads(data), service_cert)
    elif mode == "cose":
        claims_digest = bytes.fromhex(sys.argv[4])
        ccf.cose.verify_receipt(data, service_cert.public_key(), claims_digest)
        root = "(COSE)"
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"valid receipt (ccf package), root {root}")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # any failure inside CCF's verifiers means the receipt is refused
        raise SystemExit(f"refused by ccf: {type(e).__name__}: {e}")
