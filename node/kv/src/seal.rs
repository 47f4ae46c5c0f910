//! Confidentiality of private maps: AES-256-GCM under keys derived from the ledger secrets.
//!
//! Keys are derived with HMAC-SHA256 from a ledger secret, so no key serves two purposes:
//! - the ledger key seals a transaction's private write set (AAD = view ‖ seqno, so a sealed blob cannot be
//!   moved to another transaction);
//! - the commit-evidence key makes each transaction's commit evidence, a secret revealed only in its receipt;
//! - the snapshot key seals private values in snapshots with a nonce derived from (seqno, map, key), so every node
//!   writes byte-identical snapshot files (one value per key per snapshot: a nonce is never reused);
//! - the at-rest key seals private values in RocksDB (AAD = map ‖ key).
//!
//! A service's ledger is written under a sequence of secrets (a rekey starts a new one at a seqno every node agrees
//! on): the first three keys come from the secret of the seqno concerned ([`Sealer`] holds the schedule). The
//! at-rest key comes from the node's first secret: it seals only this node's own storage.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use synod_core::txid::TxId;

/// Bytes of the random nonce in front of every sealed blob.
pub const NONCE_BYTES: usize = 12;

/// Sealing errors.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Authentication failed: wrong key, wrong AAD, or altered bytes.
    #[error("cannot unseal: the data was altered or sealed under another key or position")]
    Unseal,
    /// The sealed blob is too short to hold a nonce and tag.
    #[error("sealed data is truncated ({0} bytes)")]
    Truncated(usize),
    /// Encryption failed (never expected).
    #[error("cannot seal")]
    Seal,
    /// No randomness from the OS.
    #[error("no randomness: {0}")]
    Random(#[from] getrandom::Error),
    /// The thread's random generator could not be seeded from the OS.
    #[error("no randomness for a nonce")]
    NonceSource,
    /// Reading or writing the secret's file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The secret's file has the wrong size.
    #[error("{0} does not hold a 32-byte ledger secret")]
    BadSecret(String),
    /// Text that is not a base64 32-byte secret.
    #[error("not a base64 32-byte ledger secret")]
    BadEncoding,
    /// The seqno belongs to a previous service whose ledger secret is not recovered (yet).
    #[error("seqno {0} was written by the previous service, whose ledger secret is not recovered")]
    NoSecret(u64),
}

/// The service's ledger secret.
#[derive(Clone)]
pub struct LedgerSecret(pub [u8; 32]);

impl std::fmt::Debug for LedgerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerSecret(..)")
    }
}

impl LedgerSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<LedgerSecret, SealError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)?;
        Ok(LedgerSecret(bytes))
    }

    /// Reads the secret at `path`. A missing file is an error, never a reason to make a new secret: a node
    /// that did so would seal its writes under a key no other node holds and could no longer read its own
    /// stored private state.
    pub fn load(path: &Path) -> Result<LedgerSecret, SealError> {
        let bytes = std::fs::read(path).map_err(|source| SealError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::BadSecret(path.display().to_string()))?;
        Ok(LedgerSecret(arr))
    }

    /// Writes the secret to `path` atomically with mode 0600.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_private(path, &self.0)
    }
}

/// Writes `contents` to `path` atomically and durably, readable by its owner only: how secrets and keys reach the
/// disk.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_durably(path, contents, 0o600)
}

/// Writes `contents` to `path` atomically and durably: a synced temporary file, created with `mode` (before the
/// umask), renamed over it, then its directory synced.
pub fn write_durably(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Makes the last rename or creation of `path` durable: until its directory is synced, a power cut can take the
/// rename back (a file system without a journal, as here, promises nothing else).
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

impl LedgerSecret {
    /// The secret in base64 (how the join answer and the node's schedule file carry it).
    pub fn to_base64(&self) -> String {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, self.0)
    }

    /// Reads what [`LedgerSecret::to_base64`] wrote.
    pub fn from_base64(text: &str) -> Result<LedgerSecret, SealError> {
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
            .map_err(|_| SealError::BadEncoding)?;
        Ok(LedgerSecret(
            bytes.try_into().map_err(|_| SealError::BadEncoding)?,
        ))
    }

    /// A 32-byte key for `label`, independent of every other label's and of the keys [`Sealer`] uses.
    pub fn derive_key(&self, label: &[u8]) -> [u8; 32] {
        derive(self, label)
    }
}

