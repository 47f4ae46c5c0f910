//! The node's identities and secrets on disk: the service and node keys and certificates, the node's encryption
//! key, and the schedule of ledger secrets by seqno.

use super::*;

/// What a node needs besides its config to start: its identities and secrets.
pub struct Identities {
    /// The service identity (certificate and key; nodes hold the key to endorse joiners and sign COSE roots).
    pub service: Identity,
    /// This node's identity, endorsed by the service.
    pub node: Identity,
    /// The ledger secret this node started with (private values at rest are sealed under it).
    pub secret: LedgerSecret,
    /// The ledger secrets after it, `(first seqno, secret)` in order, when the service was rekeyed (a joining
    /// node receives them).
    pub schedule: Vec<(u64, LedgerSecret)>,
    /// This node's RSA encryption key (PEM): rekeyed ledger secrets are encrypted to it.
    pub encryption_key_pem: String,
}

pub(super) fn read_identities(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    paths
        .iter()
        .map(|p| {
            let pem = read(p)?;
            let der = cert::pem_to_der(&pem)
                .with_context(|| format!("{} is not a PEM certificate", p.display()))?;
            Ok((cert::cert_fingerprint_hex(&der), pem))
        })
        .collect()
}

pub(super) fn keys_of(ids: &Identities) -> anyhow::Result<Keys> {
    let node_der = cert::pem_to_der(&ids.node.cert_pem)?;
    Ok(Keys {
        node_key: cert::signing_key_from_pem(&ids.node.key_pem)?,
        node_cert_pem: ids.node.cert_pem.clone(),
        node_id: cert::public_key_id_hex(&node_der)?,
        service_key: cert::signing_key_from_pem(&ids.service.key_pem)?,
        service_cert_der: cert::pem_to_der(&ids.service.cert_pem)?,
        service_key_pem: ids.service.key_pem.clone(),
        encryption_key: Some(
            synod_core::recovery::EncryptionPrivateKey::from_pem(&ids.encryption_key_pem)
                .context("this node's encryption key")?,
        ),
    })
}

/// Saves identities into the data directory.
pub fn save_identities(paths: &Paths, ids: &Identities) -> anyhow::Result<()> {
    write_private(&paths.file("service_key.pem"), ids.service.key_pem.as_bytes())?;
    write_private(&paths.file("service_cert.pem"), ids.service.cert_pem.as_bytes())?;
    write_private(&paths.file("node_key.pem"), ids.node.key_pem.as_bytes())?;
    write_private(&paths.file("node_cert.pem"), ids.node.cert_pem.as_bytes())?;
    ids.secret
        .save(&paths.file("ledger_secret"))
        .context("saving the ledger secret")?;
    write_private(
        &paths.file(ENCRYPTION_KEY_FILE),
        ids.encryption_key_pem.as_bytes(),
    )?;
    save_schedule(paths, &ids.schedule)?;
    Ok(())
}

/// The sealer of a node's identities: its first secret, then its schedule.
pub(super) fn sealer_of(ids: &Identities) -> Sealer {
    Sealer::with_schedule(&ids.secret, &ids.schedule)
}

#[derive(Serialize, Deserialize)]
pub(super) struct ScheduledSecret {
    from: u64,
    secret: String,
}

/// Keeps the node's ledger secret schedule (mode 0600), so a restart opens entries sealed after a rekey.
pub fn save_schedule(paths: &Paths, schedule: &[(u64, LedgerSecret)]) -> anyhow::Result<()> {
    let entries: Vec<ScheduledSecret> = schedule
        .iter()
        .map(|(from, s)| ScheduledSecret {
            from: *from,
            secret: s.to_base64(),
        })
        .collect();
    write_private(&paths.file(SCHEDULE_FILE), &serde_json::to_vec(&entries)?)
}

pub(super) fn load_schedule(paths: &Paths) -> anyhow::Result<Vec<(u64, LedgerSecret)>> {
    let path = paths.file(SCHEDULE_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(Vec::new());
    };
    let entries: Vec<ScheduledSecret> =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
    entries
        .into_iter()
        .map(|e| {
            let secret =
                LedgerSecret::from_base64(&e.secret).with_context(|| format!("{}", path.display()))?;
            Ok((e.from, secret))
        })
        .collect()
}

/// A new RSA encryption key for a node (PEM).
pub fn new_encryption_key() -> anyhow::Result<String> {
    Ok(synod_core::recovery::generate_encryption_key()
        .context("generating the node's encryption key")?
        .private_pem)
}

/// The public half (PEM) of a node's encryption key, as its nodes-table entry records it.
pub fn encryption_public_pem(private_pem: &str) -> anyhow::Result<String> {
    Ok(synod_core::recovery::EncryptionPrivateKey::from_pem(private_pem)?
        .public_key()
        .to_pem())
}

pub(super) fn load_identities(paths: &Paths) -> anyhow::Result<Identities> {
    Ok(Identities {
        service: Identity {
            cert_pem: read(&paths.file("service_cert.pem"))?,
            key_pem: read(&paths.file("service_key.pem"))?,
        },
        node: Identity {
            cert_pem: read(&paths.file("node_cert.pem"))?,
            key_pem: read(&paths.file("node_key.pem"))?,
        },
        secret: LedgerSecret::load(&paths.file("ledger_secret"))
            .context("the ledger secret is missing or damaged: refusing to start (a new one would not read this node's ledger)")?,
        schedule: load_schedule(paths)?,
        encryption_key_pem: match std::fs::read_to_string(paths.file(ENCRYPTION_KEY_FILE)) {
            Ok(pem) => pem,
            Err(_) => {
                // A node from before encryption keys: it gets one, but rekeys reach it only once its entry in the
                // nodes table records it (a rekey refuses to leave a trusted node behind).
                let pem = new_encryption_key()?;
                write_private(&paths.file(ENCRYPTION_KEY_FILE), pem.as_bytes())?;
                pem
            }
        },
    })
}
