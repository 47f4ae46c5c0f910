//! One HTTPS connection to one node, kept open from request to request, for a caller that sends many requests in
//! turn and needs nothing else (a load generator's client): the request is written as HTTP/1.1 and the answer
//! read back directly, without the connection pool, URL handling and per-request allocations of
//! [`Client::call`]. `synod-load`'s clients spent a fifth of the benchmark machine's CPU in `Client::call`
//! (reqwest, hyper, URL parsing, allocations: 42–44 µs per write), CPU the nodes they measure share on one
//! machine; on this path the same requests cost their client 16–18 µs. The TLS configuration and identity are the
//! client's.
//!
//! It speaks the HTTP/1.1 the node speaks: answers framed by `content-length` (chunked ones are refused), a
//! connection the node closes (`connection: close`, or an error) opened again for the next request. A failure
//! drops the connection, so no answer can be read as another request's.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::client::{Client, Response, CONNECT_TIMEOUT, MAX_RESPONSE_BYTES};
use crate::error::{Error, Result};

/// Largest header section read from an answer.
const HEADER_BYTES_MAX: usize = 64 << 10;
/// Headers parsed per answer (a node sends about six).
const HEADERS_MAX: usize = 64;
/// A connection idle this long is checked before it is used: the node may have closed it meanwhile, and a request
/// written into a closed connection would fail as "lost" (maybe applied) when it was never read.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// A kept-open HTTPS connection to the node a [`Client`] was calling when it made it (see the module docs).
pub struct Connection {
    config: Arc<rustls::ClientConfig>,
    /// The node's URL (`https://host:port`), for errors and answers.
    url: String,
    /// `host:port`, to connect to and for the `host` header.
    authority: String,
    server_name: ServerName<'static>,
    stream: Option<TlsStream<TcpStream>>,
    /// Bytes read past the last answer's end (none, from a node that does not pipeline).
    read: Vec<u8>,
    timeout: Duration,
    /// When the last answer was read (or the connection opened).
    last_used: std::time::Instant,
}

impl Client {
    /// A [`Connection`] to the node requests currently go to, with this client's TLS configuration, identity and
    /// request timeout; it connects at its first request (or [`Connection::open`]).
    pub fn connection(&self) -> Result<Connection> {
        let base = self.current_base();
        let host = base
            .host_str()
            .ok_or_else(|| Error::Config(format!("{base} has no host")))?;
        let port = base.port_or_known_default().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                .map_err(|e| Error::Config(format!("{base}: {e}")))?;
        Ok(Connection {
            config: self.tls_config(),
            url: self.node_url().to_string(),
            authority: format!("{host}:{port}"),
            server_name,
            stream: None,
            read: Vec::new(),
            timeout: self.request_timeout(),
            last_used: std::time::Instant::now(),
        })
    }
}

impl Connection {
    /// Connects now, if not connected (a benchmark opens its connections before its clock starts).
    pub async fn open(&mut self) -> Result<()> {
        if self.stream.is_some() && self.last_used.elapsed() >= IDLE_CHECK_AFTER {
            self.drop_if_closed().await;
        }
        if self.stream.is_some() {
            return Ok(());
        }
        let unreachable = |reason: String| Error::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| unreachable(e.to_string()))?;
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(self.config.clone()).connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| unreachable(format!("no TLS handshake within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| Error::Tls {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        self.stream = Some(tls);
        self.read.clear();
        self.last_used = std::time::Instant::now();
        Ok(())
    }

    /// Drops the connection if the node closed it (or sent something unasked): one read that does not wait.
    async fn drop_if_closed(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let mut probe = [0u8; 1];
        // Polled once: a read with nothing to read is pending, and the zero timeout then gives up on it.
        if tokio::time::timeout(Duration::ZERO, stream.read(&mut probe))
            .await
            .is_ok()
        {
            // Closed (nothing read), failed, or bytes no request asked for: not usable.
            self.stream = None;
        }
    }

    /// `POST path` with `body` of `content_type`; the whole answer, whatever its status. On any failure the
    /// connection is dropped (the next request opens another).
    pub async fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Response> {
        if !path.starts_with('/') || path.contains(['\r', '\n', ' ']) || content_type.contains(['\r', '\n']) {
            return Err(Error::Config(format!(
                "request path {path:?} or type {content_type:?} is not usable"
            )));
        }
        let timeout = self.timeout;
        let outcome = match tokio::time::timeout(timeout, self.exchange(path, content_type, body)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout {
                url: self.url.clone(),
                after: timeout,
            }),
        };
        if outcome.is_err() {
            self.stream = None;
        }
        outcome
    }

