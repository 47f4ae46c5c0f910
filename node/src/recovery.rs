//! Disaster recovery, as CCF does it: the members, not any operator, hold the means to read a lost service's
//! private data.
//!
//! ```text
//!  running service: latest ledger secret ─wrap(K)─▶ public:ccf.internal.recovery_shares
//!                   K ─Shamir(threshold, recovery members)─▶ share_i ─RSA-OAEP(member_i's key)─▶ same record
//!                   (refreshed whenever the recovery members, their keys or the threshold change)
//!  disaster:        synod-node recover --ledger OLD ─▶ public state at the last signature N, new identity,
//!                   status Recovering ─▶ members accept transition_service_to_open(previous identity)
//!                   ─▶ WaitingForRecoveryShares ─▶ each member decrypts its share locally and submits it
//!                   ─▶ at the threshold: K ─▶ old latest secret ─▶ the chain of older ones
//!                   ─▶ private writes of 1..=N replayed as transactions ─▶ Open, fresh shares
//! ```
//!
//! Past ledger secrets stay in the ledger, each wrapped under the secret that followed it
//! (`public:ccf.internal.historical_encrypted_ledger_secret`), so a node holding the current secret opens every
//! earlier entry: receipts and historical queries keep working across any number of recoveries. Submitted shares
//! are sealed under the recovering service's own secret before they are written, so the ledger never holds a
//! share in clear.
//!
//! Everything here but [`recover_public`] and [`private_state`] (which read ledger files) works on a transaction
//! and is tested without a node.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use synod_core::hash::{sha256, Digest};
use synod_core::ledger::{
    decode_frames, list_chunks, verify_signature_transaction, WriteSet, KIND_SIGNATURE,
};
use synod_core::maps;
use synod_core::merkle::MerkleTree;
use synod_core::recovery::{self as crypto, EncryptionPublicKey, Share};
use synod_core::txid::TxId;
use synod_kv::seal::{LedgerSecret, Sealer, SecretRange};
use synod_kv::{State, Tx};

use crate::gov::{get_json, put_json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const LATEST_SECRET_AAD: &[u8] = b"synod latest ledger secret v1";
const PREVIOUS_SECRET_LABEL: &[u8] = b"synod previous ledger secret v1";
const SUBMITTED_SHARE_LABEL: &[u8] = b"synod submitted recovery share v1";

/// Service status while the public state of a previous service is recovered and members decide.
pub const STATUS_RECOVERING: &str = "Recovering";
/// Service status once members accepted the recovery: shares are being submitted.
pub const STATUS_WAITING_FOR_SHARES: &str = "WaitingForRecoveryShares";

/// Why a recovery step failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Sharing, encryption or wrapping failed.
    #[error(transparent)]
    Crypto(#[from] crypto::RecoveryError),
    /// More shares are needed than there are members to hold them.
    #[error("recovery threshold {threshold} exceeds the {members} recovery members (active members with an encryption key)")]
    ThresholdTooHigh {
        /// The threshold.
        threshold: usize,
        /// Recovery members.
        members: usize,
    },
    /// A member's encryption key is unusable.
    #[error("member {member}'s encryption key: {reason}")]
    BadMemberKey {
        /// The member.
        member: String,
        /// Why.
        reason: String,
    },
    /// Shares are only taken while the service waits for them.
    #[error("the service is {0}, not waiting for recovery shares")]
    NotWaiting(String),
    /// The member was not given a share by the previous service.
    #[error("member {0} holds no recovery share of the previous service")]
    NoShare(String),
    /// The previous service had no recovery members.
    #[error("the recovered state holds no recovery shares: the previous service had no recovery member")]
    NoSharesInfo,
    /// Bytes that do not decode.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A rekey would leave a trusted node unable to follow the service.
    #[error("node {0} has no encryption key recorded (it joined before nodes had one): restart it with this version, or remove it, before rekeying")]
    NodeWithoutKey(String),
}

/// `public:ccf.internal.encrypted_ledger_secrets` at key "": the secret of the last rekey, per node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EncryptedLedgerSecrets {
    /// RSA-OAEP encrypted secret (base64) by node id.
    pub secrets: BTreeMap<String, String>,
}

/// `public:ccf.internal.recovery_shares` at key "" (CCF's `RecoverySharesInfo`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharesInfo {
    /// The latest ledger secret wrapped under the split key (base64).
    pub wrapped_latest_ledger_secret: String,
    /// The first seqno the latest secret covers; `None`: the one after the transaction that wrote this record
    /// (a rekey, whose seqno is not known while it runs).
    pub latest_secret_from: Option<u64>,
    /// Shares needed.
    pub threshold: usize,
    /// Each recovery member's share, RSA-OAEP encrypted to its key (base64), by member id.
    pub encrypted_shares: BTreeMap<String, String>,
    /// Digest of the members, their keys and the threshold the shares were made for.
    pub fingerprint: String,
}

