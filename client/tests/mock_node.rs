//! The client against a mock node that speaks the node's HTTPS protocol (a node certificate endorsed by a service
//! certificate, optional client certificates, CCF's paths, headers and error shape), so TLS pinning, client
//! authentication, typed errors, commit waiting, failover and the CLI are exercised without a real node.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response as HttpResponse};
use hyper_util::rt::TokioIo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde_json::json;
use synod_client::{Body, Client, Error, Method, TxId, TxStatus};
use synod_core::cert::{self, Identity};

#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Default)]
struct State {
    seqno: AtomicU64,
    committed: AtomicU64,
    flaky: AtomicU64,
    connections: AtomicU64,
    writes: AtomicU64,
}

struct Mock {
    url: String,
    state: Arc<State>,
}

fn answer(status: u16, body: serde_json::Value, tx: Option<u64>) -> HttpResponse<Full<Bytes>> {
    let mut builder = HttpResponse::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(seqno) = tx {
        builder = builder.header("x-ms-ccf-transaction-id", format!("2.{seqno}"));
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse<Full<Bytes>> {
    answer(status, json!({"error": {"code": code, "message": message}}), None)
}

fn query_tx(query: Option<&str>) -> Option<TxId> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("transaction_id="))?
        .parse()
        .ok()
}

async fn handle(
    state: Arc<State>,
    has_cert: bool,
    req: Request<Incoming>,
) -> Result<HttpResponse<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query();
    let committed = state.committed.load(Ordering::SeqCst);
    Ok(match (parts.method.as_str(), path.as_str()) {
        ("GET", "/node/commit") => answer(
            200,
            json!({"transaction_id": format!("2.{committed}")}),
            Some(committed),
        ),
        ("GET", "/node/tx") => match query_tx(query) {
            None => error(400, "InvalidTransactionId", "bad transaction_id"),
            Some(tx) => {
                let seqno = state.seqno.load(Ordering::SeqCst);
                let status = if tx.view == 1 {
                    "Invalid"
                } else if tx.seqno <= committed {
                    "Committed"
                } else if tx.seqno <= seqno {
                    // Pending now; committed at the next poll.
                    state.committed.store(seqno, Ordering::SeqCst);
                    "Pending"
                } else {
                    "Unknown"
                };
                answer(200, json!({"status": status, "transaction_id": tx}), None)
            }
        },
        ("POST", "/app/log/private") if !has_cert => error(
            401,
            "InvalidAuthenticationInfo",
            "this endpoint requires a user's TLS client certificate",
        ),
        ("POST", "/app/log/private") => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) if v["id"].is_u64() && v["msg"].is_string() => {
                state.writes.fetch_add(1, Ordering::SeqCst);
                let seqno = state.seqno.fetch_add(1, Ordering::SeqCst) + 1;
                answer(201, json!({"transaction_id": format!("2.{seqno}")}), Some(seqno))
            }
            _ => error(400, "InvalidInput", "expected {\"id\": u64, \"msg\": string}"),
        },
        ("GET", "/app/receipt") if !has_cert => error(401, "InvalidAuthenticationInfo", "no certificate"),
        ("GET", "/app/receipt") => match query_tx(query) {
            Some(tx) if tx.seqno <= committed => {
                let cose = parts
                    .headers
                    .get("accept")
                    .is_some_and(|a| a.as_bytes() == b"application/cose");
                if cose {
                    HttpResponse::builder()
                        .header("content-type", "application/cose")
                        .body(Full::new(Bytes::from_static(b"\xd2cose")))
                        .expect("valid response")
                } else {
                    answer(200, json!({"receipt_for": tx}), None)
                }
            }
            _ => error(404, "TransactionPendingOrUnknown", "not committed"),
        },
        ("GET", "/flaky") => {
            if state.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                error(503, "ServiceUnavailable", "try again")
            } else {
                answer(200, json!({"ok": true}), None)
            }
        }
        ("GET", "/echo-headers") => {
            let headers: serde_json::Map<String, serde_json::Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                .collect();
            answer(200, serde_json::Value::Object(headers), None)
        }
        ("GET", "/text") => HttpResponse::new(Full::new(Bytes::from_static(b"plain text"))),
        _ => error(404, "ResourceNotFound", "no such endpoint"),
    })
}

