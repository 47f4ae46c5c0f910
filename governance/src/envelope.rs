//! The COSE_Sign1 envelope of every governance request (RFC 9052), as CCF defines it (api-version
//! 2023-06-01-preview / 2024-07-01).
//!
//! A member signs each request with its own key; the payload is attached (the JSON body, an empty byte string for a
//! withdrawal) and the message is tagged (18). The protected header carries:
//!
//! | label | value |
//! |---|---|
//! | `1` (alg) | `-35` ES384 (ECDSA P-384 keys, CCF's default; raw `r‖s`, 96 bytes), `-7` ES256 (P-256; 64 bytes) or `-8` EdDSA (Ed25519) |
//! | `4` (kid) | the member id, lower-case hex SHA-256 of the member certificate's DER, as a bstr of those ASCII bytes |
//! | `"ccf.gov.msg.type"` | `proposal`, `ballot`, `withdrawal`, `state_digest`, `ack`, `encrypted_recovery_share`, `recovery_share` |
//! | `"ccf.gov.msg.created_at"` | unsigned integer, seconds since the Unix epoch |
//! | `"ccf.gov.msg.proposal_id"` | text; required for `ballot` and `withdrawal`, absent otherwise |
//!
//! [`parse`] checks the structure and the headers; [`verify`] also checks that the request was signed by the key
//! of a given member certificate. Parsing is lenient where CCF's clients differ (an untagged message, a text kid)
//! and strict where a difference could matter (duplicate labels, a `crit` header we do not understand, trailing
//! bytes). Everything signed is exactly what the node acts on: the protected header bytes and the payload as sent.
//!
//! ```
//! use synod_governance::envelope::{self, KeyKind, MemberKey, MsgType};
//!
//! let identity = envelope::generate_member("member0", KeyKind::P384).unwrap();
//! let cert_der = synod_core::cert::pem_to_der(&identity.cert_pem).unwrap();
//! let key = MemberKey::from_pem(&identity.key_pem).unwrap();
//! let request = envelope::sign(&key, &cert_der, MsgType::Ballot, 1_700_000_000, Some("1a2b"), br#"{"ballot":"..."}"#).unwrap();
//! let verified = envelope::verify(&request, &cert_der).unwrap();
//! assert_eq!(verified.msg_type, MsgType::Ballot);
//! assert_eq!(verified.proposal_id.as_deref(), Some("1a2b"));
//! assert_eq!(verified.kid, envelope::member_id(&cert_der));
//! ```

use std::fmt;
use std::str::FromStr;