/// `public:ccf.internal.previous_service_identity` at key "": what a recovered service continues.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviousService {
    /// The previous service's last signed seqno: the recovered ledger ends there.
    pub last_seqno: u64,
    /// The previous service identity (PEM).
    pub previous_service_identity: String,
    /// The previous identity's public key certified by the new identity (PEM): receipts of the previous service
    /// verify against the new identity through it.
    pub endorsement: String,
    /// The previous ledger secrets are recovered (shares combined).
    pub secrets_recovered: bool,
    /// The private state of the previous service is replayed: recovery is complete.
    pub private_recovered: bool,
    /// The identities before the previous one, when the previous service was itself a recovered one: newest first,
    /// each with the endorsement its successor made of it.
    #[serde(default)]
    pub earlier: Vec<EarlierIdentity>,
}

/// A service identity two or more recoveries back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EarlierIdentity {
    /// The identity (PEM).
    pub identity: String,
    /// Its successor's certificate for its key (PEM).
    pub endorsement: String,
    /// The last seqno it signed.
    pub last_seqno: u64,
}

impl PreviousService {
    /// Every identity before this service's, newest first, each with the endorsements (PEM) that lead from it to
    /// the current identity, oldest first (CCF's `service_endorsements` order).
    pub fn chain(&self) -> Vec<(String, Vec<String>)> {
        let mut endorsements = vec![self.endorsement.clone()];
        let mut chain = vec![(self.previous_service_identity.clone(), endorsements.clone())];
        for e in &self.earlier {
            endorsements.insert(0, e.endorsement.clone());
            chain.push((e.identity.clone(), endorsements.clone()));
        }
        chain
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct HistoricalSecret {
    from: u64,
    /// The last seqno; `None`: the transaction that wrote the record (a rekey).
    until: Option<u64>,
    /// The secret wrapped under a key derived from the secret that followed it (base64).
    wrapped: String,
}

fn state_json<T: serde::de::DeserializeOwned>(state: &State, map: &str, key: &str) -> Option<T> {
    state
        .get(map, key.as_bytes())
        .and_then(|v| serde_json::from_slice(v).ok())
}

/// The service's status (`Opening`, `Open`, `Recovering`, ...).
pub fn service_status(tx: &mut Tx) -> String {
    get_json::<serde_json::Value>(tx, maps::SERVICE_INFO, "")
        .and_then(|v| v["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The previous service this one recovered, if it is a recovered service.
pub fn previous_service(state: &State) -> Option<PreviousService> {
    state_json(state, maps::PREVIOUS_SERVICE, "")
}

/// Active members with an encryption key, by id: the members recovery shares go to.
fn recovery_members(tx: &mut Tx) -> Vec<(String, String)> {
    let keys = tx.range(maps::MEMBERS_ENCRYPTION_KEYS, b"", None, usize::MAX);
    keys.into_iter()
        .filter_map(|(id, pem)| {
            let id = String::from_utf8(id.to_vec()).ok()?;
            let info: serde_json::Value = get_json(tx, maps::MEMBERS_INFO, &id)?;
            (info["status"] == "Active").then(|| Some((id, String::from_utf8(pem.to_vec()).ok()?)))?
        })
        .collect()
}

fn recovery_threshold(tx: &mut Tx) -> usize {
    get_json::<serde_json::Value>(tx, maps::SERVICE_INFO, "")
        .and_then(|v| v["recovery_threshold"].as_u64())
        .map_or(1, |t| t.max(1) as usize)
}

fn fingerprint(members: &[(String, String)], threshold: usize, latest_secret_from: Option<u64>) -> String {
    let canonical = serde_json::json!({
        "members": members,
        "threshold": threshold,
        "latest_secret_from": latest_secret_from,
    });
    hex::encode(sha256(canonical.to_string().as_bytes()))
}

/// Issues fresh recovery shares of `secret`, the latest ledger secret, which covers seqnos from `from` on (`None`:
/// from the one after this transaction, a rekey), when the recovery members, their keys or the threshold changed
/// since the last issue, or always with `force`. Never while a recovery is in progress: the recorded shares are
/// then the previous service's, the only way back to its data. Returns whether it issued.
pub fn refresh_shares(
    tx: &mut Tx,
    secret: &LedgerSecret,
    from: Option<u64>,
    force: bool,
) -> Result<bool, RecoveryError> {
    let status = service_status(tx);
    if status == STATUS_RECOVERING || status == STATUS_WAITING_FOR_SHARES {
        return Ok(false);
    }
    // Every recorded key must be usable, not only the active members': a member added with a bad key could
    // otherwise never become active (its acknowledgement would fail to issue its share).
    for (id, pem) in tx.range(maps::MEMBERS_ENCRYPTION_KEYS, b"", None, usize::MAX) {
        let bad = |reason: String| RecoveryError::BadMemberKey {
            member: String::from_utf8_lossy(&id).into_owned(),
            reason,
        };
        let pem = std::str::from_utf8(&pem).map_err(|_| bad("not PEM text".into()))?;
        EncryptionPublicKey::from_pem(pem).map_err(|e| bad(e.to_string()))?;
    }
    let members = recovery_members(tx);
    let threshold = recovery_threshold(tx);
    let print = fingerprint(&members, threshold, from);
    let existing: Option<SharesInfo> = get_json(tx, maps::RECOVERY_SHARES, "");
    if !force && existing.as_ref().map(|e| &e.fingerprint) == Some(&print) {
        return Ok(false);
    }
    if members.is_empty() {
        // Without recovery members there is nobody to give shares to: the service cannot be recovered (the
        // service info says so), and no stale shares of an earlier member set remain.
        if existing.is_some() {
            tx.delete(maps::RECOVERY_SHARES, b"");
        }
        return Ok(existing.is_some());
    }
    if threshold > members.len() {
        return Err(RecoveryError::ThresholdTooHigh {
            threshold,
            members: members.len(),
        });
    }
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| crypto::RecoveryError::Random(e.to_string()))?;
    let wrapped = crypto::wrap(&key, &secret.0, LATEST_SECRET_AAD)?;
    let shares = crypto::split(&key, threshold, members.len())?;
    let mut encrypted_shares = BTreeMap::new();
    for ((id, pem), share) in members.iter().zip(shares) {
        let bad = |e: crypto::RecoveryError| RecoveryError::BadMemberKey {
            member: id.clone(),
            reason: e.to_string(),
        };
        let public = EncryptionPublicKey::from_pem(pem).map_err(bad)?;
        let encrypted = public.encrypt(&share.to_bytes()).map_err(bad)?;
        encrypted_shares.insert(id.clone(), B64.encode(encrypted));
    }
    let info = SharesInfo {
        wrapped_latest_ledger_secret: B64.encode(wrapped),
        latest_secret_from: from,
        threshold,
        encrypted_shares,
        fingerprint: print,
    };
    put_json(tx, maps::RECOVERY_SHARES, "", &info);
    Ok(true)
}

/// Rekeys the ledger (CCF's `trigger_ledger_rekey`): a fresh secret, encrypted to every trusted node, seals every
/// transaction after this one; the latest secret (`latest`: its first seqno and itself) is kept in the ledger
/// wrapped under the new one, and the recovery members get shares of the new one. Never during a recovery.
pub fn rekey(tx: &mut Tx, latest: (u64, &LedgerSecret)) -> Result<(), RecoveryError> {
    let status = service_status(tx);
    if status == STATUS_RECOVERING || status == STATUS_WAITING_FOR_SHARES {
        return Err(RecoveryError::NotWaiting(format!(
            "{status}: the ledger cannot be rekeyed during a recovery"
        )));
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| crypto::RecoveryError::Random(e.to_string()))?;
    let new = LedgerSecret(bytes);
    let mut record = EncryptedLedgerSecrets::default();
    for (id, value) in tx.range(maps::NODES_INFO, b"", None, usize::MAX) {
        let id = String::from_utf8_lossy(&id).into_owned();
        let Ok(info) = serde_json::from_slice::<serde_json::Value>(&value) else {
            continue;
        };
        if info["status"] != "Trusted" {
            continue;
        }
        let pem = info["encryption_pub_key"]
            .as_str()
            .ok_or_else(|| RecoveryError::NodeWithoutKey(id.clone()))?;
        let encrypted = EncryptionPublicKey::from_pem(pem)?.encrypt(&new.0)?;
        record.secrets.insert(id, B64.encode(encrypted));
    }
    put_json(tx, maps::ENCRYPTED_LEDGER_SECRETS, "", &record);
    record_past_secret(tx, latest.0, None, latest.1, &new)?;
    refresh_shares(tx, &new, None, true)?;
    Ok(())
}

/// If `public` (the writes of the entry at `seqno`) is a rekey, the new secret for node `node_id`, opened with its
/// encryption key; `Ok(None)` for any other entry, or a rekey that did not include this node.
pub fn rekeyed_secret(
    public: &synod_core::ledger::WriteSet,
    node_id: &str,
    key: Option<&crypto::EncryptionPrivateKey>,
) -> Result<Option<LedgerSecret>, RecoveryError> {
    let Some(value) = public
        .maps
        .iter()
        .find(|m| m.name == maps::ENCRYPTED_LEDGER_SECRETS)
        .and_then(|m| m.writes.first())
        .and_then(|w| w.value.as_ref())
    else {
        return Ok(None);
    };
    let record: EncryptedLedgerSecrets =
        serde_json::from_slice(value).map_err(|_| RecoveryError::Malformed("encrypted ledger secrets"))?;
    let (Some(encrypted), Some(key)) = (record.secrets.get(node_id), key) else {
        return Ok(None);
    };
    let encrypted = B64
        .decode(encrypted)
        .map_err(|_| RecoveryError::Malformed("encrypted ledger secret"))?;
    let clear = key.decrypt(&encrypted)?;
    let secret: [u8; 32] = clear
        .try_into()
        .map_err(|_| RecoveryError::Malformed("ledger secret (not 32 bytes)"))?;
    Ok(Some(LedgerSecret(secret)))
}

/// A member's encrypted share (base64), for `GET /gov/recovery/encrypted-shares/{member}`.
pub fn encrypted_share(state: &State, member: &str) -> Option<String> {
    state_json::<SharesInfo>(state, maps::RECOVERY_SHARES, "")?
        .encrypted_shares
        .remove(member)
}

/// The threshold and the number of recovery members holding a share of the current secret, if any do (without
/// them the service cannot be recovered from its ledger).
pub fn shares_issued(state: &State) -> Option<(usize, usize)> {
    let info: SharesInfo = state_json(state, maps::RECOVERY_SHARES, "")?;
    Some((info.threshold, info.encrypted_shares.len()))
}

/// What submitting a share did.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Recorded; more are needed.
    Pending {
        /// Shares submitted so far.
        submitted: usize,
        /// Shares needed.
        threshold: usize,
    },
    /// The threshold was reached and the shares reconstruct the previous ledger secret: it is recorded (wrapped
    /// under the current secret); the private ledger can be replayed.
    Recovered,
    /// The threshold was reached but the shares do not reconstruct the secret (one is wrong): every submitted
    /// share was discarded and members submit again.
    Wrong {
        /// Shares that were combined.
        combined: usize,
    },
}

/// Records `member`'s decrypted share (the bytes its encrypted share opened to), sealed under `current`, and
/// combines the shares once there are enough.
pub fn submit_share(
    tx: &mut Tx,
    member: &str,
    share: &[u8],
    current: &LedgerSecret,
) -> Result<Submitted, RecoveryError> {
    let status = service_status(tx);
    if status != STATUS_WAITING_FOR_SHARES {
        return Err(RecoveryError::NotWaiting(status));
    }
    let info: SharesInfo = get_json(tx, maps::RECOVERY_SHARES, "").ok_or(RecoveryError::NoSharesInfo)?;
    let latest_from = match info.latest_secret_from {
        Some(from) => from,
        None => tx.version_of(maps::RECOVERY_SHARES, b"").unwrap_or_default() + 1,
    };
    if !info.encrypted_shares.contains_key(member) {
        return Err(RecoveryError::NoShare(member.to_string()));
    }
    let parsed = Share::from_bytes(share)?;
    if parsed.y.len() != 32 {
        return Err(RecoveryError::Malformed(
            "recovery share (not a share of a 32-byte key)",
        ));
    }
    let seal_key = current.derive_key(SUBMITTED_SHARE_LABEL);
    let sealed = crypto::wrap(&seal_key, share, member.as_bytes())?;
    tx.put(
        maps::SUBMITTED_SHARES,
        member.as_bytes(),
        B64.encode(sealed).as_bytes(),
    );
    let submitted: Vec<(String, Vec<u8>)> = tx
        .range(maps::SUBMITTED_SHARES, b"", None, usize::MAX)
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
        .collect();
    if submitted.len() < info.threshold {
        return Ok(Submitted::Pending {
            submitted: submitted.len(),
            threshold: info.threshold,
        });
    }
    let mut shares = Vec::with_capacity(submitted.len());
    for (id, sealed) in &submitted {
        let sealed = B64
            .decode(sealed)
            .map_err(|_| RecoveryError::Malformed("submitted share"))?;
        let bytes = crypto::unwrap(&seal_key, &sealed, id.as_bytes())?;
        shares.push(Share::from_bytes(&bytes)?);
    }
    for (id, _) in &submitted {
        tx.delete(maps::SUBMITTED_SHARES, id.as_bytes());
    }
    let combined = submitted.len();
    let opened = crypto::combine(&shares).ok().and_then(|key| {
        let key: [u8; 32] = key.try_into().ok()?;
        let wrapped = B64.decode(&info.wrapped_latest_ledger_secret).ok()?;
        crypto::unwrap(&key, &wrapped, LATEST_SECRET_AAD).ok()
    });
    let Some(secret) = opened.and_then(|s| <[u8; 32]>::try_from(s).ok()) else {
        return Ok(Submitted::Wrong { combined });
    };
    let mut previous: PreviousService = get_json(tx, maps::PREVIOUS_SERVICE, "")
        .ok_or(RecoveryError::Malformed("previous service record"))?;
    record_past_secret(
        tx,
        latest_from,
        Some(previous.last_seqno),
        &LedgerSecret(secret),
        current,
    )?;
    previous.secrets_recovered = true;
    put_json(tx, maps::PREVIOUS_SERVICE, "", &previous);
    Ok(Submitted::Recovered)
}

fn past_aad(from: u64) -> [u8; 8] {
    from.to_be_bytes()
}

/// Records `secret`, which covers seqnos `from..=until` (`None`: up to this transaction), wrapped under
/// `successor` (the secret after it).
fn record_past_secret(
    tx: &mut Tx,
    from: u64,
    until: Option<u64>,
    secret: &LedgerSecret,
    successor: &LedgerSecret,
) -> Result<(), RecoveryError> {
    let key = successor.derive_key(PREVIOUS_SECRET_LABEL);
    let wrapped = crypto::wrap(&key, &secret.0, &past_aad(from))?;
    let record = HistoricalSecret {
        from,
        until,
        wrapped: B64.encode(wrapped),
    };
    put_json(
        tx,
        maps::HISTORICAL_LEDGER_SECRETS,
        &format!("{from:020}"),
        &record,
    );
    Ok(())
}

/// Every past ledger secret recorded in `state` with the seqnos it covers, each opened by walking the chain back
/// from the secrets `known` gives (the node's own schedule): a rekeyed or recovered service's history.
fn secret_chain(state: &State, known: &dyn Fn(u64) -> Option<LedgerSecret>) -> Vec<SecretRange> {
    let mut records: Vec<(HistoricalSecret, u64)> = state
        .map(maps::HISTORICAL_LEDGER_SECRETS)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(_, e)| {
            let r: HistoricalSecret = serde_json::from_slice(&e.value).ok()?;
            let until = r.until.unwrap_or(e.version);
            Some((r, until))
        })
        .collect();
    records.sort_by_key(|(r, _)| std::cmp::Reverse(r.from));
    let mut opened: BTreeMap<u64, LedgerSecret> = BTreeMap::new();
    let mut ranges = Vec::new();
    for (r, until) in records {
        let successor = opened.get(&(until + 1)).cloned().or_else(|| known(until + 1));
        let secret = successor.and_then(|s| {
            let wrapped = B64.decode(&r.wrapped).ok()?;
            let clear = crypto::unwrap(&s.derive_key(PREVIOUS_SECRET_LABEL), &wrapped, &past_aad(r.from));
            Some(LedgerSecret(clear.ok()?.try_into().ok()?))
        });
        if let Some(s) = &secret {
            opened.insert(r.from, s.clone());
        }
        ranges.push(SecretRange {
            from: r.from,
            until,
            secret,
        });
    }
    ranges
}

/// The ranges of seqnos a previous service wrote (before the recovery), with each secret opened by walking the
/// chain back from `known` (a range whose secret is not recovered yet has none). Empty for a service never
/// recovered.
pub fn past_secrets(state: &State, known: &dyn Fn(u64) -> Option<LedgerSecret>) -> Vec<SecretRange> {
    let Some(previous) = previous_service(state) else {
        return Vec::new();
    };
    let mut ranges: Vec<SecretRange> = secret_chain(state, known)
        .into_iter()
        .filter(|r| r.until <= previous.last_seqno)
        .collect();
    // Whatever no record covers yet (the previous service's seqnos before its shares are submitted) has no secret.
    ranges.push(SecretRange {
        from: 1,
        until: previous.last_seqno,
        secret: None,
    });
    ranges
}

/// Makes `sealer` (and every clone: the schedule is shared) open the previous services' seqnos with their secrets,
/// as far as they are recovered.
pub fn install_past_secrets(state: &State, sealer: &Sealer) {
    sealer.add_past(&past_secrets(state, &|seqno| sealer.secret_at(seqno)));
}

/// What the first transaction of a recovered service records.
pub struct RecoveryRecord<'a> {
    /// The new service identity (PEM).
    pub service_cert_pem: &'a str,
    /// The new identity's certificate for the previous identity's key (PEM).
    pub endorsement: String,
    /// The recovering node's id and its nodes-table entry.
    pub node: (&'a str, serde_json::Value),
    /// The previous service's last signed seqno.
    pub last_seqno: u64,
    /// Digest (hex) of the snapshot of the recovered public state at `last_seqno`: its evidence.
    pub snapshot_digest: String,
    /// The new identity's key curve.
    pub curve: &'a str,
}

/// Writes the first transaction of a recovered service: the new identity in `Recovering`, every node of the
/// previous service retired and this one trusted, the previous identity and its endorsement, and the evidence of
/// the snapshot the service starts from (so that snapshot is committed and served like any other).
pub fn write_recovery(tx: &mut Tx, r: &RecoveryRecord<'_>) -> Result<(), RecoveryError> {
    let mut info: serde_json::Value =
        get_json(tx, maps::SERVICE_INFO, "").ok_or(RecoveryError::Malformed("previous service info"))?;
    let previous_cert = info["cert"]
        .as_str()
        .ok_or(RecoveryError::Malformed("previous service certificate"))?
        .to_string();
    info["cert"] = serde_json::json!(r.service_cert_pem);
    info["status"] = serde_json::json!(STATUS_RECOVERING);
    info["curve"] = serde_json::json!(r.curve);
    info["previous_service_identity_version"] = serde_json::json!(r.last_seqno);
    put_json(tx, maps::SERVICE_INFO, "", &info);
    let nodes = tx.range(maps::NODES_INFO, b"", None, usize::MAX);
    for (id, value) in nodes {
        let Ok(mut node) = serde_json::from_slice::<serde_json::Value>(&value) else {
            continue;
        };
        if node["status"] != "Retired" {
            node["status"] = serde_json::json!("Retired");
            tx.put(maps::NODES_INFO, &id, node.to_string().as_bytes());
        }
    }
    put_json(tx, maps::NODES_INFO, r.node.0, &r.node.1);
    // A recovered service recovered again: the identities before the previous one stay in the chain.
    let mut earlier = Vec::new();
    if let Some(before) = get_json::<PreviousService>(tx, maps::PREVIOUS_SERVICE, "") {
        earlier.push(EarlierIdentity {
            identity: before.previous_service_identity,
            endorsement: before.endorsement,
            last_seqno: before.last_seqno,
        });
        earlier.extend(before.earlier);
    }
    put_json(
        tx,
        maps::PREVIOUS_SERVICE,
        "",
        &PreviousService {
            last_seqno: r.last_seqno,
            previous_service_identity: previous_cert,
            endorsement: r.endorsement.clone(),
            secrets_recovered: false,
            private_recovered: false,
            earlier,
        },
    );
    // Shares a previous member submitted to an earlier, abandoned recovery are of no use now.
    for (k, _) in tx.range(maps::SUBMITTED_SHARES, b"", None, usize::MAX) {
        tx.delete(maps::SUBMITTED_SHARES, &k);
    }
    let evidence = synod_core::snapshot::SnapshotEvidence {
        seqno: r.last_seqno,
        digest: r.snapshot_digest.clone(),
    };
    put_json(tx, synod_core::snapshot::SNAPSHOT_EVIDENCE, "", &evidence);
    Ok(())
}

/// Copies the chunks of `from` holding seqnos `1..=last` into `to` as committed chunks, the last one cut at
/// `last`: the recovered service's ledger starts with the previous service's, so its receipts still verify.
pub fn copy_ledger_prefix(from: &Path, to: &Path, last: u64) -> Result<(), LedgerRecoveryError> {
    use synod_core::ledger::ChunkName;
    let err = |path: &Path, reason: String| LedgerRecoveryError {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(to).map_err(|e| err(to, e.to_string()))?;
    let chunks = list_chunks(from).map_err(|e| err(from, e.to_string()))?;
    for (name, path) in chunks.iter().filter(|(n, _)| n.start <= last) {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        let mut keep = 0usize;
        let mut end = name.start - 1;
        for frame in decode_frames(&bytes) {
            let frame = frame.map_err(|e| err(path, e.to_string()))?;
            let seqno = frame
                .entry
                .decode_transaction()
                .map_err(|e| err(path, e.to_string()))?
                .seqno;
            if seqno > last {
                break;
            }
            keep = (frame.offset + frame.len) as usize;
            end = seqno;
        }
        let target = to.join(
            ChunkName {
                start: name.start,
                end: Some(end),
                committed: true,
            }
            .file_name(),
        );
        crate::service::write_atomically(&target, &bytes[..keep])
            .map_err(|e| err(&target, format!("{e:#}")))?;
    }
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(to, e.to_string()))
}

/// The public state of a previous service recovered from its ledger files.
pub struct PublicRecovery {
    /// Public maps at `last`.
    pub state: State,
    /// The Merkle tree's frontier after `last`.
    pub frontier: Vec<Digest>,
    /// (view, first seqno) of every view.
    pub views: Vec<(u64, u64)>,
    /// The last signature transaction: the recovered ledger ends there.
    pub last: TxId,
    /// The previous service identity (PEM), as its state records it.
    pub service_cert_pem: String,
    /// Signatures verified.
    pub signatures: u64,
    /// The snapshot the ledger continues (seqno and file bytes), when it does not start at seqno 1.
    pub base_snapshot: Option<(u64, Vec<u8>)>,
}

/// Why the previous ledger cannot be recovered.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct LedgerRecoveryError {
    /// The file (or directory).
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// Reads the previous service's ledger in `dir` up to its last signature transaction, checking every entry's
/// place and every signature (against the Merkle tree over the entries before it, by a node the service identity
/// of the time endorsed), and folds the public writes. Entries after the last signature are not vouched for by
/// anyone and are dropped, as CCF drops them.
pub fn recover_public(dir: &Path, snapshots: Option<&Path>) -> Result<PublicRecovery, LedgerRecoveryError> {
    let err = |path: &Path, reason: String| LedgerRecoveryError {
        path: path.to_path_buf(),
        reason,
    };
    let chunks = list_chunks(dir).map_err(|e| err(dir, e.to_string()))?;
    let first = chunks
        .first()
        .map(|(name, _)| name.start)
        .ok_or_else(|| err(dir, "no ledger chunk files".into()))?;
    let mut state = State::default();
    let mut tree = MerkleTree::new();
    let mut views: Vec<(u64, u64)> = Vec::new();
    // A ledger that starts after a snapshot (a node that joined from one) continues from its public state; the
    // snapshot counts only once the ledger proves it (its evidence, covered by a signature).
    let mut base_snapshot = None;
    let mut unproven: Option<(u64, String)> = None;
    if first > 1 {
        let base = first - 1;
        let snapshots = snapshots
            .map(Path::to_path_buf)
            .or_else(|| dir.parent().map(|p| p.join("snapshots")));
        let found = snapshots.as_deref().and_then(|d| synod_core::snapshot::find_in(d, base)).ok_or_else(|| {
            err(
                dir,
                format!(
                    "the ledger starts at seqno {first}, after snapshot {base}: give the directory holding it \
                     (--snapshot DIR; default: the ledger's ../snapshots)"
                ),
            )
        })?;
        let bytes = std::fs::read(&found).map_err(|e| err(&found, e.to_string()))?;
        let file = synod_core::snapshot::SnapshotFile::decode(bytes.as_slice())
            .map_err(|e| err(&found, format!("not a snapshot: {e}")))?;
        if file.seqno != base {
            return Err(err(&found, format!("holds seqno {}, not {base}", file.seqno)));
        }
        let frontier = file
            .frontier_digests()
            .ok_or_else(|| err(&found, "a frontier digest is not 32 bytes".into()))?;
        tree = MerkleTree::from_frontier(base, &frontier).map_err(|e| err(&found, e.to_string()))?;
        views = file.views.iter().map(|v| (v.view, v.first_seqno)).collect();
        state = State::with_version(base);
        for map in file.maps.iter().filter(|m| maps::is_public(&m.name)) {
            state.load_map(&map.name);
            for e in &map.entries {
                let entry = synod_kv::Entry {
                    value: e.value.as_slice().into(),
                    version: e.version,
                };
                state.load_entry(&map.name, e.key.as_slice().into(), entry);
            }
        }
        unproven = Some((base, hex::encode(synod_core::snapshot::digest(&bytes))));
        base_snapshot = Some((base, bytes));
    }
    let mut expected = first;
    let mut evidence_seen = false;
    // What the last verified signature covers; entries after it are applied to `state` only to be discarded.
    let mut signed: Option<PublicRecovery> = None;
    let mut signatures = 0;
    'chunks: for (_, path) in &chunks {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        for frame in decode_frames(&bytes) {
            let Ok(frame) = frame else {
                // A torn or damaged frame: nothing after it can be placed. What the last signature covers stands.
                break 'chunks;
            };
            let fail = |reason: String| err(path, format!("seqno {expected}: {reason}"));
            let tx = frame
                .entry
                .decode_transaction()
                .map_err(|e| fail(e.to_string()))?;
            if tx.seqno != expected {
                return Err(fail(format!("found seqno {}", tx.seqno)));
            }
            let public = tx.public_write_set().map_err(|e| fail(e.to_string()))?;
            // The identity a signature must be endorsed by: the service's at the time (a ledger that was itself
            // recovered changes identity part-way).
            let mut signer_identity = None;
            if tx.kind == KIND_SIGNATURE {
                let service_pem = state_json::<serde_json::Value>(&state, maps::SERVICE_INFO, "")
                    .and_then(|v| v["cert"].as_str().map(str::to_string))
                    .ok_or_else(|| fail("a signature before any service identity".into()))?;
                let service_der =
                    synod_core::cert::pem_to_der(&service_pem).map_err(|e| fail(e.to_string()))?;
                let root = tree
                    .root()
                    .ok_or_else(|| fail("a signature over an empty ledger".into()))?;
                verify_signature_transaction(&public, tx.tx_id(), &root, &service_der)
                    .map_err(|e| fail(format!("signature: {e}")))?;
                signatures += 1;
                if evidence_seen {
                    unproven = None;
                }
                signer_identity = Some(service_pem);
            } else if let Some((base, digest)) = &unproven {
                if let Some(ev) = synod_core::snapshot::SnapshotEvidence::for_snapshot(&public, *base) {
                    if ev.digest != *digest {
                        return Err(fail(format!(
                            "the ledger's evidence for snapshot {base} names another digest"
                        )));
                    }
                    evidence_seen = true;
                }
            }
            if views.last().map(|v| v.0) != Some(tx.view) {
                if views.last().is_some_and(|v| v.0 > tx.view) {
                    return Err(fail(format!("view {} after a later view", tx.view)));
                }
                views.push((tx.view, tx.seqno));
            }
            state
                .apply(tx.seqno, public.maps.iter())
                .map_err(|e| fail(e.to_string()))?;
            tree.append(frame.entry.leaf().map_err(|e| fail(e.to_string()))?);
            if let Some(service_pem) = signer_identity {
                signed = Some(PublicRecovery {
                    state: state.clone(),
                    frontier: tree.frontier(),
                    views: views.clone(),
                    last: tx.tx_id(),
                    service_cert_pem: service_pem,
                    signatures,
                    base_snapshot: None,
                });
            }
            expected += 1;
        }
    }
    if let Some((base, _)) = unproven {
        return Err(err(
            dir,
            format!("snapshot {base} that the ledger starts from is not proven by a signed evidence transaction in it"),
        ));
    }
    let mut recovered =
        signed.ok_or_else(|| err(dir, "no signature transaction: nothing is vouched for".into()))?;
    recovered.base_snapshot = base_snapshot;
    Ok(recovered)
}

