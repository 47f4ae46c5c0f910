//! One error type for the whole library, so callers can tell apart what to retry (the node is unreachable or
//! answered 503), what to report (the node said no, with CCF's `{"error": {"code", "message"}}`), and what is
//! wrong locally (files, keys, configuration).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use synod_core::txid::{TxId, TxStatus};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a Synod network or handling its files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local file could not be read or written.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        /// What was being done ("read", "write", "create").
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, so not repeated as a `source`).
        error: std::io::Error,
    },
    /// Bad configuration: network.json, a node or user name, a URL, a header, a name for keygen.
    #[error("{0}")]
    Config(String),
    /// The TLS configuration could not be built (bad service certificate, client certificate or key).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// A node's attestation was refused (`synod attest`): the failed check.
    #[error("attestation refused: {0}")]
    Attestation(String),
    /// No connection could be made (refused, reset during connect, connect timeout): the request was not sent, so
    /// it is always safe to retry, here or on another node. A restarting node looks like this.
    #[error("cannot connect to {url}: {reason}")]
    Unreachable {
        /// The node URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// The connection failed after the request may have been sent: a write may or may not have been applied.
    #[error(
        "connection to {url} lost during the request (a write may or may not have been applied): {reason}"
    )]
    ConnectionLost {
        /// The node URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// The TLS handshake failed, typically because the node's certificate is not endorsed by the pinned service
    /// certificate. Not retried: another attempt would fail the same way.
    #[error("TLS handshake with {url} failed: {reason} (is the pinned service certificate this network's?)")]
    Tls {
        /// The node URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// No complete answer within the request timeout (a write may or may not have been applied).
    #[error("request to {url} timed out after {after:?}")]
    Timeout {
        /// The node URL.
        url: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// Any other HTTP-level failure (too many redirects, an unusable URL).
    #[error("HTTP request to {url} failed: {reason}")]
    Transport {
        /// The request URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// The node answered with an error in CCF's shape `{"error": {"code", "message"}}`.
    #[error("{} {code}: {message}", status.as_u16())]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Machine-readable code, e.g. `InvalidInput`, `TransactionPendingOrUnknown`.
        code: String,
        /// Message for a person.
        message: String,
    },
    /// The node answered something this client cannot use (an error without CCF's shape, bad JSON, a missing
    /// header, an oversized body).
    #[error("unexpected response (HTTP {}): {message}", status.as_u16())]
    UnexpectedResponse {
        /// HTTP status of the response.
        status: StatusCode,
        /// What was wrong with it.
        message: String,
    },
    /// The transaction is Invalid: it was rolled back (or never existed) and will never be committed.
    #[error("transaction {0} is Invalid: it will never be committed")]
    TxInvalid(TxId),
    /// The transaction was not Committed within the allotted time.
    #[error("transaction {tx_id} is not Committed after {waited:?} (last status seen: {})",
        last_status.map_or_else(|| "none".to_string(), |s| format!("{s:?}")))]
    CommitTimeout {
        /// The transaction waited for.
        tx_id: TxId,
        /// How long it was waited for.
        waited: Duration,
        /// The last status a node reported, if any answered.
        last_status: Option<TxStatus>,
    },
    /// A receipt does not verify.
    #[error("receipt does not verify: {0}")]
    Receipt(#[from] synod_core::receipt::ReceiptError),
    /// A certificate or key could not be generated or parsed.
    #[error(transparent)]
    Cert(#[from] synod_core::cert::CertError),
    /// keygen refuses to overwrite an existing file.
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    AlreadyExists(PathBuf),
}

impl Error {
    /// True for connection failures (the node is down or restarting): [`Error::Unreachable`] and
    /// [`Error::ConnectionLost`].
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::ConnectionLost { .. })
    }

    /// Whether a request that failed with this error may be sent again (to this or another node). `idempotent`
    /// says whether repeating the request is harmless even if the first attempt was applied (GET, HEAD).
    pub fn is_retryable(&self, idempotent: bool) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Api { status, .. } | Error::UnexpectedResponse { status, .. } => {
                *status == StatusCode::SERVICE_UNAVAILABLE
            }
            Error::ConnectionLost { .. } | Error::Timeout { .. } => idempotent,
            _ => false,
        }
    }

    /// The HTTP status of an error the node answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } | Error::UnexpectedResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The CCF error code (`InvalidInput`, `ResourceNotFound`, ...) of an error the node answered.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            error,
        }
    }
}
