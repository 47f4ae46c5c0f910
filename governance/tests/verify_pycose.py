#!/usr/bin/env python3
"""Independent check of a Synod governance request (COSE_Sign1) with pycose + cryptography (no Synod code involved).

Usage: verify_pycose.py REQUEST_FILE MEMBER_CERT_PEM
Checks the CCF governance protected headers (alg, kid = hex SHA-256 of the certificate's DER, ccf.gov.msg.type,
ccf.gov.msg.created_at, ccf.gov.msg.proposal_id for ballots and withdrawals) and verifies the signature with the
certificate's public key (Ed25519 -> EdDSA, P-384 -> ES384). Exits 0 and prints the headers if valid, 1 otherwise.
"""
import hashlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P384, Ed25519
from pycose.messages import Sign1Message

MSG_TYPES = {"proposal", "ballot", "withdrawal", "state_digest", "ack", "encrypted_recovery_share", "recovery_share"}
ALG_NAMES = {-8: "EdDSA", -35: "ES384"}


def main():
    request = open(sys.argv[1], "rb").read()
    cert_pem = open(sys.argv[2], "rb").read()
    cert = x509.load_pem_x509_certificate(cert_pem)
    member_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    if request[0] != 0xD2:
        raise SystemExit("not a tagged COSE_Sign1 (tag 18)")
    msg = Sign1Message.decode(request)
    phdr = {getattr(k, "identifier", k): v for k, v in msg.phdr.items()}
    alg = getattr(phdr.get(1), "identifier", phdr.get(1))
    kid = phdr.get(4)
    msg_type = phdr.get("ccf.gov.msg.type")
    created_at = phdr.get("ccf.gov.msg.created_at")
    proposal_id = phdr.get("ccf.gov.msg.proposal_id")

    if kid != member_id.encode():
        raise SystemExit(f"kid {kid!r} is not the member id {member_id}")
    if msg_type not in MSG_TYPES:
        raise SystemExit(f"unknown message type {msg_type!r}")
    if not isinstance(created_at, int) or created_at < 0:
        raise SystemExit(f"created_at {created_at!r} is not an unsigned integer")
    if (msg_type in ("ballot", "withdrawal")) != isinstance(proposal_id, str):
        raise SystemExit(f"proposal_id {proposal_id!r} wrong for a {msg_type}")

    public_key = cert.public_key()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        if alg != -8:
            raise SystemExit(f"alg {alg} with an Ed25519 key")
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        msg.key = OKPKey(crv=Ed25519, x=raw)
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP384R1):
        if alg != -35:
            raise SystemExit(f"alg {alg} with a P-384 key")
        numbers = public_key.public_numbers()
        msg.key = EC2Key(crv=P384, x=numbers.x.to_bytes(48, "big"), y=numbers.y.to_bytes(48, "big"))
    else:
        raise SystemExit("unsupported member key")
    if not msg.verify_signature():
        raise SystemExit("signature does not verify")
    print(
        f"valid request type={msg_type} alg={ALG_NAMES[alg]} kid={member_id} created_at={created_at} "
        f"proposal_id={proposal_id} payload_bytes={len(msg.payload)}"
    )


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # any decoding or verification failure means the request is refused
        raise SystemExit(f"invalid request: {type(e).__name__}: {e}")