/// Private maps: name → key → value.
pub type PrivateMaps = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// The private maps of the previous service at `until`, folded from the private writes of its ledger files in
/// `dir` (opened with `sealer`, which holds the recovered secrets): key → value per map, deleted keys dropped.
/// Memory is what the private state holds, never the ledger.
pub fn private_state(
    dir: &Path,
    base_snapshot: Option<&Path>,
    until: u64,
    sealer: &Sealer,
) -> Result<PrivateMaps, LedgerRecoveryError> {
    let err = |path: &Path, reason: String| LedgerRecoveryError {
        path: path.to_path_buf(),
        reason,
    };
    let mut private = PrivateMaps::new();
    // A ledger that starts after a snapshot: its private values (sealed under the secret of its seqno) first.
    if let Some(path) = base_snapshot {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        let file = synod_core::snapshot::SnapshotFile::decode(bytes.as_slice())
            .map_err(|e| err(path, format!("not a snapshot: {e}")))?;
        for map in file.maps.iter().filter(|m| !maps::is_public(&m.name)) {
            let values = private.entry(map.name.clone()).or_default();
            for e in &map.entries {
                let clear = sealer
                    .unseal_snapshot_value(file.seqno, &map.name, &e.key, &e.value)
                    .map_err(|x| err(path, format!("{}: {x}", map.name)))?;
                values.insert(e.key.clone(), clear);
            }
        }
    }
    let chunks = list_chunks(dir).map_err(|e| err(dir, e.to_string()))?;
    for (_, path) in chunks.iter().filter(|(n, _)| n.start <= until) {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        for frame in decode_frames(&bytes) {
            let frame = frame.map_err(|e| err(path, e.to_string()))?;
            let tx = frame
                .entry
                .decode_transaction()
                .map_err(|e| err(path, e.to_string()))?;
            if tx.seqno > until {
                break;
            }
            if tx.private_sealed.is_empty() {
                continue;
            }
            let fail = |reason: String| err(path, format!("seqno {}: {reason}", tx.seqno));
            let clear = sealer
                .unseal(tx.tx_id(), &tx.private_sealed)
                .map_err(|e| fail(e.to_string()))?;
            let writes = WriteSet::decode(clear.as_slice()).map_err(|e| fail(e.to_string()))?;
            for mw in writes.maps {
                let map = private.entry(mw.name).or_default();
                for w in mw.writes {
                    match w.value {
                        Some(v) => map.insert(w.key, v),
                        None => map.remove(&w.key),
                    };
                }
            }
        }
    }
    private.retain(|_, m| !m.is_empty());
    Ok(private)
}

