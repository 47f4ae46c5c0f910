//! `network.json`, the one file that tells every tool where a network is: written by `sandbox.sh` (and by the
//! end-to-end tests), read by the `synod` CLI, `synod-load` and [`crate::Client::from_network`], so that nobody
//! passes URLs, certificates and keys by hand.
//!
//! ```json
//! {"nodes": [{"name": "n0", "url": "https://127.0.0.1:8000", "data_dir": "/abs/workspace/n0"}],
//!  "service_cert": "/abs/workspace/service_cert.pem",
//!  "users": [{"name": "user0", "cert": "/abs/user0_cert.pem", "key": "/abs/user0_privk.pem"}],
//!  "members": [{"name": "member0", "cert": "/abs/member0_cert.pem", "key": "/abs/member0_privk.pem"}]}
//! ```
//!
//! Paths are meant to be absolute; relative ones are taken relative to the directory holding the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A network: its nodes, the service certificate clients pin, and the identities of its users and members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The nodes, in the order clients try them.
    pub nodes: Vec<NetworkNode>,
    /// The service certificate (PEM file): the only TLS root clients trust, and the key receipts verify against.
    pub service_cert: PathBuf,
    /// User identities (TLS client certificates for `/app/*`).
    #[serde(default)]
    pub users: Vec<NamedIdentity>,
    /// Member identities (governance).
    #[serde(default)]
    pub members: Vec<NamedIdentity>,
}

/// One node of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkNode {
    /// The node's name, e.g. `n0`.
    pub name: String,
    /// Base URL, e.g. `https://127.0.0.1:8000`.
    pub url: String,
    /// The node's data directory (its ledger is in `data_dir/ledger`).
    #[serde(default)]
    pub data_dir: PathBuf,
}

/// A named certificate and private key (PEM files), as written by [`crate::keygen`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedIdentity {
    /// The name, e.g. `user0`.
    pub name: String,
    /// Certificate PEM file.
    pub cert: PathBuf,
    /// PKCS#8 private key PEM file.
    pub key: PathBuf,
}

/// Reads a text file, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

/// Writes a file atomically: `<path>.tmp` first, then renamed over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("write", path, e))
}

fn pick<'a, T>(
    items: &'a [T],
    name: Option<&str>,
    what: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    match name {
        None => items
            .first()
            .ok_or_else(|| Error::Config(format!("the network has no {what}s"))),
        Some(name) => items.iter().find(|i| name_of(i) == name).ok_or_else(|| {
            let known: Vec<&str> = items.iter().map(&name_of).collect();
            Error::Config(format!(
                "no {what} named {name:?} in the network (known: {})",
                known.join(", ")
            ))
        }),
    }
}

impl Network {
    /// Reads and checks a `network.json`; relative paths in it are resolved against the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Network> {
        let path = path.as_ref();
        let text = read_text(path)?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        Network::from_json(&text, base).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses and checks network JSON; relative paths are resolved against `base_dir`.
    pub fn from_json(text: &str, base_dir: &Path) -> Result<Network> {
        let mut net: Network =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("invalid network JSON: {e}")))?;
        if net.nodes.is_empty() {
            return Err(Error::Config("the network lists no nodes".into()));
        }
        for node in &net.nodes {
            check_url(&node.url).map_err(|e| Error::Config(format!("node {:?}: {e}", node.name)))?;
        }
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base_dir.join(&*p);
            }
        };
        resolve(&mut net.service_cert);
        for node in &mut net.nodes {
            resolve(&mut node.data_dir);
        }
        for id in net.users.iter_mut().chain(net.members.iter_mut()) {
            resolve(&mut id.cert);
            resolve(&mut id.key);
        }
        Ok(net)
    }

    /// Writes the network as pretty JSON, atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Config(format!("cannot serialise the network: {e}")))?;
        write_atomically(path, &json)
    }

    /// The node with this name, or the first node.
    pub fn node(&self, name: Option<&str>) -> Result<&NetworkNode> {
        pick(&self.nodes, name, "node", |n| &n.name)
    }

    /// The user with this name; with no name, the first user, or None if the network has no users.
    pub fn user(&self, name: Option<&str>) -> Result<Option<&NamedIdentity>> {
        if name.is_none() && self.users.is_empty() {
            return Ok(None);
        }
        pick(&self.users, name, "user", |u| &u.name).map(Some)
    }

    /// The member with this name; with no name, the first member, or None if the network has no members.
    pub fn member(&self, name: Option<&str>) -> Result<Option<&NamedIdentity>> {
        if name.is_none() && self.members.is_empty() {
            return Ok(None);
        }
        pick(&self.members, name, "member", |m| &m.name).map(Some)
    }

    /// The service certificate PEM.
    pub fn service_cert_pem(&self) -> Result<String> {
        read_text(&self.service_cert)
    }

    /// Every node URL, starting with the named node (or the first) and then the others in order: the order in
    /// which a client fails over.
    pub fn urls_starting_at(&self, name: Option<&str>) -> Result<Vec<String>> {
        let first = self.node(name)?;
        let mut urls = vec![first.url.clone()];
        urls.extend(
            self.nodes
                .iter()
                .filter(|n| n.name != first.name)
                .map(|n| n.url.clone()),
        );
        Ok(urls)
    }
}

