//! OpenAPI 3.1 documents at CCF's paths: `GET /node/api`, `/gov/api`, `/app/api`. Native endpoints come from
//! [`ENDPOINTS`] (a test requests every entry on a running node, so the registry cannot drift from the router);
//! JavaScript endpoints from the deployed bundle's metadata, with each endpoint's own `openapi` object merged in.

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::AppState;

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anyone.
    None,
    /// A user's TLS client certificate.
    User,
    /// A member's COSE Sign1 signed request.
    MemberSigned,
    /// A joining node's TLS client certificate.
    Node,
}

/// A native endpoint as documented.
#[derive(Debug)]
pub struct Endpoint {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template (`{name}` for path parameters).
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Who may call it.
    pub auth: Auth,
    /// Query parameters: name, required.
    pub query: &'static [(&'static str, bool)],
}

const fn ep(
    method: &'static str,
    path: &'static str,
    auth: Auth,
    query: &'static [(&'static str, bool)],
    summary: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        auth,
        query,
    }
}

/// Every native endpoint (JavaScript endpoints are documented from their bundle).
pub const ENDPOINTS: &[Endpoint] = &[
    ep(
        "GET",
        "/node/tx",
        Auth::None,
        &[("transaction_id", true), ("wait_ms", false)],
        "A transaction's status (long poll with wait_ms)",
    ),
    ep(
        "GET",
        "/node/commit",
        Auth::None,
        &[("after_seqno", false), ("wait_ms", false)],
        "The service commit (long poll past after_seqno)",
    ),
    ep(
        "GET",
        "/node/state",
        Auth::None,
        &[],
        "This node's id, state and last seqno",
    ),
    ep(
        "GET",
        "/node/network",
        Auth::None,
        &[],
        "The service: status, certificate, primary",
    ),
    ep(
        "GET",
        "/node/network/nodes",
        Auth::None,
        &[],
        "The nodes and their status",
    ),
    ep(
        "GET",
        "/node/primary",
        Auth::None,
        &[],
        "The primary this node knows of",
    ),
    ep(
        "HEAD",
        "/node/primary",
        Auth::None,
        &[],
        "200 on the primary, 308 to it elsewhere",
    ),
    ep(
        "GET",
        "/node/consensus",
        Auth::None,
        &[],
        "Raft view, role, commit and configuration",
    ),
    ep("GET", "/node/version", Auth::None, &[], "Software version"),
    ep(
        "GET",
        "/node/service/previous_identity",
        Auth::None,
        &[],
        "A recovered service: the previous identity and this identity's endorsement of it",
    ),
    ep(
        "GET",
        "/node/metrics",
        Auth::None,
        &[],
        "Prometheus metrics (text format)",
    ),
    ep(
        "GET",
        "/node/quotes/self",
        Auth::None,
        &[],
        "This node's attestation evidence",
    ),
    ep(
        "GET",
        "/node/quotes",
        Auth::None,
        &[],
        "Every trusted node's attestation evidence",
    ),
    ep("GET", "/node/api", Auth::None, &[], "This document"),
    ep(
        "POST",
        "/node/join",
        Auth::Node,
        &[],
        "Ask to join (attestation evidence in the body)",
    ),
    ep(
        "GET",
        "/node/snapshot",
        Auth::Node,
        &[],
        "The newest committed snapshot (trusted nodes)",
    ),
    ep(
        "GET",
        "/node/snapshot/{name}",
        Auth::Node,
        &[],
        "A committed snapshot file (trusted nodes)",
    ),
    ep(
        "GET",
        "/node/dashboard",
        Auth::None,
        &[],
        "The dashboard (HTML): network, commit progress, proposals, and a ledger explorer that verifies receipts",
    ),
    ep(
        "GET",
        "/node/dashboard/app.js",
        Auth::None,
        &[],
        "The dashboard's script",
    ),
    ep(
        "GET",
        "/node/dashboard/style.css",
        Auth::None,
        &[],
        "The dashboard's style sheet",
    ),
    ep(
        "GET",
        "/app/receipt",
        Auth::User,
        &[("transaction_id", true)],
        "A committed transaction's receipt (JSON, or COSE with Accept: application/cose)",
    ),
    ep(
        "GET",
        "/app/api",
        Auth::None,
        &[],
        "This document: native and JavaScript application endpoints",
    ),
    ep(
        "GET",
        "/app/log/{visibility}",
        Auth::User,
        &[("id", true)],
        "Read a log record (public or private)",
    ),
    ep(
        "POST",
        "/app/log/{visibility}",
        Auth::User,
        &[],
        "Write a log record: {\"id\", \"msg\"}",
    ),
    ep(
        "DELETE",
        "/app/log/{visibility}",
        Auth::User,
        &[("id", true)],
        "Delete a log record",
    ),
    ep(
        "GET",
        "/app/log/{visibility}/range",
        Auth::User,
        &[("from", false), ("to", false), ("limit", false)],
        "Read a range of log records",
    ),
    ep(
        "GET",
        "/app/log/{visibility}/historical",
        Auth::User,
        &[("id", true), ("transaction_id", true)],
        "A record as a past transaction wrote it, with its receipt",
    ),
    ep(
        "GET",
        "/app/log/{visibility}/historical/range",
        Auth::User,
        &[("id", true), ("from_seqno", false), ("to_seqno", false)],
        "Every write of a record in a seqno range",
    ),
    ep(
        "GET",
        "/app/kv/{map}",
        Auth::User,
        &[("from", false), ("to", false), ("limit", false)],
        "Ordered range read of an application map",
    ),
    ep(
        "GET",
        "/app/kv/{map}/changes",
        Auth::User,
        &[("from_seqno", false), ("limit", false)],
        "A map's change feed",
    ),
    ep(
        "POST",
        "/gov/members/proposals:create",
        Auth::MemberSigned,
        &[("api-version", false)],
        "Create a proposal",
    ),
    ep(
        "GET",
        "/gov/members/proposals",
        Auth::None,
        &[("api-version", false)],
        "List proposals",
    ),
    ep(
        "GET",
        "/gov/members/proposals/{proposalId}",
        Auth::None,
        &[("api-version", false)],
        "A proposal",
    ),
    ep(
        "POST",
        "/gov/members/proposals/{proposalId}:withdraw",
        Auth::MemberSigned,
        &[("api-version", false)],
        "Withdraw a proposal",
    ),
    ep(
        "GET",
        "/gov/members/proposals/{proposalId}/actions",
        Auth::None,
        &[("api-version", false)],
        "A proposal's actions",
    ),
    ep(
        "GET",
        "/gov/members/proposals/{proposalId}/ballots/{memberId}",
        Auth::None,
        &[("api-version", false)],
        "A member's ballot",
    ),
    ep(
        "POST",
        "/gov/members/proposals/{proposalId}/ballots/{memberId}:submit",
        Auth::MemberSigned,
        &[("api-version", false)],
        "Submit a ballot",
    ),
    ep(
        "GET",
        "/gov/members/state-digests/{memberId}",
        Auth::None,
        &[("api-version", false)],
        "A member's state digest",
    ),
    ep(
        "POST",
        "/gov/members/state-digests/{memberId}:update",
        Auth::MemberSigned,
        &[("api-version", false)],
        "Update a member's state digest",
    ),
    ep(
        "POST",
        "/gov/members/state-digests/{memberId}:ack",
        Auth::MemberSigned,
        &[("api-version", false)],
        "Acknowledge the state digest",
    ),
    ep(
        "GET",
        "/gov/service/info",
        Auth::None,
        &[("api-version", false)],
        "Service status and certificate",
    ),
    ep(
        "GET",
        "/gov/service/members",
        Auth::None,
        &[("api-version", false)],
        "The members",
    ),
    ep(
        "GET",
        "/gov/service/members/{memberId}",
        Auth::None,
        &[("api-version", false)],
        "A member",
    ),
    ep(
        "GET",
        "/gov/service/nodes",
        Auth::None,
        &[("api-version", false)],
        "The nodes",
    ),
    ep(
        "GET",
        "/gov/service/nodes/{nodeId}",
        Auth::None,
        &[("api-version", false)],
        "A node",
    ),
    ep(
        "GET",
        "/gov/service/constitution",
        Auth::None,
        &[("api-version", false)],
        "The constitution",
    ),
    ep(
        "GET",
        "/gov/service/javascript-app",
        Auth::None,
        &[("api-version", false)],
        "The deployed JavaScript application",
    ),
    ep(
        "GET",
        "/gov/service/join-policy",
        Auth::None,
        &[("api-version", false)],
        "The join policy",
    ),
    ep(
        "GET",
        "/gov/recovery/encrypted-shares/{memberId}",
        Auth::None,
        &[("api-version", false)],
        "A recovery member's share, encrypted to its key",
    ),
    ep(
        "POST",
        "/gov/recovery/members/{memberId}:recover",
        Auth::MemberSigned,
        &[("api-version", false)],
        "Submit a decrypted recovery share to a recovering service",
    ),
    ep("GET", "/gov/api", Auth::None, &[], "This document"),
];