/// The TLS side of a mock node of `service`.
fn mock_acceptor(service: &Identity) -> tokio_rustls::TlsAcceptor {
    let node = cert::generate_endorsed(
        "n0",
        &["127.0.0.1".parse().unwrap()],
        &["localhost".into()],
        service,
    )
    .expect("node identity");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        .with_single_cert(
            vec![CertificateDer::from(cert::pem_to_der(&node.cert_pem).unwrap())],
            PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn start_mock(service: &Identity) -> Mock {
    let acceptor = mock_acceptor(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let state = Arc::new(State::default());
    let shared = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let state = shared.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let has_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                let service = hyper::service::service_fn(move |req| handle(state.clone(), has_cert, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Mock { url, state }
}

fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("https://127.0.0.1:{port}")
}

struct Fixture {
    service: Identity,
    user: Identity,
    mock: Mock,
}

impl Fixture {
    async fn new() -> Fixture {
        let service = cert::generate_self_signed("service", true).unwrap();
        let user = cert::generate_self_signed("user0", false).unwrap();
        let mock = start_mock(&service).await;
        Fixture { service, user, mock }
    }

    fn client(&self) -> Client {
        self.client_of(&self.mock.url)
    }

    /// A client of the node at `url` as user0, trusting the service.
    fn client_of(&self, url: &str) -> Client {
        Client::new(
            url,
            &self.service.cert_pem,
            Some((&self.user.cert_pem, &self.user.key_pem)),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn writes_wait_for_commit_and_reuse_one_connection() {
    let f = Fixture::new().await;
    let client = f.client();
    let response = client
        .post_json("/app/log/private", &json!({"id": 42, "msg": "hello"}))
        .await
        .unwrap();
    assert_eq!(response.status, 201);
    assert!(response.is_json());
    let tx = response.tx_id().unwrap();
    assert_eq!(tx, TxId::new(2, 1));
    assert_eq!(response.json_value().unwrap()["transaction_id"], "2.1");
    assert_eq!(client.tx_status(tx).await.unwrap(), TxStatus::Pending);
    assert_eq!(
        client.wait_for_commit(tx, Duration::from_secs(5)).await.unwrap(),
        TxStatus::Committed
    );
    assert_eq!(client.commit().await.unwrap(), tx);
    for i in 0..20 {
        let r = client
            .clone()
            .call(
                Method::POST,
                "/app/log/private",
                Some(json!({"id": i, "msg": "x"}).into()),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201);
    }
    let connections = f.mock.state.connections.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&connections),
        "one kept-alive connection, not one per request: {connections}"
    );
}

#[tokio::test]
async fn a_kept_open_connection_writes_in_turn_and_types_its_errors() {
    let f = Fixture::new().await;
    let mut connection = f.client().connection().unwrap();
    connection.open().await.unwrap();
    for i in 1..=20u64 {
        let body = serde_json::to_vec(&json!({"id": i, "msg": "x"})).unwrap();
        let response = connection
            .post("/app/log/private", "application/json", &body)
            .await
            .unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(
            response.tx_id().unwrap(),
            TxId::new(2, i),
            "each answer is its own request's"
        );
    }
    assert_eq!(
        f.mock.state.connections.load(Ordering::SeqCst),
        1,
        "one connection for all"
    );
    // An error answer is an answer: typed by error_for_status, the connection kept.
    let missing = connection
        .post("/nowhere", "application/json", b"{}")
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    assert!(matches!(missing.error_for_status(), Err(Error::Api { .. })));
    assert!(matches!(
        connection.post("no-slash", "application/json", b"{}").await,
        Err(Error::Config(_))
    ));
    let after = connection
        .post(
            "/app/log/private",
            "application/json",
            b"{\"id\": 1, \"msg\": \"y\"}",
        )
        .await;
    assert_eq!(after.unwrap().status, 201);
    assert_eq!(f.mock.state.connections.load(Ordering::SeqCst), 1);
    // A node that is not there: nothing was sent, safe to retry.
    let dead = Client::new(&dead_url(), &f.service.cert_pem, None).unwrap();
    let err = dead
        .connection()
        .unwrap()
        .post("/app/log/private", "application/json", b"{}")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
}

/// The answer a scripted node writes: 201 for transaction 2.`seqno`.
fn raw_answer(seqno: u64) -> String {
    format!("HTTP/1.1 201 Created\r\nx-ms-ccf-transaction-id: 2.{seqno}\r\ncontent-length: 2\r\n\r\n{{}}")
}

/// A node of `service` whose connections `serve` handles after the TLS handshake, each with its number (from 1);
/// its URL.
async fn scripted_node<F, Fut>(service: &Identity, serve: F) -> String
where
    F: Fn(u64, tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = mock_acceptor(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(stream).await {
                accepted += 1;
                tokio::spawn(serve(accepted, tls));
            }
        }
    });
    url
}

#[tokio::test]
async fn a_connection_the_node_closed_while_idle_is_opened_again() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let f = Fixture::new().await;
    // A node that answers one request per connection and then closes it without saying so.
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let url = scripted_node(&f.service, move |_, mut tls| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = vec![0u8; 4096];
            let _ = tls.read(&mut buf).await;
            let _ = tls.write_all(raw_answer(5).as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await;
    let mut connection = f.client_of(&url).connection().unwrap();
    for _ in 0..2 {
        let answer = connection
            .post("/app/log/private", "application/json", b"{}")
            .await
            .unwrap();
        assert_eq!(answer.tx_id().unwrap(), TxId::new(2, 5));
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the closed connection was noticed and replaced"
    );
}

#[tokio::test]
async fn bytes_past_an_answer_are_never_read_as_the_next_answer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let f = Fixture::new().await;
    // A node that follows each connection's first answer (transaction 2.<connection>) with an answer nobody asked
    // for (2.99).
    let url = scripted_node(&f.service, |accepted, mut tls| async move {
        let mut buf = vec![0u8; 4096];
        let _ = tls.read(&mut buf).await;
        let _ = tls
            .write_all((raw_answer(accepted) + &raw_answer(99)).as_bytes())
            .await;
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
            let _ = tls.write_all(raw_answer(99).as_bytes()).await;
        }
    })
    .await;
    let mut connection = f.client_of(&url).connection().unwrap();
    for expected in [1, 2] {
        let answer = connection
            .post("/app/log/private", "application/json", b"{}")
            .await
            .unwrap();
        assert_eq!(
            answer.tx_id().unwrap(),
            TxId::new(2, expected),
            "each request's own answer"
        );
    }
}

#[tokio::test]
async fn error_answers_are_typed() {
    let f = Fixture::new().await;
    let client = f.client();
    let r = client.get("/nowhere").await.unwrap();
    assert_eq!(r.status, 404);
    match r.error_for_status().unwrap_err() {
        Error::Api { status, code, .. } => {
            assert_eq!(status, 404);
            assert_eq!(code, "ResourceNotFound");
        }
        other => panic!("{other:?}"),
    }
    let err = client
        .post_json("/app/log/private", &json!({"id": "x"}))
        .await
        .unwrap()
        .error_for_status();
    assert_eq!(err.unwrap_err().api_code(), Some("InvalidInput"));

    // Without a client certificate, user endpoints answer 401; node endpoints still work.
    let anonymous = Client::new(&f.mock.url, &f.service.cert_pem, None).unwrap();
    let r = anonymous
        .post_json("/app/log/private", &json!({"id": 1, "msg": "m"}))
        .await
        .unwrap();
    assert_eq!(r.to_error().api_code(), Some("InvalidAuthenticationInfo"));
    anonymous.commit().await.unwrap();
    let err = anonymous.receipt(TxId::new(2, 1), false).await.unwrap_err();
    assert_eq!(err.status(), Some(hyper::StatusCode::UNAUTHORIZED));

    let text = client.get("/text").await.unwrap();
    assert_eq!(text.text(), "plain text");
    assert!(matches!(text.json_value(), Err(Error::UnexpectedResponse { .. })));
    assert!(text.tx_id().is_err());
}

#[tokio::test]
async fn pinning_refuses_a_node_of_another_service() {
    let f = Fixture::new().await;
    let other = cert::generate_self_signed("service", true).unwrap();
    let client = Client::new(&f.mock.url, &other.cert_pem, None).unwrap();
    let err = client.get("/node/commit").await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(!err.is_retryable(true));
    // localhost is in the node certificate too.
    let port = f.mock.url.rsplit(':').next().unwrap();
    let by_name = Client::new(&format!("https://localhost:{port}"), &f.service.cert_pem, None).unwrap();
    by_name.commit().await.unwrap();
}

#[tokio::test]
async fn wait_for_commit_reports_invalid_and_timeouts() {
    let f = Fixture::new().await;
    let client = f.client();
    let err = client
        .wait_for_commit(TxId::new(1, 1), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TxInvalid(tx) if tx == TxId::new(1, 1)),
        "{err:?}"
    );
    let start = Instant::now();
    let err = client
        .wait_for_commit(TxId::new(2, 1000), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CommitTimeout {
                last_status: Some(TxStatus::Unknown),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    let err = Client::new(&dead_url(), &f.service.cert_pem, None)
        .unwrap()
        .wait_for_commit(TxId::new(2, 1), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unreachable { .. } | Error::CommitTimeout { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn receipts_in_both_forms_and_headers() {
    let f = Fixture::new().await;
    let client = f.client();
    let tx = client
        .post_json("/app/log/private", &json!({"id": 1, "msg": "m"}))
        .await
        .unwrap()
        .tx_id()
        .unwrap();
    let err = client.receipt(tx, false).await.unwrap_err();
    assert_eq!(err.api_code(), Some("TransactionPendingOrUnknown"));
    let json_receipt = client
        .wait_for_receipt(tx, false, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&json_receipt).unwrap()["receipt_for"],
        "2.1"
    );
    assert_eq!(client.receipt(tx, true).await.unwrap(), b"\xd2cose");

    let body = Body::Json(json!({}));
    let r = client
        .call(
            Method::GET,
            "/echo-headers",
            Some(body),
            &[("X-Custom", " v1 "), ("Content-Type", "text/x")],
        )
        .await
        .unwrap();
    let headers = r.json_value().unwrap();
    assert_eq!(headers["x-custom"], "v1", "{headers}");
    assert_eq!(
        headers["content-type"], "text/x",
        "a given content type replaces the body's: {headers}"
    );
    assert!(client
        .call(Method::GET, "/x", None, &[("bad header", "v")])
        .await
        .is_err());
    let body = Body::Bytes {
        content_type: Some("text/plain".into()),
        bytes: b"raw".to_vec(),
    };
    let r = client
        .call(Method::POST, "/app/log/private", Some(body), &[])
        .await
        .unwrap();
    assert_eq!(r.to_error().api_code(), Some("InvalidInput"));
}

#[tokio::test]
async fn retries_fail_over_to_a_live_node_and_through_503s() {
    let f = Fixture::new().await;
    let client = Client::with_urls(
        &[dead_url(), f.mock.url.clone()],
        &f.service.cert_pem,
        Some((&f.user.cert_pem, &f.user.key_pem)),
    )
    .unwrap();
    let err = client
        .post_json("/app/log/private", &json!({"id": 1, "msg": "m"}))
        .await
        .unwrap_err();
    assert!(err.is_connection(), "the plain call does not retry: {err:?}");
    let r = client
        .call_with_retry(
            Method::POST,
            "/app/log/private",
            Some(json!({"id": 1, "msg": "m"}).into()),
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(
        client.node_url(),
        f.mock.url,
        "the live node becomes the current node"
    );
    assert_eq!(client.clone().node_url(), f.mock.url);
    assert_eq!(f.mock.state.writes.load(Ordering::SeqCst), 1);

    let r = client
        .call_with_retry(Method::GET, "/flaky", None, &[], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(f.mock.state.flaky.load(Ordering::SeqCst), 3);
    // Errors that are not worth retrying come back at once.
    let start = Instant::now();
    let r = client
        .call_with_retry(Method::GET, "/nowhere", None, &[], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_against_the_mock() {
    let f = Fixture::new().await;
    let targets: Vec<_> = (0..4)
        .map(|_| synod_client::load::SynodTarget::new(f.client(), "/app/log/private").unwrap())
        .collect();
    let config = synod_client::load::LoadConfig {
        requests: 200,
        value_bytes: 32,
        keys: 50,
        ..Default::default()
    };
    let report = synod_client::load::run_load(targets, &config).await.unwrap();
    assert_eq!((report.requests, report.errors, report.clients), (200, 0, 4));
    assert_eq!(report.last_tx_id, Some(TxId::new(2, 200)));
    assert!(report.committed_writes_per_s.unwrap() > 0.0, "{report:?}");
    assert!(report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms);
    let connections = f.mock.state.connections.load(Ordering::SeqCst);
    assert!(
        (4..=8).contains(&connections),
        "one connection per client, not per request: {connections}"
    );
    assert!(report.human().contains("writes/s"));
}

async fn synod(args: &[&str]) -> (u8, String) {
    use clap::Parser as _;
    let cli = synod_client::cli::Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut out = Vec::new();
    let code = synod_client::cli::run(cli, &mut out)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
    (code, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_against_the_mock() {
    let f = Fixture::new().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = synod_client::keygen("user0", Default::default(), dir.path()).unwrap();
    let service_pem = dir.path().join("service_cert.pem");
    std::fs::write(&service_pem, &f.service.cert_pem).unwrap();
    let network = synod_client::Network {
        nodes: vec![synod_client::NetworkNode {
            name: "n0".into(),
            url: f.mock.url.clone(),
            data_dir: dir.path().join("n0"),
        }],
        service_cert: service_pem.clone(),
        users: vec![synod_client::NamedIdentity {
            name: "user0".into(),
            cert: keys.cert.clone(),
            key: keys.key.clone(),
        }],
        members: vec![],
    };
    let network_path = dir.path().join("network.json");
    network.save(&network_path).unwrap();
    let net = network_path.to_str().unwrap();

    let (code, out) = synod(&[
        "synod",
        "--network",
        net,
        "call",
        "-X",
        "POST",
        "/app/log/private",
        "--data",
        r#"{"id": 42, "msg": "hi"}"#,
        "--wait",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP 201 Created\n"), "{out}");
    assert!(out.contains("\"transaction_id\": \"2.1\""), "{out}");
    assert!(out.trim_end().ends_with("transaction_id 2.1 Committed"), "{out}");

    // --url with explicit certificates bypasses network.json.
    let (code, out) = synod(&[
        "synod",
        "--network",
        "/nonexistent.json",
        "--url",
        &f.mock.url,
        "--service-cert",
        service_pem.to_str().unwrap(),
        "--cert",
        keys.cert.to_str().unwrap(),
        "--key",
        keys.key.to_str().unwrap(),
        "call",
        "/app/log/private",
        "--data",
        r#"{"id": 43, "msg": "hi"}"#,
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (doc["status"].as_u64(), doc["transaction_id"].as_str()),
        (Some(201), Some("2.2"))
    );

    let (code, out) = synod(&["synod", "--network", net, "call", "/nowhere"]).await;
    assert_eq!(code, 1, "HTTP >= 400 exits 1: {out}");
    assert!(
        out.starts_with("HTTP 404 Not Found\n") && out.contains("ResourceNotFound"),
        "{out}"
    );

    let (code, out) = synod(&["synod", "--network", net, "tx", "2.1"]).await;
    assert_eq!((code, out.as_str()), (0, "Committed\n"));
    let (code, out) = synod(&["synod", "--network", net, "tx", "2.2", "--json", "--wait"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({"transaction_id": "2.2", "status": "Committed"})
    );
    let (code, out) = synod(&["synod", "--network", net, "tx", "1.2", "--wait"]).await;
    assert_eq!((code, out.as_str()), (1, "Invalid\n"));
    let (code, out) = synod(&["synod", "--network", net, "commit"]).await;
    assert_eq!((code, out.as_str()), (0, "2.2\n"));

    // The mock's receipts are not genuine: `receipt get` refuses to save them.
    let out_file = dir.path().join("r.json");
    let cli = <synod_client::cli::Cli as clap::Parser>::try_parse_from([
        "synod",
        "--network",
        net,
        "receipt",
        "get",
        "2.1",
        "--out",
        out_file.to_str().unwrap(),
    ])
    .unwrap();
    let err = synod_client::cli::run(cli, &mut Vec::new()).await.unwrap_err();
    assert!(format!("{err:#}").contains("does not verify"), "{err:#}");
    assert!(!out_file.exists());

    let cli = <synod_client::cli::LoadCli as clap::Parser>::try_parse_from([
        "synod-load",
        "--network",
        net,
        "--clients",
        "3",
        "--requests",
        "30",
        "--json",
    ])
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(synod_client::cli::run_load(cli, &mut out).await.unwrap(), 0);
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (
            doc["requests"].as_u64(),
            doc["errors"].as_u64(),
            doc["clients"].as_u64()
        ),
        (Some(30), Some(0), Some(3))
    );
    assert!(doc["committed_writes_per_s"].as_f64().unwrap() > 0.0);
}