/// Bytes of recovered private values per transaction: recovery writes stay ordinary-sized transactions.
pub const PRIVATE_BATCH_BYTES: usize = 1 << 20;
/// How long the private recovery keeps trying to order its transactions (this node must be the primary).
const PRIVATE_RECOVERY_PATIENCE_S: u64 = 600;

/// Replays the previous service's private state on a background thread if its secrets are recovered and it is not
/// replayed yet, unless the replay runs already. Only the node started with `synod-node recover` holds the
/// previous ledger's files; elsewhere this does nothing.
pub fn start_private_recovery(node: &std::sync::Arc<crate::service::Node>) {
    let due =
        previous_service(&node.view().state).is_some_and(|p| p.secrets_recovered && !p.private_recovered);
    if !due || !node.holds_recovered_ledger() || node.private_recovery_started() {
        return;
    }
    let node = node.clone();
    let spawned = std::thread::Builder::new()
        .name("private-recovery".into())
        .spawn(move || match run_private_recovery(&node) {
            Ok(()) => tracing::info!("private recovery done: the service is open"),
            Err(e) => {
                tracing::error!("private recovery failed: {e:#}");
                node.private_recovery_stopped();
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the private recovery: {e}");
    }
}

fn run_private_recovery(node: &crate::service::Node) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(PRIVATE_RECOVERY_PATIENCE_S);
    let state = node.view().state.clone();
    let previous = previous_service(&state).context("this service recovers no previous service")?;
    node.sync_previous_service();
    let sealer = node.sealer().clone();
    // The snapshot the copied ledger continues, if it does not start at 1.
    let first = list_chunks(&node.ledger_dir())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .first()
        .map_or(1, |(name, _)| name.start);
    let base = (first > 1)
        .then(|| synod_core::snapshot::find_in(&node.snapshots_dir(), first - 1))
        .flatten();
    let private = private_state(&node.ledger_dir(), base.as_deref(), previous.last_seqno, &sealer)?;
    let keys: usize = private.values().map(BTreeMap::len).sum();
    tracing::info!(
        maps = private.len(),
        keys,
        "replaying the previous service's private state"
    );
    // Batches of whole key/value pairs, in map and key order.
    type Batch<'a> = Vec<(&'a str, &'a [u8], &'a [u8])>;
    let mut batches: Vec<Batch<'_>> = vec![Vec::new()];
    let mut bytes = 0;
    for (map, entries) in &private {
        for (k, v) in entries {
            if bytes + k.len() + v.len() > PRIVATE_BATCH_BYTES && !batches.last().is_some_and(Vec::is_empty) {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += k.len() + v.len();
            batches.last_mut().expect("never empty").push((map, k, v));
        }
    }
    let latest = node.sealer().latest();
    let last = batches.len() - 1;
    for (i, batch) in batches.iter().enumerate() {
        loop {
            let finish = i == last;
            let result = node.execute(|tx| {
                for (map, k, v) in batch {
                    tx.put(map, k, v);
                }
                if finish {
                    finish_recovery(tx, &latest)?;
                }
                Ok::<_, RecoveryError>(())
            });
            match result {
                Ok(_) => break,
                Err(crate::service::ExecError::Handler(e)) => return Err(e.into()),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!("private recovery: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => return Err(anyhow::anyhow!("private recovery gave up: {e}")),
            }
        }
    }
    Ok(())
}

/// The last private recovery transaction: the service opens, the recovery is recorded complete, and the
/// recovery members get fresh shares of the new secret.
fn finish_recovery(tx: &mut Tx, latest: &(u64, LedgerSecret)) -> Result<(), RecoveryError> {
    let mut previous: PreviousService = get_json(tx, maps::PREVIOUS_SERVICE, "")
        .ok_or(RecoveryError::Malformed("previous service record"))?;
    previous.private_recovered = true;
    put_json(tx, maps::PREVIOUS_SERVICE, "", &previous);
    let mut info: serde_json::Value =
        get_json(tx, maps::SERVICE_INFO, "").ok_or(RecoveryError::Malformed("service info"))?;
    info["status"] = serde_json::json!("Open");
    put_json(tx, maps::SERVICE_INFO, "", &info);
    refresh_shares(tx, &latest.1, Some(latest.0), true)?;
    Ok(())
}

#[cfg(test)]
mod tests;