/// The `/node/api` and `/gov/api` routes (`/app/api` is the applications': `crate::apps::routes`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/node/api", get(node_api))
        .route("/gov/api", get(gov_api))
}

async fn node_api() -> Response {
    Json(document("Synod node API", "/node/", Map::new())).into_response()
}

async fn gov_api() -> Response {
    Json(document("Synod governance API", "/gov/", Map::new())).into_response()
}

/// The OpenAPI document of the native endpoints under `prefix`, plus `extra` paths.
pub fn document(title: &str, prefix: &str, extra: Map<String, Value>) -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS.iter().filter(|e| e.path.starts_with(prefix)) {
        let item = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        item[e.method.to_ascii_lowercase()] = operation(e);
    }
    for (path, item) in extra {
        paths.entry(path).or_insert(item);
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": { "type": "string" },
                                "message": { "type": "string" }
                            }
                        }
                    }
                }
            },
            "securitySchemes": security_schemes(),
        }
    })
}

/// The security schemes every document declares (TLS client certificates, COSE-signed member requests).
pub fn security_schemes() -> Value {
    json!({
        "user_cert": { "type": "mutualTLS", "description": "A user's TLS client certificate" },
        "member_cert": { "type": "mutualTLS", "description": "A member's TLS client certificate" },
        "member_cose_sign1": {
            "type": "http", "scheme": "bearer",
            "description": "The body is a COSE Sign1 request signed by a member's key (content-type application/cose)"
        },
        "node_cert": { "type": "mutualTLS", "description": "A node's TLS client certificate" },
    })
}

