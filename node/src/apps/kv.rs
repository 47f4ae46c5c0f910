//! Ordered range reads over public maps, etcd-style: `GET /app/kv/{map}?from=HEX&to=HEX&limit=N`, paginated
//! by passing `next` back as `from`; and a change feed, `GET /app/kv/{map}/changes?from_seqno=S`: the map's
//! committed writes as JSON lines, from the ledger files and then live (see [`crate::apps::history`]). Private
//! maps are reachable only through their app's own logic; framework tables follow the same rule as JavaScript
//! apps ([`maps::is_readable_by_applications`]): the governance tables are readable, the internal ones and the
//! members' signed requests are not.

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use synod_core::maps;

use crate::apps::logging::{page_limit, split_page};
use crate::rpc::{extract, with_tx_id, ApiError, AppState, Peer};

/// The routes of the range-read endpoint.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/app/kv/{map}", get(range))
        .route("/app/kv/{map}/changes", get(changes))
}

/// Refuses maps `/app/kv` may not read: private ones and the framework's internal tables.
fn check_readable(map: &str) -> Result<(), ApiError> {
    if !maps::is_public(map) {
        return Err(ApiError::forbidden(format!(
            "{map} is not a public map; only public maps can be read directly"
        )));
    }
    if !maps::is_readable_by_applications(map) {
        return Err(ApiError::forbidden(format!(
            "{map} is internal to the framework and cannot be read by applications"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

fn hex_param(name: &str, value: Option<&str>) -> Result<Option<Vec<u8>>, ApiError> {
    value
        .map(|v| hex::decode(v).map_err(|e| ApiError::invalid_input(format!("{name} must be hex: {e}"))))
        .transpose()
}

async fn range(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(map): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    app.authenticate_user(&peer)?;
    check_readable(&map)?;
    let q: RangeQuery = extract::query(q)?;
    let limit = page_limit(q.limit)?;
    let from = hex_param("from", q.from.as_deref())?.unwrap_or_default();
    let to = hex_param("to", q.to.as_deref())?;
    let (mut rows, outcome) = app
        .node
        .execute_async(|tx| {
            if !tx.map_exists(&map) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "UnknownMap",
                    format!("no map named {map}"),
                ));
            }
            Ok(tx.range(&map, &from, to.as_deref(), limit + 1))
        })
        .await?;
    let next = split_page(&mut rows, limit).map(hex::encode);
    let entries: Vec<_> = rows
        .iter()
        .map(|(k, v)| {
            json!({
                "key": hex::encode(k),
                "value": std::str::from_utf8(v).ok(),
                "value_base64": base64::engine::general_purpose::STANDARD.encode(v),
            })
        })
        .collect();
    Ok(with_tx_id(
        outcome.tx_id(),
        Json(json!({ "entries": entries, "next": next })),
    ))
}

#[derive(Deserialize)]
struct ChangesQuery {
    from_seqno: Option<u64>,
    to_seqno: Option<u64>,
}

/// `GET /app/kv/{map}/changes?from_seqno=S[&to_seqno=T]`: the committed writes to a public map from seqno S on,
/// streamed as JSON lines (history first, then live), resumable by seqno.
async fn changes(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(map): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    app.authenticate_user(&peer)?;
    check_readable(&map)?;
    let q: ChangesQuery = extract::query(q)?;
    crate::apps::history::change_feed(
        &app.node,
        crate::apps::history::FeedRequest {
            map,
            from: q.from_seqno.unwrap_or(1),
            to: q.to_seqno,
        },
    )
}
