//! Identities for users and members: a key (ECDSA P-384 by default, as CCF; P-256 or Ed25519 on request) and a
//! self-signed certificate, written as the PEM files the
//! node (`--user-cert`), network.json and the client read. The private key is written owner-only (0600) and
//! existing files are never overwritten, so a user's key cannot be lost by re-running a script.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use synod_core::cert::{Curve, Identity};

use crate::error::{Error, Result};

/// The files [`keygen`] wrote and the identity's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFiles {
    /// `<name>_cert.pem`.
    pub cert: PathBuf,
    /// `<name>_privk.pem` (mode 0600).
    pub key: PathBuf,
    /// Hex SHA-256 of the certificate DER: the id the service knows this user or member by.
    pub id: String,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid identity name {name:?}: use 1-64 letters, digits, '_', '-' or '.' (not starting with '.')"
        )))
    }
}

/// Writes `contents` to a new file `path` with `mode`, synced; refuses to overwrite anything.
pub fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists(path.to_path_buf())
        } else {
            Error::io("create", path, e)
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

/// Generates a key on `curve` and a self-signed certificate with common name `name`, written to
/// `out_dir/<name>_cert.pem` and `out_dir/<name>_privk.pem` (created if needed). Refuses to overwrite either.
pub fn keygen(name: &str, curve: Curve, out_dir: impl AsRef<Path>) -> Result<KeyFiles> {
    keygen_with(name, out_dir, |name| {
        Ok(synod_core::cert::generate_self_signed_with(curve, name, false)?)
    })
}

/// Writes the identity `generate(name)` makes to `out_dir/<name>_cert.pem` and `out_dir/<name>_privk.pem` (mode
/// 0600; `out_dir` created if needed), as [`keygen`] does: the name must be a plain file name prefix, either file
/// existing is refused before anything is generated, and a key is never left behind without its certificate.
/// `generate` is called only once the name and the paths are known to be usable.
pub fn keygen_with<E: From<Error>>(
    name: &str,
    out_dir: impl AsRef<Path>,
    generate: impl FnOnce(&str) -> Result<Identity, E>,
) -> Result<KeyFiles, E> {
    check_name(name)?;
    let out_dir = out_dir.as_ref();
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io("create", out_dir, e))?;
    let cert = out_dir.join(format!("{name}_cert.pem"));
    let key = out_dir.join(format!("{name}_privk.pem"));
    for path in [&cert, &key] {
        if path.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists(path.clone()).into());
        }
    }
    let identity = generate(name)?;
    let id = synod_core::cert::cert_fingerprint_hex(
        &synod_core::cert::pem_to_der(&identity.cert_pem).map_err(Error::from)?,
    );
    create_new(&key, identity.key_pem.as_bytes(), 0o600)?;
    if let Err(e) = create_new(&cert, identity.cert_pem.as_bytes(), 0o644) {
        // Do not leave a key without its certificate behind.
        let _ = std::fs::remove_file(&key);
        return Err(e.into());
    }
    Ok(KeyFiles { cert, key, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_usable_identity_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let files = keygen("user0", Curve::default(), &out).unwrap();
        assert_eq!(files.cert, out.join("user0_cert.pem"));
        assert_eq!(files.key, out.join("user0_privk.pem"));
        let cert_pem = std::fs::read_to_string(&files.cert).unwrap();
        let key_pem = std::fs::read_to_string(&files.key).unwrap();
        let der = synod_core::cert::pem_to_der(&cert_pem).unwrap();
        assert_eq!(files.id, synod_core::cert::cert_fingerprint_hex(&der));
        // The key matches the certificate.
        let key = synod_core::cert::signing_key_from_pem(&key_pem).unwrap();
        assert_eq!(key.public_key(), synod_core::cert::public_key(&der).unwrap());
        assert_eq!(key.curve(), Curve::P384);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A usable TLS client identity.
        let service = synod_core::cert::generate_self_signed("service", true).unwrap();
        crate::Client::new(
            "https://127.0.0.1:1",
            &service.cert_pem,
            Some((&cert_pem, &key_pem)),
        )
        .unwrap();

        let err = keygen("user0", Curve::Ed25519, &out).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
        assert_eq!(
            std::fs::read_to_string(&files.key).unwrap(),
            key_pem,
            "key untouched"
        );
        assert_eq!(
            std::fs::read_to_string(&files.cert).unwrap(),
            cert_pem,
            "cert untouched"
        );

        // Either file existing is enough to refuse, and nothing is written.
        std::fs::write(out.join("member0_cert.pem"), "x").unwrap();
        assert!(matches!(
            keygen("member0", Curve::default(), &out),
            Err(Error::AlreadyExists(_))
        ));
        assert!(!out.join("member0_privk.pem").exists());
    }

    #[test]
    fn every_curve_makes_a_usable_tls_identity() {
        let dir = tempfile::tempdir().unwrap();
        let service = synod_core::cert::generate_self_signed("service", true).unwrap();
        for curve in Curve::ALL {
            let files = keygen(curve.as_str(), curve, dir.path()).unwrap();
            let cert_pem = std::fs::read_to_string(&files.cert).unwrap();
            let key_pem = std::fs::read_to_string(&files.key).unwrap();
            assert_eq!(synod_core::cert::curve_of(&cert_pem).unwrap(), curve);
            crate::Client::new(
                "https://127.0.0.1:1",
                &service.cert_pem,
                Some((&cert_pem, &key_pem)),
            )
            .unwrap();
        }
    }

    #[test]
    fn rejects_names_that_are_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(
                matches!(keygen(bad, Curve::default(), dir.path()), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