/// The responses every operation may give: a success, and errors as `{"error": {"code", "message"}}`.
pub fn responses() -> Value {
    json!({
        "200": { "description": "Success" },
        "default": {
            "description": "An error",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
        }
    })
}

fn operation(e: &Endpoint) -> Value {
    let mut parameters: Vec<Value> = path_parameters(e.path);
    parameters.extend(e.query.iter().map(|(name, required)| {
        json!({ "name": name, "in": "query", "required": required, "schema": { "type": "string" } })
    }));
    let security = match e.auth {
        Auth::None => json!([]),
        Auth::User => json!([{ "user_cert": [] }]),
        Auth::MemberSigned => json!([{ "member_cose_sign1": [] }]),
        Auth::Node => json!([{ "node_cert": [] }]),
    };
    json!({
        "summary": e.summary,
        "operationId": operation_id(e.method, e.path),
        "parameters": parameters,
        "security": security,
        "responses": responses(),
    })
}

/// An operation's id: its method and path with everything but letters and digits as `_`.
pub fn operation_id(method: &str, path: &str) -> String {
    format!("{} {path}", method.to_ascii_uppercase())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `{name}` segments of a path template as required path parameters (a segment like `{id}:submit` included).
pub fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| {
            let start = segment.find('{')?;
            let end = segment[start..].find('}')? + start;
            Some(json!({
                "name": &segment[start + 1..end],
                "in": "path",
                "required": true,
                "schema": { "type": "string" }
            }))
        })
        .collect()
}