    async fn exchange(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Response> {
        self.open().await?;
        let mut request = Vec::with_capacity(128 + path.len() + body.len());
        // Written in place (a Vec takes every write).
        let _ = write!(
            request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            self.authority,
            body.len()
        );
        request.extend_from_slice(body);
        let url = self.url.clone();
        let lost = |e: std::io::Error| Error::ConnectionLost {
            url: url.clone(),
            reason: e.to_string(),
        };
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| lost(std::io::ErrorKind::NotConnected.into()))?;
        stream.write_all(&request).await.map_err(lost)?;
        stream.flush().await.map_err(lost)?;
        let (status, headers, body_start, length, close) = loop {
            if let Some(head) = parse_head(&self.read, &self.url)? {
                break head;
            }
            if self.read.len() > HEADER_BYTES_MAX {
                return Err(self.unexpected(format!("a header section over {HEADER_BYTES_MAX} bytes")));
            }
            self.fill(&lost).await?;
        };
        if length > MAX_RESPONSE_BYTES {
            return Err(Error::UnexpectedResponse {
                status,
                message: format!("body larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        while self.read.len() < body_start + length {
            self.fill(&lost).await?;
        }
        let body = self.read[body_start..body_start + length].to_vec();
        self.read.drain(..body_start + length);
        self.last_used = std::time::Instant::now();
        // Bytes past the answer answer no request of ours (nothing is pipelined): read next, they would pass for the
        // next request's answer.
        if close || !self.read.is_empty() {
            self.stream = None;
            self.read.clear();
        }
        Ok(Response {
            status,
            headers,
            body,
            url: self.url.clone(),
        })
    }

    /// Reads what the node sent next; a closed connection is an error (an answer was still due).
    async fn fill(&mut self, lost: &impl Fn(std::io::Error) -> Error) -> Result<()> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| lost(std::io::ErrorKind::NotConnected.into()))?;
        // Room for a whole answer at once (an empty Vec would take it a few dozen bytes at a time).
        self.read.reserve(4096);
        let n = stream.read_buf(&mut self.read).await.map_err(lost)?;
        if n == 0 {
            return Err(lost(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    fn unexpected(&self, what: String) -> Error {
        Error::Transport {
            url: self.url.clone(),
            reason: what,
        }
    }
}

/// An answer's head: (status, headers, where the body starts, its length, whether the node closes), or `None`
/// while `read` does not hold all of it yet.
type Head = (StatusCode, HeaderMap, usize, usize, bool);

fn parse_head(read: &[u8], url: &str) -> Result<Option<Head>> {
    let bad = |reason: String| Error::Transport {
        url: url.to_string(),
        reason,
    };
    let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Response::new(&mut slots);
    let body_start = match parsed.parse(read) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("unreadable answer: {e}"))),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| bad("an answer without a status".into()))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let (mut length, mut close) = (None, parsed.version == Some(0));
    for header in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(header.name.as_bytes()).map_err(|e| bad(format!("header name: {e}")))?;
        let value = HeaderValue::from_bytes(header.value).map_err(|e| bad(format!("header {name}: {e}")))?;
        if name == reqwest::header::CONTENT_LENGTH {
            let text = value.to_str().unwrap_or_default();
            length = Some(
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(format!("content-length {text:?}")))?,
            );
        } else if name == reqwest::header::TRANSFER_ENCODING {
            return Err(bad(
                "a chunked answer (this connection reads content-length framing only)".into(),
            ));
        } else if name == reqwest::header::CONNECTION {
            close |= value.as_bytes().eq_ignore_ascii_case(b"close");
        }
        headers.append(name, value);
    }
    let length = match length {
        Some(n) => n,
        None if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED => 0,
        None => return Err(bad("an answer without content-length".into())),
    };
    Ok(Some((status, headers, body_start, length, close)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_once_complete() {
        let answer =
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nx-ms-ccf-transaction-id: 2.7\r\n\
content-length: 2\r\n\r\n{}";
        for cut in 0..answer.len() - 2 {
            let partial = parse_head(&answer[..cut], "u").expect("no error on a partial head");
            assert!(partial.is_none() || cut >= answer.len() - 4, "complete at {cut}?");
        }
        let (status, headers, start, length, close) =
            parse_head(answer, "u").expect("parses").expect("complete");
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["x-ms-ccf-transaction-id"], "2.7");
        assert_eq!((&answer[start..], length, close), (&b"{}"[..], 2, false));
    }

    #[test]
    fn framing_the_connection_cannot_follow_is_refused() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked, "u").is_err());
        let unframed = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n";
        assert!(parse_head(unframed, "u").is_err());
        let bad_length = b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n";
        assert!(parse_head(bad_length, "u").is_err());
        let closing = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let (status, _, _, length, close) = parse_head(closing, "u").expect("parses").expect("complete");
        assert_eq!(
            (status, length, close),
            (StatusCode::SERVICE_UNAVAILABLE, 0, true)
        );
        assert!(parse_head(b"garbage\r\n\r\n", "u").is_err());
    }
}