use coset::cbor::value::Value;
use coset::{iana, CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use sha2::{Digest as _, Sha256};
use synod_core::cert::Identity;
use synod_core::keys::{curve_name, key_algorithm_name, Curve, PrivateKey, PublicKey};

/// Protected header label of the message type.
pub const HEADER_MSG_TYPE: &str = "ccf.gov.msg.type";
/// Protected header label of the creation time (seconds since the Unix epoch).
pub const HEADER_CREATED_AT: &str = "ccf.gov.msg.created_at";
/// Protected header label of the proposal a ballot or withdrawal is about.
pub const HEADER_PROPOSAL_ID: &str = "ccf.gov.msg.proposal_id";
/// The `content-type` of a governance request.
pub const CONTENT_TYPE: &str = "application/cose";
/// CBOR tag of a COSE_Sign1.
pub const COSE_SIGN1_TAG: u64 = 18;

const LABEL_ALG: i128 = 1;
const LABEL_CRIT: i128 = 2;
const LABEL_KID: i128 = 4;
const ALG_EDDSA: i128 = -8;
const ALG_ES256: i128 = -7;
const ALG_ES384: i128 = -35;

const OID_ED25519: &str = "1.3.101.112";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";
const OID_SECP256R1: &str = "1.2.840.10045.3.1.7";

/// Why a governance request (or a member key or certificate) was refused. The node answers the request errors
/// with [`EnvelopeError::http_status`]; the `Display` text is meant to be shown to the member as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not a well-formed COSE_Sign1 (bad CBOR, wrong tag, wrong shape, detached payload, trailing bytes).
    #[error("malformed COSE_Sign1: {0}")]
    Malformed(String),
    /// A required protected header is absent (`header` names it, e.g. `ccf.gov.msg.created_at`).
    #[error("missing protected header {header}")]
    MissingHeader {
        /// The header's label and meaning.
        header: String,
    },
    /// A protected header is present but has the wrong type or value.
    #[error("invalid protected header {header}: {reason}")]
    InvalidHeader {
        /// The header's label.
        header: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `ccf.gov.msg.type` is not one of the message types CCF defines.
    #[error(
        "unknown governance message type {0:?} (expected proposal, ballot, withdrawal, state_digest, ack, \
         encrypted_recovery_share or recovery_share)"
    )]
    UnknownMsgType(String),
    /// The `alg` header names an algorithm governance does not accept (only ES384 -35, ES256 -7 and EdDSA -8).
    #[error("unsupported algorithm {0} (governance requests are signed with ES384 (-35), ES256 (-7) or EdDSA (-8))")]
    UnsupportedAlgorithm(String),
    /// The request is a valid envelope, but of another message type than the endpoint expects.
    #[error("wrong governance message type: expected {expected}, got {got}")]
    WrongMsgType {
        /// What the endpoint takes.
        expected: MsgType,
        /// What the request says.
        got: MsgType,
    },
    /// The request's proposal id is not the one in the request path.
    #[error("proposal id mismatch: the request is signed for {signed:?} but was sent for {expected:?}")]
    ProposalIdMismatch {
        /// The proposal named by the path.
        expected: String,
        /// The proposal named in the signed header.
        signed: String,
    },
    /// The `kid` is not the id of the certificate the request is checked against.
    #[error("kid {kid:?} is not the id of this member's certificate ({expected})")]
    WrongKid {
        /// The request's kid.
        kid: String,
        /// The certificate's member id.
        expected: String,
    },
    /// The `alg` header does not fit the certificate's key type.
    #[error("algorithm {alg} does not match the member's {key} key (expected {expected})")]
    AlgKeyMismatch {
        /// The request's algorithm.
        alg: Alg,
        /// The certificate's key type.
        key: KeyKind,
        /// The algorithm that key signs with.
        expected: Alg,
    },
    /// The signature does not verify with the member's key.
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// The certificate or private key is of a type governance does not support (ECDSA P-384 or P-256, Ed25519).
    #[error("unsupported member key: {0} (ECDSA P-384 or P-256 and Ed25519 keys are supported)")]
    UnsupportedKey(String),
    /// The member certificate does not parse.
    #[error("invalid member certificate: {0}")]
    InvalidCertificate(String),
    /// The private key does not parse.
    #[error("invalid member private key: {0}")]
    InvalidKey(String),
    /// The private key is not the key of the certificate it signs for.
    #[error("the private key does not belong to the member certificate {member_id}")]
    KeyCertMismatch {
        /// The certificate's member id.
        member_id: String,
    },
    /// The payload is not the JSON the endpoint expects.
    #[error("invalid request payload: {0}")]
    InvalidPayload(String),
    /// A certificate could not be generated.
    #[error("cannot generate the member identity: {0}")]
    Generate(String),
}

impl EnvelopeError {
    /// The HTTP status a node answers this error with: 401 when the request is well formed but not authentic
    /// (wrong kid, algorithm/key mismatch, bad signature, a member key governance does not support), 400 for
    /// everything else (malformed envelope, missing or invalid header, unknown or wrong message type, payload).
    pub fn http_status(&self) -> u16 {
        match self {
            EnvelopeError::WrongKid { .. }
            | EnvelopeError::AlgKeyMismatch { .. }
            | EnvelopeError::BadSignature(_)
            | EnvelopeError::UnsupportedKey(_)
            | EnvelopeError::InvalidCertificate(_)
            | EnvelopeError::KeyCertMismatch { .. } => 401,
            _ => 400,
        }
    }

    /// True for the errors that mean "not authentic" (those answered with 401).
    pub fn is_authentication_failure(&self) -> bool {
        self.http_status() == 401
    }

    fn missing(header: &str) -> EnvelopeError {
        EnvelopeError::MissingHeader {
            header: header.to_string(),
        }
    }

    fn invalid(header: &str, reason: impl Into<String>) -> EnvelopeError {
        EnvelopeError::InvalidHeader {
            header: header.to_string(),
            reason: reason.into(),
        }
    }
}

fn malformed(what: impl fmt::Display) -> EnvelopeError {
    EnvelopeError::Malformed(what.to_string())
}

/// The governance message types (`ccf.gov.msg.type`), with CCF's spelling from [`MsgType::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MsgType {
    /// `proposal`: create a proposal (payload `{"actions": [...]}`).
    Proposal,
    /// `ballot`: vote on a proposal (payload `{"ballot": "export function vote (proposal, proposerId) {...}"}`).
    Ballot,
    /// `withdrawal`: withdraw one's own proposal (empty payload).
    Withdrawal,
    /// `state_digest`: ask for (update) the member's state digest (empty payload).
    StateDigest,
    /// `ack`: acknowledge the state digest (payload `{"digest": hex}`), which activates a new member.
    Ack,
    /// `encrypted_recovery_share`: fetch the member's encrypted recovery share.
    EncryptedRecoveryShare,
    /// `recovery_share`: submit a recovery share.
    RecoveryShare,
}