impl NamedIdentity {
    /// Reads the certificate and key PEM files: `(cert_pem, key_pem)`.
    pub fn read_pems(&self) -> Result<(String, String)> {
        Ok((read_text(&self.cert)?, read_text(&self.key)?))
    }
}

/// A node URL as the client uses it: `https://`, no query or fragment, no trailing slash; and parsed.
pub(crate) fn check_url(url: &str) -> Result<(String, reqwest::Url)> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| Error::Config(format!("invalid node URL {url:?}: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(Error::Config(format!("node URL {url:?} is not https://")));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::Config(format!(
            "node URL {url:?} must not have a query or fragment"
        )));
    }
    Ok((url.trim_end_matches('/').to_string(), parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "nodes": [{"name": "n0", "url": "https://127.0.0.1:8000", "data_dir": "/w/n0"},
                {"name": "n1", "url": "https://127.0.0.1:8001", "data_dir": "/w/n1"},
                {"name": "n2", "url": "https://127.0.0.1:8002", "data_dir": "/w/n2"}],
      "service_cert": "/w/service_cert.pem",
      "users": [{"name": "user0", "cert": "/w/user0_cert.pem", "key": "/w/user0_privk.pem"},
                {"name": "user1", "cert": "user1_cert.pem", "key": "user1_privk.pem"}],
      "members": [{"name": "member0", "cert": "/w/member0_cert.pem", "key": "/w/member0_privk.pem"}]
    }"#;

    #[test]
    fn parses_the_sandbox_shape() {
        let net = Network::from_json(SAMPLE, Path::new("/base")).unwrap();
        assert_eq!(net.nodes.len(), 3);
        assert_eq!(net.node(None).unwrap().name, "n0");
        assert_eq!(net.node(Some("n1")).unwrap().url, "https://127.0.0.1:8001");
        assert_eq!(net.nodes[2].data_dir, PathBuf::from("/w/n2"));
        assert_eq!(net.service_cert, PathBuf::from("/w/service_cert.pem"));
        assert_eq!(net.user(None).unwrap().unwrap().name, "user0");
        let user1 = net.user(Some("user1")).unwrap().unwrap();
        assert_eq!(
            user1.cert,
            PathBuf::from("/base/user1_cert.pem"),
            "relative paths resolve"
        );
        assert_eq!(
            net.member(None).unwrap().unwrap().key,
            PathBuf::from("/w/member0_privk.pem")
        );
        assert_eq!(
            net.urls_starting_at(Some("n1")).unwrap(),
            [
                "https://127.0.0.1:8001",
                "https://127.0.0.1:8000",
                "https://127.0.0.1:8002"
            ]
        );
        let err = net.node(Some("n9")).unwrap_err().to_string();
        assert!(err.contains("n9") && err.contains("n0, n1, n2"), "{err}");
        assert!(net.user(Some("nobody")).is_err());
    }

    #[test]
    fn users_and_members_are_optional() {
        let net = Network::from_json(
            r#"{"nodes": [{"name": "n0", "url": "https://localhost:1"}], "service_cert": "/s.pem"}"#,
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(net.user(None).unwrap(), None);
        assert_eq!(net.member(None).unwrap(), None);
        assert!(net.user(Some("user0")).is_err());
    }

    #[test]
    fn rejects_bad_networks() {
        for bad in [
            "",
            "[]",
            r#"{"nodes": [], "service_cert": "/s.pem"}"#,
            r#"{"nodes": [{"name": "n0", "url": "http://127.0.0.1:1"}], "service_cert": "/s.pem"}"#,
            r#"{"nodes": [{"name": "n0", "url": "not a url"}], "service_cert": "/s.pem"}"#,
            r#"{"nodes": [{"name": "n0", "url": "https://127.0.0.1:1/?q"}], "service_cert": "/s.pem"}"#,
            r#"{"nodes": [{"name": "n0", "url": "https://127.0.0.1:1"}]}"#,
        ] {
            assert!(
                matches!(Network::from_json(bad, Path::new("/")), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::from_json(SAMPLE, dir.path()).unwrap();
        let path = dir.path().join("network.json");
        net.save(&path).unwrap();
        assert_eq!(Network::load(&path).unwrap(), net);
        let missing = Network::load(dir.path().join("missing.json")).unwrap_err();
        assert!(missing.to_string().contains("missing.json"), "{missing}");
    }
}