fn derive(secret: &LedgerSecret, label: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).expect("HMAC takes any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// Seals and opens with the ledger secret of each seqno: a service's ledger is written under a sequence of secrets
/// (a rekey starts a new one; a recovered service continues a ledger written under earlier ones). The schedule is
/// shared by every clone, so a rekey the replica sees is seen by the snapshotter and the historical reader too.
/// Private values at rest are sealed under the node's first secret, whatever the schedule does. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    at_rest: Arc<Aes256Gcm>,
    schedule: Arc<std::sync::RwLock<Vec<Range>>>,
}

#[derive(Clone)]
struct Range {
    from: u64,
    /// `None`: open-ended (the latest secret).
    until: Option<u64>,
    secret: Option<LedgerSecret>,
    keys: Option<Arc<Keys>>,
    /// A previous service's range (looked at first; not part of this service's own schedule).
    past: bool,
}

impl Range {
    fn new(from: u64, until: Option<u64>, secret: Option<LedgerSecret>) -> Range {
        let keys = secret.as_ref().map(|s| Arc::new(Keys::new(s)));
        Range {
            from,
            until,
            secret,
            keys,
            past: false,
        }
    }

    fn is_past(&self) -> bool {
        self.past
    }

    fn covers(&self, seqno: u64) -> bool {
        self.from <= seqno && self.until.is_none_or(|u| seqno <= u)
    }
}

struct Keys {
    ledger: Aes256Gcm,
    snapshot: Aes256Gcm,
    snapshot_nonce_key: [u8; 32],
    /// Keyed once (its inner and outer pads hashed), cloned for each transaction's evidence.
    commit_evidence_mac: Hmac<Sha256>,
}

/// A range of seqnos written under one ledger secret, and the secret if it is known.
#[derive(Clone, Debug)]
pub struct SecretRange {
    /// First seqno.
    pub from: u64,
    /// Last seqno.
    pub until: u64,
    /// The secret (`None` until a recovery recovers it).
    pub secret: Option<LedgerSecret>,
}

fn tx_aad(tx_id: TxId) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..8].copy_from_slice(&tx_id.view.to_be_bytes());
    aad[8..].copy_from_slice(&tx_id.seqno.to_be_bytes());
    aad
}

/// `len(map) ‖ map ‖ key`: names one key of one map unambiguously (RocksDB keys and at-rest AAD).
pub(crate) fn map_key(map: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + map.len() + key.len());
    k.extend_from_slice(&(map.len() as u32).to_be_bytes());
    k.extend_from_slice(map.as_bytes());
    k.extend_from_slice(key);
    k
}

fn snapshot_aad(seqno: u64, map: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = seqno.to_be_bytes().to_vec();
    aad.extend(map_key(map, key));
    aad
}

/// Seals under a random 96-bit nonce, drawn from the thread's ChaCha12 generator (seeded and regularly reseeded
/// from the OS), not a `getrandom` system call per value: every private write is sealed at rest on every node.
fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::RngCore::try_fill_bytes(&mut rand::thread_rng(), &mut nonce).map_err(|_| SealError::NonceSource)?;
    seal_with_nonce(cipher, &nonce, aad, plaintext)
}

/// `nonce ‖ ciphertext`, the layout [`unseal_with`] opens.
fn seal_with_nonce(
    cipher: &Aes256Gcm,
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let ct = cipher
        .encrypt(Nonce::from_slice(nonce), Payload { msg: plaintext, aad })
        .map_err(|_| SealError::Seal)?;
    let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn unseal_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_BYTES + 16 {
        return Err(SealError::Truncated(sealed.len()));
    }
    let (nonce, ct) = sealed.split_at(NONCE_BYTES);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| SealError::Unseal)
}

impl Keys {
    fn new(secret: &LedgerSecret) -> Keys {
        let key = |label: &[u8]| Aes256Gcm::new(&derive(secret, label).into());
        Keys {
            ledger: key(b"synod ledger private write sets v1"),
            snapshot: key(b"synod snapshot private values v1"),
            snapshot_nonce_key: derive(secret, b"synod snapshot nonces v1"),
            commit_evidence_mac: <Hmac<Sha256> as Mac>::new_from_slice(&derive(
                secret,
                b"synod commit evidence v1",
            ))
            .expect("HMAC takes any key length"),
        }
    }
}