impl MsgType {
    /// Every message type.
    pub const ALL: [MsgType; 7] = [
        MsgType::Proposal,
        MsgType::Ballot,
        MsgType::Withdrawal,
        MsgType::StateDigest,
        MsgType::Ack,
        MsgType::EncryptedRecoveryShare,
        MsgType::RecoveryShare,
    ];

    /// CCF's name of the type, as in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            MsgType::Proposal => "proposal",
            MsgType::Ballot => "ballot",
            MsgType::Withdrawal => "withdrawal",
            MsgType::StateDigest => "state_digest",
            MsgType::Ack => "ack",
            MsgType::EncryptedRecoveryShare => "encrypted_recovery_share",
            MsgType::RecoveryShare => "recovery_share",
        }
    }

    /// Whether messages of this type name a proposal (`ccf.gov.msg.proposal_id`): ballots and withdrawals.
    pub fn needs_proposal_id(self) -> bool {
        matches!(self, MsgType::Ballot | MsgType::Withdrawal)
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MsgType {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<MsgType, EnvelopeError> {
        MsgType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| EnvelopeError::UnknownMsgType(s.to_string()))
    }
}

/// The signature algorithms governance accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    /// EdDSA (COSE -8), with Ed25519 keys.
    EdDSA,
    /// ECDSA with SHA-384 (COSE -35), with P-384 keys; the signature is `r‖s`, 96 bytes.
    ES384,
    /// ECDSA with SHA-256 (COSE -7), with P-256 keys; the signature is `r‖s`, 64 bytes.
    ES256,
}

impl Alg {
    /// The COSE algorithm identifier.
    pub fn cose_id(self) -> i64 {
        match self {
            Alg::EdDSA => ALG_EDDSA as i64,
            Alg::ES384 => ALG_ES384 as i64,
            Alg::ES256 => ALG_ES256 as i64,
        }
    }

    /// The COSE name (`EdDSA`, `ES384`).
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES384 => "ES384",
            Alg::ES256 => "ES256",
        }
    }

    /// The key type this algorithm signs with.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Alg::EdDSA => KeyKind::Ed25519,
            Alg::ES384 => KeyKind::P384,
            Alg::ES256 => KeyKind::P256,
        }
    }

    fn iana(self) -> iana::Algorithm {
        match self {
            Alg::EdDSA => iana::Algorithm::EdDSA,
            Alg::ES384 => iana::Algorithm::ES384,
            Alg::ES256 => iana::Algorithm::ES256,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.cose_id())
    }
}

/// The member key types governance supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Ed25519 (signs EdDSA).
    Ed25519,
    /// ECDSA on NIST P-384 (signs ES384), CCF's default for members.
    P384,
    /// ECDSA on NIST P-256 (signs ES256).
    P256,
}

impl KeyKind {
    /// The algorithm keys of this type sign governance requests with.
    pub fn alg(self) -> Alg {
        match self {
            KeyKind::Ed25519 => Alg::EdDSA,
            KeyKind::P384 => Alg::ES384,
            KeyKind::P256 => Alg::ES256,
        }
    }

    /// The curve of keys of this type.
    pub fn curve(self) -> Curve {
        match self {
            KeyKind::Ed25519 => Curve::Ed25519,
            KeyKind::P384 => Curve::P384,
            KeyKind::P256 => Curve::P256,
        }
    }

    /// The key type of keys on `curve`.
    pub fn of_curve(curve: Curve) -> KeyKind {
        match curve {
            Curve::Ed25519 => KeyKind::Ed25519,
            Curve::P384 => KeyKind::P384,
            Curve::P256 => KeyKind::P256,
        }
    }

    /// The key type of a certificate's public key; [`EnvelopeError::UnsupportedKey`] for any other key.
    pub fn of_cert(cert_der: &[u8]) -> Result<KeyKind, EnvelopeError> {
        Ok(KeyKind::of_curve(cert_public_key(cert_der)?.curve()))
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::P384 => "ECDSA P-384",
            KeyKind::P256 => "ECDSA P-256",
        })
    }
}

/// A parsed governance request: its headers and payload (and signature). From [`parse`] the signature is not
/// checked; from [`verify`] it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovRequest {
    /// `ccf.gov.msg.type`.
    pub msg_type: MsgType,
    /// `ccf.gov.msg.created_at`, seconds since the Unix epoch.
    pub created_at: u64,
    /// `ccf.gov.msg.proposal_id` (present exactly for ballots and withdrawals).
    pub proposal_id: Option<String>,
    /// `kid`: the signer's member id (hex SHA-256 of its certificate's DER).
    pub kid: String,
    /// The signature algorithm.
    pub alg: Alg,
    /// The payload (the JSON body; empty for withdrawals and state digest updates).
    pub payload: Vec<u8>,
    /// The signature bytes (raw `r‖s` for ES384).
    pub signature: Vec<u8>,
}

