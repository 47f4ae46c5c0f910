//! The logging app, CCF's canonical sample, written as a native app: records keyed by a numeric id in the private
//! map `records` (sealed in the ledger) or the public map `public:records` (clear), plus ordered range reads with
//! pagination, which CCF's maps cannot do, and CCF's historical queries: a record as of a committed transaction
//! (with that transaction's receipt) and every committed version of a record in a range of seqnos, read back
//! from the ledger files (see [`crate::apps::history`]).

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::apps::history;
use crate::rpc::node_endpoints::{receipt_of, Receipt};
use crate::rpc::{extract, with_tx_id, ApiError, AppState, Peer};

/// Most entries one range page returns.
pub const RANGE_LIMIT_MAX: usize = 1000;
const RANGE_LIMIT_DEFAULT: usize = 100;

/// The routes of the logging app.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/app/log/{visibility}", get(read).post(write).delete(remove))
        .route("/app/log/{visibility}/range", get(range))
        .route("/app/log/{visibility}/historical", get(historical))
        .route("/app/log/{visibility}/historical/range", get(historical_range))
}

fn map_of(visibility: &str) -> Result<&'static str, ApiError> {
    match visibility {
        "private" => Ok("records"),
        "public" => Ok("public:records"),
        _ => Err(ApiError::not_found(format!(
            "no such endpoint: /app/log/{visibility}"
        ))),
    }
}

/// Ids are stored big-endian so that the map's byte order is the numeric order.
fn key_of(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

#[derive(Deserialize)]
struct LogEntry {
    id: u64,
    msg: String,
}

#[derive(Deserialize)]
struct IdQuery {
    id: u64,
}

/// The map and record id a read or a removal is about, once the caller is known to be a user.
fn record_of(
    app: &AppState,
    peer: &Peer,
    visibility: &str,
    query: Option<String>,
) -> Result<(&'static str, u64), ApiError> {
    let map = map_of(visibility)?;
    app.authenticate_user(peer)?;
    let q: IdQuery = extract::query(query)?;
    Ok((map, q.id))
}

async fn write(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(visibility): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let map = map_of(&visibility)?;
    app.authenticate_user(&peer)?;
    let entry: LogEntry = extract::json_body(body, app.max_body_bytes).await?;
    let ((), outcome) = app
        .node
        .execute_async(|tx| {
            tx.put(map, &key_of(entry.id), entry.msg.as_bytes());
            Ok::<_, ApiError>(())
        })
        .await?;
    let tx_id = outcome.tx_id();
    Ok(with_tx_id(
        tx_id,
        (StatusCode::CREATED, Json(json!({ "transaction_id": tx_id }))),
    ))
}

async fn read(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(visibility): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (map, id) = record_of(&app, &peer, &visibility, q)?;
    let (msg, outcome) = app
        .node
        .execute_async(|tx| {
            tx.get(map, &key_of(id))
                .ok_or_else(|| ApiError::not_found(format!("no record with id {id}")))
        })
        .await?;
    Ok(with_tx_id(
        outcome.tx_id(),
        Json(json!({ "msg": String::from_utf8_lossy(&msg) })),
    ))
}

async fn remove(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(visibility): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (map, id) = record_of(&app, &peer, &visibility, q)?;
    let ((), outcome) = app
        .node
        .execute_async(|tx| {
            let key = key_of(id);
            if !tx.has(map, &key) {
                return Err(ApiError::not_found(format!("no record with id {id}")));
            }
            tx.delete(map, &key);
            Ok(())
        })
        .await?;
    let tx_id = outcome.tx_id();
    Ok(with_tx_id(tx_id, Json(json!({ "transaction_id": tx_id }))))
}

#[derive(Deserialize)]
struct RangeQuery {
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
}

/// Checks a page size against the bound every range read has.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(RANGE_LIMIT_DEFAULT) {
        0 => Err(ApiError::invalid_input("limit must be at least 1")),
        n if n > RANGE_LIMIT_MAX => Err(ApiError::invalid_input(format!(
            "limit must be at most {RANGE_LIMIT_MAX}"
        ))),
        n => Ok(n),
    }
}

/// Range reads ask for `limit + 1` rows: cuts `rows` to the page and returns the key the next page starts at
/// (the extra row's), if there is more.
pub fn split_page(rows: &mut Vec<(Vec<u8>, Vec<u8>)>, limit: usize) -> Option<Vec<u8>> {
    let next = rows.get(limit).map(|(k, _)| k.clone());
    rows.truncate(limit);
    next
}

