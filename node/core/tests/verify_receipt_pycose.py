#!/usr/bin/env python3
"""Independent check of a Synod COSE receipt with pycose + cryptography (no Synod code involved).

Usage: verify_receipt_pycose.py RECEIPT_FILE SERVICE_CERT_PEM
Recomputes the leaf from the proof's leaf components, folds the inclusion path into the Merkle root, and verifies
the COSE_Sign1 signature with the root as detached payload. Exits 0 and prints the root if valid, 1 otherwise.
"""
import hashlib
import sys

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P256, P384, Ed25519
from pycose.messages import Sign1Message

VDS, VDP, INCLUSION_PROOFS = 395, 396, -1


def cose_key(public_key):
    """The pycose key of the service certificate's key: EC2 on P-384 (CCF's curve) or P-256, or OKP Ed25519."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return OKPKey(crv=Ed25519, x=raw)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        numbers = public_key.public_numbers()
        size = (public_key.curve.key_size + 7) // 8
        curve = {"secp384r1": P384, "secp256r1": P256}[public_key.curve.name]
        return EC2Key(crv=curve, x=numbers.x.to_bytes(size, "big"), y=numbers.y.to_bytes(size, "big"))
    raise SystemExit(f"unsupported service key {type(public_key).__name__}")


def main():
    receipt = open(sys.argv[1], "rb").read()
    cert = x509.load_pem_x509_certificate(open(sys.argv[2], "rb").read())

    msg = Sign1Message.decode(receipt)
    phdr = {getattr(k, "identifier", k): v for k, v in msg.phdr.items()}
    uhdr = {getattr(k, "identifier", k): v for k, v in msg.uhdr.items()}
    if phdr.get(VDS) != 2:
        raise SystemExit(f"vds is {phdr.get(VDS)!r}, expected 2 (CCF ledger)")
    roots = set()
    for proof_bytes in uhdr[VDP][INCLUSION_PROOFS]:
        proof = cbor2.loads(proof_bytes)
        write_set_digest, commit_evidence, claims_digest = proof[1]
        h = hashlib.sha256(
            write_set_digest + hashlib.sha256(commit_evidence.encode()).digest() + claims_digest
        ).digest()
        for left, sibling in proof[2]:
            h = hashlib.sha256(sibling + h if left else h + sibling).digest()
        roots.add(h)
    if len(roots) != 1:
        raise SystemExit("proofs disagree on the root")
    root = roots.pop()
    msg.payload = root
    msg.key = cose_key(cert.public_key())
    if not msg.verify_signature():
        raise SystemExit("signature does not verify")
    print(f"valid receipt, root {root.hex()}")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # any decoding failure means the receipt is refused
        raise SystemExit(f"invalid receipt: {type(e).__name__}: {e}")
