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
//! Everything here works on a transaction or a state and is tested without a node; the node's side (reading the
//! previous ledger's files, replaying its private state) is `crate::service::recovery`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use synod_core::hash::sha256;
use synod_core::maps;
use synod_core::recovery::{self as crypto, EncryptionPublicKey, Share};
use synod_core::tables::{MemberStatus, NodeStatus, ServiceInfo, ServiceStatus};
use synod_kv::seal::{LedgerSecret, Sealer, SecretRange};
use synod_kv::{State, Tx};

use crate::governance::{get_json, put_json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const LATEST_SECRET_AAD: &[u8] = b"synod latest ledger secret v1";
const PREVIOUS_SECRET_LABEL: &[u8] = b"synod previous ledger secret v1";
const SUBMITTED_SHARE_LABEL: &[u8] = b"synod submitted recovery share v1";

/// Service status while the public state of a previous service is recovered and members decide.
pub const STATUS_RECOVERING: &str = ServiceStatus::Recovering.as_str();
/// Service status once members accepted the recovery: shares are being submitted.
pub const STATUS_WAITING_FOR_SHARES: &str = ServiceStatus::WaitingForRecoveryShares.as_str();

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
    #[error("the service is {}, not waiting for recovery shares", status_name(.0))]
    NotWaiting(Option<ServiceStatus>),
    /// Secrets are not replaced while the previous ones are being recovered.
    #[error("the service is {0}: the ledger cannot be rekeyed during a recovery")]
    DuringRecovery(ServiceStatus),
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

pub(crate) fn state_json<T: serde::de::DeserializeOwned>(state: &State, map: &str, key: &str) -> Option<T> {
    state
        .get(map, key.as_bytes())
        .and_then(|v| serde_json::from_slice(v).ok())
}

/// The service's status (`Opening`, `Open`, `Recovering`, ...).
pub fn service_status(tx: &mut Tx) -> Option<ServiceStatus> {
    get_json::<ServiceInfo>(tx, maps::SERVICE_INFO, "").and_then(|info| info.status)
}

fn status_name(status: &Option<ServiceStatus>) -> &'static str {
    status.map_or("without a status", ServiceStatus::as_str)
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
            (info["status"] == MemberStatus::Active)
                .then(|| Some((id, String::from_utf8(pem.to_vec()).ok()?)))?
        })
        .collect()
}

fn recovery_threshold(tx: &mut Tx) -> usize {
    get_json::<ServiceInfo>(tx, maps::SERVICE_INFO, "")
        .and_then(|info| info.recovery_threshold)
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
    if service_status(tx).is_some_and(ServiceStatus::is_recovering) {
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
    getrandom::getrandom(&mut key).map_err(crypto::RecoveryError::Random)?;
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
    if let Some(status) = service_status(tx).filter(|s| s.is_recovering()) {
        return Err(RecoveryError::DuringRecovery(status));
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(crypto::RecoveryError::Random)?;
    let new = LedgerSecret(bytes);
    let mut record = EncryptedLedgerSecrets::default();
    for (id, value) in tx.range(maps::NODES_INFO, b"", None, usize::MAX) {
        let id = String::from_utf8_lossy(&id).into_owned();
        let Ok(info) = serde_json::from_slice::<serde_json::Value>(&value) else {
            continue;
        };
        if info["status"] != NodeStatus::Trusted {
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
    if status != Some(ServiceStatus::WaitingForRecoveryShares) {
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
    let mut info: ServiceInfo =
        get_json(tx, maps::SERVICE_INFO, "").ok_or(RecoveryError::Malformed("previous service info"))?;
    if info.cert.is_empty() {
        return Err(RecoveryError::Malformed("previous service certificate"));
    }
    let previous_cert = std::mem::replace(&mut info.cert, r.service_cert_pem.to_string());
    info.status = Some(ServiceStatus::Recovering);
    info.curve = Some(r.curve.to_string());
    info.other.insert(
        "previous_service_identity_version".into(),
        serde_json::json!(r.last_seqno),
    );
    put_json(tx, maps::SERVICE_INFO, "", &info);
    let nodes = tx.range(maps::NODES_INFO, b"", None, usize::MAX);
    for (id, value) in nodes {
        let Ok(mut node) = serde_json::from_slice::<serde_json::Value>(&value) else {
            continue;
        };
        if node["status"] != NodeStatus::Retired {
            node["status"] = NodeStatus::Retired.into();
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

/// The last private recovery transaction: the service opens, the recovery is recorded complete, and the
/// recovery members get fresh shares of the new secret.
pub fn finish_recovery(tx: &mut Tx, latest: &(u64, LedgerSecret)) -> Result<(), RecoveryError> {
    let mut previous: PreviousService = get_json(tx, maps::PREVIOUS_SERVICE, "")
        .ok_or(RecoveryError::Malformed("previous service record"))?;
    previous.private_recovered = true;
    put_json(tx, maps::PREVIOUS_SERVICE, "", &previous);
    let mut info: ServiceInfo =
        get_json(tx, maps::SERVICE_INFO, "").ok_or(RecoveryError::Malformed("service info"))?;
    info.status = Some(ServiceStatus::Open);
    put_json(tx, maps::SERVICE_INFO, "", &info);
    refresh_shares(tx, &latest.1, Some(latest.0), true)?;
    Ok(())
}

#[cfg(test)]
mod tests;