impl Sealer {
    /// Derives the keys from `secret`, the secret of every seqno.
    pub fn new(secret: &LedgerSecret) -> Sealer {
        Sealer::with_schedule(secret, &[(1, secret.clone())])
    }

    /// At-rest keys from `base` (the node's first secret); each `(from, secret)` of `schedule` (in seqno order)
    /// covers the seqnos up to the next one's `from`.
    pub fn with_schedule(base: &LedgerSecret, schedule: &[(u64, LedgerSecret)]) -> Sealer {
        let mut ranges: Vec<Range> = Vec::with_capacity(schedule.len());
        for (i, (from, secret)) in schedule.iter().enumerate() {
            let until = schedule.get(i + 1).map(|(next, _)| next.saturating_sub(1));
            ranges.push(Range::new(*from, until, Some(secret.clone())));
        }
        if ranges.is_empty() {
            ranges.push(Range::new(1, None, Some(base.clone())));
        }
        Sealer {
            at_rest: Arc::new(Aes256Gcm::new(
                &derive(base, b"synod private values at rest v1").into(),
            )),
            schedule: Arc::new(std::sync::RwLock::new(ranges)),
        }
    }

    /// Keys from `current`, except for the seqnos of `past` ranges, which open with their own secret (or not at
    /// all while it is unknown).
    pub fn with_past(current: &LedgerSecret, past: &[SecretRange]) -> Sealer {
        let sealer = Sealer::new(current);
        sealer.add_past(past);
        sealer
    }

    /// Adds ranges of earlier seqnos (a recovered service's previous ledger), looked at before the schedule's own;
    /// replaces those added before.
    pub fn add_past(&self, past: &[SecretRange]) {
        let mut ranges = self.schedule.write().unwrap_or_else(|p| p.into_inner());
        ranges.retain(|r| !r.past);
        let added = past.iter().map(|r| Range {
            past: true,
            ..Range::new(r.from, Some(r.until), r.secret.clone())
        });
        let own = std::mem::take(&mut *ranges);
        ranges.extend(added);
        ranges.extend(own);
    }

    fn keys_for(&self, seqno: u64) -> Result<Arc<Keys>, SealError> {
        let ranges = self.schedule.read().unwrap_or_else(|p| p.into_inner());
        match ranges.iter().find(|r| r.covers(seqno)) {
            Some(r) => r.keys.clone().ok_or(SealError::NoSecret(seqno)),
            None => Err(SealError::NoSecret(seqno)),
        }
    }

    /// The secret of `seqno`, if known.
    pub fn secret_at(&self, seqno: u64) -> Option<LedgerSecret> {
        let ranges = self.schedule.read().unwrap_or_else(|p| p.into_inner());
        ranges
            .iter()
            .find(|r| r.covers(seqno))
            .and_then(|r| r.secret.clone())
    }

    /// The latest secret and the first seqno it covers.
    pub fn latest(&self) -> (u64, LedgerSecret) {
        let ranges = self.schedule.read().unwrap_or_else(|p| p.into_inner());
        let open = ranges
            .iter()
            .rev()
            .find(|r| r.until.is_none())
            .expect("a schedule always ends with an open range");
        (
            open.from,
            open.secret.clone().expect("the open range's secret is known"),
        )
    }

    /// The schedule's own `(from, secret)` pairs, oldest first (what a node keeps and hands to joiners).
    pub fn schedule(&self) -> Vec<(u64, LedgerSecret)> {
        let ranges = self.schedule.read().unwrap_or_else(|p| p.into_inner());
        ranges
            .iter()
            .filter(|r| !r.is_past())
            .filter_map(|r| Some((r.from, r.secret.clone()?)))
            .collect()
    }

    /// Seqnos from `from` on are sealed under `secret` (a rekey at `from - 1`). Repeating it is harmless.
    pub fn rekey(&self, from: u64, secret: LedgerSecret) {
        let mut ranges = self.schedule.write().unwrap_or_else(|p| p.into_inner());
        ranges.retain(|r| r.is_past() || r.from < from);
        if let Some(open) = ranges.iter_mut().rev().find(|r| !r.is_past()) {
            open.until = Some(from - 1);
        }
        ranges.push(Range::new(from, None, Some(secret)));
    }