impl GovRequest {
    /// The payload parsed as JSON into `T` ([`EnvelopeError::InvalidPayload`] if it is not).
    pub fn payload_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, EnvelopeError> {
        serde_json::from_slice(&self.payload).map_err(|e| EnvelopeError::InvalidPayload(e.to_string()))
    }

    /// Checks that this is a request of type `msg_type` and, for ballots and withdrawals, about proposal
    /// `proposal_id` (the id in the request path). Endpoints call this after [`verify`].
    pub fn expect(&self, msg_type: MsgType, proposal_id: Option<&str>) -> Result<(), EnvelopeError> {
        if self.msg_type != msg_type {
            return Err(EnvelopeError::WrongMsgType {
                expected: msg_type,
                got: self.msg_type,
            });
        }
        if let (Some(expected), Some(signed)) = (proposal_id, self.proposal_id.as_deref()) {
            if expected != signed {
                return Err(EnvelopeError::ProposalIdMismatch {
                    expected: expected.to_string(),
                    signed: signed.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The replay-detection digest of this request's signature (see [`signature_digest`]).
    pub fn signature_digest(&self) -> [u8; 32] {
        digest_of_signature(self.alg, &self.signature)
    }
}

/// A request as parsed: the headers plus what the signature covers.
struct Envelope {
    request: GovRequest,
    protected: Vec<u8>,
}

impl Envelope {
    /// The COSE Sig_structure the signature covers: `["Signature1", protected, h'', payload]`.
    fn to_be_signed(&self) -> Vec<u8> {
        let structure = Value::Array(vec![
            Value::Text("Signature1".into()),
            Value::Bytes(self.protected.clone()),
            Value::Bytes(Vec::new()),
            Value::Bytes(self.request.payload.clone()),
        ]);
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        coset::cbor::ser::into_writer(&structure, &mut out).expect("CBOR encoding into a Vec");
        out
    }
}

fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    let value = Value::from_slice(bytes).map_err(|e| malformed(format!("not a single CBOR item: {e}")))?;
    let items = match value {
        Value::Tag(COSE_SIGN1_TAG, inner) => match *inner {
            Value::Array(items) => items,
            _ => return Err(malformed("tag 18 does not hold an array")),
        },
        Value::Tag(tag, _) => {
            return Err(malformed(format!(
                "CBOR tag {tag} is not a COSE_Sign1 (tag {COSE_SIGN1_TAG})"
            )))
        }
        Value::Array(items) => items,
        _ => return Err(malformed("not a COSE_Sign1 array")),
    };
    let [protected, unprotected, payload, signature]: [Value; 4] = items
        .try_into()
        .map_err(|items: Vec<Value>| malformed(format!("array of {} items, expected 4", items.len())))?;
    let Value::Bytes(protected) = protected else {
        return Err(malformed("protected header is not a byte string"));
    };
    let Value::Map(_) = unprotected else {
        return Err(malformed("unprotected header is not a map"));
    };
    let payload = match payload {
        Value::Bytes(payload) => payload,
        Value::Null => {
            return Err(malformed(
                "payload is detached (nil): governance requests carry it attached",
            ))
        }
        _ => return Err(malformed("payload is not a byte string")),
    };
    let Value::Bytes(signature) = signature else {
        return Err(malformed("signature is not a byte string"));
    };
    let request = parse_protected(&protected, payload, signature)?;
    Ok(Envelope { request, protected })
}

fn label_name(label: &Value) -> String {
    match label {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Text(t) => format!("{t:?}"),
        other => format!("{other:?}"),
    }
}

fn parse_protected(
    protected: &[u8],
    payload: Vec<u8>,
    signature: Vec<u8>,
) -> Result<GovRequest, EnvelopeError> {
    if protected.is_empty() {
        return Err(EnvelopeError::missing("alg (1)"));
    }
    let value = Value::from_slice(protected)
        .map_err(|e| malformed(format!("protected header is not a single CBOR item: {e}")))?;
    let Value::Map(entries) = value else {
        return Err(malformed("protected header is not a map"));
    };
    for (i, (label, _)) in entries.iter().enumerate() {
        if entries[..i].iter().any(|(l, _)| l == label) {
            return Err(malformed(format!(
                "protected header label {} appears twice",
                label_name(label)
            )));
        }
    }
    let int_entry = |label: i128| {
        entries.iter().find_map(|(l, v)| match l {
            Value::Integer(i) if i128::from(*i) == label => Some(v),
            _ => None,
        })
    };
    let text_entry = |label: &str| {
        entries.iter().find_map(|(l, v)| match l {
            Value::Text(t) if t == label => Some(v),
            _ => None,
        })
    };

    if let Some(crit) = int_entry(LABEL_CRIT) {
        check_crit(crit)?;
    }

    let alg = alg_of(int_entry(LABEL_ALG))?;
    let kid = kid_of(int_entry(LABEL_KID))?;
    let msg_type = msg_type_of(text_entry(HEADER_MSG_TYPE))?;
    let created_at = created_at_of(text_entry(HEADER_CREATED_AT))?;
    let proposal_id = proposal_id_of(text_entry(HEADER_PROPOSAL_ID))?;
    check_proposal_id(msg_type, proposal_id.as_deref())?;

    Ok(GovRequest {
        msg_type,
        created_at,
        proposal_id,
        kid,
        alg,
        payload,
        signature,
    })
}

/// `crit` (2) may list only the labels this verifier processes.
fn check_crit(crit: &Value) -> Result<(), EnvelopeError> {
    let Value::Array(labels) = crit else {
        return Err(EnvelopeError::invalid("crit (2)", "not an array of labels"));
    };
    for label in labels {
        let understood = match label {
            Value::Integer(i) => [LABEL_ALG, LABEL_KID].contains(&i128::from(*i)),
            Value::Text(t) => [HEADER_MSG_TYPE, HEADER_CREATED_AT, HEADER_PROPOSAL_ID].contains(&t.as_str()),
            _ => false,
        };
        if !understood {
            return Err(EnvelopeError::invalid(
                "crit (2)",
                format!(
                    "lists label {} that this verifier does not process",
                    label_name(label)
                ),
            ));
        }
    }
    Ok(())
}

/// `alg` (1): EdDSA, ES384 or ES256.
fn alg_of(alg: Option<&Value>) -> Result<Alg, EnvelopeError> {
    let value = match alg {
        None => return Err(EnvelopeError::missing("alg (1)")),
        Some(Value::Integer(i)) => match i128::from(*i) {
            ALG_EDDSA => Alg::EdDSA,
            ALG_ES384 => Alg::ES384,
            ALG_ES256 => Alg::ES256,
            other => return Err(EnvelopeError::UnsupportedAlgorithm(other.to_string())),
        },
        Some(Value::Text(t)) => return Err(EnvelopeError::UnsupportedAlgorithm(format!("{t:?}"))),
        Some(_) => return Err(EnvelopeError::invalid("alg (1)", "not an integer")),
    };
    Ok(value)
}

/// `kid` (4): the member id, as bytes (CCF) or text.
fn kid_of(kid: Option<&Value>) -> Result<String, EnvelopeError> {
    let value = match kid {
        None => return Err(EnvelopeError::missing("kid (4)")),
        Some(Value::Bytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| EnvelopeError::invalid("kid (4)", "not the ASCII hex of a member id"))?,
        Some(Value::Text(t)) => t.clone(),
        Some(_) => return Err(EnvelopeError::invalid("kid (4)", "not a byte string")),
    };
    if value.is_empty() {
        return Err(EnvelopeError::invalid("kid (4)", "empty"));
    }
    Ok(value)
}

/// `ccf.gov.msg.type`.
fn msg_type_of(msg_type: Option<&Value>) -> Result<MsgType, EnvelopeError> {
    let value = match msg_type {
        None => return Err(EnvelopeError::missing(HEADER_MSG_TYPE)),
        Some(Value::Text(t)) => t.parse::<MsgType>()?,
        Some(_) => return Err(EnvelopeError::invalid(HEADER_MSG_TYPE, "not a text string")),
    };
    Ok(value)
}

/// `ccf.gov.msg.created_at`: seconds since the Unix epoch.
fn created_at_of(created_at: Option<&Value>) -> Result<u64, EnvelopeError> {
    let value = match created_at {
        None => return Err(EnvelopeError::missing(HEADER_CREATED_AT)),
        Some(Value::Integer(i)) => u64::try_from(i128::from(*i)).map_err(|_| {
            EnvelopeError::invalid(
                HEADER_CREATED_AT,
                "not an unsigned integer (seconds since the Unix epoch)",
            )
        })?,
        Some(_) => {
            return Err(EnvelopeError::invalid(
                HEADER_CREATED_AT,
                "not an unsigned integer (seconds since the Unix epoch)",
            ))
        }
    };
    Ok(value)
}

/// `ccf.gov.msg.proposal_id`, when there is one.
fn proposal_id_of(proposal_id: Option<&Value>) -> Result<Option<String>, EnvelopeError> {
    let value = match proposal_id {
        None => None,
        Some(Value::Text(t)) if !t.is_empty() => Some(t.clone()),
        Some(Value::Text(_)) => return Err(EnvelopeError::invalid(HEADER_PROPOSAL_ID, "empty")),
        Some(_) => return Err(EnvelopeError::invalid(HEADER_PROPOSAL_ID, "not a text string")),
    };
    Ok(value)
}

/// The proposal id rule: required (and not empty) for ballots and withdrawals, forbidden for every other message
/// type. [`sign`] checks it before signing; a parsed request has had an empty id refused already.
fn check_proposal_id(msg_type: MsgType, proposal_id: Option<&str>) -> Result<(), EnvelopeError> {
    match (msg_type.needs_proposal_id(), proposal_id) {
        (true, None) => Err(EnvelopeError::MissingHeader {
            header: format!("{HEADER_PROPOSAL_ID} (required for a {msg_type})"),
        }),
        (true, Some("")) => Err(EnvelopeError::invalid(HEADER_PROPOSAL_ID, "empty")),
        (false, Some(_)) => Err(EnvelopeError::invalid(
            HEADER_PROPOSAL_ID,
            format!("only ballots and withdrawals name a proposal, not a {msg_type}"),
        )),
        _ => Ok(()),
    }
}

/// Parses a governance request (tagged or untagged COSE_Sign1) and checks its structure and headers, but not its
/// signature: use it to read the `kid` and find the member's certificate, then [`verify`].
pub fn parse(bytes: &[u8]) -> Result<GovRequest, EnvelopeError> {
    Ok(decode(bytes)?.request)
}

/// Parses the request and checks it is signed by the member whose certificate (DER) is given: the `kid` must be
/// that certificate's member id, `alg` must fit the certificate's key type, and the signature must verify.
pub fn verify(bytes: &[u8], member_cert_der: &[u8]) -> Result<GovRequest, EnvelopeError> {
    let envelope = decode(bytes)?;
    let request = &envelope.request;
    let expected = member_id(member_cert_der);
    if request.kid != expected {
        return Err(EnvelopeError::WrongKid {
            kid: request.kid.clone(),
            expected,
        });
    }
    let key = cert_public_key(member_cert_der)?;
    let kind = KeyKind::of_curve(key.curve());
    if request.alg != kind.alg() {
        return Err(EnvelopeError::AlgKeyMismatch {
            alg: request.alg,
            key: kind,
            expected: kind.alg(),
        });
    }
    key.verify(&envelope.to_be_signed(), &request.signature)
        .map_err(|e| EnvelopeError::BadSignature(format!("{}: {e}", request.alg.as_str())))?;
    Ok(envelope.request)
}

/// [`verify`] with the member certificate as PEM.
pub fn verify_pem(bytes: &[u8], member_cert_pem: &str) -> Result<GovRequest, EnvelopeError> {
    let der = synod_core::cert::pem_to_der(member_cert_pem)
        .map_err(|e| EnvelopeError::InvalidCertificate(e.to_string()))?;
    verify(bytes, &der)
}

/// SHA-256 of the request's signature, for replay detection: a node remembers the digests of the requests it
/// accepted and refuses one it has seen. For ES384 the digest is taken over the low-S form of the signature, so the
/// malleated twin `(r, n - s)` of a signature (which verifies too) has the same digest.
pub fn signature_digest(bytes: &[u8]) -> Result<[u8; 32], EnvelopeError> {
    Ok(parse(bytes)?.signature_digest())
}

fn digest_of_signature(alg: Alg, signature: &[u8]) -> [u8; 32] {
    let normalized = match alg {
        Alg::ES384 => p384::ecdsa::Signature::from_slice(signature)
            .ok()
            .and_then(|s| s.normalize_s())
            .map(|s| s.to_bytes().to_vec()),
        Alg::ES256 => p256::ecdsa::Signature::from_slice(signature)
            .ok()
            .and_then(|s| s.normalize_s())
            .map(|s| s.to_bytes().to_vec()),
        Alg::EdDSA => None,
    };
    Sha256::digest(normalized.as_deref().unwrap_or(signature)).into()
}

/// A member certificate's public key: an RSA or P-521 member gets "unsupported", a broken one "invalid".
fn cert_public_key(cert_der: &[u8]) -> Result<PublicKey, EnvelopeError> {
    PublicKey::from_cert(cert_der).map_err(|e| match e {
        synod_core::cert::CertError::UnsupportedKey(what) => EnvelopeError::UnsupportedKey(what),
        other => EnvelopeError::InvalidCertificate(other.to_string()),
    })
}

/// A member's private key, which signs its governance requests.
#[derive(Clone)]
pub struct MemberKey(PrivateKey);

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberKey({}, <secret>)", self.kind())
    }
}

impl MemberKey {
    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`): ECDSA P-384 or P-256, or Ed25519.
    pub fn from_pkcs8_pem(pem: &str) -> Result<MemberKey, EnvelopeError> {
        if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            return Err(describe_unusable_pkcs8(pem));
        }
        PrivateKey::from_pem(pem)
            .map(MemberKey)
            .map_err(|_| describe_unusable_pkcs8(pem))
    }

    /// Parses a PKCS#8 PEM private key, or a SEC1 `-----BEGIN EC PRIVATE KEY-----` P-384 or P-256 key (what
    /// `openssl ecparam -genkey`, CCF's `keygenerator.sh`, writes; an `EC PARAMETERS` block before it is skipped).
    pub fn from_pem(pem: &str) -> Result<MemberKey, EnvelopeError> {
        if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            return PrivateKey::from_pem(pem)
                .map(MemberKey)
                .map_err(|e| EnvelopeError::UnsupportedKey(e.to_string()));
        }
        MemberKey::from_pkcs8_pem(pem)
    }

    /// The key type.
    pub fn kind(&self) -> KeyKind {
        KeyKind::of_curve(self.0.curve())
    }

    /// The key itself.
    pub fn private_key(&self) -> &PrivateKey {
        &self.0
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        self.kind().alg()
    }

    /// Whether this is the private key of the certificate's public key.
    pub fn matches_cert(&self, cert_der: &[u8]) -> Result<bool, EnvelopeError> {
        Ok(self.0.public_key() == cert_public_key(cert_der)?)
    }

    /// Signs `data` as COSE does: raw `r‖s` for ECDSA (96 bytes on P-384, 64 on P-256), 64 bytes for Ed25519.
    fn sign_raw(&self, data: &[u8]) -> Vec<u8> {
        self.0.sign(data)
    }
}

fn describe_unusable_pkcs8(pem: &str) -> EnvelopeError {
    use p384::pkcs8::der::Decode as _;
    let Ok((label, doc)) = p384::pkcs8::SecretDocument::from_pem(pem) else {
        return EnvelopeError::InvalidKey("not a PEM private key".into());
    };
    if label != "PRIVATE KEY" {
        return EnvelopeError::InvalidKey(format!(
            "a {label:?} PEM block, expected a PKCS#8 \"PRIVATE KEY\""
        ));
    }
    match p384::pkcs8::PrivateKeyInfo::from_der(doc.as_bytes()) {
        Err(e) => EnvelopeError::InvalidKey(format!("not a PKCS#8 private key: {e}")),
        Ok(info) => {
            let oid = info.algorithm.oid.to_string();
            match oid.as_str() {
                OID_EC_PUBLIC_KEY => {
                    let curve = info
                        .algorithm
                        .parameters_oid()
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    if curve == OID_SECP384R1 || curve == OID_SECP256R1 {
                        EnvelopeError::InvalidKey(format!("a {} key that does not parse", curve_name(&curve)))
                    } else {
                        EnvelopeError::UnsupportedKey(format!("ECDSA on {}", curve_name(&curve)))
                    }
                }
                OID_ED25519 => EnvelopeError::InvalidKey("an Ed25519 key that does not parse".into()),
                other => EnvelopeError::UnsupportedKey(key_algorithm_name(other)),
            }
        }
    }
}

/// The member id of a certificate: lower-case hex SHA-256 of its DER (as
/// [`synod_core::cert::cert_fingerprint_hex`]). It is the request's `kid`.
pub fn member_id(cert_der: &[u8]) -> String {
    synod_core::cert::cert_fingerprint_hex(cert_der)
}

/// Signs a governance request: a tagged COSE_Sign1 with `payload` attached and the headers above. `proposal_id`
/// must be given for ballots and withdrawals and only for them, and `key` must be the key of `member_cert_der`.
pub fn sign(
    key: &MemberKey,
    member_cert_der: &[u8],
    msg_type: MsgType,
    created_at: u64,
    proposal_id: Option<&str>,
    payload: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    check_proposal_id(msg_type, proposal_id)?;
    let kid = member_id(member_cert_der);
    if !key.matches_cert(member_cert_der)? {
        return Err(EnvelopeError::KeyCertMismatch { member_id: kid });
    }
    // Labels in CBOR deterministic order (RFC 8949 §4.2.1): 1, 4, then the text labels, shortest first.
    let mut header = HeaderBuilder::new()
        .algorithm(key.alg().iana())
        .key_id(kid.into_bytes())
        .text_value(HEADER_MSG_TYPE.into(), Value::Text(msg_type.as_str().into()))
        .text_value(HEADER_CREATED_AT.into(), Value::Integer(created_at.into()));
    if let Some(id) = proposal_id {
        header = header.text_value(HEADER_PROPOSAL_ID.into(), Value::Text(id.into()));
    }
    CoseSign1Builder::new()
        .protected(header.build())
        .payload(payload.to_vec())
        .create_signature(&[], |tbs| key.sign_raw(tbs))
        .build()
        .to_tagged_vec()
        .map_err(malformed)
}

/// Generates a member identity: a new key of `kind` and a self-signed certificate with common name `name`; the
/// key is PKCS#8 PEM.
pub fn generate_member(name: &str, kind: KeyKind) -> Result<Identity, EnvelopeError> {
    synod_core::cert::generate_self_signed_with(kind.curve(), name, false)
        .map_err(|e| EnvelopeError::Generate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_types_round_trip_through_their_names() {
        for t in MsgType::ALL {
            assert_eq!(t.as_str().parse::<MsgType>().unwrap(), t);
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(
            "vote".parse::<MsgType>(),
            Err(EnvelopeError::UnknownMsgType("vote".into()))
        );
        assert!(MsgType::Ballot.needs_proposal_id() && MsgType::Withdrawal.needs_proposal_id());
        assert!(!MsgType::Proposal.needs_proposal_id());
    }

    #[test]
    fn keys_parse_and_match_their_certificates() {
        let ed = generate_member("m0", KeyKind::Ed25519).unwrap();
        let ec = generate_member("m1", KeyKind::P384).unwrap();
        let ed_der = synod_core::cert::pem_to_der(&ed.cert_pem).unwrap();
        let ec_der = synod_core::cert::pem_to_der(&ec.cert_pem).unwrap();
        let ed_key = MemberKey::from_pkcs8_pem(&ed.key_pem).unwrap();
        let ec_key = MemberKey::from_pkcs8_pem(&ec.key_pem).unwrap();
        assert_eq!(ed_key.kind(), KeyKind::Ed25519);
        assert_eq!(ec_key.kind(), KeyKind::P384);
        assert_eq!(KeyKind::of_cert(&ec_der).unwrap(), KeyKind::P384);
        assert!(ed_key.matches_cert(&ed_der).unwrap() && ec_key.matches_cert(&ec_der).unwrap());
        assert!(!ed_key.matches_cert(&ec_der).unwrap() && !ec_key.matches_cert(&ed_der).unwrap());
        assert!(!format!("{ec_key:?}").contains("PRIVATE"));
        assert!(matches!(
            MemberKey::from_pem("garbage"),
            Err(EnvelopeError::InvalidKey(_))
        ));
        assert_eq!(
            member_id(&ed_der),
            synod_core::cert::cert_fingerprint_hex(&ed_der)
        );
    }

    #[test]
    fn sec1_p384_keys_parse_p256_keys_sign_and_other_curves_are_unsupported() {
        use p384::elliptic_curve::sec1::ToEncodedPoint as _;
        let ec = generate_member("m1", KeyKind::P384).unwrap();
        let member = MemberKey::from_pem(&ec.key_pem).unwrap();
        let PrivateKey::P384(key) = member.private_key() else {
            panic!("P-384")
        };
        let secret = p384::SecretKey::from(key.as_nonzero_scalar());
        let sec1 = secret.to_sec1_pem(Default::default()).unwrap();
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n{}",
            sec1.as_str()
        );
        let parsed = MemberKey::from_pem(&with_params).unwrap();
        let der = synod_core::cert::pem_to_der(&ec.cert_pem).unwrap();
        assert!(parsed.matches_cert(&der).unwrap());
        assert_eq!(
            secret.public_key().to_encoded_point(false),
            key.verifying_key().to_encoded_point(false)
        );

        // P-256 members sign ES256.
        let p256 = generate_member("m2", KeyKind::P256).unwrap();
        let p256_der = synod_core::cert::pem_to_der(&p256.cert_pem).unwrap();
        let p256_key = MemberKey::from_pem(&p256.key_pem).unwrap();
        assert_eq!(KeyKind::of_cert(&p256_der).unwrap(), KeyKind::P256);
        let signed = sign(&p256_key, &p256_der, MsgType::Ack, 1, None, b"{}").unwrap();
        assert_eq!(verify(&signed, &p256_der).unwrap().alg, Alg::ES256);
        assert!(verify(&signed, &der).is_err(), "not the P-384 member's");

        // A PKCS#8 key on secp521r1 (only its algorithm identifier matters here).
        let pem =
            "-----BEGIN PRIVATE KEY-----\nMBkCAQAwEAYHKoZIzj0CAQYFK4EEACMEAjAA\n-----END PRIVATE KEY-----\n";
        let err = MemberKey::from_pem(pem).unwrap_err();
        assert!(
            matches!(&err, EnvelopeError::UnsupportedKey(m) if m.contains("P-521")),
            "{err}"
        );
        assert_eq!(err.http_status(), 401);
    }
}