async fn range(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(visibility): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let map = map_of(&visibility)?;
    app.authenticate_user(&peer)?;
    let q: RangeQuery = extract::query(q)?;
    let limit = page_limit(q.limit)?;
    let from = key_of(q.from.unwrap_or(0));
    let to = q.to.map(key_of);
    let (mut rows, outcome) = app
        .node
        .execute_async(|tx| Ok::<_, ApiError>(tx.range(map, &from, to.as_ref().map(|k| &k[..]), limit + 1)))
        .await?;
    let id_of = |key: &[u8]| key.try_into().map(u64::from_be_bytes).ok();
    let next = split_page(&mut rows, limit).and_then(|k| id_of(&k));
    let entries: Vec<_> = rows
        .iter()
        .filter_map(|(k, v)| id_of(k).map(|id| json!({ "id": id, "msg": String::from_utf8_lossy(v) })))
        .collect();
    Ok(with_tx_id(
        outcome.tx_id(),
        Json(json!({ "entries": entries, "next": next })),
    ))
}

#[derive(Deserialize)]
struct HistoricalQuery {
    id: u64,
    transaction_id: String,
}

/// CCF's `GET /app/log/{private,public}/historical?id=&transaction_id=`: the record as of that committed
/// transaction (the value its latest write at or before it set), the seqno of that write, and the
/// transaction's receipt.
async fn historical(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(visibility): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let map = map_of(&visibility)?;
    app.authenticate_user(&peer)?;
    let q: HistoricalQuery = extract::query(q)?;
    let (id, tx) = (q.id, extract::tx_id(&q.transaction_id)?);
    // The receipt first: it answers Pending, Unknown, Invalid and before-snapshot transactions as
    // /app/receipt does, so the value below is only ever read for a Committed transaction.
    let receipt = match receipt_of(&app, tx, false).await? {
        Receipt::Json(receipt) => receipt,
        Receipt::Cose(_) => return Err(ApiError::internal("a JSON receipt was asked for")),
    };
    let found = history::blocking(&app.node, move |node, slot| {
        history::value_at(node, map, &key_of(id), tx.seqno, slot)
    })
    .await?;
    let Some((written, value)) = found else {
        return Err(ApiError::not_found(format!(
            "record {id} had no value as of transaction {tx}"
        )));
    };
    Ok(with_tx_id(
        tx,
        Json(json!({
            "id": id,
            "msg": String::from_utf8_lossy(&value),
            "transaction_id": tx,
            "write_seqno": written.seqno,
            "write_transaction_id": (written.view > 0).then_some(written),
            "receipt": receipt,
        })),
    ))
}

#[derive(Deserialize)]
struct HistoricalRangeQuery {
    id: u64,
    from_seqno: Option<u64>,
    to_seqno: Option<u64>,
    limit: Option<usize>,
}

/// CCF's `GET /app/log/{private,public}/historical/range?id=&from_seqno=&to_seqno=[&limit=]`: every committed
/// version of the record written in `from_seqno..=to_seqno` (default: 1 to the commit), in order, a `msg` of
/// `null` for a delete; paged by `limit` (≤ [`RANGE_LIMIT_MAX`]), by the seqnos one request scans
/// ([`crate::ledger_files::reader::SPAN_MAX`]) and at the commit, with `next` (and CCF's `@nextLink`) to continue.
async fn historical_range(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(visibility): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let map = map_of(&visibility)?;
    app.authenticate_user(&peer)?;
    let q: HistoricalRangeQuery = extract::query(q)?;
    let limit = page_limit(q.limit)?;
    let (id, from) = (q.id, q.from_seqno.unwrap_or(1));
    let to = q.to_seqno.unwrap_or_else(|| app.node.view().committed.seqno);
    let page = history::blocking(&app.node, move |node, slot| {
        history::versions(node, map, &key_of(id), (from, to), limit, slot)
    })
    .await?;
    let entries: Vec<_> = page
        .versions
        .iter()
        .map(|v| {
            json!({
                "seqno": v.tx_id.seqno,
                "transaction_id": v.tx_id,
                "id": id,
                "msg": v.value.as_deref().map(String::from_utf8_lossy),
            })
        })
        .collect();
    let next_link = page.next.map(|n| {
        format!("/app/log/{visibility}/historical/range?id={id}&from_seqno={n}&to_seqno={to}&limit={limit}")
    });
    Ok(Json(json!({ "entries": entries, "next": page.next, "@nextLink": next_link })).into_response())
}