    /// Forgets the rekeys of seqnos after `last` (rolled back): their secrets never took effect.
    pub fn truncate(&self, last: u64) -> bool {
        let mut ranges = self.schedule.write().unwrap_or_else(|p| p.into_inner());
        let before = ranges.len();
        ranges.retain(|r| r.is_past() || r.from <= last + 1 || r.from == 1);
        let changed = ranges.len() != before;
        if changed {
            if let Some(open) = ranges.iter_mut().rev().find(|r| !r.is_past()) {
                open.until = None;
            }
        }
        changed
    }

    /// Seals a private write set for the ledger entry `tx_id` with its seqno's secret: `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, tx_id: TxId, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        seal_with(&self.keys_for(tx_id.seqno)?.ledger, &tx_aad(tx_id), plaintext)
    }

    /// Opens what [`Sealer::seal`] sealed for the same `tx_id` (with the secret of its seqno).
    pub fn unseal(&self, tx_id: TxId, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        unseal_with(&self.keys_for(tx_id.seqno)?.ledger, &tx_aad(tx_id), sealed)
    }

    /// Seals a private map's value for storage at rest, bound to its map and key.
    pub fn seal_at_rest(&self, map: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, SealError> {
        seal_with(&self.at_rest, &map_key(map, key), value)
    }

    /// Opens a value sealed by [`Sealer::seal_at_rest`] for the same map and key.
    pub fn unseal_at_rest(&self, map: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        unseal_with(&self.at_rest, &map_key(map, key), sealed)
    }

    /// Seals a private value for the snapshot at `seqno`, deterministically (see the module docs).
    pub fn seal_snapshot_value(
        &self,
        seqno: u64,
        map: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let aad = snapshot_aad(seqno, map, key);
        let keys = self.keys_for(seqno)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&keys.snapshot_nonce_key)
            .expect("HMAC takes any key length");
        mac.update(&aad);
        let digest = mac.finalize().into_bytes();
        seal_with_nonce(&keys.snapshot, &digest[..NONCE_BYTES], &aad, value)
    }

    /// Opens a value sealed by [`Sealer::seal_snapshot_value`] for the same snapshot, map and key.
    pub fn unseal_snapshot_value(
        &self,
        seqno: u64,
        map: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        unseal_with(
            &self.keys_for(seqno)?.snapshot,
            &snapshot_aad(seqno, map, key),
            sealed,
        )
    }

    /// CCF's commit evidence for a new transaction `tx_id` (under the current secret): `ce:<view>.<seqno>:<hex>`,
    /// secret until a receipt reveals it.
    pub fn commit_evidence(&self, tx_id: TxId) -> String {
        let keys = self.keys_for(tx_id.seqno).unwrap_or_else(|_| {
            // Only a previous service's unrecovered seqnos have no keys, and the replica never makes evidence for
            // those: the latest secret is as good an answer as any (the evidence will simply not match).
            let ranges = self.schedule.read().unwrap_or_else(|p| p.into_inner());
            ranges
                .iter()
                .rev()
                .find_map(|r| r.keys.clone())
                .expect("the latest secret is known")
        });
        evidence_with(&keys, tx_id)
    }

    /// The commit evidence of any transaction, with the secret of its seqno.
    pub fn commit_evidence_at(&self, tx_id: TxId) -> Result<String, SealError> {
        let keys = self.keys_for(tx_id.seqno)?;
        Ok(evidence_with(&keys, tx_id))
    }
}

/// `ce:<view>.<seqno>:<hex HMAC of "<view>.<seqno>">`: made for every transaction on every node, so built in one
/// string with the HMAC keyed beforehand.
fn evidence_with(keys: &Keys, tx_id: TxId) -> String {
    use std::fmt::Write as _;
    let mut evidence = String::with_capacity(3 + 41 + 1 + 64);
    evidence.push_str("ce:");
    let _ = write!(evidence, "{tx_id}");
    let mut mac = keys.commit_evidence_mac.clone();
    mac.update(&evidence.as_bytes()[3..]);
    evidence.push(':');
    evidence.push_str(&hex::encode(mac.finalize().into_bytes()));
    evidence
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_ranges_open_with_their_own_secret_or_not_at_all() {
        let old = LedgerSecret([7; 32]);
        let new = LedgerSecret([8; 32]);
        let before = Sealer::new(&old);
        let t = TxId::new(3, 40);
        let sealed = before.seal(t, b"old private write").expect("seal");
        let range = |secret| SecretRange {
            from: 1,
            until: 50,
            secret,
        };
        let unknown = Sealer::with_past(&new, &[range(None)]);
        assert!(matches!(unknown.unseal(t, &sealed), Err(SealError::NoSecret(40))));
        assert!(matches!(
            unknown.commit_evidence_at(t),
            Err(SealError::NoSecret(40))
        ));
        let known = Sealer::with_past(&new, &[range(Some(old.clone()))]);
        assert_eq!(known.unseal(t, &sealed).expect("unseal"), b"old private write");
        assert_eq!(
            known.commit_evidence_at(t).expect("evidence"),
            before.commit_evidence(t)
        );
        // After the range, the current secret: what the recovered service writes.
        let later = TxId::new(5, 51);
        let fresh = known.seal(later, b"new").expect("seal");
        assert_eq!(Sealer::new(&new).unseal(later, &fresh).expect("unseal"), b"new");
        assert_eq!(
            known.commit_evidence_at(later).expect("evidence"),
            Sealer::new(&new).commit_evidence(later)
        );
        assert_ne!(old.derive_key(b"a"), old.derive_key(b"b"));
    }

    #[test]
    fn a_rekey_takes_effect_after_its_seqno_in_every_clone_and_a_rollback_undoes_it() {
        let first = LedgerSecret([1; 32]);
        let second = LedgerSecret([2; 32]);
        let sealer = Sealer::new(&first);
        let elsewhere = sealer.clone();
        let before = sealer.seal(TxId::new(1, 10), b"old").expect("seal");
        sealer.rekey(11, second.clone());
        let latest = |s: &Sealer| {
            let (from, secret) = s.latest();
            (from, secret.0)
        };
        assert_eq!(latest(&elsewhere), (11, second.0), "clones share the schedule");
        let after = elsewhere.seal(TxId::new(1, 11), b"new").expect("seal");
        assert!(
            Sealer::new(&first).unseal(TxId::new(1, 11), &after).is_err(),
            "sealed under the new secret"
        );
        assert_eq!(
            Sealer::new(&second)
                .unseal(TxId::new(1, 11), &after)
                .expect("unseal"),
            b"new"
        );
        assert_eq!(sealer.unseal(TxId::new(1, 10), &before).expect("unseal"), b"old");
        assert_eq!(sealer.schedule().len(), 2);
        // The same rekey seen again (a restart replays it) changes nothing.
        sealer.rekey(11, second.clone());
        assert_eq!(sealer.schedule().len(), 2);
        // Rolled back before the rekey: the first secret again, for every seqno.
        assert!(!sealer.truncate(10), "the rekey's own seqno is kept");
        assert!(sealer.truncate(9));
        assert_eq!(latest(&sealer), (1, first.0));
        assert_eq!(
            sealer.commit_evidence(TxId::new(1, 11)),
            Sealer::new(&first).commit_evidence(TxId::new(1, 11))
        );
        // Carried as base64 (join answers, the schedule file); anything else is refused.
        assert_eq!(
            LedgerSecret::from_base64(&first.to_base64()).expect("decode").0,
            first.0
        );
        assert!(matches!(
            LedgerSecret::from_base64("AAAA"),
            Err(SealError::BadEncoding)
        ));
        // At rest, the node's first secret, whatever the schedule.
        let rekeyed = Sealer::with_schedule(&first, &[(1, first.clone()), (5, second)]);
        let stored = rekeyed.seal_at_rest("m", b"k", b"v").expect("seal");
        assert_eq!(
            Sealer::new(&first)
                .unseal_at_rest("m", b"k", &stored)
                .expect("unseal"),
            b"v"
        );
    }

    #[test]
    fn seal_round_trip_and_binding() {
        let sealer = Sealer::new(&LedgerSecret([1; 32]));
        let t = TxId::new(2, 10);
        let sealed = sealer.seal(t, b"private write set").expect("seal");
        assert_eq!(sealer.unseal(t, &sealed).expect("unseal"), b"private write set");
        assert!(
            !sealed.windows(7).any(|w| w == b"private"),
            "ciphertext leaks plaintext"
        );
        assert!(
            matches!(sealer.unseal(TxId::new(2, 11), &sealed), Err(SealError::Unseal)),
            "moved blob"
        );
        let other = Sealer::new(&LedgerSecret([2; 32]));
        assert!(other.unseal(t, &sealed).is_err(), "other secret");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(sealer.unseal(t, &bad).is_err(), "byte {i}");
        }
        assert!(matches!(
            sealer.unseal(t, &sealed[..10]),
            Err(SealError::Truncated(10))
        ));
        assert_ne!(
            sealer.seal(t, b"x").expect("seal"),
            sealer.seal(t, b"x").expect("seal"),
            "fresh nonces"
        );
    }

    #[test]
    fn at_rest_values_are_bound_to_map_and_key() {
        let sealer = Sealer::new(&LedgerSecret([3; 32]));
        let sealed = sealer.seal_at_rest("records", b"k", b"v").expect("seal");
        assert_eq!(
            sealer.unseal_at_rest("records", b"k", &sealed).expect("unseal"),
            b"v"
        );
        assert!(sealer.unseal_at_rest("records", b"k2", &sealed).is_err());
        assert!(sealer.unseal_at_rest("records2", b"k", &sealed).is_err());
        assert!(
            sealer.unseal(TxId::new(0, 0), &sealed).is_err(),
            "keys are separated by purpose"
        );
    }

    #[test]
    fn snapshot_values_are_deterministic_and_bound() {
        let a = Sealer::new(&LedgerSecret([6; 32]));
        let one = a
            .seal_snapshot_value(10, "records", b"k", b"secret")
            .expect("seal");
        assert_eq!(
            one,
            a.seal_snapshot_value(10, "records", b"k", b"secret")
                .expect("seal"),
            "byte-identical"
        );
        assert_ne!(
            one,
            a.seal_snapshot_value(11, "records", b"k", b"secret")
                .expect("seal")
        );
        assert_eq!(
            a.unseal_snapshot_value(10, "records", b"k", &one)
                .expect("unseal"),
            b"secret"
        );
        assert!(a.unseal_snapshot_value(10, "records", b"k2", &one).is_err());
        assert!(a.unseal_snapshot_value(12, "records", b"k", &one).is_err());
    }

    #[test]
    fn commit_evidence_is_deterministic_and_secret_dependent() {
        let a = Sealer::new(&LedgerSecret([4; 32]));
        let b = Sealer::new(&LedgerSecret([5; 32]));
        let t = TxId::new(3, 7);
        assert_eq!(a.commit_evidence(t), a.commit_evidence(t));
        assert!(a.commit_evidence(t).starts_with("ce:3.7:"));
        assert_eq!(a.commit_evidence(t).len(), "ce:3.7:".len() + 64);
        assert_ne!(a.commit_evidence(t), b.commit_evidence(t));
        assert_ne!(a.commit_evidence(t), a.commit_evidence(TxId::new(3, 8)));
        // The very bytes of the first format (ledgers hold their digests): HMAC-SHA256 of "view.seqno", hex.
        for t in [TxId::new(3, 7), TxId::new(u64::MAX, u64::MAX), TxId::new(0, 1)] {
            let key = derive(&LedgerSecret([4; 32]), b"synod commit evidence v1");
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length");
            mac.update(t.to_string().as_bytes());
            let expected = format!("ce:{t}:{}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(a.commit_evidence(t), expected);
        }
    }

    #[test]
    fn a_missing_secret_file_is_an_error_not_a_new_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger_secret");
        assert!(matches!(LedgerSecret::load(&path), Err(SealError::Io { .. })));
        assert!(!path.exists(), "loading must not create a secret");
        let a = LedgerSecret::generate().expect("generate");
        a.save(&path).expect("save");
        assert_eq!(LedgerSecret::load(&path).expect("load").0, a.0);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, b"short").expect("write");
        assert!(matches!(LedgerSecret::load(&path), Err(SealError::BadSecret(_))));
    }

    /// A file's directory is found for a bare name too (the current directory), and a missing one is an error.
    #[test]
    fn the_directory_synced_is_the_files_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        sync_parent(&dir.path().join("file")).expect("its directory");
        sync_parent(Path::new("file")).expect("the current directory");
        assert!(sync_parent(&dir.path().join("gone").join("file")).is_err());
    }
}
